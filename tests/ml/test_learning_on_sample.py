"""The learning step on a generated site: contract outputs, planted truth, honest metrics,
cold-start items, publication, and no leakage from the future."""

from __future__ import annotations

import shutil
from datetime import timedelta
from html import escape
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from insights import steps
from insights.config import Config, load_config
from insights.warehouse import connect
from models_ml import pipeline, registry
from tests.ml.conftest import truth


def _query(root: Path, sql: str) -> pd.DataFrame:
    con = duckdb.connect(str(root / "wh.duckdb"), read_only=True)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def test_user_insights_has_the_contract_columns_and_every_user(learned: dict) -> None:
    root = learned["root"]
    insights = _query(root, "select * from main.user_insights")
    contract = [
        "user_id", "as_of", "first_seen_at", "last_seen_at", "recency_days", "sessions_90d", "orders_90d",
        "revenue_90d", "avg_order_value", "top_interests", "recommended_items", "purchase_probability",
        "purchase_percentile", "churn_probability", "predicted_revenue", "segment", "model_version",
    ]  # fmt: skip
    assert set(contract) <= set(insights.columns)
    users = _query(root, "select count(*) as n from main.dim_users")["n"][0]
    assert len(insights) == users and insights["user_id"].is_unique
    assert insights["purchase_probability"].between(0, 1).all()
    assert insights["churn_probability"].between(0, 1).all()
    assert insights["purchase_percentile"].between(0, 100).all()
    assert (insights["predicted_revenue"] >= 0).all()
    assert insights["segment"].notna().all()
    assert (insights["model_version"] == learned["train"]["model_version"]).all()
    for interests in insights["top_interests"]:
        strengths = [i["strength"] for i in interests]
        assert strengths == sorted(strengths, reverse=True) and all(0 <= s <= 1 for s in strengths)


def test_recommendations_are_full_valid_and_diverse(learned: dict) -> None:
    root, ml = learned["root"], learned["config"].ml
    recs = _query(
        root,
        """
        select r.*, i.category, i.in_stock,
            exists (select 1 from main.fct_interactions f
                    where f.user_id = r.user_id and f.item_id = r.item_id and f.purchases > 0) as bought
        from main.recommendations r join main.dim_items i using (item_id)
        """,
    )
    users = _query(root, "select count(*) as n from main.dim_users")["n"][0]
    assert recs["user_id"].nunique() == users
    assert (recs.groupby("user_id").size() == ml.recommendations).all()
    assert recs["in_stock"].all() and not recs["bought"].any()
    assert recs.groupby(["user_id", "category"]).size().max() <= ml.max_per_category
    assert set(recs["reason"]) <= {"collaborative", "content", "trending"}
    assert {"collaborative", "trending"} <= set(recs["reason"])
    ranks = recs.sort_values(["user_id", "rank"]).groupby("user_id")["rank"].apply(list)
    assert all(r == list(range(1, len(r) + 1)) for r in ranks)
    similar = _query(root, "select * from main.item_similar")
    assert not (similar["item_id"] == similar["similar_item_id"]).any()
    trending = _query(root, "select * from main.trending")
    assert "global" in set(trending["scope"])


def test_planted_top_interest_is_the_first_reported_interest(learned: dict) -> None:
    planted = truth(learned["root"])
    insights = _query(
        learned["root"],
        """
        select u.user_id, u.top_interests, d.events_90d
        from main.user_insights u join main.dim_users d using (user_id)
        where d.product_views_30d + d.add_to_carts_30d >= 10
        """,
    )
    checked = agree = 0
    for row in insights.itertuples(index=False):
        person = planted.get(row.user_id)
        if person is None or person["is_bot"] or not len(row.top_interests):
            continue
        first_category = next((i for i in row.top_interests if i["dimension"] == "category"), None)
        checked += 1
        agree += first_category is not None and first_category["value"] == person["top_category"]
    assert checked >= 100
    assert agree / checked >= 0.8, f"{agree}/{checked}"


def test_purchase_model_beats_its_baseline_on_held_out_users(learned: dict) -> None:
    purchase = learned["train"]["propensities"]["purchase"]
    assert purchase["method"] == "lightgbm"
    assert purchase["roc_auc"] >= 0.75
    assert purchase["roc_auc"] > purchase["baseline_roc_auc"]
    assert learned["train"]["status"] == "published"


