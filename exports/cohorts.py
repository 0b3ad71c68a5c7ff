"""Cohort reports for marketers: YAML definitions, safe filters, spreadsheet-ready CSVs.

Each cohort is a filter over ``user_insights`` (see ``exports.filters``), a sort, a limit,
columns and an optional holdout share. Holdout assignment is the first 8 hex digits of
md5(cohort name, user id) as a fraction: stable across runs, machines and DuckDB versions.
"""

from __future__ import annotations

import csv
import difflib
import io
import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import yaml
from pydantic import ValidationError

from exports.filters import FilterError, Names, category_levels, column_types, compile_filter, compile_sort
from insights.config import CohortDefinition, Config
from insights.storage import replace_text
from insights.warehouse import query_table, scored_as_of
from models_ml.segments import PREDICTIVE_COHORTS, SEGMENTS

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = [
    "user_id",
    "segment",
    "purchase_probability",
    "purchase_percentile",
    "churn_probability",
    "predicted_revenue",
    "recency_days",
    "orders_lifetime",
    "revenue_lifetime",
    "top_interests",
    "recommended_items",
    "last_seen_at",
]

DEFAULT_COHORTS = [
    {
        "name": "Ready to buy",
        "description": "Top 20% by probability of buying within the purchase window.",
        "where": "purchase_percentile >= 80",
        "holdout": 0.1,
    },
    {
        "name": "Long shots",
        "description": "Customers with a middling chance to buy again (25th to 65th percentile): worth a nudge.",
        "where": "orders_lifetime > 0 and purchase_percentile between 25 and 65",
        "holdout": 0.1,
    },
    {
        "name": "At risk of churn",
        "description": "Active within the churn window, but at least even odds of no activity in the next one.",
        "where": "recency_days <= :churn_days and churn_probability >= 50%",
        "sort": "churn_probability desc",
        "holdout": 0.1,
    },
    {
        "name": "Potential VIPs",
        "description": "Top 10% by predicted revenue in the value window, not yet Champions.",
        "where": "value_percentile >= 90 and predicted_revenue > 0 and segment != 'Champions'",
        "sort": "predicted_revenue desc",
    },
    {
        "name": "Dormant",
        "description": "Customers with no activity within the churn window.",
        "where": "recency_days > :churn_days and orders_lifetime > 0",
        "sort": "revenue_lifetime desc",
    },
    {
        "name": "Interested in {category}",
        "description": "Users whose top interests include {category} (strength at least 0.3).",
        "where": "interest(:category) >= 0.3",
        "sort": "purchase_probability desc",
        "per_category": True,
    },
]

# The cohort view: user_insights plus percentiles a filter can use. The percentiles' windows
# sort a narrow projection that joins back by row: sorting the wide rows (lists of
# recommendations and interests) took 1.72-1.78 s at 263k users, against 0.34-0.40 s, for the
# same rows (every cohort's order ends with user_id, so the rows' order here never shows).
VIEW_SQL = """
    select u.*, p.value_percentile, p.churn_percentile
    from main.user_insights as u
    join (
        select rowid as row_id,
            round(100 * cume_dist() over (order by predicted_revenue), 2) as value_percentile,
            round(100 * cume_dist() over (order by churn_probability), 2) as churn_percentile
        from main.user_insights
    ) as p on p.row_id = u.rowid
"""


class CohortError(ValueError):
    """A cohort definition that cannot be used (names the cohort and its file)."""


@dataclass
class Cohort:
    definition: CohortDefinition
    origin: str
    bindings: dict[str, Any]

    @property
    def name(self) -> str:
        return self.definition.name


