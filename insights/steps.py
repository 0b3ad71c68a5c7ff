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
