"""Segment identify-trait sync: only what changed, within the HTTP API's limits, nothing lost.

For every user with a real user id, the configured ``user_insights`` columns become traits
(prefixed, rounded so that noise is no change: ``segment.decimals``, and whole percentiles,
``segment.trait_decimals``). The last traits Segment accepted for each
user are kept in ``segment.sent_traits``; a run sends the users whose traits differ (or
everyone with ``full_resync``). Messages go in batches of at most 2,500 messages and
500 KB, each message at most 32 KB, posted to ``/v1/batch`` with the write key as basic
auth. ``messageId`` is a hash of the user and their traits, so a retried message is one
Segment de-duplicates. 429 waits for ``Retry-After``; 5xx, timeouts and connection errors
back off exponentially; after the retries the batch's users are recorded as failed in
``segment.sync_log`` with the reason and, never having reached ``sent_traits``, are sent
again by the next run. ``sent_traits`` is updated after each accepted batch, so a crash
loses nothing either.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import logging
import math
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from json.encoder import encode_basestring_ascii  # type: ignore[attr-defined]
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from insights import faults
from insights.config import Config, SegmentConfig
from insights.privacy import register_ids
from insights.storage import replace_text
from insights.warehouse import insert_rows

log = logging.getLogger(__name__)

ENVELOPE_BYTES = 200  # {"batch": [...], "sentAt": "...", "context": ...} around the messages


class SegmentError(RuntimeError):
    """The sync cannot go on (no write key, key rejected); nothing was marked as sent."""


def ensure_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists segment")
    con.execute(
        "create table if not exists segment.sent_traits (user_id varchar primary key, traits_hash varchar, "
        "traits json, message_id varchar, sent_at timestamp, run_id varchar)"
    )
    con.execute(
        "create table if not exists segment.sync_log (run_id varchar, logged_at timestamp, user_id varchar, "
        "message_id varchar, status varchar, reason varchar, attempts integer)"
    )


def _clean(value: Any, decimals: int) -> Any:
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        value = value.tolist()
    if isinstance(value, Decimal):
        value = float(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, decimals)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _clean(v, decimals) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, decimals) for v in value]
    return value


def _string(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _encoded(column: pa.Array | pa.ChunkedArray, decimals: int) -> list[str]:
    """Each value of an Arrow column as the compact, key-sorted JSON that
    ``json.dumps(_clean(value, decimals), sort_keys=True, separators=(",", ":"))`` gives.
    Numbers, text, lists and records are encoded a column at a time (a list's items and a
    record's fields as flat columns), without building Python records value by value."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = array.type
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        seen: dict[Any, str] = {}  # amounts and strengths repeat: each is rounded once
        out = []
        for value in array.to_pylist():
            text = seen.get(value)
            if text is None:
                number = None if value is None else float(value)
                text = "null" if number is None or not math.isfinite(number) else repr(round(number, decimals))
                if len(seen) < 1_000_000:
                    seen[value] = text
            out.append(text)
        return out
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        encode = encode_basestring_ascii if array.null_count == 0 else _string
        return list(map(encode, array.to_pylist()))
    valid = array.is_valid().to_pylist() if array.null_count else None
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = array.offsets.to_numpy()
        items = _encoded(array.values.slice(offsets[0], offsets[-1] - offsets[0]), decimals)
        offsets = (offsets - offsets[0]).tolist()
        out = ["[" + ",".join(items[start:end]) + "]" for start, end in zip(offsets, offsets[1:])]
    elif pa.types.is_struct(kind):
        # Keys sorted as json.dumps sorts them; each field a column of its own type.
        columns = dict(zip((kind.field(i).name for i in range(kind.num_fields)), array.flatten()))
        # Each key encoded once, not once per row (4.2M calls at 10M events, 0.4 s).
        keys = {name: _string(name) + ":" for name in columns}
        fields = [[keys[name] + text for text in _encoded(columns[name], decimals)] for name in sorted(columns)]
        out = ["{" + ",".join(parts) + "}" for parts in zip(*fields)] if fields else ["{}"] * len(array)
    else:
        values = array.to_pylist()
        if pa.types.is_map(kind):  # Arrow gives (key, value) pairs; the traits carry an object
            values = [None if v is None else dict(v) for v in values]
        return [json.dumps(_clean(v, decimals), sort_keys=True, separators=(",", ":")) for v in values]
    return out if valid is None else [text if ok else "null" for text, ok in zip(out, valid)]


def current_traits(con: duckdb.DuckDBPyConnection, config: Config) -> list[tuple[str, str]]:
    """(user id, traits as compact JSON with sorted keys) of every identified user, in user
    id order. The text is what ``json.dumps(traits, sort_keys=True, separators=(",", ":"))``
    gives for the traits (prefixed names, rounded values): the hash of a user's traits."""
    seg = config.segment
    described = {row[0]: row[1] for row in con.execute("describe main.user_insights").fetchall()}
    unknown = sorted(set(seg.traits.values()) - set(described))
    if unknown:
        raise SegmentError(
            f"segment.traits names unknown user_insights column(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(described))}"
        )
    names = sorted(seg.traits, key=lambda name: f"{seg.trait_prefix}{name}")
    # Recommended items go as their ids: the scores mean nothing to a marketing tool.
    columns = {"recommended_items": "coalesce(list_transform(recommended_items, lambda x: x.item_id), []::varchar[])"}
    select = ", ".join(
        f"{columns.get(seg.traits[n], chr(34) + seg.traits[n] + chr(34))} as c{i}" for i, n in enumerate(names)
    )
    table = con.sql(
        f"select user_id, {select} from main.user_insights where is_identified and user_id is not null order by user_id"
    ).to_arrow_table()
    keys = [_string(f"{seg.trait_prefix}{name}") + ":" for name in names]
    encoded = [
        [keys[i] + text for text in _encoded(table.column(f"c{i}"), seg.trait_decimals.get(name, seg.decimals))]
        for i, name in enumerate(names)
    ]
    texts = ["{" + ",".join(parts) + "}" for parts in zip(*encoded)] if encoded else ["{}"] * table.num_rows
    return list(zip(table.column("user_id").to_pylist(), texts))


def _hash(traits_json: str) -> str:
    return hashlib.sha256(traits_json.encode()).hexdigest()


def message_id(user_id: str, traits_hash: str) -> str:
    """Deterministic: the same user with the same traits is the same message."""
    return "ui-" + hashlib.sha256(f"{user_id}\x1f{traits_hash}".encode()).hexdigest()[:40]


@dataclass
class Message:
    """One identify call, already encoded: ``body`` is its compact JSON (ASCII only, so its
    length is its size in bytes), ``traits`` the traits' JSON and ``traits_hash`` their hash."""

    user_id: str
    message_id: str
    traits: str
    traits_hash: str
    body: str


@dataclass
class Plan:
    messages: list[Message] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # user, message id, reason


def plan(con: duckdb.DuckDBPyConnection, config: Config, as_of: datetime) -> Plan:
    """The identify messages this run sends, and counts of added, changed, unchanged, invalid."""
    ensure_tables(con)
    sent = dict(con.execute("select user_id, traits_hash from segment.sent_traits").fetchall())
    result = Plan(counts={"added": 0, "changed": 0, "unchanged": 0, "invalid": 0})
    limit = config.segment.max_message_bytes
    timestamp = as_of.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    context = json.dumps({"library": {"name": "user-insights", "version": "0.1"}}, separators=(",", ":"))
    tail = f',"timestamp":{_string(timestamp)},"context":{context}}}'
    for user_id, traits in current_traits(con, config):
        digest = _hash(traits)
        previous = sent.get(user_id)
        if previous == digest and not config.segment.full_resync:
            result.counts["unchanged"] += 1
            continue
        msg_id = message_id(user_id, digest)
        body = f'{{"type":"identify","userId":{_string(user_id)},"traits":{traits},"messageId":"{msg_id}"{tail}'
        size = len(body)
        if len(user_id) > 255 or size > limit:
            reason = f"message of {size:,} bytes over the {limit:,}-byte limit" if size > limit else "user id too long"
            result.invalid.append((user_id, msg_id, reason))
            result.counts["invalid"] += 1
            continue
        result.counts["changed" if previous is not None else "added"] += 1
        result.messages.append(Message(user_id, msg_id, traits, digest, body))
    return result


def _size(message: Message | dict[str, Any]) -> int:
    if isinstance(message, Message):
        return len(message.body)
    return len(json.dumps(message, separators=(",", ":")).encode())


def batches(messages: list[Any], max_messages: int, max_bytes: int) -> list[list[Any]]:
    """Consecutive batches within both limits (sizes as compact JSON)."""
    out: list[list[Any]] = []
    current: list[Any] = []
    size = ENVELOPE_BYTES
    for message in messages:
        length = _size(message) + 1
        if current and (len(current) >= max_messages or size + length > max_bytes):
            out.append(current)
            current, size = [], ENVELOPE_BYTES
        current.append(message)
        size += length
    if current:
        out.append(current)
    return out


@dataclass
class Outcome:
    ok: bool
    reason: str = ""
    attempts: int = 0
    fatal: bool = False
    body: bytes = b""


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, (when - datetime.now(UTC)).total_seconds())
        except (TypeError, ValueError):
            return None


