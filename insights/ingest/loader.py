"""Incremental, idempotent loading of every configured source into the warehouse.

For each source: list its files, skip those the load manifest already holds with the same
size and modification time (or the same checksum), and load the rest in batches. One
batch is one transaction: parse, quarantine bad lines, de-duplicate on ``event_id`` within
the batch and against the warehouse (the earliest collector time wins, as Snowplow
defines it), validate with Great Expectations, insert, and record the files in the
manifest. A crash or a failed validation leaves the warehouse as it was before the batch.

Counts reconcile per load: ``lines_read = loaded + duplicates + quarantined +
control_messages + forgotten`` (control messages are Singer's SCHEMA and STATE messages;
forgotten lines belong to people removed by ``insights forget``, see
:mod:`insights.privacy`, and are never loaded).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pyarrow as pa

from insights import faults, privacy
from insights.config import (
    CatalogSource,
    Config,
    EventsFileSource,
    SingerSource,
    SnowplowAtomicSource,
    SnowplowEnrichedSource,
)
from insights.ingest import mapped, snowplow
from insights.ingest.textio import quote_ident, quote_literal, read_table_file, split_lines
from insights.ingest.validate import validate_events, validation_frame, warm_up
from insights.storage import FileRef, checksum, decompress, list_files, read_bytes
from insights.timing import gc_paused
from insights.warehouse import CATALOG_COLUMNS, EVENT_COLUMNS, insert_rows, transaction

log = logging.getLogger(__name__)


class IngestError(Exception):
    """A load that had to stop; the message names the source, the files and the cause."""


@dataclass
class LoadResult:
    load_id: str
    source_name: str
    source_kind: str
    files: int = 0
    lines_read: int = 0
    loaded: int = 0
    duplicates: int = 0
    quarantined: int = 0
    control_messages: int = 0
    replaced: int = 0
    forgotten: int = 0
    status: str = "ok"
    message: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def reconciles(self) -> bool:
        return self.lines_read == (
            self.loaded + self.duplicates + self.quarantined + self.control_messages + self.forgotten
        )


@dataclass
class PendingFile:
    ref: FileRef
    data: bytes
    checksum: str
    replaces: bool


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _new_load_id(source_name: str) -> str:
    return f"{_now():%Y%m%dT%H%M%S}-{source_name}-{uuid.uuid4().hex[:8]}"


def pending_files(con: duckdb.DuckDBPyConnection, source: Any, config: Config) -> list[FileRef]:
    """The files of a source that are new or changed since their last load."""
    known = {
        row[0]: row[1:]
        for row in con.execute(
            "select path, size, mtime, checksum from ingest.load_manifest where source_name = ?",
            [source.name],
        ).fetchall()
    }
    todo: list[FileRef] = []
    for ref in list_files(source.path, source.pattern, config):
        seen = known.get(ref.path)
        if seen and seen[0] == ref.size and seen[1] == ref.mtime:
            continue
        todo.append(ref)
    return todo


def _read(ref: FileRef, known: dict[str, str], config: Config) -> PendingFile | None:
    data = read_bytes(ref, config)
    digest = checksum(data)
    if known.get(ref.path) == digest:
        return None
    return PendingFile(ref, data, digest, ref.path in known)


def file_batches(refs: list[FileRef], limit: int) -> list[list[FileRef]]:
    """The files in order, cut into batches of whole files whose stored bytes fit ``limit``
    (a larger file is a batch of its own)."""
    batches: list[list[FileRef]] = []
    current: list[FileRef] = []
    size = 0
    for ref in refs:
        if current and size + ref.size > limit:
            batches.append(current)
            current, size = [], 0
        current.append(ref)
        size += ref.size
    if current:
        batches.append(current)
    return batches


@dataclass
class _Batch:
    """One batch's files, read and parsed without touching the warehouse (so the next
    batch is prepared while this one loads)."""

    files: list[PendingFile]
    unchanged: list[FileRef]
    parsed: Any = None
    # A Snowplow batch once staged: the scratch table of its rows and the lines read (its
    # parsed fields are let go then).
    staged: str | None = None
    lines: int = 0
    error: Exception | None = None  # raised again inside the load, which records it


def ingest_source(con: duckdb.DuckDBPyConnection, source: Any, config: Config) -> list[LoadResult]:
    """Load what is new in one source; returns one result per batch (none if up to date).

    The next ``ingest.batches_ahead`` batches are read, decompressed, parsed and (Snowplow)
    staged on helper threads while one is de-duplicated, validated and inserted (all of it
    releases the GIL), so that many batches and one more are in memory at a time.
    """
    refs = pending_files(con, source, config)
    if refs and config.validation.enabled and not isinstance(source, CatalogSource):
        warm_up()
    if refs and not isinstance(source, CatalogSource):
        ensure_event_keys(con)
    known = dict(
        con.execute("select path, checksum from ingest.load_manifest where source_name = ?", [source.name]).fetchall()
    )

    # Snowplow batches are staged by the helper threads into tables of an in-memory
    # database of the same DuckDB (each on a cursor of its own), where the load reads them.
    con.execute(f"attach if not exists ':memory:' as {SCRATCH}")

    def prepare(batch_refs: list[FileRef], pool: ThreadPoolExecutor, cursor: duckdb.DuckDBPyConnection) -> _Batch:
        try:
            pending = list(pool.map(lambda r: _read(r, known, config), batch_refs))
            batch = _Batch([p for p in pending if p], [r for r, p in zip(batch_refs, pending) if p is None])
            if batch.files:
                try:
                    batch.parsed = _parse_files(source, batch.files, pool, cursor)
                    if isinstance(source, (SnowplowEnrichedSource, SnowplowAtomicSource)):
                        batch.staged, batch.lines = _stage_snowplow(source, batch.parsed, cursor)
                        batch.parsed = None
                except (ValueError, duckdb.Error) as exc:
                    batch.error = exc
            return batch
        finally:
            cursor.close()

    results = []
    unchanged: list[FileRef] = []
    batches = file_batches(refs, config.ingest.batch_bytes)
    depth = config.ingest.batches_ahead
    with ThreadPoolExecutor(config.ingest.parse_threads) as pool, ThreadPoolExecutor(depth) as ahead:
        upcoming = deque(ahead.submit(prepare, b, pool, con.cursor()) for b in batches[:depth])
        try:
            for i in range(len(batches)):
                batch = upcoming.popleft().result()
                if i + depth < len(batches):
                    upcoming.append(ahead.submit(prepare, batches[i + depth], pool, con.cursor()))
                unchanged += batch.unchanged
                try:
                    if batch.files:
                        results.append(_load_batch(con, source, batch, config))
                        faults.reached("ingest.batch")
                finally:
                    _drop_staged(con, batch)
        finally:
            # After a failed load, the batches prepared ahead are not loaded: free them.
            for left in upcoming:
                if left.exception() is None:
                    _drop_staged(con, left.result())
    if unchanged:
        # Same content under a new modification time (a touch, a re-upload): remember the
        # new time so the file is not read again, and load nothing.
        con.executemany(
            "update ingest.load_manifest set size = ?, mtime = ? where source_name = ? and path = ?",
            [[r.size, r.mtime, source.name, r.path] for r in unchanged],
        )
    return results


# The stored event keys are DuckDB's hash of event_id. The hash of this text, stored beside
# them, tells whether this DuckDB hashes as the one that wrote them (a release could change
# the function); if not, every key is computed again.
_KEY_PROBE = "user-insights event key"


def ensure_event_keys(con: duckdb.DuckDBPyConnection) -> None:
    """Give every stored event its ``event_key`` (the events of a warehouse made before the
    column existed, rows written by other tools) and recompute all of them if this DuckDB
    hashes differently from the one that stored them. Three small queries when
    the keys are in place."""
    probe = str(con.execute("select hash(?)", [_KEY_PROBE]).fetchone()[0])
    stored = con.execute("select value from ingest.settings where name = 'event_key_hash'").fetchone()
    with transaction(con):
        if stored is None or stored[0] != probe:
            con.execute("update raw.events set event_key = hash(event_id)")
            con.execute("insert or replace into ingest.settings values ('event_key_hash', ?)", [probe])
        else:
            con.execute("update raw.events set event_key = hash(event_id) where event_key is null")


def _parse_files(
    source: Any, files: list[PendingFile], pool: ThreadPoolExecutor, cursor: duckdb.DuckDBPyConnection
) -> Any:
    """The batch's files parsed into what its load stages (no warehouse access here: the
    cursor's temporary tables only)."""
    if isinstance(source, SnowplowEnrichedSource):
        texts = zip((f.ref.path for f in files), pool.map(lambda f: decompress(f.data, f.ref.path), files))
        return snowplow.read_enriched(list(texts))
    if isinstance(source, (SnowplowAtomicSource, EventsFileSource)):
        tables = pool.map(lambda f: read_table_file(decompress(f.data, f.ref.path), f.ref.path), files)
        return pa.concat_tables(list(tables), promote_options="permissive")
    if isinstance(source, SingerSource):
        # A file's bare records belong to the stream its name starts with (as target-jsonl names them).
        texts = pool.map(lambda f: decompress(f.data, f.ref.path), files)
        named = [(f.ref.path, t, f.ref.path.rsplit("/", 1)[-1].split(".", 1)[0]) for f, t in zip(files, texts)]
        return mapped.read_singer(named, cursor)
    return _read_catalog(files, source.stream)


