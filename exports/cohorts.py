"""Cohort reports for marketers: YAML definitions, safe filters, spreadsheet-ready CSVs.

Each cohort is a filter over ``user_insights`` (see ``exports.filters``), a sort, a limit,
columns and an optional holdout share. Holdout assignment is the first 8 hex digits of
md5(cohort name, user id) as a fraction: stable across runs, machines and DuckDB versions.
"""

from __future__ import annotations

import csv
import logging
import math
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

from exports.filters import FilterError, column_types, compile_filter, compile_sort
from insights.config import CohortDefinition, Config

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

# The cohort view: user_insights plus percentiles a filter can use.
VIEW_SQL = """
    select *,
        round(100 * cume_dist() over (order by predicted_revenue), 2) as value_percentile,
        round(100 * cume_dist() over (order by churn_probability), 2) as churn_percentile
    from main.user_insights
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


def select(con: duckdb.DuckDBPyConnection, cohort: Cohort, described: list[tuple[Any, ...]]) -> pd.DataFrame:
    """The cohort's users, sorted and limited, with a ``group`` column (target or holdout).

    ``described`` is DuckDB's ``describe`` of the cohort view (taken once per run)."""
    definition = cohort.definition
    types = column_types(described)
    everything = [row[0] for row in described]
    try:
        compiled = compile_filter(definition.where, types, cohort.bindings)
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
    frame = con.execute(
        f"""
        select {", ".join(f'"{c}"' for c in dict.fromkeys(["user_id", "purchase_probability", *columns]))},
            case when ${n + 2} > 0
                 and ('0x' || left(md5(${n + 1} || chr(31) || user_id), 8))::bigint / 4294967296.0 < ${n + 2}
                 then 'holdout' else 'target' end as "group"
        from ({VIEW_SQL}) where {compiled.sql}
        order by {order} {limit}
        """,
        [*compiled.params, cohort.name, float(definition.holdout)],
    ).df()
    frame.attrs["columns"] = columns
    return frame


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


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT


def _cell(column: str, value: Any, titles: dict[str, str]) -> str:
    if column == "top_interests":
        parts = []
        for item in value if value is not None else []:
            category = item["dimension"] in ("category", "subcategory")
            label = item["value"] if category else f"{item['dimension']}: {item['value']}"
            parts.append(f"{label} ({item['strength']:.2f})")
        return "; ".join(parts)
    if column == "recommended_items":
        items = value if value is not None else []
        return "; ".join(f"{titles.get(i['item_id'], i['item_id'])} ({i['item_id']})" for i in items[:5])
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, list):
        return "; ".join(str(v) for v in value)
    if _missing(value):
        return ""
    if column in PERCENT_COLUMNS:
        return f"{100 * float(value):.1f}%"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime | pd.Timestamp):
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    if column.endswith("percentile"):
        return f"{float(value):.0f}"
    if isinstance(value, float):
        return f"{value:.2f}" if not value.is_integer() or column.endswith(("revenue", "value")) else f"{value:.0f}"
    return str(value)


def write_csv(path: Path, frame: pd.DataFrame, config: Config, titles: dict[str, str]) -> None:
    """A spreadsheet-ready CSV: human headers, stable column order, UTF-8, written atomically."""
    columns = [*frame.attrs.get("columns", DEFAULT_COLUMNS), "group"]
    headers = _headers(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([headers.get(c, c.replace("_", " ").capitalize()) for c in columns])
        for row in frame[columns].itertuples(index=False, name=None):
            writer.writerow([_cell(c, v, titles) for c, v in zip(columns, row)])
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
            known = {c.name: c for c in cohorts}
            missing = [n for n in names if n not in known]
            if missing:
                raise CohortError(f"unknown cohort(s) {', '.join(missing)}; known: {', '.join(known)}")
            cohorts = [known[n] for n in names]
    as_of_value = as_of or con.execute("select max(as_of) from main.user_insights").fetchone()[0]
    baseline = con.execute("select avg(purchase_probability) from main.user_insights").fetchone()[0] or 0.0
    titles = dict(con.execute("select item_id, title from main.dim_items").fetchall())
    folder = Path(out_dir or config.resolve(config.cohorts.out_dir))
    described = con.execute(f"describe ({VIEW_SQL})").fetchall()
    summaries, files, members = [], [], []
    used: set[str] = set()
    for cohort in cohorts:
        frame = select(con, cohort, described)
        name = slug(cohort.name)
        while name in used:
            name += "_"
        used.add(name)
        path = folder / f"{name}.csv"
        write_csv(path, frame, config, titles)
        files.append(str(path))
        summaries.append({**summarize(frame, cohort.name, baseline, cohort.definition.description), "file": str(path)})
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
    summary = pd.DataFrame(summaries).drop(columns=["file"], errors="ignore")
    summary.insert(0, "as_of", pd.Timestamp(as_of_value))
    if summaries and where is None and not names:
        # Only a run of every cohort rewrites summary.csv; ad-hoc and partial pulls leave it.
        tmp = folder / ".summary.csv.tmp"
        summary.to_csv(tmp, index=False, float_format="%.4g")
        os.replace(tmp, folder / "summary.csv")
    membership = pd.concat(members, ignore_index=True) if members else pd.DataFrame()
    return {
        "as_of": str(as_of_value),
        "cohorts": summaries,
        "files": files,
        "summary": summary,
        "membership": membership,
    }