def request_with_retries(
    seg: SegmentConfig,
    url: str,
    body: bytes | Callable[[], bytes] | None,
    headers: dict[str, str],
    rejected: str,
    sleep: Callable[[float], None],
) -> Outcome:
    """POST ``body`` (a callable: made again for each attempt; None: GET) to one of
    Segment's APIs: 429 waits for ``Retry-After``; 5xx, timeouts and connection errors
    back off exponentially, up to ``seg.max_retries`` retries; 401 and 403 are fatal
    (``rejected`` says which credential); any other 4xx is given up at once."""
    delay = seg.backoff_seconds
    reason = ""
    for attempt in range(1, seg.max_retries + 2):
        request = urllib.request.Request(
            url,
            data=body() if callable(body) else body,
            method="GET" if body is None else "POST",
            headers={**headers, "User-Agent": "user-insights"},
        )
        wait = delay
        try:
            with urllib.request.urlopen(request, timeout=seg.timeout_seconds) as response:
                return Outcome(True, attempts=attempt, body=response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:200].decode(errors="replace")
            reason = f"HTTP {exc.code} {detail}".strip()
            if exc.code in (401, 403):
                return Outcome(False, f"HTTP {exc.code}: {rejected}", attempt, fatal=True)
            if exc.code == 429:
                after = _retry_after(exc.headers.get("Retry-After"))
                wait = after if after is not None else delay
            elif exc.code < 500:
                return Outcome(False, reason, attempt)
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            cause = getattr(exc, "reason", exc)
            reason = f"{type(cause).__name__}: {cause}"
        if attempt <= seg.max_retries:
            log.info("segment request attempt %d failed (%s); retrying in %.1fs", attempt, reason, wait)
            sleep(min(wait, seg.max_wait_seconds))
            delay *= 2
    return Outcome(False, f"gave up after {seg.max_retries + 1} attempts: {reason}", seg.max_retries + 1)