SCRATCH = "ingest_scratch"


def _drop_staged(con: duckdb.DuckDBPyConnection, batch: _Batch) -> None:
    if batch.staged is not None:
        con.execute(f"drop table if exists {batch.staged}")


def _stage_snowplow(source: Any, parsed: Any, cursor: duckdb.DuckDBPyConnection) -> tuple[str, int]:
    """A Snowplow batch's canonical rows (quarantined lines included, with their raw text)
    in a table of the scratch database. They need nothing from the warehouse, so a helper
    thread stages them beside the previous batch's load. Returns the table and lines read.
    """
    enriched = parsed if isinstance(parsed, snowplow.EnrichedRead) else None
    table, kind = (enriched.table, "enriched") if enriched else (parsed, "atomic")
    name = f"{SCRATCH}.stage_{uuid.uuid4().hex[:12]}"
    columns = [c for c in table.column_names if c not in mapped.META]
    sql = snowplow.canonical_sql("select * from batch_fields", kind, columns, source.name)
    # Offset-bearing text converts to UTC timestamps, as everywhere in the warehouse.
    cursor.execute("set TimeZone = 'UTC'")
    cursor.register("batch_fields", table)
    cursor.execute(f"create table {name} as {sql}")
    if enriched:
        # Parsed lines keep no raw text (it would double the batch in memory); the few
        # that fail a later check get theirs back from the file contents.
        missing = cursor.execute(
            f"select source_file, source_line from {name} where reason is not null and raw_text is null"
        ).fetchall()
        if missing:
            found = enriched.raw_lines(missing)
            cursor.register(
                "found_raw",
                pa.table(
                    {
                        "source_file": pa.array([k[0] for k in found], pa.string()),
                        "source_line": pa.array([k[1] for k in found], pa.int64()),
                        "raw_text": pa.array(list(found.values()), pa.string()),
                    }
                ),
            )
            cursor.execute(
                f"update {name} as s set raw_text = f.raw_text from found_raw f "
                "where s.source_file = f.source_file and s.source_line = f.source_line"
            )
    return name, table.num_rows


