"""What the Airflow tasks in ``dags/`` call: the step functions, with the as-of instant taken
from the DAG run and the credentials taken from Airflow connections.

The DAG files stay thin (one call per task) and importable without doing work; everything
that needs the Airflow runtime is imported inside the functions, so this module also serves
the DAG-integrity tests and the CLI's users without Airflow running.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from insights.config import Config, load_config

log = logging.getLogger(__name__)

# The Asset that clickstream_ingest updates when new events landed and insights_refresh
# can be scheduled on.
CLICKSTREAM_ASSET_URI = "insights://warehouse/raw.events"


def dag_settings(config: Config) -> dict[str, Any]:
    """The arguments every DAG shares: start date, no catchup, one run at a time, retries
    with exponential backoff, a task timeout, and tags."""
    import pendulum

    settings = config.airflow
    default_args: dict[str, Any] = {
        "owner": "user-insights",
        "retries": settings.retries,
        "retry_delay": timedelta(minutes=settings.retry_delay_minutes),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=settings.max_retry_delay_minutes),
        "execution_timeout": timedelta(minutes=settings.task_timeout_minutes),
    }
    if settings.pool:
        default_args["pool"] = settings.pool
    return {
        "start_date": pendulum.parse(settings.start_date, tz="UTC"),
        "catchup": False,
        "max_active_runs": 1,
        "default_args": default_args,
        "tags": ["user-insights"],
    }


def clickstream_asset() -> Any:
    from airflow.sdk import Asset

    return Asset(CLICKSTREAM_ASSET_URI, extra={"table": "raw.events"})


def ingest_schedule(config: Config) -> Any:
    return config.airflow.ingest_schedule


def refresh_schedule(config: Config) -> Any:
    """The clock, the Asset, or either (whichever comes first), as configured."""
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    settings = config.airflow
    clock = CronTriggerTimetable(settings.refresh_schedule, timezone="UTC") if settings.refresh_schedule else None
    if settings.refresh_on_new_data and clock is not None:
        return AssetOrTimeSchedule(timetable=clock, assets=[clickstream_asset()])
    if settings.refresh_on_new_data:
        return [clickstream_asset()]
    return clock


def training_schedule(config: Config) -> Any:
    from airflow.sdk import CronTriggerTimetable

    cron = config.airflow.training_schedule
    return CronTriggerTimetable(cron, timezone="UTC") if cron else None


def _naive_utc(moment: Any) -> datetime:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return datetime(value.year, value.month, value.day, value.hour, value.minute, value.second)


def as_of_from_context(context: Mapping[str, Any]) -> datetime:
    """The as-of instant of a DAG run, the same on every retry and re-run of that run: the end
    of its data interval; for a run started by new data, the end of the interval of the
    ingest run that loaded it; for a manual run without a logical date, when it was due."""
    end = context.get("data_interval_end")
    if end is not None:
        return _naive_utc(end)
    stamps = []
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            stamp = (getattr(event, "extra", None) or {}).get("as_of")
            if stamp:
                stamps.append(_naive_utc(stamp))
    if stamps:
        return max(stamps)
    if context.get("logical_date") is not None:
        return _naive_utc(context["logical_date"])
    run = context.get("dag_run")
    if run is not None and getattr(run, "run_after", None) is not None:
        return _naive_utc(run.run_after)
    raise ValueError("the DAG run has no data interval, logical date or run_after to take the as-of instant from")


def _connection(conn_id: str) -> Any:
    from airflow.sdk import Connection

    return Connection.get(conn_id)


@contextmanager
def connection_credentials(config: Config) -> Iterator[Config]:
    """Credentials from the configured Airflow connections, for the duration of one task:
    the S3 keys as the variables boto3 reads, the Segment write key as
    ``segment.write_key_env`` and its extra's ``api_token`` (the Public API's, for deletions)
    as ``segment.api_token_env``; an endpoint, API URL or region in a connection's extra
    overrides the config. Nothing is written to the config file or logged."""
    settings = config.airflow
    values: dict[str, str] = {}
    s3_update: dict[str, Any] = {}
    segment_update: dict[str, Any] = {}
    if settings.aws_conn_id:
        conn = _connection(settings.aws_conn_id)
        extra = conn.extra_dejson or {}
        if conn.login:
            values["AWS_ACCESS_KEY_ID"] = conn.login
        if conn.password:
            values["AWS_SECRET_ACCESS_KEY"] = conn.password
        if extra.get("aws_session_token"):
            values["AWS_SESSION_TOKEN"] = extra["aws_session_token"]
        endpoint = extra.get("endpoint_url") or (extra.get("service_config", {}).get("s3", {}).get("endpoint_url"))
        if endpoint:
            s3_update["endpoint_url"] = endpoint
        if extra.get("region_name"):
            s3_update["region"] = extra["region_name"]
    if settings.segment_conn_id:
        conn = _connection(settings.segment_conn_id)
        if not conn.password:
            raise ValueError(
                f"Airflow connection '{settings.segment_conn_id}' (airflow.segment_conn_id) has no password: "
                "put the Segment write key there"
            )
        values[config.segment.write_key_env] = conn.password
        extra = conn.extra_dejson or {}
        if extra.get("endpoint"):
            segment_update["endpoint"] = extra["endpoint"]
        # The Public API (deletion requests) has its own token: Airflow masks "token" keys.
        if extra.get("api_token"):
            values[config.segment.api_token_env] = extra["api_token"]
        if extra.get("api_url"):
            segment_update["api_url"] = extra["api_url"]
    resolved = config
    if s3_update or segment_update:
        resolved = config.model_copy(
            update={
                "s3": config.s3.model_copy(update=s3_update),
                "segment": config.segment.model_copy(update=segment_update),
            }
        )
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield resolved
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _jsonable(summary: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(summary, default=str))


def run_step(step: str, context: Mapping[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run one step function for a DAG run: config from ``INSIGHTS_CONFIG`` (or ./insights.yml),
    the as-of instant from the run, credentials from connections. Returns the step's summary
    (JSON, for XCom and the run report)."""
    from insights import steps

    context = _current(context)
    config = load_config()
    run_id = _run_id(context)
    started = time.perf_counter()
    as_of = as_of_from_context(context)
    log.info("%s as of %s (run %s)", step, as_of, run_id)
    with connection_credentials(config) as config:
        trained = None
        if step == "score" and kwargs.get("train_if_missing") and steps.published_model(config) is None:
            log.info("no published model yet: training one as of %s first", as_of)
            trained = steps.train(config, as_of)
        summary = steps.run_step(step, config, as_of, run_id, kwargs.get("steps_summary"))
        if step == "score":
            summary["trained_first"] = trained
    summary["elapsed_seconds"] = round(time.perf_counter() - started, 2)
    log.info("%s: %s", step, steps.headline(step, summary))
    return _jsonable(summary)


