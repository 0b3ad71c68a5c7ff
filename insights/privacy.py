"""Forgetting people (the right to erasure): their events, every warehouse row derived from
them, and every output that names them.

A person is asked for by user id or by cookie id. A user id brings every cookie it was seen
with (its logged-out history would otherwise be stitched back to it); a cookie id is that
visitor alone. The ids are recorded in ``privacy.forgotten`` first, so that a crash half way
loses nothing (run the same request again) and ingestion never loads them again: a line of
a forgotten user, or of a forgotten cookie without a user id, is counted as ``forgotten``
in its load, not loaded.

A row belongs to the people forgotten when one of its user columns (``user_id``,
``stitched_user_id``, ``logged_in_user_id``) is one of their ids, or when one of its cookie
columns (``anonymous_id``, ``visitor_id``) is and the row has no other user: on a shared
device another person's logged-in rows stay, their anonymous rows go (they cannot be told
apart). A model's row also goes with the raw event it was made from (its ``event_id``) or,
for a session, when every raw event of the session goes: the models stitch a shared
device's anonymous events to its last user, whose id the row then carries. Raw text (quarantined lines, Singer records) goes when it holds one of the ids as a
field: a JSON string or number, a tab- or comma-separated field.

The users Segment was sent traits of are deleted there too: ``privacy.segment_deletions``
records them with the request, and Segment's Public API is asked to delete (and by default
suppress) them (:func:`exports.segment.request_deletions`); until it accepted, they stay
pending and every later ``insights forget`` asks again.

What is aggregated over many people (item popularity, funnel counts, the item vectors of a
trained model) keeps their contribution until it is rebuilt: ``insights transform
--full-refresh`` and the next training.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from insights import faults
from insights.config import Config
from insights.timing import timed
from insights.warehouse import has_table, transaction

log = logging.getLogger(__name__)

USER_COLUMNS = ("user_id", "stitched_user_id", "logged_in_user_id")
COOKIE_COLUMNS = ("anonymous_id", "visitor_id")
# Raw text that may hold an id anywhere: the column (as SQL text) to look in.
TEXT_COLUMNS = {("ingest", "quarantine"): "raw_text", ("raw", "singer_records"): "record::varchar"}
IDS = "forget_ids"
# Temporary tables of the raw events that go and of the sessions all of whose events go.
GONE_EVENTS = "forget_gone_events"
GONE_SESSIONS = "forget_gone_sessions"
# Every id ever forgotten, as a relation (what ingestion checks new lines against).
FORGOTTEN = "(select id from privacy.forgotten)"


class ForgetError(ValueError):
    """A request that cannot be carried out as given; nothing was changed."""


def read_ids(ids: list[str], file: str | None = None) -> list[str]:
    """The ids of a request, from arguments and a file of one id per line (blank lines and
    lines starting with '#' skipped), in order, each once."""
    given: list[tuple[str, str]] = [(value, f"argument {n}") for n, value in enumerate(ids, start=1)]
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8")
        except OSError as exc:
            raise ForgetError(f"cannot read the ids file {file}: {exc.strerror or exc}") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                given.append((line.strip(), f"{file} line {n}"))
    seen: dict[str, None] = {}
    for value, where in given:
        if not value.strip():
            raise ForgetError(f"{where}: an empty id")
        if value != value.strip():
            raise ForgetError(f"{where}: {value!r} has spaces around it (ids are matched exactly)")
        seen.setdefault(value, None)
    if not seen:
        raise ForgetError("no ids given: name user or cookie ids, or --file with one id per line")
    return list(seen)


@dataclass
class Resolved:
    """Who a request names: the ids given, and every id of theirs to remove."""

    given: list[str]
    users: list[str] = field(default_factory=list)
    cookies: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    # id -> (kind, the given id it belongs to)
    ids: dict[str, tuple[str, str]] = field(default_factory=dict)


def resolve(con: duckdb.DuckDBPyConnection, given: list[str]) -> Resolved:
    """Each given id as a user (with every cookie it was seen with) or a cookie; ids recorded
    by an earlier request for the same person count again (its events are gone by then)."""
    out = Resolved(given)
    register_ids(con, given, "given_ids")
    try:
        sources = ["select user_id as id, 'user' as kind from raw.events where user_id in (select id from given_ids)"]
        sources.append("select anonymous_id, 'cookie' from raw.events where anonymous_id in (select id from given_ids)")
        links = [
            "select user_id, anonymous_id from raw.events where user_id in (select id from given_ids) "
            "and anonymous_id is not null"
        ]
        if has_table(con, "main", "dim_identity_map"):
            sources.append(
                "select user_id, 'user' from main.dim_identity_map where user_id in (select id from given_ids)"
            )
            links.append(
                "select user_id, anonymous_id from main.dim_identity_map where user_id in (select id from given_ids) "
                "and anonymous_id is not null"
            )
        if has_table(con, "main", "user_insights"):
            # A visitor who never logged in is scored under their cookie id.
            sources.append(
                "select user_id, case when is_identified then 'user' else 'cookie' end from main.user_insights "
                "where user_id in (select id from given_ids)"
            )
        kinds: dict[str, set[str]] = {}
        for id_, kind in con.execute(" union ".join(sources)).fetchall():
            kinds.setdefault(id_, set()).add(kind)
        recorded = (
            con.execute(
                "select id, kind, person from privacy.forgotten where person in (select id from given_ids)"
            ).fetchall()
            if has_table(con, "privacy", "forgotten")
            else []
        )
        for id_, kind, person in recorded:
            if id_ == person:
                kinds.setdefault(id_, set()).add(kind)
            else:
                out.ids.setdefault(id_, (kind, person))
        for user, cookie in con.execute(" union ".join(links)).fetchall():
            if cookie != user:
                out.ids.setdefault(cookie, ("cookie", user))
    finally:
        con.unregister("given_ids")
    for id_ in given:
        found = kinds.get(id_, set())
        kind = "user" if "user" in found else "cookie" if "cookie" in found else "unknown"
        {"user": out.users, "cookie": out.cookies, "unknown": out.unknown}[kind].append(id_)
        out.ids[id_] = (kind, id_)
    out.cookies += [i for i, (kind, person) in out.ids.items() if kind == "cookie" and i != person]
    return out


def register_ids(con: duckdb.DuckDBPyConnection, ids: list[str], name: str = IDS) -> None:
    con.register(name, pa.table({"id": pa.array(ids, pa.string())}))


def row_condition(columns: set[str], ids: str = IDS) -> str | None:
    """SQL true for a row of a table with ``columns`` that belongs to the forgotten (see the
    module's docstring), or None when the table holds nobody's ids."""
    member = "{} in (select id from " + ids + ")"  # a table name, or a parenthesised query
    parts = [member.format(c) for c in USER_COLUMNS if c in columns]
    cookies = [member.format(c) for c in COOKIE_COLUMNS if c in columns]
    if cookies:
        alone = "user_id is null" if "user_id" in columns else "true"
        parts.append(f"(({' or '.join(cookies)}) and {alone})")
    return " or ".join(parts) or None


def fields_sql(text: str) -> str:
    """SQL for the fields of a raw text: its JSON strings (unescaped: ``jos\\u00e9`` is
    josé, as a producer that writes only ASCII has it), its JSON whole numbers, its tab-
    and its comma-separated fields."""
    return f"""list_concat(
        list_transform(regexp_extract_all({text}, '"((?:[^"\\\\]|\\\\.)*)"', 1),
            lambda s: case when contains(s, '\\') then coalesce(try(json_extract_string('"' || s || '"', '$')), s)
                      else s end),
        regexp_extract_all({text}, '[:\\[,]\\s*([0-9]+)\\s*(?:[,\\]}}]|$)', 1),
        string_split({text}, chr(9)),
        string_split({text}, ','))"""


def mention_condition(table: str, text: str, ids: str = IDS, where: str = "true") -> str:
    """SQL true for a row of ``table`` (among those ``where`` selects) whose raw text
    ``text`` holds one of the ids as a field (see :func:`fields_sql`): a join on the
    fields, as the ids may be thousands."""
    return (
        f"rowid in (select row_id from (select rowid as row_id, unnest({fields_sql(text)}) as field "
        f"from {table} where {where}) where field in (select id from {ids}))"
    )


def has_forgotten(con: duckdb.DuckDBPyConnection) -> bool:
    # (fetchall: a result left open would block the connection's next register().)
    return bool(con.execute("select exists (select 1 from privacy.forgotten)").fetchall()[0][0])


def _table_columns(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], set[str]]:
    columns: dict[tuple[str, str], set[str]] = {}
    for schema, table, column in con.execute(
        """select c.table_schema, c.table_name, c.column_name from information_schema.columns c
           join information_schema.tables t using (table_catalog, table_schema, table_name)
           where t.table_type = 'BASE TABLE' and c.table_catalog = current_database()
             and c.table_schema <> 'privacy'"""
    ).fetchall():
        columns.setdefault((schema, table), set()).add(column)
    return columns


@contextmanager
def warehouse_tables(con: duckdb.DuckDBPyConnection) -> Iterator[list[tuple[str, str, str]]]:
    """(schema, table, condition) for every warehouse table that can hold a person's rows
    (the ids registered as ``forget_ids``), valid inside the ``with`` block."""
    columns = _table_columns(con)

    def own(schema: str, table: str, names: set[str]) -> str | None:
        text = TEXT_COLUMNS.get((schema, table))
        return mention_condition(f"{schema}.{table}", text) if text else row_condition(names)

    with _with_derived(con, columns, row_condition(columns.get(("raw", "events"), set())), own) as found:
        yield found


@contextmanager
def _with_derived(
    con: duckdb.DuckDBPyConnection,
    columns: dict[tuple[str, str], set[str]],
    raw: str | None,
    own: Callable[[str, str, set[str]], str | None],
) -> Iterator[list[tuple[str, str, str]]]:
    """(schema, table, condition) of the rows that go: ``raw`` selects the raw events,
    ``own`` a table's own rows; and a model's row (a table with ``event_id``, other than
    ``raw.events``) goes with the raw event it was made from, a session (a table with
    ``session_id`` but no ``event_id``) when every one of its events goes. (The models
    stitch a shared device's anonymous events to the device's last user, whose id such rows
    then carry while their raw rows go.) Both sets are fixed in temporary tables before
    anything is removed."""
    events = columns.get(("main", "fct_events"), set())
    marks = raw is not None and ("raw", "events") in columns
    if marks:
        con.execute(f"create or replace temp table {GONE_EVENTS} as select event_id from raw.events where {raw}")
        # Sessions by the models' events (their session ids may be the models' own).
        source, condition = ("raw.events", raw)
        if {"event_id", "session_id"} <= events:
            source = "main.fct_events"
            condition = (
                f"({own('main', 'fct_events', events) or 'false'}) or event_id in (select event_id from {GONE_EVENTS})"
            )
        con.execute(
            f"""create or replace temp table {GONE_SESSIONS} as
            with marked as (select session_id, coalesce({condition}, false) as goes from {source}
                            where session_id is not null)
            select session_id from marked where session_id in (select session_id from marked where goes)
            group by session_id having bool_and(goes)"""
        )
    found = []
    for (schema, table), names in sorted(columns.items()):
        if (schema, table) == ("raw", "events"):
            condition = raw
        else:
            condition = own(schema, table, names)
            if marks and "event_id" in names:
                condition = f"({condition or 'false'}) or event_id in (select event_id from {GONE_EVENTS})"
            elif marks and "session_id" in names:
                condition = f"({condition or 'false'}) or session_id in (select session_id from {GONE_SESSIONS})"
        if condition:
            found.append((schema, table, condition))
    try:
        yield found
    finally:
        if marks:
            con.execute(f"drop table if exists {GONE_EVENTS}")
            con.execute(f"drop table if exists {GONE_SESSIONS}")


# What expires by age (storage limitation), besides the raw events: the column that dates a row.
EXPIRING = {
    ("ingest", "quarantine"): "quarantined_at",
    ("raw", "singer_records"): "coalesce(time_extracted, loaded_at)",
    ("segment", "sync_log"): "logged_at",
}


def expire(config: Config, con: duckdb.DuckDBPyConnection, now: datetime) -> dict[str, Any]:
    """Delete what is older than ``privacy.retention_days`` before ``now``: raw events by
    when they happened, and every model's row made from them (as :func:`forget` removes a
    person's: by event, and sessions all of whose events go), quarantined lines, Singer
    records and Segment's sync log by their own dates. Aggregates over many events (user
    and item features, lifetime totals) keep what they counted until the models are rebuilt.
    Returns the rows removed per table, or nothing when no retention is set."""
    days = config.privacy.retention_days
    if days is None:
        return {}
    cutoff = (now - timedelta(days=days)).replace(tzinfo=None)
    before = f"timestamp '{cutoff:%Y-%m-%d %H:%M:%S}'"
    columns = _table_columns(con)

    def own(schema: str, table: str, names: set[str]) -> str | None:
        dated = EXPIRING.get((schema, table))
        return f"{dated} < {before}" if dated else None

    removed: dict[str, int] = {}
    raw = f"occurred_at < {before}" if ("raw", "events") in columns else None
    with transaction(con), _with_derived(con, columns, raw, own) as found:
        for schema, table, condition in found:
            count = con.execute(f"delete from {schema}.{table} where {condition}").fetchone()[0]
            if count:
                removed[f"{schema}.{table}"] = count
    return {"retention_days": days, "before": cutoff.isoformat(sep=" "), "removed": removed}


def collect(con: duckdb.DuckDBPyConnection, given: list[str]) -> dict[str, Any]:
    """Everything the warehouse holds about the people ``given`` names (the right of
    access): their rows of every table, found by the rules :func:`forget` removes them by
    (the outputs hold copies of the scored tables), and what earlier erasure requests for
    them did (:func:`erasure_records`)."""
    who = resolve(con, given)
    register_ids(con, list(who.ids))
    tables: dict[str, list[dict[str, Any]]] = {}
    try:
        with warehouse_tables(con) as found:
            for schema, table, condition in found:
                cursor = con.execute(f"select * from {schema}.{table} where {condition}")
                names = [c[0] for c in cursor.description]
                rows = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
                if rows:
                    tables[f"{schema}.{table}"] = rows
        erasure = erasure_records(con)
    finally:
        con.unregister(IDS)
    return {
        "ids": given,
        "users": who.users,
        "cookies": who.cookies,
        "unknown": who.unknown,
        "collected_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "erasure": erasure,
        "tables": tables,
    }


def erasure_records(con: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """What was done about the ids registered as ``forget_ids`` by earlier forget requests:
    when each was recorded, by which request, when that request finished, and for a user
    Segment was sent, the state of its deletion there (the erasure's audit trail)."""
    if not has_table(con, "privacy", "forgotten"):
        return []
    # (A warehouse made before Segment deletions existed, opened read-only, lacks their table.)
    deletions = (
        "privacy.segment_deletions"
        if has_table(con, "privacy", "segment_deletions")
        else "(select null::varchar as user_id, null::varchar as regulate_id, null::timestamp as regulated_at, "
        "null::varchar as regulation_status, null::varchar as last_error, null::varchar as failed_regulations "
        "where false)"
    )
    cursor = con.execute(
        f"""select f.id, f.kind, f.person, f.request_id, f.recorded_at, r.finished_at,
                   d.regulate_id as segment_regulation, d.regulated_at as segment_regulated_at,
                   d.regulation_status as segment_regulation_status,
                   d.user_id is not null and d.regulate_id is null as segment_pending,
                   d.last_error as segment_last_error,
                   d.failed_regulations as segment_failed_regulations
            from privacy.forgotten f
            left join privacy.requests r using (request_id)
            left join {deletions} d on d.user_id = f.id
            where f.id in (select id from {IDS}) order by f.person, f.id"""
    )
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def forget(config: Config, con: duckdb.DuckDBPyConnection, given: list[str], dry_run: bool = False) -> dict[str, Any]:
    """Remove the people ``given`` names from the warehouse and every output; returns what
    was removed where. ``dry_run`` counts and changes nothing."""
    from exports import cohorts, datastore, segment, serving
    from models_ml import registry

    seconds: dict[str, float] = {}
    with timed(seconds, "resolve"):
        who = resolve(con, given)
    ids = list(who.ids)
    request_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    now = datetime.now(UTC).replace(tzinfo=None)
    removed: dict[str, int] = {}
    register_ids(con, ids)
    try:
        sent = (
            con.execute(f"select count(*) from segment.sent_traits where user_id in (select id from {IDS})").fetchone()[
                0
            ]
            if has_table(con, "segment", "sent_traits")
            else 0
        )
        if not dry_run:
            # First the request: from here on ingestion refuses the ids, and a crash leaves a
            # request that the same command completes.
            with transaction(con):
                con.execute(
                    "insert or ignore into privacy.forgotten select id, kind, person, ?, ? from ("
                    "select unnest(?) as id, unnest(?) as kind, unnest(?) as person)",
                    [request_id, now, ids, [k for k, _ in who.ids.values()], [p for _, p in who.ids.values()]],
                )
                if sent and config.segment.delete_on_forget:
                    # The users Segment holds, kept until it accepted their deletion.
                    con.execute(
                        "insert or ignore into privacy.segment_deletions (user_id, request_id, recorded_at, attempts) "
                        "select user_id, ?, ?, 0 "
                        f"from segment.sent_traits where user_id in (select id from {IDS})",
                        [request_id, now],
                    )
        faults.reached("forget.recorded")
        with timed(seconds, "warehouse"), transaction(con), warehouse_tables(con) as found:
            for schema, table, condition in found:
                verb = "select count(*) from" if dry_run else "delete from"
                count = con.execute(f"{verb} {schema}.{table} where {condition}").fetchone()[0]
                if count:
                    removed[f"{schema}.{table}"] = count
    finally:
        con.unregister(IDS)
    if not dry_run:
        with timed(seconds, "checkpoint"):
            con.execute("checkpoint")
    faults.reached("forget.warehouse")
    outputs = {}
    for name, forget_in in (
        ("datastore", datastore.forget),
        ("cohort_csvs", cohorts.forget),
        ("segment_dry_run_file", segment.forget_dry_run),
        ("recommendation_table", serving.forget),
        ("model_versions", registry.forget),
    ):
        with timed(seconds, name):
            outputs[name] = forget_in(config, ids, dry_run=dry_run)
    deletion: dict[str, Any] = {"profiles": sent, "delete_on_forget": config.segment.delete_on_forget}
    if not dry_run and config.segment.delete_on_forget:
        with timed(seconds, "segment_deletion"):
            deletion |= segment.request_deletions(config, con)
    elif sent and config.segment.delete_on_forget:
        # A dry run says ahead whether the real one could ask Segment (or would end failing).
        deletion["token"] = segment.api_token(config) is not None
    summary = {
        "request_id": None if dry_run else request_id,
        "dry_run": dry_run,
        "given": len(given),
        "users": len(who.users),
        "cookies": len(who.cookies),
        "unknown": who.unknown,
        "warehouse": removed,
        "outputs": outputs,
        "segment": deletion,
        "seconds": seconds,
    }
    if not dry_run:
        con.execute(
            "insert into privacy.requests values (?, ?, ?, ?, ?, ?, ?)",
            [
                request_id,
                now,
                len(given),
                len(who.users),
                len(who.cookies),
                sum(removed.values()),
                datetime.now(UTC).replace(tzinfo=None),
            ],
        )
    return summary


def deletion_left(deletion: dict[str, Any]) -> str | None:
    """What to tell the operator when some of Segment's deletions are still pending, else None."""
    if not deletion.get("delete_on_forget", True) or not deletion.get("left"):
        return None
    return (
        f"Segment's deletion of {deletion['left']:,} forgotten user(s) is pending: {deletion.get('reason')}. "
        "Everything else is forgotten; once that is mended run `insights forget --segment-pending` "
        "(or trigger insights_forget without ids)"
    )
