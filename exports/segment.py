"""Segment identify-trait sync: only what changed, within the HTTP API's limits, nothing lost.

For every user with a real user id, the configured ``user_insights`` columns become traits
(prefixed, rounded so that noise is no change). The last traits Segment accepted for each
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
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb

from insights import faults
from insights.config import Config
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
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _clean(v, decimals) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, decimals) for v in value]
    return value


def current_traits(con: duckdb.DuckDBPyConnection, config: Config) -> list[tuple[str, dict[str, Any]]]:
    """(user id, traits) of every identified user, in user id order."""
    seg = config.segment
    known = {r[0] for r in con.execute("describe main.user_insights").fetchall()}
    unknown = sorted(set(seg.traits.values()) - known)
    if unknown:
        raise SegmentError(
            f"segment.traits names unknown user_insights column(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    names = list(seg.traits)
    # Recommended items go as their ids: the scores mean nothing to a marketing tool.
    columns = {"recommended_items": "coalesce(list_transform(recommended_items, lambda x: x.item_id), []::varchar[])"}
    select = ", ".join(columns.get(seg.traits[n], f'"{seg.traits[n]}"') for n in names)
    rows = con.execute(
        f"select user_id, {select} from main.user_insights where is_identified and user_id is not null order by user_id"
    ).fetchall()
    out = []
    for row in rows:
        traits = {f"{seg.trait_prefix}{name}": _clean(value, seg.decimals) for name, value in zip(names, row[1:])}
        out.append((row[0], traits))
    return out


def _hash(traits: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(traits, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def message_id(user_id: str, traits_hash: str) -> str:
    """Deterministic: the same user with the same traits is the same message."""
    return "ui-" + hashlib.sha256(f"{user_id}\x1f{traits_hash}".encode()).hexdigest()[:40]


@dataclass
class Plan:
    messages: list[dict[str, Any]] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    invalid: list[tuple[str, str, str]] = field(default_factory=list)  # user, message id, reason


def plan(con: duckdb.DuckDBPyConnection, config: Config, as_of: datetime) -> Plan:
    """The identify messages this run sends, and counts of added, changed, unchanged, invalid."""
    ensure_tables(con)
    sent = dict(con.execute("select user_id, traits_hash from segment.sent_traits").fetchall())
    result = Plan(counts={"added": 0, "changed": 0, "unchanged": 0, "invalid": 0})
    limit = config.segment.max_message_bytes
    for user_id, traits in current_traits(con, config):
        digest = _hash(traits)
        previous = sent.get(user_id)
        if previous == digest and not config.segment.full_resync:
            result.counts["unchanged"] += 1
            continue
        msg_id = message_id(user_id, digest)
        message = {
            "type": "identify",
            "userId": user_id,
            "traits": traits,
            "messageId": msg_id,
            "timestamp": as_of.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z"),
            "context": {"library": {"name": "user-insights", "version": "0.1"}},
        }
        size = len(json.dumps(message, separators=(",", ":")).encode())
        if len(user_id) > 255 or size > limit:
            reason = f"message of {size:,} bytes over the {limit:,}-byte limit" if size > limit else "user id too long"
            result.invalid.append((user_id, msg_id, reason))
            result.counts["invalid"] += 1
            continue
        result.counts["changed" if previous is not None else "added"] += 1
        result.messages.append(message)
        result.hashes[msg_id] = digest
    return result


def batches(messages: list[dict[str, Any]], max_messages: int, max_bytes: int) -> list[list[dict[str, Any]]]:
    """Consecutive batches within both limits (sizes as compact JSON)."""
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = ENVELOPE_BYTES
    for message in messages:
        length = len(json.dumps(message, separators=(",", ":")).encode()) + 1
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


class Sender:
    """Posts batches to the Segment HTTP API with retries (``sleep`` is injectable for tests)."""

    def __init__(self, config: Config, write_key: str, sleep: Callable[[float], None] = time.sleep) -> None:
        self.seg = config.segment
        self.auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()
        self.sleep = sleep

    def post(self, batch: list[dict[str, Any]]) -> Outcome:
        body = json.dumps(
            {"batch": batch, "sentAt": datetime.now(UTC).isoformat().replace("+00:00", "Z")},
            separators=(",", ":"),
        ).encode()
        delay = self.seg.backoff_seconds
        reason = ""
        for attempt in range(1, self.seg.max_retries + 2):
            request = urllib.request.Request(
                self.seg.endpoint,
                data=body,
                method="POST",
                headers={"Content-Type": "application/json", "Authorization": self.auth, "User-Agent": "user-insights"},
            )
            wait = delay
            try:
                with urllib.request.urlopen(request, timeout=self.seg.timeout_seconds) as response:
                    response.read()
                    return Outcome(True, attempts=attempt)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:200].decode(errors="replace")
                reason = f"HTTP {exc.code} {detail}".strip()
                if exc.code in (401, 403):
                    return Outcome(False, f"HTTP {exc.code}: write key rejected", attempt, fatal=True)
                if exc.code == 429:
                    after = _retry_after(exc.headers.get("Retry-After"))
                    wait = after if after is not None else delay
                elif exc.code < 500:
                    return Outcome(False, reason, attempt)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
                cause = getattr(exc, "reason", exc)
                reason = f"{type(cause).__name__}: {cause}"
            if attempt <= self.seg.max_retries:
                log.info("segment batch attempt %d failed (%s); retrying in %.1fs", attempt, reason, wait)
                self.sleep(min(wait, self.seg.max_wait_seconds))
                delay *= 2
        return Outcome(False, f"gave up after {self.seg.max_retries + 1} attempts: {reason}", self.seg.max_retries + 1)


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
            for message in planned.messages:
                fh.write(json.dumps(message, sort_keys=True) + "\n")
        os.replace(tmp, path)
        log_rows += [(run_id, now, m["userId"], m["messageId"], "dry_run", "", 0) for m in planned.messages]
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
                [
                    (
                        m["userId"],
                        planned.hashes[m["messageId"]],
                        json.dumps(m["traits"]),
                        m["messageId"],
                        stamp,
                        run_id,
                    )
                    for m in batch
                ],
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
        log_rows += [
            (run_id, stamp, m["userId"], m["messageId"], status, outcome.reason, outcome.attempts) for m in batch
        ]
    _log(con, log_rows)
    if fatal:
        raise SegmentError(f"segment: {fatal}; {summary['failed']:,} users left for the next run")
    if summary["failed"]:
        log.warning("segment: %d users not delivered; they are retried next run", summary["failed"])
    return summary


def _log(con: duckdb.DuckDBPyConnection, rows: list[tuple[Any, ...]]) -> None:
    insert_rows(con, "segment.sync_log", rows)
