"""Cohort filters and reports: the language is data, never SQL; CSVs a spreadsheet reads."""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from exports.cohorts import DEFAULT_COLUMNS, VIEW_SQL, CohortError, known_names, run_cohorts
from exports.filters import FilterError, column_types, compile_filter
from insights.config import Config
from insights.warehouse import connect


def _users(config: Config, where: str, bindings: dict | None = None) -> set[str]:
    con = connect(config, read_only=True)
    try:
        types = column_types(con.execute("describe main.user_insights").fetchall())
        compiled = compile_filter(where, types, bindings)
        return {
            r[0]
            for r in con.execute(
                f"select user_id from main.user_insights where {compiled.sql}", compiled.params
            ).fetchall()
        }
    finally:
        con.close()


def test_filters_select_what_they_say(small: Config) -> None:
    con = connect(small, read_only=True)
    rows = con.execute(
        "select user_id, purchase_percentile, segment, orders_lifetime, top_interests, cohorts, is_identified from main.user_insights"
    ).fetchall()
    con.close()
    expected = {r[0] for r in rows if r[1] >= 80 and r[2] in ("At risk", "Lost")}
    assert _users(small, "purchase_percentile >= 80 and segment in ('At risk', 'Lost')") == expected
    expected = {r[0] for r in rows if any(i["value"] == "Outdoor" and i["strength"] >= 0.5 for i in r[4])}
    assert expected and _users(small, "interest('Outdoor') >= 50%") == expected
    assert _users(small, "interest(:c) >= 0.5", {"c": "Outdoor"}) == expected
    expected = {r[0] for r in rows if "Ready to buy" in r[5] or not r[6]}
    assert _users(small, "in_cohort('Ready to buy') or not is_identified") == expected
    expected = {r[0] for r in rows if not (10 <= r[1] <= 20) and r[3] != 0}
    assert _users(small, "purchase_percentile not between 10 and 20 and orders_lifetime <> 0") == expected
    assert _users(small, "avg_order_value is null") == {r[0] for r in rows if r[3] == 0}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("purchse_probability > 0.5", "unknown column 'purchse_probability' (did you mean 'purchase_probability'?)"),
        ("segment > 3", "'segment' is text, but '3' is number"),
        ("recency_days", "is number, not a condition"),
        ("x'; drop table users; --", "unexpected character"),
        ("segment = 'a'; drop table main.user_insights; --", "unexpected character ';'"),
        ("segment = 'a' or 1 = 1", "expected a column or a function, found '1'"),
        ("load_csv('/etc/passwd') > 0", "unknown function 'load_csv'"),
        ("purchase_probability > (select 1)", "expected a value, found '('"),
        ("segment = null", "compare with null using 'is null'"),
        ("interest(:nope) > 0", "placeholder :nope has no value"),
        ("", "empty filter"),
    ],
)
def test_bad_filters_are_named_not_run(small: Config, text: str, message: str) -> None:
    con = connect(small, read_only=True)
    types = column_types(con.execute("describe main.user_insights").fetchall())
    con.close()
    with pytest.raises(FilterError) as caught:
        compile_filter(text, types)
    assert message in str(caught.value)
    if "unknown column" in message:
        assert "known columns: " in str(caught.value) and "purchase_percentile" in str(caught.value)
    con = duckdb.connect(str(Path(small.warehouse.path)), read_only=True)
    assert con.execute("select count(*) from main.user_insights").fetchone()[0] == 60
    con.close()


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("interest('Outdor') > 0.2", "interest: no category or brand is called 'Outdor' (did you mean 'Outdoor'?)"),
        ("interest('home > kitchen') > 0", "no category or brand is called 'home > kitchen' (did you mean 'Home > Kitchen'?)"),
        ("in_cohort('Ready to by')", "in_cohort: no model cohort is called 'Ready to by' (did you mean 'Ready to buy'?)"),
        ("segment in ('Lost', 'At Risk')", "segment: no segment is called 'At Risk' (did you mean 'At risk'?)"),
        ("segment != 'Champion' and recency_days < 9", "no segment is called 'Champion' (did you mean 'Champions'?)"),
        ("top_brand = 'Brand7'", "top_brand: no brand is called 'Brand7' (did you mean 'Brand2', 'Brand1', 'Brand0'?)"),
        ("top_category = 'Outdoor > Tent'", "no category is called 'Outdoor > Tent' (did you mean 'Outdoor > Tents'"),
        ("price_band = 'cheap'", "no price band is called 'cheap'; known: budget, mid, premium"),
    ],
)  # fmt: skip
def test_a_name_that_matches_nobody_is_refused_with_the_closest(small: Config, where: str, message: str) -> None:
    """A typo in a category, brand, segment or cohort name would pull an empty cohort (or,
    after !=, everyone) without a word; the filter is refused instead, in ad-hoc pulls and
    in defined cohorts alike."""
    definition = {"name": "Typo", "where": where}
    config = small.model_copy(
        update={"cohorts": small.cohorts.model_copy(update={"definitions": [definition], "defaults": False})}
    )
    con = connect(config, read_only=True)
    try:
        with pytest.raises(CohortError) as caught:
            run_cohorts(config, con, where=where)
        assert message in str(caught.value) and "--where: cohort 'Ad hoc'" in str(caught.value)
        with pytest.raises(CohortError) as caught:
            run_cohorts(config, con)
        assert message in str(caught.value) and "cohort 'Typo'" in str(caught.value)
        # A placeholder's value is checked as a literal is.
        types = column_types(con.execute(f"describe ({VIEW_SQL})").fetchall())
        with pytest.raises(FilterError, match="no category or brand is called 'Garden'"):
            compile_filter("interest(:c) > 0", types, {"c": "Garden"}, known_names(con))
    finally:
        con.close()


