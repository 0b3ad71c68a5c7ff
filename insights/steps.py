"""The pipeline's steps as plain functions: the CLI and the Airflow tasks call these."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from insights import faults
from insights.config import Config
from insights.timing import gc_paused, timed
from insights.warehouse import connect, exclusive, scored_as_of, warehouse_file

if TYPE_CHECKING:
    from insights.ingest import LoadResult

log = logging.getLogger(__name__)

Step = TypeVar("Step", bound=Callable[..., dict[str, Any]])


def holds_warehouse(step: Step) -> Step:
    """The step holds the warehouse lock while it runs: DuckDB allows one writer per file and
    no reader beside another process's writer, so the CLI, cron jobs and the Airflow tasks
    of different DAGs queue up instead of failing."""

    @functools.wraps(step)
    def locked(config: Config, *args: Any, **kwargs: Any) -> dict[str, Any]:
        with exclusive(config, step.__name__):
            return step(config, *args, **kwargs)

    return locked  # type: ignore[return-value]


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


@holds_warehouse
def ingest(config: Config, sources: list[str] | None = None) -> dict[str, Any]:
    """Load new and changed input files into the warehouse; returns per-load counts."""
    # Imported here: the parsers' libraries (pandas, polars, Great Expectations' setup) cost
    # the other steps, the Airflow DAG files among them, about a second to import.
    from insights.ingest import run_ingest
    from insights.privacy import expire

    con = connect(config, create=True)
    try:
        results: list[LoadResult] = run_ingest(con, config, sources)
        # Storage limitation: what is older than privacy.retention_days goes, loaded now or before.
        expired = expire(config, con, datetime.now(UTC))
        events = con.execute("select count(*) from raw.events").fetchone()[0]
        quarantined = con.execute("select count(*) from ingest.quarantine").fetchone()[0]
        files = con.execute("select count(*) from ingest.load_manifest").fetchone()[0]
    finally:
        con.close()
    return ingest_summary(results) | {
        "expired": expired,
        "warehouse_events": events,
        "warehouse_quarantined": quarantined,
        "warehouse_files": files,
    }


def ingest_summary(results: list[LoadResult]) -> dict[str, Any]:
    """Per-load counts and their totals; ``loaded`` counts catalog rows too, and
    ``catalog_items`` says how many of them there were."""
    return {
        "loads": [asdict(r) for r in results],
        "totals": {
            key: sum(getattr(r, key) for r in results)
            for key in (
                "files",
                "lines_read",
                "loaded",
                "duplicates",
                "quarantined",
                "control_messages",
                "replaced",
                "forgotten",
            )
        }
        | {"catalog_items": sum(r.loaded for r in results if r.source_kind == "catalog")},
    }


@holds_warehouse
def transform(config: Config, as_of: datetime, full_refresh: bool = False) -> dict[str, Any]:
    """dbt build of the warehouse models as of ``as_of``; returns per-model rows and timings."""
    from insights.transform import run_dbt

    warehouse_file(config)  # a missing warehouse: ingest first (dbt would make an empty one)
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


@holds_warehouse
def train(config: Config, as_of: datetime) -> dict[str, Any]:
    """Fit and version every model as of ``as_of``; publish unless worse than the last."""
    from models_ml.pipeline import train as train_models

    return train_models(config, as_of)


@holds_warehouse
def score(config: Config, as_of: datetime) -> dict[str, Any]:
    """Score every user with the published models; writes user_insights and the
    recommendation, similar-item and trending tables."""
    from models_ml.pipeline import score as score_users
    from models_ml.pipeline import score_summary

    return score_summary(score_users(config, as_of))


@holds_warehouse
def evaluate(config: Config, as_of: datetime | None = None) -> dict[str, Any]:
    """Backtest at a past instant against baselines (default: the latest instant whose
    purchase window is complete)."""
    from models_ml.pipeline import evaluate as backtest

    return backtest(config, as_of)


@holds_warehouse
def export(config: Config, as_of: datetime | None = None, run_id: str | None = None) -> dict[str, Any]:
    """Deliver the scored insights: cohort CSVs then the datastore partition and, beside
    them, the Segment trait sync then the real-time recommendation table.

    The two pairs share nothing but the scored tables they read (and the Segment sync's
    state, which only it writes), so the second runs on a helper thread with a cursor of its
    own: the cohorts and the partition are mostly DuckDB's work, which releases the GIL, and
    the sync's messages and the table's rows mostly Python's (`insights export` at 10M
    events, back to back: 15.3-15.6 -> 11.7-12.3 s, with 0.35-0.45 GB more at its peak). A
    failure on either side is raised after both ended; the table is swapped in only when
    complete.
    """
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    con = connect(config)
    try:
        as_of, versions = scored_as_of(con, as_of, "export")
        run_id = run_id or f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        timings: dict[str, float] = {}
        cursor = con.cursor()
        try:
            # The sync's messages and log rows and the table's rows are hundreds of thousands
            # of small objects, none in cycles: the cycle collector walking them all, over and
            # over, was 1.5-2 CPU-s of the sync at 10M events.
            with gc_paused(), ThreadPoolExecutor(1) as helper:
                aside = helper.submit(_sync_and_serve, config, cursor, as_of, run_id, timings)
                # Leaving this block waits for the helper, whether or not the rest failed.
                published = _cohorts_and_datastore(config, con, as_of, run_id, versions, timings)
            delivered = {**published, **aside.result()}  # cohorts, datastore, segment, serving
        finally:
            cursor.close()
    finally:
        con.close()
    return {
        "as_of": str(as_of),
        "run_id": run_id,
        **delivered,
        "seconds": {part: timings[part] for part in delivered if part in timings},
    }


def _cohorts_and_datastore(
    config: Config, con: Any, as_of: datetime, run_id: str, versions: list[str], timings: dict[str, float]
) -> dict[str, Any]:
    """The cohort CSVs, then the datastore partition (which holds the cohorts), of :func:`export`."""
    import pandas as pd

    from exports.cohorts import run_cohorts
    from exports.datastore import TableData, publish

    with timed(timings, "cohorts"):
        cohorts = run_cohorts(config, con, as_of)

    faults.reached("export.cohorts")
    membership = cohorts.pop("membership")
    if not membership.empty:
        membership.insert(0, "as_of", pd.Timestamp(as_of))
    summary = cohorts.pop("summary")
    tables = [
        TableData("user_insights"),
        TableData("recommendations"),
        TableData("item_similar"),
        TableData("trending"),
        TableData("user_interests"),
        TableData("cohorts", frame=membership),
        TableData("cohort_summary", frame=summary),
        TableData(
            "model_metrics",
            sql="select model_version, trained_at, as_of, data_start, data_end, status, reason, "
            "params::varchar as params, metrics::varchar as metrics from ml.model_versions",
        ),
    ]
    with timed(timings, "datastore"):
        datastore = publish(config, con, tables, as_of, run_id, {"model_version": ",".join(versions)})
    return {"cohorts": cohorts, "datastore": datastore}


def _sync_and_serve(
    config: Config, con: Any, as_of: datetime, run_id: str, timings: dict[str, float]
) -> dict[str, Any]:
    """The Segment sync, then the recommendation table, of :func:`export`."""
    from exports.segment import sync
    from exports.serving import publish_table

    with timed(timings, "segment"):
        segment = sync(config, con, as_of, run_id)
    with timed(timings, "serving"):
        serving = publish_table(config, con, run_id)
    return {"segment": segment, "serving": serving}


@holds_warehouse
def forget(config: Config, ids: list[str], dry_run: bool = False, compact: bool = False) -> dict[str, Any]:
    """Remove people (user or cookie ids) from the warehouse and every output, and keep
    ingestion from loading them again (see :mod:`insights.privacy`); ``compact`` then
    rewrites the warehouse file without the bytes of the removed rows."""
    from insights.privacy import forget as forget_people
    from insights.warehouse import compact as compact_file

    con = connect(config, read_only=dry_run)
    try:
        summary = forget_people(config, con, ids, dry_run=dry_run)
    finally:
        con.close()
    if compact and not dry_run:
        summary["compaction"] = compact_file(config)
    return summary


@holds_warehouse
def compact(config: Config) -> dict[str, Any]:
    """Rewrite the warehouse file with only its live rows (see :func:`insights.warehouse.compact`)."""
    from insights.warehouse import compact as compact_file

    return compact_file(config)


@holds_warehouse
def segment_pending(config: Config) -> dict[str, Any]:
    """Ask Segment again to delete the forgotten users it has not accepted a deletion of;
    returns what a forget's summary says of Segment (see :func:`insights.privacy.deletion_left`)."""
    from exports.segment import request_deletions

    con = connect(config)
    try:
        return {"delete_on_forget": True, **request_deletions(config, con)}
    finally:
        con.close()