def _stage_events_file(
    source: EventsFileSource, table: pa.Table, con: duckdb.DuckDBPyConnection, warnings: list[str]
) -> tuple[str, int]:
    con.register("batch_rows", table)
    con.register("batch_event_types", mapped.event_types_table(source))
    columns = [c for c in table.column_names if c not in mapped.META]
    sql = mapped.mapped_sql(
        "batch_rows", columns, source, "batch_event_types", source.name, source.schema_drift, warnings
    )
    return sql, table.num_rows


@dataclass
class _SingerBatch:
    sql: str | None
    other_records: int
    control: int
    bad: list[tuple[str, int, str, str]]
    finish: Callable[[duckdb.DuckDBPyConnection, str, datetime], None]
    lines_read: int


def _stage_singer(
    source: SingerSource, parsed: mapped.SingerRead, con: duckdb.DuckDBPyConnection, warnings: list[str]
) -> _SingerBatch:
    sqls = []
    other = 0
    for stream in sorted(parsed.records):
        table = parsed.records[stream]
        mapping = source.streams.get(stream)
        if mapping is None:
            other += table.num_rows
            continue
        view = f"batch_stream_{len(sqls)}"
        con.register(view, table)
        con.register(f"{view}_types", mapped.event_types_table(mapping))
        columns = [c for c in table.column_names if c not in mapped.META]
        sqls.append(
            mapped.mapped_sql(view, columns, mapping, f"{view}_types", source.name, source.schema_drift, warnings)
        )

    def finish(c: duckdb.DuckDBPyConnection, load_id: str, now: datetime) -> None:
        if parsed.raw_records.num_rows:
            c.register("batch_singer_records", parsed.raw_records)
            try:
                c.execute(
                    "insert into raw.singer_records select ?, stream, record, time_extracted, source_file, "
                    "source_line, ?, ? from batch_singer_records",
                    [source.name, load_id, now],
                )
            finally:
                c.unregister("batch_singer_records")
        schemas = [(source.name, *s, load_id, now) for s in parsed.schemas]
        if schemas:
            insert_rows(c, "raw.singer_schemas", schemas)
        states = [(source.name, *s, load_id, now) for s in parsed.states]
        if states:
            insert_rows(c, "raw.singer_state", states)

    sql = " union all by name ".join(f"({s})" for s in sqls) if sqls else None
    control = len(parsed.schemas) + len(parsed.states)
    return _SingerBatch(sql, other, control, parsed.bad, finish, parsed.lines_read)