def forget(context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``insights_forget`` DAG's task: the ids from the run's ``ids`` parameter (none:
    only ask Segment again for the deletions still pending), ``compact`` to rewrite the
    warehouse file afterwards (see :func:`insights.warehouse.compact`); the result counts what was
    removed where and names no id (XCom and the logs keep it). The task fails when Segment's
    deletion is left pending (after everything else is done): a retry asks again."""
    from insights import steps
    from insights.privacy import deletion_left, read_ids

    context = _current(context)
    params = context.get("params") or {}
    given = list(params.get("ids") or [])
    compact = bool(params.get("compact"))
    config = load_config()
    started = time.perf_counter()
    with connection_credentials(config) as config:
        if given:
            summary = steps.forget(config, read_ids(given), compact=compact)
            summary["unknown"] = len(summary["unknown"])
            deletion = summary["segment"]
            log.info("forget: %s", steps.headline("forget", summary))
        else:
            deletion = summary = steps.segment_pending(config)
            log.info("forget: no ids; Segment asked to delete %d pending users", summary["requested"])
            if compact:
                summary["compaction"] = steps.compact(config)
    summary["elapsed_seconds"] = round(time.perf_counter() - started, 2)
    left = deletion_left(deletion)
    if left:
        raise RuntimeError(left)
    return _jsonable(summary)


def _current(context: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The given task context, or the running task's."""
    if context is not None:
        return context
    from airflow.sdk import get_current_context

    return get_current_context()


def _run_id(context: Mapping[str, Any]) -> str:
    """A datastore-safe id of the DAG run (its run id without characters paths dislike)."""
    run = context.get("dag_run")
    raw = getattr(run, "run_id", None) or context.get("run_id") or "airflow"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in str(raw))[:80]


def announce_new_data(summary: Mapping[str, Any], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Mark the clickstream Asset as updated when the ingest run loaded events or catalog
    items (new items get recommended from their text); otherwise skip, so that no refresh
    is started for nothing."""
    from airflow.sdk.exceptions import AirflowSkipException

    context = _current(context)
    totals = summary.get("totals", {})
    items = int(totals.get("catalog_items", 0))
    loaded = int(totals.get("loaded", 0)) - items
    if loaded == 0 and items == 0:
        raise AirflowSkipException("no new events or catalog items: the clickstream asset is not updated")
    end = context.get("data_interval_end") or context.get("logical_date")
    extra = {
        "events_loaded": loaded,
        "catalog_items_loaded": items,
        "as_of": _naive_utc(end).isoformat() if end is not None else None,
    }
    context["outlet_events"][clickstream_asset()].extra = extra
    return extra
