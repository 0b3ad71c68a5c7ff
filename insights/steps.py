"""The pipeline's steps as plain functions: the CLI and the Airflow tasks call these."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from insights.config import Config
from insights.ingest import LoadResult, run_ingest
from insights.warehouse import connect

log = logging.getLogger(__name__)


def parse_as_of(value: str | datetime | None) -> datetime:
    """The as-of instant as naive UTC; a date means its midnight UTC. Default: now."""
    if value is None:
        return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    if isinstance(value, datetime):
        moment = value
    else:
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"--as-of: '{value}' is not an ISO date or timestamp (e.g. 2026-11-01 or 2026-11-01T06:00:00Z)"
            ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def ingest(config: Config, sources: list[str] | None = None) -> dict[str, Any]:
    """Load new and changed input files into the warehouse; returns per-load counts."""
    con = connect(config)
    try:
        results: list[LoadResult] = run_ingest(con, config, sources)
        events = con.execute("select count(*) from raw.events").fetchone()[0]
        quarantined = con.execute("select count(*) from ingest.quarantine").fetchone()[0]
    finally:
        con.close()
    return {
        "loads": [asdict(r) for r in results],
        "totals": {
            key: sum(getattr(r, key) for r in results)
            for key in ("files", "lines_read", "loaded", "duplicates", "quarantined", "control_messages", "replaced")
        },
        "warehouse_events": events,
        "warehouse_quarantined": quarantined,
    }


def transform(config: Config, as_of: datetime, full_refresh: bool = False) -> dict[str, Any]:
    """dbt build of the warehouse models as of ``as_of``; returns per-model rows and timings."""
    from insights.transform import run_dbt

    result = run_dbt(config, as_of, "build", full_refresh=full_refresh)
    con = connect(config, read_only=True)
    try:
        rows = {
            name: con.execute(f"select count(*) from main.{name}").fetchone()[0]
            for (name,) in con.execute(
                "select table_name from information_schema.tables where table_schema = 'main' order by 1"
            ).fetchall()
        }
    finally:
        con.close()
    return {
        "as_of": result.as_of,
        "models": [asdict(n) for n in result.models],
        "tests": {"passed": sum(n.status == "pass" for n in result.tests), "total": len(result.tests)},
        "rows": rows,
    }


def train(config: Config, as_of: datetime) -> dict[str, Any]:
    """Fit and version every model as of ``as_of``; publish unless worse than the last."""
    from models_ml.pipeline import train as train_models

    return train_models(config, as_of)


def score(config: Config, as_of: datetime) -> dict[str, Any]:
    """Score every user with the published models; writes user_insights and the
    recommendation, similar-item and trending tables."""
    from models_ml.pipeline import score as score_users
    from models_ml.pipeline import score_summary

    return score_summary(score_users(config, as_of))


def evaluate(config: Config, as_of: datetime | None = None) -> dict[str, Any]:
    """Backtest at a past instant against baselines (default: the latest instant whose
    purchase window is complete)."""
    from models_ml.pipeline import evaluate as backtest

    return backtest(config, as_of)