def _insert_quarantine(
    con: duckdb.DuckDBPyConnection, rows: list[tuple[str, int, str, str]], source_name: str, load_id: str, now: datetime
) -> None:
    insert_rows(
        con, "ingest.quarantine", [(load_id, source_name, f, n, raw, reason, now) for f, n, raw, reason in rows]
    )


def _forget_files(con: duckdb.DuckDBPyConnection, source_name: str, files: list[PendingFile], table: str) -> int:
    """Remove what earlier loads of changed files put in the warehouse; returns rows removed."""
    paths = [f.ref.path for f in files if f.replaces]
    if not paths:
        return 0
    con.register("replaced_paths", pa.table({"path": pa.array(paths, pa.string())}))
    removed = con.execute(
        f"delete from {table} where source_file in (select path from replaced_paths) "
        + ("and source = ?" if table == "raw.events" else "and source_name = ?"),
        [source_name],
    ).fetchone()[0]
    for extra in ("ingest.quarantine", "raw.singer_records", "raw.singer_schemas", "raw.singer_state"):
        con.execute(
            f"delete from {extra} where source_name = ? and source_file in (select path from replaced_paths)",
            [source_name],
        )
    return removed


def _drop_forgotten_quarantine(con: duckdb.DuckDBPyConnection, result: LoadResult, anyone_forgotten: bool) -> None:
    """Bad lines of this load that name a forgotten person count as forgotten, not kept."""
    if anyone_forgotten:
        dropped = con.execute(
            "delete from ingest.quarantine where "
            + privacy.mention_condition(
                "ingest.quarantine", "raw_text", privacy.FORGOTTEN, f"load_id = {quote_literal(result.load_id)}"
            ),
        ).fetchall()[0][0]
        result.quarantined -= dropped
        result.forgotten += dropped


def _record_files(
    con: duckdb.DuckDBPyConnection,
    source_name: str,
    files: list[PendingFile],
    load_id: str,
    now: datetime,
    per_file: dict[str, int],
) -> None:
    table = pa.table(
        {
            "source_name": pa.array([source_name] * len(files), pa.string()),
            "path": pa.array([f.ref.path for f in files], pa.string()),
            "size": pa.array([f.ref.size for f in files], pa.int64()),
            "mtime": pa.array([f.ref.mtime for f in files], pa.float64()),
            "checksum": pa.array([f.checksum for f in files], pa.string()),
            "rows_loaded": pa.array([per_file.get(f.ref.path, 0) for f in files], pa.int64()),
        }
    )
    con.register("batch_manifest", table)
    con.execute(
        "delete from ingest.load_manifest where source_name = ? and path in (select path from batch_manifest)",
        [source_name],
    )
    con.execute("insert into ingest.load_manifest select *, ?, ? from batch_manifest", [load_id, now])


def _record_load(con: duckdb.DuckDBPyConnection, result: LoadResult, started: datetime) -> None:
    con.execute(
        "insert or replace into ingest.loads values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            result.load_id,
            result.source_name,
            result.source_kind,
            result.files,
            result.lines_read,
            result.loaded,
            result.duplicates,
            result.quarantined,
            result.control_messages,
            result.replaced,
            result.status,
            result.message,
            started,
            _now(),
            result.forgotten,
        ],
    )


def _store_validation(
    con: duckdb.DuckDBPyConnection, report: Any, source_name: str, load_id: str, now: datetime
) -> None:
    con.executemany(
        "insert into ingest.validation_results values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                load_id,
                source_name,
                r.name,
                r.column,
                r.severity,
                r.success,
                r.unexpected_count,
                r.element_count,
                r.details,
                now,
            )
            for r in report.results
        ],
    )


# A source line, as the staged rows and the line tables name it.
LINE_KEY = "base_event_id, source_file, source_line"

EVENT_INSERT_COLUMNS = [c for c in EVENT_COLUMNS if c not in ("source_kind", "load_id", "loaded_at", "event_key")]