class Sender:
    """Posts batches to the Segment HTTP API with retries (``sleep`` is injectable for tests)."""

    def __init__(self, config: Config, write_key: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.seg = config.segment
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.sleep = sleep

    def post(self, batch: list[Message]) -> Outcome:
        def body() -> bytes:
            # sentAt is the time of each attempt.
            sent_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
            return ('{"batch":[' + ",".join(m.body for m in batch) + f'],"sentAt":"{sent_at}"}}').encode()

        return request_with_retries(
            self.seg,
            self.seg.endpoint,
            body,
            {"Content-Type": "application/json", "Authorization": self.auth},
            "write key rejected",
            self.sleep,
        )


def sync(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    as_of: datetime,
    run_id: str,
    environ: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Send changed traits (or, in a dry run, write them to ``segment.dry_run_path``)."""
    seg = config.segment
    if not seg.enabled:
        return {"enabled": False}
    planned = plan(con, config, as_of)
    now = datetime.now(UTC).replace(tzinfo=None)
    log_rows = [(run_id, now, u, m, "invalid", r, 0) for u, m, r in planned.invalid]
    summary: dict[str, Any] = {**planned.counts, "dry_run": seg.dry_run, "sent": 0, "failed": 0, "batches": 0}
    groups = batches(planned.messages, seg.max_batch_messages, seg.max_batch_bytes)
    if seg.dry_run:
        path = Path(config.resolve(seg.dry_run_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(m.body + "\n" for m in planned.messages)
        os.replace(tmp, path)
        log_rows += [(run_id, now, m.user_id, m.message_id, "dry_run", "", 0) for m in planned.messages]
        summary.update(would_send=len(planned.messages), batches=len(groups), path=str(path))
        _log(con, log_rows)
        return summary
    key = (environ if environ is not None else os.environ).get(seg.write_key_env)
    if not key:
        _log(con, log_rows)
        raise SegmentError(f"segment: no write key in ${seg.write_key_env} (or set segment.dry_run: true)")
    sender = Sender(config, key, sleep)
    fatal = None
    unavailable = None
    for batch in groups:
        if fatal or unavailable:
            outcome = Outcome(False, f"not attempted: {fatal or unavailable}")
        else:
            outcome = sender.post(batch)
        summary["batches"] += 1
        stamp = datetime.now(UTC).replace(tzinfo=None)
        if outcome.ok:
            faults.reached("segment.batch")
            insert_rows(
                con,
                "segment.sent_traits",
                [(m.user_id, m.traits_hash, m.traits, m.message_id, stamp, run_id) for m in batch],
                verb="insert or replace",
            )
            summary["sent"] += len(batch)
        else:
            summary["failed"] += len(batch)
            if outcome.fatal:
                fatal = outcome.reason
            elif outcome.attempts > seg.max_retries:
                unavailable = "endpoint unavailable in this run"
        status = "sent" if outcome.ok else "failed"
        log_rows += [(run_id, stamp, m.user_id, m.message_id, status, outcome.reason, outcome.attempts) for m in batch]
    _log(con, log_rows)
    if fatal:
        raise SegmentError(f"segment: {fatal}; {summary['failed']:,} users left for the next run")
    if summary["failed"]:
        log.warning("segment: %d users not delivered; they are retried next run", summary["failed"])
    return summary


def _log(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    insert_rows(con, "segment.sync_log", rows)


def api_token(config: Config, environ: dict[str, str] | None = None) -> str | None:
    """The Public API token (deletion requests), from ``segment.api_token_env``."""
    return (environ if environ is not None else os.environ).get(config.segment.api_token_env) or None


# Segment's Public API takes at most 5,000 user ids per regulation.
MAX_REGULATION_SUBJECTS = 5_000


def request_deletions(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    environ: dict[str, str] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Ask Segment to delete the forgotten users it was sent (``privacy.segment_deletions``
    rows without a regulation yet): ``POST /regulations`` of the Public API, at most 5,000
    user ids a request, with the retries of the trait sync. Each accepted request's
    ``regulateId`` is recorded with its users; the others stay pending with the reason, for
    the next ``insights forget`` (or ``insights forget --segment-pending``). A crash between
    Segment's answer and the record asks again for the same users: a second deletion of
    the same people, which changes nothing.

    Returns counts: ``pending`` before, ``requested``, ``left`` (still pending), the
    ``regulations`` accepted and, when some are left, the ``reason``."""
    seg = config.segment
    token = api_token(config, environ)
    url = seg.api_url.rstrip("/") + "/regulations"
    headers = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": f"Bearer {token}"}
    if token:
        _follow_regulations(seg, con, url, headers, sleep)
    reopened = _reopen_failed(con)
    pending = [
        row[0]
        for row in con.execute(
            "select user_id from privacy.segment_deletions where regulate_id is null order by recorded_at, user_id"
        ).fetchall()
    ]
    summary: dict[str, Any] = {
        "pending": len(pending),
        "requested": 0,
        "left": len(pending),
        "regulations": [],
        "reopened": reopened,
    }
    if token:
        summary["statuses"] = _regulation_counts(con)
    if not pending:
        return summary
    if not token:
        summary["reason"] = (
            f"no Segment Public API token in ${seg.api_token_env} (a token with the Workspace Owner or "
            "Deletion and Suppression role; or set segment.delete_on_forget: false and delete them in Segment)"
        )
        return summary
    for start in range(0, len(pending), MAX_REGULATION_SUBJECTS):
        users = pending[start : start + MAX_REGULATION_SUBJECTS]
        payload = json.dumps(
            {"regulationType": seg.regulation_type, "subjectType": "USER_ID", "subjectIds": users}
        ).encode()
        outcome = request_with_retries(seg, url, payload, headers, "Public API token rejected", sleep)
        regulate_id = None
        if outcome.ok:
            try:
                regulate_id = json.loads(outcome.body)["data"]["regulateId"]
            except (ValueError, KeyError, TypeError):
                outcome = Outcome(False, f"unexpected answer {outcome.body[:200]!r}", outcome.attempts)
        if regulate_id:
            faults.reached("segment.regulation")  # accepted by Segment, not recorded yet
        register_ids(con, users, "segment_deletion_users")
        try:
            con.execute(
                "update privacy.segment_deletions set attempts = coalesce(attempts, 0) + ?, "
                "regulate_id = ?, regulated_at = case when ? is not null then now()::timestamp end, last_error = ? "
                "where user_id in (select id from segment_deletion_users)",
                [outcome.attempts, regulate_id, regulate_id, None if regulate_id else outcome.reason],
            )
        finally:
            con.unregister("segment_deletion_users")
        if not regulate_id:
            summary["reason"] = outcome.reason
            break
        summary["requested"] += len(users)
        summary["regulations"].append(regulate_id)
    summary["left"] = len(pending) - summary["requested"]
    return summary


# A regulation in one of these states is still being carried out: its state is asked again.
OPEN_REGULATION = ("INITIALIZED", "RUNNING")
# A regulation that ended in one of these states did not delete its users everywhere: they
# are asked for again, in a new regulation. (INVALID and NOT_SUPPORTED would get the same
# answer again: they are shown, not repeated.)
RETRY_REGULATION = ("FAILED", "PARTIAL_SUCCESS")


def _reopen_failed(con: duckdb.DuckDBPyConnection) -> int:
    """Make the users of regulations that ended FAILED or PARTIAL_SUCCESS pending again,
    each such regulation kept in ``failed_regulations`` (``reg-1 FAILED; reg-4
    PARTIAL_SUCCESS``); returns how many users."""
    return con.execute(
        "update privacy.segment_deletions set "
        "failed_regulations = concat_ws('; ', failed_regulations, regulate_id || ' ' || regulation_status), "
        "last_error = 'regulation ' || regulate_id || ' ended ' || regulation_status, "
        "regulate_id = null, regulated_at = null, regulation_status = null, status_checked_at = null "
        "where regulate_id is not null and regulation_status in (select unnest(?::varchar[]))",
        [list(RETRY_REGULATION)],
    ).fetchone()[0]


def _follow_regulations(
    seg: SegmentConfig,
    con: duckdb.DuckDBPyConnection,
    url: str,
    headers: dict[str, str],
    sleep: Callable[[float], None],
) -> None:
    """Ask Segment how the regulations still open are going (``GET /regulations/{id}``, one
    call per regulation) and record each one's ``overallStatus`` on its users. A
    regulation Segment cannot be asked about now keeps its last status (the next forget
    asks again)."""
    open_ids = [
        row[0]
        for row in con.execute(
            "select distinct regulate_id from privacy.segment_deletions where regulate_id is not null "
            "and (regulation_status is null or regulation_status in (select unnest(?::varchar[]))) order by 1",
            [list(OPEN_REGULATION)],
        ).fetchall()
    ]
    for regulate_id in open_ids:
        outcome = request_with_retries(
            seg, f"{url}/{urllib.parse.quote(regulate_id, safe='')}", None, headers, "Public API token rejected", sleep
        )
        try:
            status = json.loads(outcome.body)["data"]["regulation"]["overallStatus"] if outcome.ok else None
        except (ValueError, KeyError, TypeError):
            status = None
        if not status:
            log.warning("segment: the state of regulation %s is unknown for now: %s", regulate_id, outcome.reason)
            if outcome.fatal:
                break
            continue
        con.execute(
            "update privacy.segment_deletions set regulation_status = ?, status_checked_at = now()::timestamp "
            "where regulate_id = ?",
            [str(status), regulate_id],
        )


def _regulation_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Users per status over every regulation recorded."""
    return dict(
        con.execute(
            "select coalesce(regulation_status, 'REQUESTED'), count(*) from privacy.segment_deletions "
            "where regulate_id is not null group by 1 order by 1"
        ).fetchall()
    )


def forget_dry_run(config: Config, ids: list[str], dry_run: bool = False) -> int:
    """Remove the messages of ``ids`` from the dry-run file; returns how many. (The users
    Segment was really sent are deleted there by :func:`request_deletions`.)"""
    path = Path(config.resolve(config.segment.dry_run_path))
    if not path.is_file():
        return 0
    wanted = set(ids)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [line for line in lines if not line.strip() or json.loads(line).get("userId") not in wanted]
    if len(kept) < len(lines) and not dry_run:
        replace_text(path, "".join(kept))
    return len(lines) - len(kept)