def test_backtest_beats_baselines_and_sees_no_future(learned: dict, tmp_path: Path) -> None:
    """evaluate at a past instant; then the same backtest on a copy of the warehouse without
    any event at or after that instant gives identical scores."""
    config = learned["config"]
    as_of = learned["as_of"] - timedelta(days=14)
    report = steps.evaluate(config, as_of)
    recs = report["recommendations"]
    assert recs["model"]["hr_at_10"] > recs["popularity_baseline"]["hr_at_10"]
    assert recs["model"]["hr_at_10"] > recs["past_items_baseline"]["hr_at_10"]
    assert report["purchase"]["model"]["roc_auc"] > 0.7
    assert (Path(config.ml.report_dir) / f"evaluation_{as_of:%Y-%m-%d}.md").exists()
    # Churn's 30-day window runs past the data: the report says from when it can be measured.
    last = _query(learned["root"], "select max(occurred_at) as t from main.fct_events")["t"][0]
    latest = f"{pd.Timestamp(last).normalize() + pd.Timedelta(days=1 - 30):%Y-%m-%d}"
    assert report["churn"]["skipped"].endswith(
        f"(the latest as-of it can be measured at is {latest}: insights evaluate --as-of {latest})"
    )

    bundle = registry.ModelBundle.load(Path(report["training"]["path"]))
    with_future = pipeline.score(config, as_of, bundle=bundle, write=False)

    shutil.copy(learned["root"] / "wh.duckdb", tmp_path / "wh.duckdb")
    text = (
        (learned["root"] / "insights.yml")
        .read_text()
        .replace(str(learned["root"] / "wh.duckdb"), str(tmp_path / "wh.duckdb"))
    )
    text = text.replace(str(learned["root"] / "models"), str(tmp_path / "models")).replace(
        str(learned["root"] / "eval"), str(tmp_path / "eval")
    )
    (tmp_path / "insights.yml").write_text(text)
    past = load_config(tmp_path / "insights.yml", environ={})
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("delete from raw.events where occurred_at >= ?", [as_of])
    con.execute("drop schema if exists ml cascade")
    con.close()
    steps.transform(past, as_of, full_refresh=True)
    retrained = pipeline.train(past, as_of, backtest=True)
    assert retrained["model_version"] == report["training"]["model_version"]
    without_future = pipeline.score(past, as_of, bundle=registry.ModelBundle.load(Path(retrained["path"])), write=False)
    columns = ["user_id", "purchase_probability", "churn_probability", "predicted_revenue", "segment"]
    pd.testing.assert_frame_equal(
        with_future.users[columns].reset_index(drop=True), without_future.users[columns].reset_index(drop=True)
    )
    pd.testing.assert_frame_equal(
        with_future.recommendations.reset_index(drop=True), without_future.recommendations.reset_index(drop=True)
    )


