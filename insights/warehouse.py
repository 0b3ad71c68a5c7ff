"""The DuckDB warehouse: one file, one writer at a time, readers open it read-only.

Schemas: ``raw`` holds what ingestion loaded (the canonical ``raw.events`` that dbt reads,
the typed Snowplow atomic rows, Singer records and the catalog); ``ingest`` holds the
bookkeeping (file manifest, per-load counts, quarantine, validation results); ``privacy``
the people forgotten (see :mod:`insights.privacy`).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from insights.config import Config
from insights.storage import swap_in

log = logging.getLogger(__name__)

CANONICAL_EVENT_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "event_type": "VARCHAR",
    "event_name": "VARCHAR",
    "occurred_at": "TIMESTAMP",
    "user_id": "VARCHAR",
    "anonymous_id": "VARCHAR",
    "session_id": "VARCHAR",
    "item_id": "VARCHAR",
    "quantity": "DOUBLE",
    "price": "DOUBLE",
    "revenue": "DOUBLE",
    "currency": "VARCHAR",
    "order_id": "VARCHAR",
    "search_query": "VARCHAR",
    "page_url": "VARCHAR",
    "referrer": "VARCHAR",
    "source": "VARCHAR",
}

# Columns beyond the contract that the web models need (Snowplow's page view id, heartbeat
# offsets, collector time for de-duplication, bot flags, campaign fields). Null for
# sources that do not carry them.
EXTRA_EVENT_COLUMNS: dict[str, str] = {
    "app_id": "VARCHAR",
    "platform": "VARCHAR",
    "collector_tstamp": "TIMESTAMP",
    "dvce_created_tstamp": "TIMESTAMP",
    "page_view_id": "VARCHAR",
    "session_index": "INTEGER",
    "page_title": "VARCHAR",
    "page_urlhost": "VARCHAR",
    "page_urlpath": "VARCHAR",
    "refr_medium": "VARCHAR",
    "refr_source": "VARCHAR",
    "mkt_medium": "VARCHAR",
    "mkt_source": "VARCHAR",
    "mkt_campaign": "VARCHAR",
    "useragent": "VARCHAR",
    "device_class": "VARCHAR",
    "user_ipaddress": "VARCHAR",
    "network_userid": "VARCHAR",
    "is_flagged_bot": "BOOLEAN",
    "pp_yoffset_max": "INTEGER",
    "doc_height": "INTEGER",
    "br_viewheight": "INTEGER",
    "source_kind": "VARCHAR",
    "source_file": "VARCHAR",
    "source_line": "BIGINT",
    "load_id": "VARCHAR",
    "loaded_at": "TIMESTAMP",
    # DuckDB's 64-bit hash of event_id, for de-duplicating a batch against the warehouse
    # without reading every stored event_id (see insights.ingest.loader.ensure_event_keys).
    "event_key": "UBIGINT",
}

EVENT_COLUMNS = {**CANONICAL_EVENT_COLUMNS, **EXTRA_EVENT_COLUMNS}

CATALOG_COLUMNS: dict[str, str] = {
    "item_id": "VARCHAR",
    "title": "VARCHAR",
    "description": "VARCHAR",
    "category": "VARCHAR",
    "brand": "VARCHAR",
    "price": "DOUBLE",
    "currency": "VARCHAR",
    "in_stock": "BOOLEAN",
    "created_at": "TIMESTAMP",
}


def _columns_sql(columns: dict[str, str], uncompressed: tuple[str, ...] = ()) -> str:
    return ", ".join(
        f"{name} {kind}{' using compression uncompressed' if name in uncompressed else ''}"
        for name, kind in columns.items()
    )


# Stored without compression: a distinct random id a row gains little from DuckDB's string
# compression (DICT_FSST: UUIDs in about half the space) and costs on every batch written
# (0.23 -> 0.04 CPU-s per 244k Snowplow lines; 7.0 -> 1.2 CPU-s for 10M events, 170 MB
# more). Only a new warehouse gets it: a column's compression is fixed when its table is
# made. The dbt models do the same (macros/storage.sql).
UNCOMPRESSED_EVENT_COLUMNS = ("event_id",)


DDL = f"""
create schema if not exists raw;
create schema if not exists ingest;
create table if not exists raw.events ({_columns_sql(EVENT_COLUMNS, UNCOMPRESSED_EVENT_COLUMNS)});
-- Warehouses made before event_key existed get it (filled by the next ingest).
alter table raw.events add column if not exists event_key ubigint;
create table if not exists ingest.settings (name varchar primary key, value varchar);
create table if not exists raw.catalog_items (
    {_columns_sql(CATALOG_COLUMNS)},
    source_name varchar, source_file varchar, source_line bigint,
    load_id varchar, loaded_at timestamp
);
create table if not exists raw.singer_records (
    source_name varchar, stream varchar, record json, time_extracted timestamp,
    source_file varchar, source_line bigint, load_id varchar, loaded_at timestamp
);
create table if not exists raw.singer_schemas (
    source_name varchar, stream varchar, schema json, key_properties json,
    source_file varchar, source_line bigint, load_id varchar, loaded_at timestamp
);
create table if not exists raw.singer_state (
    source_name varchar, state json, source_file varchar, source_line bigint,
    load_id varchar, loaded_at timestamp
);
create table if not exists ingest.load_manifest (
    source_name varchar, path varchar, size bigint, mtime double, checksum varchar,
    rows_loaded bigint, load_id varchar, loaded_at timestamp,
    primary key (source_name, path)
);
create table if not exists ingest.loads (
    load_id varchar primary key, source_name varchar, source_kind varchar, files integer,
    lines_read bigint, loaded bigint, duplicates bigint, quarantined bigint,
    control_messages bigint, replaced bigint, status varchar, message varchar,
    started_at timestamp, finished_at timestamp
);
create table if not exists ingest.quarantine (
    load_id varchar, source_name varchar, source_file varchar, line_number bigint,
    raw_text varchar, reason varchar, quarantined_at timestamp
);
-- Warehouses made before forgotten counts existed get the column.
alter table ingest.loads add column if not exists forgotten bigint default 0;
-- People forgotten (insights.privacy): ingestion never loads their ids again.
create schema if not exists privacy;
create table if not exists privacy.forgotten (
    id varchar primary key, kind varchar, person varchar, request_id varchar, recorded_at timestamp
);
-- Users Segment was sent, to be deleted there (exports.segment.request_deletions): pending
-- until Segment accepted a regulation for them (regulate_id).
create table if not exists privacy.segment_deletions (
    user_id varchar primary key, request_id varchar, recorded_at timestamp, regulate_id varchar,
    regulated_at timestamp, attempts integer, last_error varchar
);
-- Segment's overallStatus of each user's regulation, as last asked.
alter table privacy.segment_deletions add column if not exists regulation_status varchar;
alter table privacy.segment_deletions add column if not exists status_checked_at timestamp;
-- Earlier regulations of the user that ended FAILED or PARTIAL_SUCCESS (asked for again since).
alter table privacy.segment_deletions add column if not exists failed_regulations varchar;
create table if not exists privacy.requests (
    request_id varchar primary key, requested_at timestamp, ids_given integer, users integer,
    cookies integer, warehouse_rows bigint, finished_at timestamp
);
create table if not exists ingest.validation_results (
    load_id varchar, source_name varchar, expectation varchar, column_name varchar,
    severity varchar, success boolean, unexpected_count bigint, element_count bigint,
    details varchar, validated_at timestamp
);
"""


def warehouse_file(config: Config) -> Path:
    """The warehouse file, which must exist: only ingestion makes one, any other step on a
    missing one says to ingest first."""
    path = Path(config.resolve(config.warehouse.path))
    if not path.exists():
        raise FileNotFoundError(f"warehouse not found: {path} (run `insights ingest` first)")
    return path


def connect(config: Config, read_only: bool = False, create: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse file; the writer also makes sure the schemas exist. Only ``create``
    (ingestion) makes a new file (see :func:`warehouse_file`)."""
    path = Path(config.resolve(config.warehouse.path)) if create else warehouse_file(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(
        str(path),
        read_only=read_only,
        config={"threads": config.warehouse.threads, "memory_limit": config.warehouse.memory_limit},
    )
    # Timestamps are stored as naive UTC; casts from offset-bearing text convert to UTC.
    con.execute("set TimeZone = 'UTC'")
    if not read_only:
        con.execute(DDL)
    return con


def compact(config: Config) -> dict[str, Any]:
    """Rewrite the warehouse file with only its live rows (call it holding the warehouse lock).

    DuckDB marks deleted rows and reuses their space later; until then their bytes stay in
    the file (a forgotten person's session ids and IP addresses could be read back from it
    with ``strings``). The whole database is copied into a new file next to it (``COPY FROM
    DATABASE``: schemas, tables, views, macros, sequences), every table's row count is
    checked against the original, and the new file replaces the old one in one rename. A
    crash before the rename leaves the old file as it was (and a stray copy the next
    compaction removes); a process that has the old file open keeps reading it."""
    path = warehouse_file(config)
    fresh = path.with_name(f".{path.name}.compact")
    for leftover in (fresh, fresh.with_name(fresh.name + ".wal")):
        leftover.unlink(missing_ok=True)
    started = time.perf_counter()
    before = path.stat().st_size
    con = connect(config)
    try:
        con.execute("checkpoint")
        (name,) = con.execute("select current_database()").fetchone()
        counts = _row_counts(con, name)
        con.execute("attach ? as insights_compact", [str(fresh)])
        try:
            con.execute(f'copy from database "{name}" to insights_compact')
            copied = _row_counts(con, "insights_compact")
            con.execute("checkpoint insights_compact")
        finally:
            con.execute("detach insights_compact")
    finally:
        con.close()
    if copied != counts:
        differ = sorted(t for t in counts.keys() | copied.keys() if counts.get(t) != copied.get(t))
        fresh.unlink(missing_ok=True)
        raise RuntimeError(
            f"compaction copied different row counts for {', '.join(differ[:5])}; warehouse left as it was"
        )
    swap_in(fresh, path)
    return {
        "bytes_before": before,
        "bytes_after": path.stat().st_size,
        "tables": len(counts),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _row_counts(con: duckdb.DuckDBPyConnection, catalog: str) -> dict[str, int]:
    tables = con.execute(
        "select table_schema, table_name from information_schema.tables where table_catalog = ? "
        "and table_type = 'BASE TABLE' order by all",
        [catalog],
    ).fetchall()
    return {
        f"{schema}.{table}": con.execute(f'select count(*) from "{catalog}"."{schema}"."{table}"').fetchone()[0]
        for schema, table in tables
    }


def query_table(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None) -> Any:
    """A query's result as an Arrow table, through ``con.sql``: Arrow from an
    ``execute()`` result copies every row (and DuckDB 2.0 warns that it does)."""
    con.complete()  # a result left open by an earlier execute() would refuse con.sql()
    return con.sql(sql, params=params).to_arrow_table()


def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Any = None, categorical: tuple[str, ...] = ()) -> Any:
    """A query's result as a pandas frame, through Arrow.

    ``.df()`` builds one Python object per string value, which pandas then converts back
    into an Arrow-backed column: about 1.5 s for 2.3M rows of three strings, against 0.3 s
    through Arrow, for an equal frame. Decimals become floats, as ``.df()`` makes them.
    The ``categorical`` columns are dictionary-encoded on the way: pandas categoricals, for
    columns of few distinct values that are copied often."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = query_table(con, sql, params)
    for i, column in enumerate(table.schema):
        if pa.types.is_decimal(column.type):
            table = table.set_column(i, column.name, table.column(i).cast(pa.float64()))
        elif column.name in categorical:
            table = table.set_column(i, column.name, pc.dictionary_encode(table.column(i)))
    return table.to_pandas()


def has_table(con: duckdb.DuckDBPyConnection, schema: str, name: str) -> bool:
    return bool(
        con.execute(
            "select count(*) from information_schema.tables where table_schema = ? and table_name = ?", [schema, name]
        ).fetchall()[0][0]
    )


def require_table(con: duckdb.DuckDBPyConnection, table: str, remedy: str) -> None:
    """Stop with what to run when ``table`` (``schema.name``) is not in the warehouse yet."""
    if not has_table(con, *table.split(".")):
        raise RuntimeError(f"{table} does not exist yet: {remedy}")


def scored_as_of(con: duckdb.DuckDBPyConnection, as_of: datetime | None, step: str) -> tuple[datetime, list[str]]:
    """The as-of instant ``main.user_insights`` was scored at, and its model versions; what
    delivers or reports the scores refuses another instant than the scored one."""
    require_table(con, "main.user_insights", f"run insights score before {step}")
    scored, versions = con.execute(
        "select max(as_of), list(distinct model_version order by model_version) from main.user_insights"
    ).fetchone()
    if scored is None:
        raise RuntimeError(f"main.user_insights is empty: nothing to {step}")
    if as_of is not None and as_of != scored:
        raise RuntimeError(f"user_insights was scored as of {scored}, not {as_of}: run insights score --as-of first")
    return scored, list(versions or [])


def insert_rows(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple[Any, ...]], verb: str = "insert") -> None:
    """Append many rows at once, in the table's column order. DuckDB runs ``executemany``
    as one statement per row (seconds per ten thousand rows); one Arrow relation is one."""
    if not rows:
        return
    import pyarrow as pa

    frame = pa.table({f"c{i}": _arrow_column(column) for i, column in enumerate(zip(*rows))})
    name = f"_rows_{uuid.uuid4().hex}"
    con.register(name, frame)
    try:
        con.execute(f"{verb} into {table} select * from {name}")
    finally:
        con.unregister(name)


def _arrow_column(values: tuple[Any, ...]) -> Any:
    """One column for Arrow. Naive datetimes get their type up front: inferring it costs
    about 10 us a value (2 s for the 190k rows of a Segment sync log)."""
    import pyarrow as pa

    first = next((v for v in values if v is not None), None)
    if isinstance(first, datetime) and first.tzinfo is None:
        return pa.array(values, type=pa.timestamp("us"))
    return pa.array(values)


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """All or nothing: a crash or an error inside leaves the warehouse as it was."""
    con.execute("begin transaction")
    try:
        yield con
    except BaseException:
        con.execute("rollback")
        raise
    con.execute("commit")


class WarehouseBusy(RuntimeError):
    """Another step held the warehouse for longer than ``warehouse.lock_timeout_seconds``."""


# Held locks of this process, by lock file: steps nest (``insights run`` holds the lock while
# a step takes it again), and a second flock on the same file from the same process would
# wait for itself.
_held: dict[str, list] = {}
_held_guard = threading.Lock()


def lock_path(config: Config) -> Path:
    return Path(config.resolve(config.warehouse.path) + ".lock")


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    return f"step '{info.get('step', '?')}' (pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')})"


@contextmanager
def exclusive(config: Config, step: str, poll_seconds: float = 0.5) -> Iterator[None]:
    """Hold the warehouse for one writing step. DuckDB allows one writer per file; steps take
    this lock so that a cron job, a CLI run and Airflow tasks of different DAGs queue up
    instead of failing on DuckDB's own lock. Waits up to ``warehouse.lock_timeout_seconds``."""
    path = lock_path(config)
    key = str(path)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held for the whole step
    deadline = time.monotonic() + config.warehouse.lock_timeout_seconds
    announced = False
    while True:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(path)
                handle.close()
                raise WarehouseBusy(
                    f"{step}: the warehouse {config.resolve(config.warehouse.path)} is still being written by "
                    f"{holder} after {config.warehouse.lock_timeout_seconds:g}s (warehouse.lock_timeout_seconds)"
                ) from None
            if not announced:
                log.warning("%s: waiting for the warehouse, held by %s", step, _holder(path))
                announced = True
            time.sleep(poll_seconds)
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps(
            {
                "step": step,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    handle.flush()
    entry = [handle, 1]
    with _held_guard:
        _held[key] = entry
    try:
        yield
    finally:
        with _held_guard:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                handle.close()