def _stage_rows(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """A batch staged by SQL on the warehouse connection, in a temp table; returns its name."""
    con.execute(f"create or replace temp table stage_rows as {sql}")
    return "stage_rows"


def _load_events(
    con: duckdb.DuckDBPyConnection,
    staged: str,
    source: Any,
    files: list[PendingFile],
    result: LoadResult,
    config: Config,
    now: datetime,
    extra_bad: list[tuple[str, int, str, str]],
    anyone_forgotten: bool,
) -> dict[str, int]:
    """De-duplicate, validate and insert one staged batch (``staged``: the table holding its
    rows); fills the counts of ``result``."""
    con.execute(f"create or replace temp view stage as select * from {staged}")
    result.replaced += _forget_files(con, source.name, files, "raw.events")
    con.execute(
        "insert into ingest.quarantine select ?, ?, source_file, source_line, raw_text, reason, ? "
        "from stage where reason is not null",
        [result.load_id, source.name, now],
    )
    _insert_quarantine(con, extra_bad, source.name, result.load_id, now)
    # One row per good source line: the line's first event carries the base id.
    con.execute(
        """
        create or replace temp table stage_lines as
        select base_event_id, hash(base_event_id) as event_key, source_file, source_line, dedup_ts from stage
        where reason is null and event_id = base_event_id
        """
    )
    # The good lines that do not load (duplicates, forgotten people, events already stored).
    con.execute(f"create or replace temp table losers as select {LINE_KEY} from stage_lines limit 0")
    if anyone_forgotten:
        # People removed by insights forget: their lines are counted, never loaded.
        present = {row[0] for row in con.execute("describe stage").fetchall()}
        condition = privacy.row_condition(present & {"user_id", "anonymous_id"}, privacy.FORGOTTEN)
        if condition:
            theirs = f"base_event_id in (select base_event_id from stage where reason is null and ({condition}))"
            con.execute(f"insert into losers select {LINE_KEY} from stage_lines where {theirs}")
            result.forgotten += con.execute(f"delete from stage_lines where {theirs}").fetchall()[0][0]
    # Copies within the batch: the earliest collected line wins. Only the lines of keys seen
    # more than once are ranked (a key can stand for two ids: the window goes by the id);
    # for 480k enriched lines, 0.56 -> 0.24 CPU-s against ranking every line.
    con.execute(
        f"""
        insert into losers select {LINE_KEY} from (
            select {LINE_KEY}, row_number() over (
                partition by base_event_id order by dedup_ts nulls last, source_file, source_line) as line_rank
            from stage_lines
            where event_key in (select event_key from stage_lines group by event_key having count(*) > 1)
        )
        where line_rank > 1
        """
    )
    con.execute(
        f"create or replace temp table winners as select * from stage_lines anti join losers using ({LINE_KEY})"
    )
    # Against the warehouse: an existing copy stays unless the new one was collected earlier.
    # The stored keys find the candidate rows (a scan of 8 bytes a row, not of every stored
    # event_id: 0.39 -> 0.09 s of CPU for 244k ids against 10M events), then their ids are
    # compared, as keys can collide. Fetched by rowid into a table of their own: joined in
    # one statement, DuckDB reads every event_id again.
    con.execute(
        "create or replace temp table existing_rows as "
        "select e.rowid as row_id from winners w join raw.events e on e.event_key = w.event_key"
    )
    con.execute(
        "create or replace temp table existing_events as select event_id, collector_tstamp, occurred_at "
        "from raw.events where rowid in (select row_id from existing_rows)"
    )
    con.execute(
        """
        create or replace temp table existing as
        select w.base_event_id,
               (w.dedup_ts is not null and coalesce(e.collector_tstamp, e.occurred_at) is not null
                and w.dedup_ts < coalesce(e.collector_tstamp, e.occurred_at)) as new_is_earlier
        from winners w join existing_events e on e.event_id = w.base_event_id
        """
    )
    earlier = con.execute("select count(*) from existing where new_is_earlier").fetchone()[0]
    superseded = (
        0
        if not earlier
        else con.execute(
            """
        delete from raw.events where event_id in (select base_event_id from existing where new_is_earlier)
           or (contains(event_id, '#') and split_part(event_id, '#', 1) in
               (select base_event_id from existing where new_is_earlier))
        """
        ).fetchone()[0]
    )
    if superseded:
        log.info("%s: %d events replaced by earlier-collected duplicates", source.name, superseded)
    stays = "base_event_id in (select base_event_id from existing where not new_is_earlier)"
    con.execute(f"insert into losers select {LINE_KEY} from winners where {stays}")
    con.execute(f"delete from winners where {stays}")
    # The winning lines that load; `fresh` is a view over them (copying the staged rows
    # once more cost as much as the insert). It is read three times (validation, insert,
    # rows per file), so it leaves out the few good lines that lose instead of matching
    # every line with a winner: an anti join with a small table, not a semi join with one
    # as large as the batch, on three keys (0.12 -> 0.03 CPU-s a read, 0.25 -> 0.09 s for
    # the validation frame, for 237k enriched lines).
    con.execute(
        f"create or replace temp view fresh as "
        f"select s.* from stage s anti join losers l using ({LINE_KEY}) where s.reason is null"
    )
    good_lines, quarantined, loaded_lines = con.execute(
        """
        select (select count(*) from stage_lines),
               (select count(*) from stage where reason is not null),
               (select count(*) from winners)
        """
    ).fetchone()
    result.quarantined += quarantined + len(extra_bad)
    _drop_forgotten_quarantine(con, result, anyone_forgotten)
    result.loaded += loaded_lines
    result.duplicates += good_lines - loaded_lines
    with ThreadPoolExecutor(1) as validator:
        validation = None
        if config.validation.enabled:
            # Great Expectations checks the batch on a helper thread while the insert runs
            # (it is Python and pandas; the insert is DuckDB's and releases the GIL). A
            # failed error-level check raises before the batch commits, which undoes it.
            frame = validation_frame(con, "fresh")
            validation = validator.submit(validate_events, frame, config.validation)
        present = {row[0] for row in con.execute("describe fresh").fetchall()}
        columns = ", ".join(EVENT_INSERT_COLUMNS)
        values = ", ".join(c if c in present else f"null::{EVENT_COLUMNS[c]}" for c in EVENT_INSERT_COLUMNS)
        con.execute(
            f"insert into raw.events ({columns}, source_kind, load_id, loaded_at, event_key) "
            f"select {values}, ?, ?, ?, hash(event_id) from fresh",
            [source.kind, result.load_id, now],
        )
        per_file = dict(con.execute("select source_file, count(*) from fresh group by all").fetchall())
        if validation is not None:
            report = validation.result()
            _store_validation(con, report, source.name, result.load_id, now)
            result.warnings += [f"{source.name}: {report.summary(report.warnings)}"] if report.warnings else []
            if report.errors:
                raise _ValidationFailed(report)
    return per_file


class _ValidationFailed(Exception):
    def __init__(self, report: Any) -> None:
        super().__init__(report.summary(report.errors))
        self.report = report


SINGER_CONTROL = ("SCHEMA", "STATE", "ACTIVATE_VERSION", "BATCH")


@dataclass
class _CatalogRead:
    """A catalog batch's rows, and how many Singer messages carried no item (SCHEMA, STATE,
    records of another stream than the source's ``stream``)."""

    tables: list[pa.Table] = field(default_factory=list)
    control: int = 0

    def table(self) -> pa.Table:
        """The rows of every file as one table (columns a file lacks are empty)."""
        if not self.tables:
            return mapped.TextRows().to_arrow()
        return pa.concat_tables(self.tables, promote_options="permissive")


def _singer_item(line: dict[str, Any], stream: str | None) -> tuple[bool, dict[str, Any] | None]:
    """Whether a JSON line is a Singer message, and the item a RECORD of ``stream`` (any
    stream when None) carries (None: a message without an item)."""
    kind = line.get("type")
    if kind == "RECORD" and isinstance(line.get("record"), dict) and isinstance(line.get("stream"), str):
        return True, line["record"] if stream is None or line["stream"] == stream else None
    if kind in SINGER_CONTROL and ("schema" in line or "value" in line or kind in ("ACTIVATE_VERSION", "BATCH")):
        return True, None
    return False, None


def _read_catalog(files: list[PendingFile], stream: str | None = None) -> _CatalogRead:
    """Catalog rows from CSV, Parquet or JSON lines; JSON lines may be Singer messages (a
    tap's products stream as target-jsonl writes it), whose RECORDs are the items."""
    with gc_paused():
        return _read_catalog_files(files, stream)


def _read_catalog_files(files: list[PendingFile], stream: str | None) -> _CatalogRead:
    read = _CatalogRead()
    for f in files:
        data = decompress(f.data, f.ref.path)
        if data[:4] == b"PAR1" or not f.ref.path.split(".gz")[0].endswith((".jsonl", ".json", ".ndjson")):
            read.tables.append(read_table_file(data, f.ref.path))
            continue
        rows = mapped.TextRows()
        for number, line in enumerate(split_lines(data.decode("utf-8", errors="replace")), start=1):
            try:
                record = json.loads(line)
                error = None if isinstance(record, dict) else "expected a JSON object"
            except json.JSONDecodeError as exc:
                record, error = {}, f"invalid JSON: {exc.msg} at column {exc.colno}"
            if not error:
                singer, item = _singer_item(record, stream)
                if singer and item is None:
                    read.control += 1
                    continue
                record = item if singer else record
            rows.add(mapped.flatten(record) if not error else {}, f.ref.path, number, line, error)
        read.tables.append(rows.to_arrow())
    return read


def _load_catalog(
    con: duckdb.DuckDBPyConnection,
    source: CatalogSource,
    files: list[PendingFile],
    read: _CatalogRead,
    result: LoadResult,
    now: datetime,
) -> dict[str, int]:
    table = read.table()
    con.register("batch_catalog", table)
    available = {c for c in table.column_names if c not in mapped.META}

    def col(name: str) -> str:
        src = source.columns.get(name, name)
        nested = None if src in available else mapped.nested_column(src, available)
        if src not in available and nested is None:
            if name in source.columns or name == "item_id":
                raise IngestError(
                    f"source '{source.name}': catalog column '{src}' (for {name}) not found; "
                    f"columns present: {', '.join(sorted(available)) or 'none'}"
                )
            return "null::varchar"
        return mapped.nested_raw(*nested, many=True) if nested else f"nullif(trim({quote_ident(src)}), '')"

    def each(name: str) -> bool:
        """A path through every element of a list (``variants.*.price``): a list of texts."""
        return "*" in mapped.split_path(source.columns.get(name, name))

    # A stock flag, or a stock count (in stock when above zero: a variant's inventory_quantity).
    bool_sql = (
        "case when lower({c}) in ('true', 't', 'yes', 'y') then true "
        "when lower({c}) in ('false', 'f', 'no', 'n') then false "
        "when try_cast({c} as double) is not null then try_cast({c} as double) > 0 end"
    )
    casts: dict[str, Callable[[str], str]] = {
        "price": lambda c: f"try_cast({c} as double)",
        "in_stock": lambda c: bool_sql.format(c=c),
        "created_at": mapped.timestamp_sql,
    }
    # Of every element's value: the lowest price, in stock if any is, else the first value.
    reduce = {"price": "list_min({v})", "in_stock": "list_bool_or({v})"}
    element = "nullif(trim(x_w), '')"

    def typed_sql(name: str) -> str:
        cast = casts.get(name, lambda c: c)
        if not each(name):
            return cast(col(name))
        values = f"list_transform({col(name)}, lambda x_w: {cast(element)})"
        return reduce.get(name, "list_filter({v}, lambda x_v: x_v is not null)[1]").format(v=values)

    typed = {name: typed_sql(name) for name in CATALOG_COLUMNS}

    def label(name: str) -> str:
        return mapped.column_label(name, source.columns.get(name, name))

    def bad(name: str, expected: str) -> str:
        if each(name):
            # The first element whose value is not of the type.
            wrong = f"list_filter({col(name)}, lambda x_w: {element} is not null and {casts[name](element)} is null)"
            return f"case when len({wrong}) > 0 then {mapped.bad_value_sql(label(name), expected, f'{wrong}[1]')} end"
        return (
            f"case when {col(name)} is not null and {typed[name]} is null "
            f"then {mapped.bad_value_sql(label(name), expected, col(name))} end"
        )

    checks = [
        f"case when {typed['item_id']} is null then {quote_literal(label('item_id') + ' is empty')} end",
        bad("price", "a number"),
        f"case when {typed['price']} < 0 then {quote_literal(label('price') + ': negative')} end",
        bad("in_stock", "a boolean"),
        bad("created_at", "a timestamp"),
    ]
    select = ", ".join(f"{expr} as {name}" for name, expr in typed.items())
    con.execute(
        f"""
        create or replace temp table stage_catalog as
        select {select}, source_file, source_line, raw_text,
               coalesce(shape_error, nullif(concat_ws('; ', {", ".join(checks)}), '')) as reason
        from batch_catalog
        """
    )
    result.replaced += _forget_files(con, source.name, files, "raw.catalog_items")
    con.execute(
        "insert into ingest.quarantine select ?, ?, source_file, source_line, raw_text, reason, ? "
        "from stage_catalog where reason is not null",
        [result.load_id, source.name, now],
    )
    # A catalog file is a snapshot: the last row seen for an item is its current state.
    con.execute(
        """
        create or replace temp table latest_catalog as
        select * from stage_catalog where reason is null
        qualify row_number() over (partition by item_id order by source_file desc, source_line desc) = 1
        """
    )
    con.execute("delete from raw.catalog_items where item_id in (select item_id from latest_catalog)")
    columns = ", ".join(CATALOG_COLUMNS)
    con.execute(
        f"insert into raw.catalog_items select {columns}, ?, source_file, source_line, ?, ? from latest_catalog",
        [source.name, result.load_id, now],
    )
    good, bad, loaded = con.execute(
        "select count(*) filter (where reason is null), count(*) filter (where reason is not null), "
        "(select count(*) from latest_catalog) from stage_catalog"
    ).fetchone()
    result.lines_read += good + bad + read.control
    result.control_messages += read.control
    result.quarantined += bad
    result.loaded += loaded
    result.duplicates += good - loaded
    return dict(con.execute("select source_file, count(*) from latest_catalog group by all").fetchall())


def _load_batch(con: duckdb.DuckDBPyConnection, source: Any, batch: _Batch, config: Config) -> LoadResult:
    started = _now()
    files = batch.files
    result = LoadResult(_new_load_id(source.name), source.name, source.kind, files=len(files))
    paths = ", ".join(f.ref.path for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    try:
        if batch.error is not None:
            raise batch.error
        with transaction(con):
            # (Asked once a batch: nobody is forgotten meanwhile, forget waits for the lock.)
            anyone_forgotten = privacy.has_forgotten(con)
            if isinstance(source, CatalogSource):
                per_file = _load_catalog(con, source, files, batch.parsed, result, started)
            elif isinstance(source, SingerSource):
                singer = _stage_singer(source, batch.parsed, con, result.warnings)
                result.lines_read = singer.lines_read
                result.control_messages = singer.control
                result.loaded += singer.other_records
                if singer.sql is None:
                    result.replaced += _forget_files(con, source.name, files, "raw.events")
                    result.quarantined += len(singer.bad)
                    _insert_quarantine(con, singer.bad, source.name, result.load_id, started)
                    _drop_forgotten_quarantine(con, result, anyone_forgotten)
                    per_file = {}
                else:
                    staged = _stage_rows(con, singer.sql)
                    per_file = _load_events(
                        con, staged, source, files, result, config, started, singer.bad, anyone_forgotten
                    )
                singer.finish(con, result.load_id, started)
                if anyone_forgotten:
                    # Raw records naming a forgotten person go; those of other streams
                    # (customers, orders) were counted as loaded, events were counted above.
                    dropped = con.execute(
                        "delete from raw.singer_records where "
                        + privacy.mention_condition(
                            "raw.singer_records",
                            "record::varchar",
                            privacy.FORGOTTEN,
                            f"load_id = {quote_literal(result.load_id)}",
                        )
                        + " returning stream",
                    ).fetchall()
                    others = sum(stream not in source.streams for (stream,) in dropped)
                    result.loaded -= others
                    result.forgotten += others
            else:
                if batch.staged is not None:
                    staged, lines = batch.staged, batch.lines
                else:
                    sql, lines = _stage_events_file(source, batch.parsed, con, result.warnings)
                    staged = _stage_rows(con, sql)
                result.lines_read = lines
                per_file = _load_events(con, staged, source, files, result, config, started, [], anyone_forgotten)
            if not result.reconciles:
                raise IngestError(
                    f"source '{source.name}': counts do not reconcile for {paths}: read {result.lines_read}, "
                    f"loaded {result.loaded} + duplicates {result.duplicates} + quarantined "
                    f"{result.quarantined} + control {result.control_messages} + forgotten {result.forgotten}"
                )
            result.message = "; ".join(result.warnings)
            _record_files(con, source.name, files, result.load_id, started, per_file)
            _record_load(con, result, started)
    except _ValidationFailed as failed:
        result.status = "failed"
        result.message = f"validation failed: {failed}"
        with transaction(con):
            _store_validation(con, failed.report, source.name, result.load_id, started)
            _record_load(con, result, started)
        raise IngestError(f"source '{source.name}': batch of {paths} not loaded, {result.message}") from None
    except (ValueError, duckdb.Error) as exc:
        result.status = "failed"
        result.message = str(exc).splitlines()[0]
        with transaction(con):
            _record_load(con, result, started)
        raise IngestError(f"source '{source.name}': batch of {paths} not loaded: {result.message}") from exc
    return result


def run_ingest(con: duckdb.DuckDBPyConnection, config: Config, sources: list[str] | None = None) -> list[LoadResult]:
    """Load every enabled source (or the named ones); raises IngestError on the first failure."""
    results = []
    selected = [s for s in config.sources if s.enabled and (not sources or s.name in sources)]
    if sources:
        unknown = set(sources) - {s.name for s in config.sources}
        if unknown:
            raise IngestError(
                f"unknown source(s) {', '.join(sorted(unknown))}; configured: "
                f"{', '.join(s.name for s in config.sources)}"
            )
    for source in selected:
        try:
            results.extend(ingest_source(con, source, config))
        except (FileNotFoundError, PermissionError, ConnectionError) as exc:
            raise IngestError(f"source '{source.name}': {exc}") from None
    return results