def test_a_brand_new_item_reaches_users_who_favour_its_category(learned: dict, tmp_path: Path) -> None:
    root = learned["root"]
    shutil.copytree(root / "site" / "catalog", tmp_path / "catalog")
    catalog = pd.read_csv(tmp_path / "catalog" / "items.csv")
    template = catalog[catalog["category"] == "Outdoor > Tents"].iloc[0].to_dict()
    new = {
        **template,
        "item_id": "sku-new-tent",
        "title": f"{template['brand']} Summit Tent 999",
        "created_at": (learned["as_of"] - timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z"),
        "in_stock": True,
    }
    pd.DataFrame([new]).to_csv(tmp_path / "catalog" / "new_items.csv", index=False)
    shutil.copy(root / "wh.duckdb", tmp_path / "wh.duckdb")
    text = (root / "insights.yml").read_text().replace(str(root / "wh.duckdb"), str(tmp_path / "wh.duckdb"))
    text = text.replace(str(root / "site" / "catalog"), str(tmp_path / "catalog"))
    (tmp_path / "insights.yml").write_text(text)
    config = load_config(tmp_path / "insights.yml", environ={})
    steps.ingest(config)
    steps.transform(config, learned["as_of"])
    scores = pipeline.score(config, learned["as_of"], write=False)
    assert scores.model_version == learned["train"]["model_version"]  # the item is new to the model
    reached = scores.recommendations[scores.recommendations["item_id"] == "sku-new-tent"]
    assert len(reached) >= 5 and set(reached["reason"]) == {"content"}
    top = scores.users.set_index("user_id")["top_category"].fillna("")
    outdoor = top.loc[reached["user_id"]].str.startswith("Outdoor")
    assert outdoor.mean() >= 0.8, top.loc[reached["user_id"]].value_counts()


def test_export_delivers_the_scored_site(learned: dict) -> None:
    """The delivery step on a real scored site: cohorts agree with the model's cohorts,
    the datastore holds every user, and the API answers with the scored lists."""
    from exports.datastore import read_latest
    from exports.serving import recs

    config = learned["config"]
    summary = steps.export(config, learned["as_of"])
    users = learned["score"]["users"]
    assert summary["datastore"]["tables"]["user_insights"]["rows"] == users
    ready = next(c for c in summary["cohorts"]["cohorts"] if c["cohort"] == "Ready to buy")
    con = connect(config, read_only=True)
    try:
        flagged = con.execute(
            "select count(*) from main.user_insights where list_contains(cohorts, 'Ready to buy')"
        ).fetchone()[0]
        user, first = con.execute(
            "select user_id, item_id from main.recommendations where rank = 1 order by user_id limit 1"
        ).fetchone()
    finally:
        con.close()
    assert ready["users"] == flagged and ready["lift"] > 1.5
    assert len(read_latest(config, "user_insights")) == users
    assert recs(config, user, 3)["items"][0]["item_id"] == first


def test_run_report_shows_every_section_with_real_numbers(learned: dict) -> None:
    """The HTML report of the scored site: every section present with its charts, numbers that
    agree with the warehouse, nothing fetched from the network."""
    import json
    import re

    from exports.report import SECTIONS

    config = learned["config"]
    exported = steps.export(config, learned["as_of"])
    result = steps.report(config, learned["as_of"], run_id="report-test", steps_summary={"export": exported})
    html = Path(result["path"]).read_text(encoding="utf-8")
    for key, title in SECTIONS:
        assert f'<section id="{key}">' in html and title in html, key
    assert html.count("<svg") >= 12
    # Offline: no scripts, stylesheets or images from anywhere (the SVG namespace is not a fetch).
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    # The same numbers are stored beside it in the datastore.
    data = json.loads(
        Path(
            config.resolve(config.datastore.uri), "reports", "dt=" + result["as_of"][:10], "run_report.json"
        ).read_text()
    )
    users = learned["score"]["users"]
    assert data["summary"]["users"] == users
    assert sum(data["purchase_histogram"]["counts"]) == users
    funnel = data["funnel"]["sessions"]
    assert len(funnel) == 4 and all(a >= b for a, b in zip(funnel, funnel[1:])) and funnel[-1] > 0
    assert sum(n for _, n in data["segments"]) == users
    assert {c["cohort"] for c in data["cohorts"]} >= {"Ready to buy", "Dormant"}
    assert all(c["lift"] is not None for c in data["cohorts"] if c["users"])
    purchase = data["propensities"]["purchase"]
    assert purchase["method"] == "lightgbm" and len(purchase["held_out"]["calibration"]) == 10
    assert "calibration" in purchase["held_out_baseline"]
    # Which probabilities the calibration curve shows, and the cross-fitted losses behind it.
    chosen = purchase["calibrator"]
    kept = "isotonic calibration" if chosen["method"] == "isotonic" else "the booster's own scores"
    assert escape(f"Probabilities: {kept}") in html and f"{chosen['raw_log_loss']:.3f} raw" in html
    current = data["recommendations"]["current"]
    assert current["hr_at_10"] > current["popularity_baseline"]["hr_at_10"]
    quality = data["quality"]
    assert quality["lines_read"] == (
        quality["loaded"] + quality["duplicates"] + quality["quarantined"] + quality["control_messages"]
    )
    assert quality["bot_agent_events"] > 0 and quality["clean_events"] < quality["raw_events"]
    # Fresh data, everyone with a list: no warning, and the newest event is stated.
    assert learned["score"]["warnings"] == [] and quality["data_lag_warning"] is None
    assert quality["users_without_recommendations"] == 0 and quality["data_lag_hours"] < 24
    assert f"Newest event of a scored user: {quality['newest_event_at']} UTC" in html and "Warning:" not in html
    assert {d for d, *_ in data["interests"]} >= {"category", "brand"}
    assert [s["step"] for s in data["steps"]] == ["export"]


def _private_copy(learned: dict, tmp_path: Path) -> Config:
    """The learned warehouse copied into ``tmp_path``, and its configuration."""
    root = learned["root"]
    shutil.copy(root / "wh.duckdb", tmp_path / "wh.duckdb")
    text = (root / "insights.yml").read_text().replace(str(root / "wh.duckdb"), str(tmp_path / "wh.duckdb"))
    (tmp_path / "insights.yml").write_text(text)
    return load_config(tmp_path / "insights.yml", environ={})


def test_other_settings_or_data_make_another_version(learned: dict, tmp_path: Path) -> None:
    """Retraining on the same data with the same settings gives the published version back,
    unchanged. A new conversion event (here a misspelt one) made the same version id too, so
    its rule-based purchase model overwrote the published LightGBM one in place; now it is
    another version, published as the settings say (its metrics are not compared with the
    old ones, which measure something else), and training warns that nothing converts. A
    late event changes the version as well."""
    config = _private_copy(learned, tmp_path)
    config = config.model_copy(update={"ml": config.ml.model_copy(update={"model_dir": str(tmp_path / "models")})})
    as_of = learned["as_of"]
    same = pipeline.train(config, as_of)
    assert same["model_version"] == learned["train"]["model_version"] and same["status"] == "published"
    assert same["warnings"] == []

    typo = config.model_copy(update={"transform": config.transform.model_copy(update={"conversion_event": "purchse"})})
    steps.transform(typo, as_of)
    other = steps.train(typo, as_of)
    assert other["model_version"] != same["model_version"]
    assert other["propensities"]["purchase"]["method"] == "heuristic"
    assert other["status"] == "published" and "transform.conversion_event" in other["reason"]
    assert other["warning_headlines"] == ["no 'purchse' conversion in the data"]
    assert "(transform.conversion_event) (did you mean 'purchase'?)" in other["warnings"][0]
    assert steps.headline("train", other).endswith("; warning: no 'purchse' conversion in the data")
    assert registry.ModelBundle.load(Path(same["path"])).targets["purchase"].method == "lightgbm"

    steps.transform(config, as_of)
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute(
        "insert into raw.events by name select * replace ('late-one' as event_id) from raw.events "
        "where event_type = 'product_view' and occurred_at < ? limit 1",
        [as_of],
    )
    con.close()
    steps.transform(config, as_of)
    assert pipeline.train(config, as_of)["model_version"] not in (same["model_version"], other["model_version"])


def test_the_encoder_fitted_beside_the_snapshots_is_the_one_fitted_after_them(
    learned: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trained right after a transform, the catalog encoder is fitted on a thread while the
    snapshots are built. Fitted in line after the ALS search instead (as it is at an instant
    the warehouse's models are not as of), it gives the same text vectors, the same mapping
    to item vectors and the same model version."""
    config = _private_copy(learned, tmp_path)
    as_of = learned["as_of"]

    def trained(folder: str) -> tuple[dict, registry.ModelBundle]:
        ml = config.ml.model_copy(update={"model_dir": str(tmp_path / folder)})
        result = pipeline.train(config.model_copy(update={"ml": ml}), as_of)
        return result, registry.ModelBundle.load(Path(result["path"]))

    aside: list[int] = []
    encode_aside = pipeline._encode_aside
    monkeypatch.setattr(
        pipeline,
        "_encode_aside",
        lambda c, catalog, timings: aside.append(len(catalog)) or encode_aside(c, catalog, timings),
    )
    early, early_bundle = trained("early")
    assert aside and aside[0] > 0  # the encoder was fitted beside the snapshots
    monkeypatch.setattr(pipeline, "_encode_aside", lambda c, catalog, timings: None)
    inline, inline_bundle = trained("inline")

    assert early["model_version"] == inline["model_version"]
    con = connect(config, read_only=True)
    try:
        catalog = pipeline.data.items(con, "main")
    finally:
        con.close()
    np.testing.assert_array_equal(early_bundle.encoder.transform(catalog), inline_bundle.encoder.transform(catalog))
    np.testing.assert_array_equal(early_bundle.mapping.coef_, inline_bundle.mapping.coef_)
    np.testing.assert_array_equal(early_bundle.item_factors, inline_bundle.item_factors)


def test_scoring_again_recomputes_only_the_users_whose_history_changed(learned: dict, tmp_path: Path) -> None:
    """The refresh path: the stored picks of unchanged users are reused (same lists as a full
    recompute at the same instant), a user with a new interaction is folded in again."""
    config = _private_copy(learned, tmp_path)
    as_of = learned["as_of"]
    before = _query(tmp_path, "select * from main.recommendations order by user_id, rank")
    warm = _query(tmp_path, "select count(*) as n from ml.pick_cache_users")["n"][0]
    assert warm > 100

    again = pipeline.score(config, as_of)
    assert (again.picks_reused, again.picks_computed) == (warm, 0)
    pd.testing.assert_frame_equal(again.recommendations.reset_index(drop=True), before, check_dtype=False)
    recomputed = pipeline.score(
        load_config(tmp_path / "insights.yml", environ={"INSIGHTS__ML__REUSE_PICKS_HOURS": "0"}), as_of
    )
    assert (recomputed.picks_reused, recomputed.picks_computed) == (0, warm)
    pd.testing.assert_frame_equal(recomputed.recommendations, again.recommendations)

    # One warm user buys into a new category: only they are recomputed, and their list is
    # what a full recompute gives them.
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    user, item = con.execute(
        """
        select u.user_id, i.item_id
        from ml.pick_cache_users as u, main.dim_items as i
        where i.in_stock and i.item_id not in (select item_id from main.fct_interactions where user_id = u.user_id)
        order by u.user_id, i.item_id limit 1
        """
    ).fetchone()
    con.execute(
        "insert into main.fct_interactions (user_id, item_id, weight, events, purchases) values (?, ?, 12.0, 3, 1)",
        [user, item],
    )
    con.close()
    changed = pipeline.score(config, as_of)
    assert (changed.picks_reused, changed.picks_computed) == (warm - 1, 1)
    # That run stored only the changed user's entry; the cache holds what storing every
    # entry anew (the recompute below) holds.
    cache_sql = {
        "users": "select * from ml.pick_cache_users order by user_id",
        "items": "select * from ml.pick_cache_items order by user_id, position",
    }
    updated = {name: _query(tmp_path, sql) for name, sql in cache_sql.items()}
    full = pipeline.score(
        load_config(tmp_path / "insights.yml", environ={"INSIGHTS__ML__REUSE_PICKS_HOURS": "0"}), as_of
    )
    pd.testing.assert_frame_equal(changed.recommendations, full.recommendations)
    for name, sql in cache_sql.items():
        pd.testing.assert_frame_equal(updated[name], _query(tmp_path, sql), obj=name)
    assert item not in set(changed.recommendations.loc[changed.recommendations["user_id"] == user, "item_id"])


def test_scoring_again_reuses_similar_items_until_stock_changes(learned: dict, tmp_path: Path) -> None:
    """Similar items depend on the model, the items and their stock only: an hourly run with
    none of them changed reads the stored table back; a stock change recomputes it, giving
    what a run without a stored table gives."""
    config = _private_copy(learned, tmp_path)
    as_of = learned["as_of"]
    before = _query(tmp_path, "select * from main.item_similar order by item_id, rank")
    assert len(before) > 100

    again = pipeline.score(config, as_of)
    assert again.similar_reused
    pd.testing.assert_frame_equal(again.item_similar.reset_index(drop=True), before, check_dtype=False)

    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    item = con.execute("select similar_item_id from main.item_similar order by item_id, rank limit 1").fetchone()[0]
    con.execute("update main.dim_items set in_stock = false where item_id = ?", [item])
    con.close()
    changed = pipeline.score(config, as_of)
    assert not changed.similar_reused
    stored = _query(tmp_path, "select * from main.item_similar order by item_id, rank")
    assert item not in set(stored["similar_item_id"]) and len(stored) > 100
    fresh = pipeline.score(config, as_of, write=False)
    assert not fresh.similar_reused
    pd.testing.assert_frame_equal(stored, fresh.item_similar.reset_index(drop=True), check_dtype=False)
    assert pipeline.score(config, as_of).similar_reused


def test_a_quiet_spell_still_fills_every_list_and_stale_data_is_called_out(learned: dict, tmp_path: Path) -> None:
    """Scored five days after the last event (nothing viewed in trending's recent days), the
    trending lists go on with popular items and every user still gets a full list; scored
    forty days after (nothing in the popularity baseline either), the users with too short
    a history have nothing, and scoring and the report say so and that the data is old."""
    config = _private_copy(learned, tmp_path)
    ml = config.ml

    quiet = pipeline.score(config, learned["as_of"] + timedelta(days=5))
    assert len(quiet.trending) and (quiet.trending["score"] > 0).all()
    assert (quiet.trending.groupby("scope").size() <= ml.trending_items).all()
    assert (quiet.recommendations.groupby("user_id").size() == ml.recommendations).all()
    assert quiet.recommendations["user_id"].nunique() == len(quiet.users)
    assert [h for h, _ in quiet.warnings] == ["newest event 5.0 days old"]

    later = learned["as_of"] + timedelta(days=40)
    stale = steps.score(config, later)
    assert stale["trending"] == 0
    empty = (
        len(stale_users := _query(tmp_path, "select * from main.user_insights"))
        - _query(tmp_path, "select count(distinct user_id) as n from main.recommendations")["n"][0]
    )
    assert empty > 0 and stale_users["recommended_items"].map(len).eq(0).sum() == empty
    assert stale["warning_headlines"] == ["newest event 40.0 days old", f"{empty:,} users without recommendations"]
    assert "validation.max_data_lag_hours (24)" in stale["warnings"][0]
    assert steps.headline("score", stale).endswith(
        f"; warning: newest event 40.0 days old; warning: {empty:,} users without recommendations"
    )
    html = Path(steps.report(config, later)["path"]).read_text(encoding="utf-8")
    assert "40.0 days before the as-of instant" in html and escape(stale["warnings"][0]) in html
    assert f"{empty:,} of {len(stale_users):,} users have no recommendations" in html
    assert escape(stale["warnings"][1]) in html


def test_a_site_without_a_catalog_still_gets_scores_and_says_why_nothing_is_recommended(
    learned: dict, tmp_path: Path
) -> None:
    """Snowplow or Singer events with item ids but no catalog source (a first try, or a
    catalog not wired yet): training, scoring, exports and the report all run; users get
    their scores and segments, nobody gets a recommendation (items are recommended only
    when the catalog lists them in stock), and every output says why."""
    config = _private_copy(learned, tmp_path)
    config = config.model_copy(update={"ml": config.ml.model_copy(update={"model_dir": str(tmp_path / "models")})})
    as_of = learned["as_of"]
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("delete from raw.catalog_items")
    con.close()
    steps.transform(config, as_of)
    assert _query(tmp_path, "select count(*) as n from main.dim_items")["n"][0] == 0
    assert steps.train(config, as_of)["model_version"]
    scored = steps.score(config, as_of)
    assert scored["users"] == learned["score"]["users"] and scored["recommendations"] == 0
    assert scored["warning_headlines"] == ["no catalog items to recommend"]
    assert "add a source of kind catalog" in scored["warnings"][0]
    users = _query(tmp_path, "select * from main.user_insights")
    assert users["purchase_probability"].between(0, 1).all() and users["segment"].notna().all()
    exported = steps.export(config, as_of)
    assert exported["serving"]["users"] == 0
    from exports.serving import recs

    assert recs(config, users["user_id"][0], 5)["items"] == []
    html = Path(steps.report(config, as_of)["path"]).read_text(encoding="utf-8")
    assert escape(scored["warnings"][0]) in html