@holds_warehouse
def person(config: Config, ids: list[str], out: str) -> dict[str, Any]:
    """Write everything the warehouse holds about people (user or cookie ids) to the JSON
    file ``out`` (a subject access request); returns the rows per table."""
    import json
    from pathlib import Path

    from insights.privacy import collect
    from insights.storage import replace_text

    con = connect(config, read_only=True)
    try:
        found = collect(con, ids)
    finally:
        con.close()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_text(path, json.dumps(found, indent=2, default=str, ensure_ascii=False))
    return {
        "path": str(path),
        "users": len(found["users"]),
        "cookies": len(found["cookies"]),
        "unknown": found["unknown"],
        "rows": {table: len(rows) for table, rows in found["tables"].items()},
        "erasure": found["erasure"],
    }


@holds_warehouse
def published_model(config: Config) -> str | None:
    """The version of the published model scoring uses, or None before the first training."""
    from pathlib import Path

    from models_ml import registry

    if not Path(config.resolve(config.warehouse.path)).exists():
        return None
    con = connect(config, read_only=True)
    try:
        found = registry.published(con)
    finally:
        con.close()
    return found["model_version"] if found else None


@holds_warehouse
def report(
    config: Config,
    as_of: datetime | None = None,
    run_id: str | None = None,
    steps_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The HTML run report of the scored insights, written locally and to the datastore.
    Reads the warehouse only."""
    from exports.report import write_report

    con = connect(config, read_only=True)
    try:
        return write_report(config, con, as_of, run_id, steps_summary)
    finally:
        con.close()


def run_step(
    step: str,
    config: Config,
    as_of: datetime,
    run_id: str | None = None,
    steps_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One step by name, as ``insights run``, the Airflow tasks and the benchmarks call it
    (ingestion loads whatever is new; the other steps work as of ``as_of``)."""
    calls: dict[str, Callable[[], dict[str, Any]]] = {
        "ingest": lambda: ingest(config),
        "transform": lambda: transform(config, as_of),
        "train": lambda: train(config, as_of),
        "score": lambda: score(config, as_of),
        "export": lambda: export(config, as_of, run_id=run_id),
        "report": lambda: report(config, as_of, run_id=run_id, steps_summary=steps_summary),
    }
    if step not in calls:
        raise ValueError(f"unknown step '{step}'; steps: {', '.join(calls)}")
    return calls[step]()


def headline(step: str, summary: dict[str, Any]) -> str:
    """One line of what a step produced, for ``insights run``, the DAG logs and the run report."""
    if step == "ingest":
        t = summary["totals"]
        expired = (summary.get("expired") or {}).get("removed", {}).get("raw.events")
        aged = f"; {expired:,} events past privacy.retention_days removed" if expired else ""
        if not t["files"]:
            # (Not the warehouse's event rows: a multi-product purchase line is several.)
            known = summary.get("warehouse_files")
            return "nothing new to load" + (f" ({known:,} files loaded before)" if known is not None else "") + aged
        items = t.get("catalog_items", 0)
        loaded = f"{t['loaded'] - items:,} events" + (f" and {items:,} catalog items" if items else "")
        forgotten = f", {t['forgotten']:,} of forgotten people" if t.get("forgotten") else ""
        return (
            f"{loaded} loaded from {t['files']:,} files, {t['duplicates']:,} duplicates, "
            f"{t['quarantined']:,} quarantined{forgotten}{aged}"
        )
    if step == "transform":
        rows, tests = summary["rows"], summary["tests"]
        return (
            f"{rows.get('fct_sessions', 0):,} sessions, {rows.get('dim_users', 0):,} users, "
            f"dbt tests {tests['passed']}/{tests['total']}"
        )
    if step == "train":
        warned = "".join(f"; warning: {w}" for w in summary.get("warning_headlines", []))
        return f"model {summary['model_version']} {summary['status']}{warned}"
    if step == "score":
        trained = summary.get("trained_first")
        first = f"trained {trained['model_version']} first; " if trained else ""
        warned = "".join(f"; warning: {w}" for w in summary.get("warning_headlines", []))
        return f"{first}{summary['users']:,} users scored, {summary['recommendations']:,} recommendations{warned}"
    if step == "export":
        seg = summary["segment"]
        if not seg.get("enabled", True):
            synced = "Segment off"
        elif seg.get("dry_run"):
            synced = f"Segment dry run {seg['would_send']:,}"
        else:
            synced = f"Segment sent {seg['sent']:,}, failed {seg['failed']:,}"
        return (
            f"{len(summary['cohorts']['cohorts'])} cohorts, datastore dt={summary['datastore']['dt']}, {synced}, "
            f"{summary['serving']['users']:,} users in the recommendation table"
        )
    if step == "report":
        return f"run report {summary['path']}"
    if step == "forget":
        unknown = summary["unknown"] if isinstance(summary["unknown"], int) else len(summary["unknown"])
        segment = summary["segment"]
        if not segment["profiles"]:
            in_segment = ""
        elif not segment["delete_on_forget"]:
            in_segment = f"; Segment holds {segment['profiles']:,} of their profiles: delete them there too"
        else:
            asked = segment.get("requested", 0)
            in_segment = f"; Segment asked to delete {asked:,} user{'' if asked == 1 else 's'}" + (
                f", {segment['left']:,} pending" if segment.get("left") else ""
            )
        return (
            f"{summary['users']:,} users and {summary['cookies']:,} cookie ids forgotten"
            + (f" ({unknown:,} ids found nowhere, recorded)" if unknown else "")
            + f": {sum(summary['warehouse'].values()):,} warehouse rows, "
            f"{sum(summary['outputs']['datastore'].values()):,} datastore rows"
            + in_segment
            + (
                f"; warehouse file compacted ({summary['compaction']['bytes_before'] / 1e6:,.1f} MB -> "
                f"{summary['compaction']['bytes_after'] / 1e6:,.1f} MB)"
                if summary.get("compaction")
                else ""
            )
        )
    return ""