def test_every_known_name_is_accepted(small: Config) -> None:
    """Each level of a category path, brands, model cohorts, segments and price bands pass
    the check and select what they say; an open column (the device) is not checked."""
    con = connect(small, read_only=True)
    try:
        pulls = {
            "interest('Outdoor') > 0 and interest('Brand2') > 0": 10,
            "in_cohort('Ready to buy') and segment in ('Lost', 'Prospect', 'Lost prospect')": 6,
            "top_category = 'Home > Kitchen' and top_brand != 'Brand1' and price_band = 'mid'": 10,
            "favourite_device = 'Smart fridge'": 0,
        }
        for where, users in pulls.items():
            assert run_cohorts(small, con, where=where)["cohorts"][0]["users"] == users, where
    finally:
        con.close()


def test_cohort_csvs_and_summary(small: Config) -> None:
    con = connect(small, read_only=True)
    try:
        first = run_cohorts(small, con)
        second = run_cohorts(small, con)
    finally:
        con.close()
    out = Path(small.cohorts.out_dir)
    names = [c["cohort"] for c in first["cohorts"]]
    assert names[:5] == ["Ready to buy", "Long shots", "At risk of churn", "Potential VIPs", "Dormant"]
    assert {"Interested in Outdoor", "Interested in Home", "Interested in Fashion"} <= set(names)
    with open(out / "ready_to_buy.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["User ID", "Segment", "Purchase probability (14 days)"]
    assert header[-1] == "Group"
    assert len(body) == 12  # percentile >= 80 of 60 users
    probability = [float(r[2].rstrip("%")) for r in body]
    assert probability == sorted(probability, reverse=True) and all(r[2].endswith("%") for r in body)
    interests = body[0][header.index("Top interests")]
    assert "(" in interests and "brand: Brand" in interests
    assert "Item " in body[0][header.index("Recommended items")]
    # Holdout is a stable function of user and cohort: the same on every run.
    assert second["membership"].equals(first["membership"])
    ready = first["membership"][first["membership"]["cohort"] == "Ready to buy"]
    summary = next(c for c in first["cohorts"] if c["cohort"] == "Ready to buy")
    target = ready[ready["group"] == "target"]
    assert summary["target"] == len(target) and summary["holdout"] == len(ready) - len(target)
    assert summary["expected_conversions"] == pytest.approx(target["purchase_probability"].sum(), abs=0.05)
    mean_all = sum(u / 60 for u in range(60)) / 60
    assert summary["lift"] == pytest.approx(target["purchase_probability"].mean() / mean_all, abs=0.01)
    with open(out / "summary.csv", encoding="utf-8") as fh:
        assert fh.readline().startswith("as_of,cohort,description,users,target,holdout")


def test_a_cohort_is_named_case_aside_and_a_typo_gets_the_closest(small: Config) -> None:
    con = connect(small, read_only=True)
    try:
        pulled = run_cohorts(small, con, names=["ready TO buy", "Interested in Home"])
        assert [c["cohort"] for c in pulled["cohorts"]] == ["Ready to buy", "Interested in Home"]
        assert pulled["summary_file"] is None
        with pytest.raises(
            CohortError, match=r"unknown cohort 'Redy to buy' \(did you mean 'Ready to buy'\?\); known: "
        ):
            run_cohorts(small, con, names=["Redy to buy"])
    finally:
        con.close()


def test_an_out_folder_that_is_a_file_is_named(small: Config, tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("not a folder")
    con = connect(small, read_only=True)
    try:
        with pytest.raises(
            CohortError, match=f"cannot write the cohort CSVs to {tmp_path / 'taken'}: a file, not a folder"
        ):
            run_cohorts(small, con, out_dir=str(tmp_path / "taken"))
    finally:
        con.close()


def test_holdout_share_is_close_to_asked(small: Config) -> None:
    definition = {"name": "Everyone", "where": "recency_days >= 0", "holdout": 0.3}
    config = small.model_copy(
        update={"cohorts": small.cohorts.model_copy(update={"definitions": [definition], "defaults": False})}
    )
    con = connect(config, read_only=True)
    try:
        groups = run_cohorts(config, con)["membership"]["group"]
    finally:
        con.close()
    assert 0.15 <= (groups == "holdout").mean() <= 0.45


def test_adhoc_pull_and_folder_definitions(small: Config, tmp_path: Path) -> None:
    folder = tmp_path / "cohort_defs"
    folder.mkdir()
    (folder / "ours.yml").write_text(
        "- name: Big spenders\n  where: revenue_lifetime >= 90\n  columns: [user_id, revenue_lifetime]\n  sort: revenue_lifetime desc\n"
    )
    config = small.model_copy(
        update={"cohorts": small.cohorts.model_copy(update={"folder": str(folder), "defaults": False})}
    )
    con = connect(config, read_only=True)
    try:
        result = run_cohorts(config, con)
        assert [c["cohort"] for c in result["cohorts"]] == ["Big spenders"]
        assert result["cohorts"][0]["users"] == 15
        adhoc = run_cohorts(config, con, where="segment = 'Lost' and purchase_percentile >= 50")
        assert result["summary_file"] == str(tmp_path / "cohorts_out" / "summary.csv") and adhoc["summary_file"] is None
        summary = (tmp_path / "cohorts_out" / "summary.csv").read_text()
        assert "Big spenders" in summary and "Ad hoc" not in summary  # an ad-hoc pull leaves the summary
        assert adhoc["cohorts"][0]["users"] == len(_users(config, "segment = 'Lost' and purchase_percentile >= 50"))
        (folder / "ours.yml").write_text("- name: Broken\n  where: revenu_lifetime >= 90\n")
        with pytest.raises(CohortError) as caught:
            run_cohorts(config, con)
        assert (
            "ours.yml" in str(caught.value)
            and "Broken" in str(caught.value)
            and "revenue_lifetime" in str(caught.value)
        )
        (folder / "ours.yml").write_text("- name: Typo\n  wher: x > 1\n")
        with pytest.raises(CohortError, match="ours.yml: cohort 'Typo'"):
            run_cohorts(config, con)
    finally:
        con.close()
    header = (tmp_path / "cohorts_out" / "big_spenders.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header == "User ID,Revenue (lifetime),Group"


def _expected_cell(column: str, value: object, titles: dict[str, str]) -> str:
    """What a marketer should read in a cell (the spreadsheet conventions of the reports)."""
    if column == "top_interests":
        return "; ".join(
            f"{i['value'] if i['dimension'] in ('category', 'subcategory') else i['dimension'] + ': ' + i['value']}"
            f" ({i['strength']:.2f})"
            for i in value
        )
    if column == "recommended_items":
        return "; ".join(f"{titles[i['item_id']]} ({i['item_id']})" for i in value[:5])
    if isinstance(value, list):
        return "; ".join(value)
    if isinstance(value, Decimal):
        value = float(value)
    if value is None or value != value:  # missing, or NaN
        return ""
    if column in ("purchase_probability", "churn_probability"):
        return f"{100 * value:.1f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if column.endswith("percentile"):
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.2f}" if not value.is_integer() or column.endswith(("revenue", "value")) else f"{value:.0f}"
    return str(value)


def test_every_cell_reads_back_as_a_marketer_expects(small: Config) -> None:
    """Awkward values (a title with a comma, quotes and a line break; a user id with a
    comma and quotes; NaN and missing numbers; decimals; booleans; times; lists) survive the CSV exactly."""
    con = duckdb.connect(str(Path(small.warehouse.path)))
    con.execute("update main.dim_items set title = 'Tent, \"Pro\"' || chr(10) || '2-person' where item_id = 'i002'")
    con.execute(
        "update main.user_insights set user_id = 'u,001 \"x\"', churn_probability = 'nan' where user_id = 'u001'"
    )
    con.execute("update main.user_insights set recommended_items = [] where user_id = 'u002'")
    con.close()
    columns = [
        "user_id", "segment", "purchase_probability", "purchase_percentile", "churn_probability", "recency_days",
        "sessions_90d", "revenue_90d", "avg_order_value", "days_since_last_order", "top_interests",
        "recommended_items", "cohorts", "first_seen_at", "is_identified", "value_percentile", "predicted_revenue",
    ]  # fmt: skip
    definition = {"name": "All", "where": "recency_days >= 0", "columns": columns, "sort": "user_id"}
    # The default columns: their lines are formatted once per run (prepare_view), not per cohort.
    default = {"name": "All by default", "where": "recency_days >= 0", "sort": "user_id"}
    config = small.model_copy(
        update={"cohorts": small.cohorts.model_copy(update={"definitions": [definition, default], "defaults": False})}
    )
    con = connect(config, read_only=True)
    try:
        run_cohorts(config, con)
        titles = dict(con.execute("select item_id, title from main.dim_items").fetchall())
        cursor = con.execute(
            "select *, round(100 * cume_dist() over (order by predicted_revenue), 2) as value_percentile "
            "from main.user_insights order by user_id"
        )
        names = [d[0] for d in cursor.description]
        rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    finally:
        con.close()
    expected = [[_expected_cell(c, row[c], titles) for c in columns] for row in rows]
    with open(Path(config.cohorts.out_dir) / "all.csv", encoding="utf-8", newline="") as fh:
        body = [row[:-1] for row in list(csv.reader(fh))[1:]]
    assert body == expected
    with open(Path(config.cohorts.out_dir) / "all_by_default.csv", encoding="utf-8", newline="") as fh:
        by_default = list(csv.reader(fh))
    assert len(by_default[0]) == len(DEFAULT_COLUMNS) + 1 and by_default[0][-1] == "Group"
    assert [r[:-1] for r in by_default[1:]] == [
        [_expected_cell(c, row[c], titles) for c in DEFAULT_COLUMNS] for row in rows
    ]
    assert {r[-1] for r in by_default[1:]} == {"target"}
    assert any(r[0] == 'u,001 "x"' for r in by_default[1:])
    odd = next(r for r in body if r[0] == 'u,001 "x"')
    assert odd[columns.index("churn_probability")] == "" and odd[columns.index("avg_order_value")] != ""
    assert any('Tent, "Pro"\n2-person (i002)' in r[columns.index("recommended_items")] for r in body)
    assert next(r for r in body if r[0] == "u002")[columns.index("recommended_items")] == ""
    assert {r[columns.index("is_identified")] for r in body} == {"yes", "no"}