def slug(name: str) -> str:
    """A file name from a cohort name: lower case letters, digits and underscores only."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:80] or "cohort"


def _definitions_from_file(path: Path) -> list[tuple[dict[str, Any], str]]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise CohortError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(loaded, dict) and "cohorts" in loaded:
        loaded = loaded["cohorts"]
    items = loaded if isinstance(loaded, list) else [loaded] if isinstance(loaded, dict) else None
    if items is None:
        raise CohortError(f"{path}: expected a cohort mapping or a list of them")
    return [(item, str(path)) for item in items]


def window_bindings(config: Config) -> dict[str, float]:
    """The placeholders every filter may use: ``:churn_days`` and ``:purchase_days``."""
    return {"churn_days": float(config.windows.churn_days), "purchase_days": float(config.windows.purchase_days)}


def load_cohorts(config: Config, categories: list[str]) -> list[Cohort]:
    """The shipped cohorts (unless ``cohorts.defaults`` is false), those in the config and
    those in the ``cohorts.folder`` files, with ``per_category`` ones expanded."""
    raw: list[tuple[Any, str]] = []
    if config.cohorts.defaults:
        raw += [(item, "(shipped default)") for item in DEFAULT_COHORTS]
    origin = config.source_file or "(config)"
    raw += [(d, origin) for d in config.cohorts.definitions]
    if config.cohorts.folder:
        folder = Path(config.resolve(config.cohorts.folder))
        if folder.is_dir():
            for path in sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")]):
                raw += _definitions_from_file(path)
    base = window_bindings(config)
    cohorts: dict[str, Cohort] = {}
    for item, where in raw:
        try:
            definition = item if isinstance(item, CohortDefinition) else CohortDefinition.model_validate(item)
        except ValidationError as exc:
            problems = "; ".join(f"'{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in exc.errors())
            name = item.get("name", "?") if isinstance(item, dict) else "?"
            raise CohortError(f"{where}: cohort '{name}': {problems}") from None
        expanded = (
            [
                (
                    definition.model_copy(
                        update={
                            "name": definition.name.replace("{category}", category),
                            "description": definition.description.replace("{category}", category),
                            "per_category": False,
                        }
                    ),
                    {**base, "category": category},
                )
                for category in categories
            ]
            if definition.per_category
            else [(definition, base)]
        )
        for one, bindings in expanded:
            if one.name in cohorts and cohorts[one.name].origin != where:
                log.info("cohort '%s' from %s replaces the one from %s", one.name, where, cohorts[one.name].origin)
            cohorts[one.name] = Cohort(one, where, bindings)
    return list(cohorts.values())


@dataclass
class Pull:
    """One cohort's users, sorted and limited: ``frame`` holds ``user_id``,
    ``purchase_probability`` and ``group`` (target or holdout); ``lines`` are the CSV's
    lines (``columns`` and the group), formatted and quoted by DuckDB."""

    frame: pd.DataFrame
    columns: list[str]
    lines: list[str]


def known_names(con: duckdb.DuckDBPyConnection) -> dict[str, Names]:
    """What a filter's names can be: the catalog's categories (every level of their paths)
    and brands for ``interest()``, ``top_category`` and ``top_brand``; the model's cohorts
    for ``in_cohort()``; the segments and price bands. A name outside these matches nobody,
    so a filter naming one is refused (a typo would otherwise pull an empty cohort)."""
    categories: set[str] = set()
    brands: set[str] = set()
    for category, brand in con.execute("select distinct category, brand from main.dim_items").fetchall():
        categories.update(category_levels(category) if category else [])
        brands.update([brand] if brand else [])
    interests = categories | brands
    interests.update(
        r[0] for r in con.execute("select distinct value from main.user_interests where value is not null").fetchall()
    )
    return {
        "interest": Names("category or brand", frozenset(interests)),
        "top_category": Names("category", frozenset(categories)),
        "top_brand": Names("brand", frozenset(brands)),
        "in_cohort": Names("model cohort", frozenset(PREDICTIVE_COHORTS)),
        "segment": Names("segment", frozenset(SEGMENTS)),
        "price_band": Names("price band", frozenset({"budget", "mid", "premium"})),
    }


def select(
    con: duckdb.DuckDBPyConnection,
    cohort: Cohort,
    described: list[tuple[Any, ...]],
    names: dict[str, Names] | None = None,
) -> Pull:
    """The cohort's users (see :class:`Pull`).

    ``described`` is DuckDB's ``describe`` of the cohort view (taken once per run); the view
    itself is the temporary table :func:`prepare_view` made; ``names`` from
    :func:`known_names`."""
    definition = cohort.definition
    types = column_types(described)
    everything = {row[0]: row[1] for row in described}
    try:
        compiled = compile_filter(definition.where, types, cohort.bindings, names)
        order = compile_sort(definition.sort, types)
    except FilterError as exc:
        raise CohortError(f"{cohort.origin}: cohort '{cohort.name}': {exc}") from None
    columns = definition.columns or DEFAULT_COLUMNS
    unknown = [c for c in columns if c not in everything]
    if unknown:
        raise CohortError(
            f"{cohort.origin}: cohort '{cohort.name}': unknown column(s) {', '.join(unknown)}; "
            f"known columns: {', '.join(sorted(everything))}"
        )
    limit = f"limit {int(definition.limit)}" if definition.limit else ""
    n = len(compiled.params)
    # The default columns' line was formatted once per user by prepare_view.
    line = f'"{DEFAULT_LINE}"' if columns == DEFAULT_COLUMNS else _line_sql(columns, everything)
    line += " || ',' || \"group\""
    table = query_table(
        con,
        f"""
        with chosen as (
            select *,
                case when ${n + 2} > 0
                     and ('0x' || left(md5(${n + 1} || chr(31) || user_id), 8))::bigint / 4294967296.0 < ${n + 2}
                     then 'holdout' else 'target' end as "group"
            from {VIEW_TABLE} where {compiled.sql}
        )
        select user_id, purchase_probability::double as purchase_probability, "group", {line} as line
        from chosen order by {order} {limit}
        """,
        [*compiled.params, cohort.name, float(definition.holdout)],
    )
    frame = table.select(["user_id", "purchase_probability", "group"]).to_pandas()
    return Pull(frame, columns, table.column("line").to_pylist())


# --- CSV formatting --------------------------------------------------------------------


def _headers(config: Config) -> dict[str, str]:
    w = config.windows
    return {
        "user_id": "User ID",
        "segment": "Segment",
        "purchase_probability": f"Purchase probability ({w.purchase_days} days)",
        "purchase_percentile": "Purchase percentile",
        "churn_probability": f"Churn probability ({w.churn_days} days)",
        "churn_percentile": "Churn percentile",
        "predicted_revenue": f"Predicted revenue ({w.value_days} days)",
        "value_percentile": "Value percentile",
        "recency_days": "Days since last visit",
        "days_since_last_order": "Days since last order",
        "orders_lifetime": "Orders (lifetime)",
        "revenue_lifetime": "Revenue (lifetime)",
        "orders_90d": "Orders (90 days)",
        "revenue_90d": "Revenue (90 days)",
        "sessions_90d": "Sessions (90 days)",
        "sessions_30d": "Sessions (30 days)",
        "avg_order_value": "Average order value",
        "top_interests": "Top interests",
        "recommended_items": "Recommended items",
        "first_seen_at": "First seen (UTC)",
        "last_seen_at": "Last seen (UTC)",
        "as_of": "As of (UTC)",
        "is_identified": "Logged in",
        "group": "Group",
    }


PERCENT_COLUMNS = {"purchase_probability", "churn_probability"}


def _cell_sql(column: str, duck_type: str) -> str:
    """SQL for one CSV field of ``column``: missing values are empty; probabilities
    are percentages with one decimal; percentiles whole numbers; yes/no; times to the
    second; amounts (and any fraction) two decimals; lists joined with '; '; top interests
    as 'label (strength)'; the first five recommended items as 'title (id)'.

    Text and lists are quoted where they need it (:func:`_quoted`). Numbers, yes/no and
    times never hold a comma, a quote or a line break, so they are not searched for one
    (the search was most of a cohort's query: 3.5 -> 1.9 s for the 11 shipped cohorts at
    10M events)."""
    ref = f'"{column}"'
    upper = duck_type.upper()
    if column in ("top_interests", "recommended_items"):
        return _quoted(f'"{TEXT_PREFIX}{column}"')
    if upper.endswith("]") or upper.startswith(("MAP", "STRUCT")):
        text = f"array_to_string({ref}, '; ')" if upper.endswith("]") else f"{ref}::varchar"
        return _quoted(f"coalesce({text}, '')")
    if upper == "BOOLEAN":
        text = f"case when {ref} then 'yes' else 'no' end"
    elif upper.startswith(("TIMESTAMP", "DATE")):
        text = f"strftime({ref}::timestamp, '%Y-%m-%d %H:%M:%S')"
    elif upper.startswith(("DOUBLE", "FLOAT", "REAL", "DECIMAL", "NUMERIC")) or upper in INTEGER_TYPES:
        number = f"{ref}::double"
        if column in PERCENT_COLUMNS:
            text = f"printf('%.1f%%', 100 * {number})"
        elif column.endswith("percentile"):
            text = f"printf('%.0f', {number})"
        elif upper in INTEGER_TYPES:
            text = f"{ref}::varchar"
        elif column.endswith(("revenue", "value")):
            text = f"printf('%.2f', {number})"
        else:
            text = (
                f"case when {number} = trunc({number}) then printf('%.0f', {number}) else printf('%.2f', {number}) end"
            )
        text = f"case when isnan({number}) then null else {text} end"
    else:
        return _quoted(f"coalesce({ref}::varchar, '')")
    return f"coalesce({text}, '')"  # numbers, yes/no and times: nothing to quote


def _line_sql(columns: list[str], types: dict[str, str]) -> str:
    """SQL for a CSV line of ``columns`` (DuckDB types by name, VARCHAR when unknown)."""
    return " || ',' || ".join(_cell_sql(c, types.get(c, "VARCHAR")) for c in columns)


def _quoted(text: str) -> str:
    """A CSV field as Python's ``csv`` module writes it: quoted (quotes doubled) when it
    holds a comma, a quote or a line break."""
    return rf"""(case when regexp_matches({text}, '[,"\r\n]') then '"' || replace({text}, '"', '""') || '"' else {text} end)"""


INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"}
TEXT_PREFIX = "__text_"
VIEW_TABLE = "_cohort_view"
DEFAULT_LINE = f"{TEXT_PREFIX}default_line"


def prepare_view(con: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """Materialise the cohort view once per run as a temporary table, with the two list
    columns already formatted for the CSVs, and return the view's ``describe`` (without
    the formatted columns, which no filter may name)."""
    described = con.execute(f"describe ({VIEW_SQL})").fetchall()
    line = _default_line(described) or "null"
    con.execute(
        f"""
        create or replace temp table {VIEW_TABLE} as
        select *, {line} as "{DEFAULT_LINE}" from (
        with recommended as (
            select user_id, unnest(recommended_items[1:5]).item_id as item_id,
                generate_subscripts(recommended_items[1:5], 1) as position
            from main.user_insights
        ),
        titled as (
            select r.user_id,
                string_agg(coalesce(d.title, r.item_id) || ' (' || r.item_id || ')', '; ' order by r.position) as text
            from recommended as r
            left join (select item_id, any_value(title) as title from main.dim_items group by item_id) as d
                using (item_id)
            group by r.user_id
        )
        select v.*,
            coalesce(array_to_string(list_transform(v.top_interests, lambda x:
                case when x.dimension in ('category', 'subcategory') then x.value
                     else x.dimension || ': ' || x.value end
                || ' (' || printf('%.2f', x.strength) || ')'), '; '), '') as "{TEXT_PREFIX}top_interests",
            coalesce(t.text, '') as "{TEXT_PREFIX}recommended_items"
        from ({VIEW_SQL}) as v
        left join titled as t using (user_id)
        )
        """
    )
    return described


def _default_line(described: list[tuple[Any, ...]]) -> str | None:
    """SQL for a CSV line of the default columns (without the group), or None when the view
    lacks one of them. Most cohorts show those columns, and a user is in two of the shipped
    cohorts on average: each line is formatted once per run, not once per cohort."""
    types = {row[0]: row[1] for row in described}
    if any(c not in types for c in DEFAULT_COLUMNS):
        return None
    return _line_sql(DEFAULT_COLUMNS, types)


def write_csv(path: Path, pull: Pull, config: Config) -> None:
    """A spreadsheet-ready CSV: human headers, stable column order, UTF-8, written atomically."""
    columns = [*pull.columns, "group"]
    headers = _headers(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([headers.get(c, c.replace("_", " ").capitalize()) for c in columns])
        fh.writelines(line + "\r\n" for line in pull.lines)
    os.replace(tmp, path)


def summarize(frame: pd.DataFrame, name: str, baseline: float, description: str = "") -> dict[str, Any]:
    target = frame[frame["group"] == "target"]
    mean = float(target["purchase_probability"].mean()) if len(target) else float("nan")
    return {
        "cohort": name,
        "description": description,
        "users": len(frame),
        "target": len(target),
        "holdout": int((frame["group"] == "holdout").sum()),
        "mean_purchase_probability": round(mean, 4) if len(target) else None,
        "expected_conversions": round(float(target["purchase_probability"].sum()), 1),
        "lift": round(mean / baseline, 2) if len(target) and baseline > 0 else None,
    }


def _named(cohorts: list[Cohort], name: str) -> Cohort:
    """The cohort called ``name`` (case aside), or an error with the closest names."""
    by_lower = {c.name.lower(): c for c in cohorts}
    found = next((c for c in cohorts if c.name == name), None) or by_lower.get(name.lower())
    if found is None:
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
        hint = f" (did you mean {', '.join(repr(by_lower[c].name) for c in close)}?)" if close else ""
        raise CohortError(f"unknown cohort {name!r}{hint}; known: {', '.join(c.name for c in cohorts)}")
    return found


def run_cohorts(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | None = None,
    names: list[str] | None = None,
    where: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Write one CSV per cohort (or one ad-hoc pull for ``where``) and a summary CSV.

    Returns the summary rows, the files written, and the summary and membership frames
    (for the datastore)."""
    scored, _ = scored_as_of(con, None, "cohort")
    categories = [
        r[0]
        for r in con.execute(
            "select distinct category_l1 from main.dim_items where category_l1 is not null order by 1"
        ).fetchall()
    ]
    if where is not None:
        cohorts = [Cohort(CohortDefinition(name="Ad hoc", where=where), "--where", window_bindings(config))]
    else:
        cohorts = load_cohorts(config, categories)
        if names:
            cohorts = [_named(cohorts, n) for n in names]
    as_of_value = as_of or scored
    baseline = con.execute("select avg(purchase_probability) from main.user_insights").fetchone()[0] or 0.0
    folder = Path(out_dir or config.resolve(config.cohorts.out_dir))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        what = "a file, not a folder" if folder.is_file() else exc.strerror or str(exc)
        raise CohortError(f"cannot write the cohort CSVs to {folder}: {what}") from None
    described = prepare_view(con)
    vocabulary = known_names(con)
    summaries, files, members = [], [], []
    used: set[str] = set()
    try:
        for cohort in cohorts:
            pull = select(con, cohort, described, vocabulary)
            frame = pull.frame
            name = slug(cohort.name)
            while name in used:
                name += "_"
            used.add(name)
            path = folder / f"{name}.csv"
            write_csv(path, pull, config)
            files.append(str(path))
            summaries.append(
                {**summarize(frame, cohort.name, baseline, cohort.definition.description), "file": str(path)}
            )
            members.append(
                pd.DataFrame(
                    {
                        "cohort": cohort.name,
                        "user_id": frame["user_id"],
                        "rank": range(1, len(frame) + 1),
                        "group": frame["group"],
                        "purchase_probability": frame["purchase_probability"],
                    }
                )
            )
    finally:
        con.execute(f"drop table if exists {VIEW_TABLE}")
    summary = pd.DataFrame(summaries).drop(columns=["file"], errors="ignore")
    summary.insert(0, "as_of", pd.Timestamp(as_of_value))
    summary_file = None
    if summaries and where is None and not names:
        # Only a run of every cohort rewrites summary.csv; ad-hoc and partial pulls leave it.
        tmp = folder / ".summary.csv.tmp"
        summary.to_csv(tmp, index=False, float_format="%.4g")
        summary_file = str(folder / "summary.csv")
        os.replace(tmp, summary_file)
    membership = pd.concat(members, ignore_index=True) if members else pd.DataFrame()
    return {
        "as_of": str(as_of_value),
        "cohorts": summaries,
        "files": files,
        "summary_file": summary_file,
        "summary": summary,
        "membership": membership,
    }


def forget(config: Config, ids: list[str], dry_run: bool = False) -> dict[str, int]:
    """Remove the rows of ``ids`` from the cohort CSVs in ``cohorts.out_dir`` (by their User ID
    column); returns files changed and rows removed. ``summary.csv`` holds counts only."""
    wanted = set(ids)
    header = _headers(config)["user_id"]
    changed = removed = 0
    folder = Path(config.resolve(config.cohorts.out_dir))
    for path in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        if not rows or header not in rows[0]:
            continue
        column = rows[0].index(header)
        kept = [rows[0]] + [r for r in rows[1:] if len(r) <= column or r[column] not in wanted]
        if len(kept) == len(rows):
            continue
        changed += 1
        removed += len(rows) - len(kept)
        if not dry_run:
            text = io.StringIO(newline="")
            csv.writer(text).writerows(kept)
            replace_text(path, text.getvalue())
    return {"files": changed, "rows": removed}
