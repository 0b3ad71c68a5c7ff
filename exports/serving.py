"""The real-time recommendation table and its read API (``insights serve``, ``insights recs``).

Publication builds a new SQLite file next to the live one (one row per user, item and
trending scope, each holding its ranked list as JSON) and renames it over the live one:
``rename`` is atomic, so a reader opens either the old complete table or the new complete
table, never a half-written one. The file is never modified after it is published, so
readers open it read-only and ``immutable`` (no locks, no WAL needed); each reader thread
notices a new file by its inode and reopens.

Merchandising rules (``serving.rules``) apply at read time: out-of-stock items, excluded
categories (a path or any prefix of it) and items are dropped, boosts multiply scores and
re-rank, the list is filled from global trending when rules emptied it, and pinned items
go to their positions.
"""

from __future__ import annotations

import glob
import hmac
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import duckdb

from exports.filters import category_levels
from insights.config import Config, MerchandisingRules
from insights.storage import swap_in

log = logging.getLogger(__name__)

MAX_REQUEST_LINE = 2048


def _remove_leftovers(path: Path) -> None:
    """Delete the files of builds killed before their swap: a publication's (hundreds of MB at
    10M users) or a forget's copy (which names the people being forgotten). Whatever writes
    the table holds the warehouse (export, forget), so no such file is another's live build."""
    # The name is escaped: brackets or stars in it are characters, not a pattern that
    # could match another table's files.
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.building"):
        leftover.unlink(missing_ok=True)


def publish_table(config: Config, con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Build the SQLite table from the warehouse and swap it in atomically."""
    path = Path(config.resolve(config.serving.path))
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    building = path.with_name(f".{path.name}.{run_id}.{os.getpid()}.building")
    lists = {
        "recs": """select user_id as key, to_json(list({'item_id': item_id, 'score': round(score, 6),
                       'reason': reason} order by rank))::varchar from main.recommendations group by user_id""",
        "similar": """select item_id as key, to_json(list({'item_id': similar_item_id, 'score': round(score, 6),
                          'reason': 'similar'} order by rank))::varchar from main.item_similar group by item_id""",
        "trending": """select scope as key, to_json(list({'item_id': item_id, 'score': round(score, 6),
                           'reason': 'trending'} order by rank))::varchar from main.trending group by scope""",
    }
    if config.ml.exclude_purchased:
        # What each user bought: the read side never fills a list with it (ml.exclude_purchased).
        lists["bought"] = """select user_id as key, to_json(list(distinct item_id order by item_id))::varchar
                             from main.fct_interactions where purchases > 0 group by user_id"""
    meta = con.execute("select max(as_of)::varchar, max(model_version) from main.user_insights").fetchone()
    db = sqlite3.connect(building)
    counts = {}
    try:
        db.execute("pragma journal_mode = off")
        db.execute("pragma synchronous = off")
        for table, query in lists.items():
            db.execute(f"create table {table} (key text primary key, items text not null) without rowid")
            cursor = con.execute(query)
            counts[table] = 0
            while rows := cursor.fetchmany(50_000):
                db.executemany(f"insert into {table} values (?, ?)", rows)
                counts[table] += len(rows)
        db.execute(
            "create table items (item_id text primary key, title text, category text, brand text, in_stock integer)"
            " without rowid"
        )
        db.executemany(
            "insert into items values (?, ?, ?, ?, ?)",
            con.execute(
                "select item_id, title, category, brand, coalesce(in_stock, false) from main.dim_items"
            ).fetchall(),
        )
        # A logged-out visitor asks by the cookie id their identified user was stitched from.
        db.execute("create table aliases (key text primary key, user_id text not null) without rowid")
        cursor = con.execute(
            """select m.anonymous_id, m.user_id from main.dim_identity_map as m
               where m.anonymous_id is not null and m.user_id is not null and m.anonymous_id <> m.user_id
                 and m.user_id in (select user_id from main.recommendations)"""
        )
        counts["aliases"] = 0
        while rows := cursor.fetchmany(50_000):
            db.executemany("insert or ignore into aliases values (?, ?)", rows)
            counts["aliases"] += len(rows)
        db.execute("create table meta (key text primary key, value text)")
        published_at = datetime.now(UTC).isoformat(timespec="seconds")
        db.executemany(
            "insert into meta values (?, ?)",
            [("as_of", meta[0]), ("model_version", meta[1]), ("run_id", run_id), ("published_at", published_at)],
        )
        db.commit()
    finally:
        db.close()
    swap_in(building, path)
    return {
        "path": str(path),
        "users": counts["recs"],
        "items": counts["similar"],
        "trending_scopes": counts["trending"],
        "aliases": counts["aliases"],
    }


class RecTable:
    """Read side: per-thread read-only connections, reopened when a new file is swapped in."""

    def __init__(self, config: Config) -> None:
        self.path = Path(config.resolve(config.serving.path))
        self.rules: MerchandisingRules = config.serving.rules
        self.local = threading.local()
        self._items_lock = threading.Lock()
        self._items: tuple[int, dict[str, tuple[str, str, bool]]] | None = None
        self.rule_warnings: list[str] = []

    def _db(self) -> tuple[sqlite3.Connection, int]:
        try:
            inode = os.stat(self.path).st_ino
        except FileNotFoundError:
            raise LookupError(f"no recommendation table published yet at {self.path} (run insights export)") from None
        current = getattr(self.local, "db", None)
        if current is None or current[1] != inode:
            if current is not None:
                current[0].close()
            uri = f"file:{self.path}?mode=ro&immutable=1"
            db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self.local.db = (db, inode)
        return self.local.db

    def _items_for(self, db: sqlite3.Connection, inode: int) -> dict[str, tuple[str, str, bool]]:
        with self._items_lock:
            if self._items is None or self._items[0] != inode:
                rows = db.execute("select item_id, category, brand, in_stock from items").fetchall()
                self._items = (inode, {r[0]: (r[1] or "", r[2] or "", bool(r[3])) for r in rows})
                self.rule_warnings = unmatched_rules(self.rules, self._items[1])
                for warning in self.rule_warnings:
                    log.warning("serving.rules: %s", warning)
            return self._items[1]

    def check_rules(self) -> list[str]:
        """The rules that name nothing in the published table (loading its items)."""
        db, inode = self._db()
        self._items_for(db, inode)
        return self.rule_warnings

    def meta(self) -> dict[str, str]:
        db, _ = self._db()
        return dict(db.execute("select key, value from meta").fetchall())

    def _list(self, db: sqlite3.Connection, table: str, key: str) -> list[dict[str, Any]] | None:
        row = db.execute(f"select items from {table} where key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    @staticmethod
    def _optional(db: sqlite3.Connection, query: str, key: str) -> str | None:
        """One value (or None) from a table that tables published by earlier versions lack."""
        try:
            row = db.execute(query, (key,)).fetchone()
        except sqlite3.OperationalError:
            return None
        return row[0] if row else None

    def _allowed(self, item_id: str, items: dict[str, tuple[str, str, bool]]) -> bool:
        rules = self.rules
        info = items.get(item_id)
        if info is None or item_id in rules.exclude_items:
            return False
        category, _, in_stock = info
        if rules.exclude_out_of_stock and not in_stock:
            return False
        return not any(category == c or category.startswith(c + " > ") for c in rules.exclude_categories)

    def _boost(self, item_id: str, items: dict[str, tuple[str, str, bool]]) -> float:
        category, brand, _ = items.get(item_id, ("", "", False))
        factor = 1.0
        for rule in self.rules.boost:
            if (
                (rule.item_id is None or rule.item_id == item_id)
                and (rule.brand is None or rule.brand == brand)
                and (rule.category is None or category == rule.category or category.startswith(rule.category + " > "))
            ):
                factor *= rule.factor
        return factor

    def _apply(
        self, candidates: list[dict[str, Any]], db: sqlite3.Connection, inode: int, limit: int, skip: set[str]
    ) -> list[dict]:
        """The rules applied to ``candidates``; the items in ``skip`` (what the user bought,
        the item a similar list is about) are left out, of the trending fill and pins too."""
        items = self._items_for(db, inode)

        def allowed(item_id: str) -> bool:
            return item_id not in skip and self._allowed(item_id, items)

        kept = [c for c in candidates if allowed(c["item_id"])]
        if self.rules.boost:
            for c in kept:
                c["score"] = round(c["score"] * self._boost(c["item_id"], items), 6)
            kept.sort(key=lambda c: -c["score"])
        reserved = len([p for p in self.rules.pin if allowed(p.item_id)])
        if len(kept) < limit + reserved:
            seen = {c["item_id"] for c in kept}
            for c in self._list(db, "trending", "global") or []:
                if c["item_id"] not in seen and allowed(c["item_id"]):
                    kept.append(c)
                    seen.add(c["item_id"])
                if len(kept) >= limit + reserved:
                    break
        for pin in sorted(self.rules.pin, key=lambda p: p.position):
            if not allowed(pin.item_id):
                continue
            existing = next((c for c in kept if c["item_id"] == pin.item_id), None)
            kept = [c for c in kept if c["item_id"] != pin.item_id]
            entry = {"item_id": pin.item_id, "score": existing["score"] if existing else 0.0, "reason": "pinned"}
            kept.insert(min(pin.position - 1, len(kept)), entry)
        return kept[:limit]

    def user_recommendations(self, user_id: str, limit: int) -> dict[str, Any]:
        db, inode = self._db()
        key = user_id
        candidates = self._list(db, "recs", key)
        if candidates is None and (alias := self._optional(db, "select user_id from aliases where key = ?", key)):
            key = alias
            candidates = self._list(db, "recs", key)
        if candidates is None:
            candidates = self._list(db, "trending", "global") or []
        bought = json.loads(self._optional(db, "select items from bought where key = ?", key) or "[]")
        return {"user_id": user_id, "items": self._apply(candidates, db, inode, limit, set(bought))}

    def similar_items(self, item_id: str, limit: int) -> dict[str, Any] | None:
        db, inode = self._db()
        candidates = self._list(db, "similar", item_id)
        if candidates is None:
            return None
        return {"item_id": item_id, "items": self._apply(candidates, db, inode, limit, {item_id})}


def unmatched_rules(rules: MerchandisingRules, items: dict[str, tuple[str, str, bool]]) -> list[str]:
    """The rules that name an item, category or brand the published table does not hold:
    they do nothing (a typo, or an item gone from the catalog), so they are reported."""
    categories = {c for category, _, _ in items.values() if category for c in category_levels(category)}
    brands = {brand for _, brand, _ in items.values() if brand}
    problems = []
    named = [("exclude_items", i, items) for i in rules.exclude_items]
    named += [("exclude_categories", c, categories) for c in rules.exclude_categories]
    for rule in rules.boost:
        named += [("boost item_id", rule.item_id, items)] if rule.item_id is not None else []
        named += [("boost category", rule.category, categories)] if rule.category is not None else []
        named += [("boost brand", rule.brand, brands)] if rule.brand is not None else []
    named += [("pin item_id", p.item_id, items) for p in rules.pin]
    for where, name, known in named:
        if name not in known:
            problems.append(f"{where} {name!r} matches nothing in the published table's {len(items):,} items")
    return problems


def _limit(query: dict[str, list[str]], config: Config) -> int:
    raw = query.get("limit", [str(config.serving.default_limit)])[-1]
    if not raw.isdigit() or not 1 <= int(raw) <= config.serving.max_limit:
        raise ValueError(f"limit must be an integer from 1 to {config.serving.max_limit}")
    return int(raw)


def make_server(config: Config, host: str | None = None, port: int | None = None, token: str | None = None):  # noqa: ANN201
    """A threaded HTTP server for the read API (not started); ``token`` defaults to the
    variable named by ``serving.token_env``."""
    table = RecTable(config)
    secret = (token if token is not None else os.environ.get(config.serving.token_env)) or None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go in two writes: no 40 ms delayed-ACK stall
        server_version = "user-insights"
        sys_version = ""

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: HTTPStatus, message: str) -> None:
            self._send(status, {"error": message})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            started = time.perf_counter()
            if len(self.path) > MAX_REQUEST_LINE:
                return self._error(HTTPStatus.REQUEST_URI_TOO_LONG, "request too long")
            if int(self.headers.get("Content-Length") or 0) > 0:
                return self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "GET requests take no body")
            parts = urlsplit(self.path)
            segments = [unquote(s) for s in parts.path.strip("/").split("/")]
            try:
                if segments == ["healthz"]:
                    health = {"status": "ok", **table.meta()}
                    if table.check_rules():
                        health["rule_warnings"] = table.rule_warnings
                    return self._send(HTTPStatus.OK, health)
                if secret is not None:
                    given = self.headers.get("Authorization", "")
                    if not hmac.compare_digest(given.encode(), f"Bearer {secret}".encode()):
                        return self._error(HTTPStatus.UNAUTHORIZED, "missing or wrong bearer token")
                query = parse_qs(parts.query)
                if len(segments) == 4 and segments[:2] == ["v1", "users"] and segments[3] == "recommendations":
                    return self._send(HTTPStatus.OK, table.user_recommendations(segments[2], _limit(query, config)))
                if len(segments) == 4 and segments[:2] == ["v1", "items"] and segments[3] == "similar":
                    found = table.similar_items(segments[2], _limit(query, config))
                    if found is None:
                        return self._error(HTTPStatus.NOT_FOUND, "unknown item")
                    return self._send(HTTPStatus.OK, found)
                return self._error(HTTPStatus.NOT_FOUND, "no such endpoint")
            except ValueError as exc:
                return self._error(HTTPStatus.BAD_REQUEST, str(exc))
            except LookupError as exc:
                return self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
            finally:
                log.debug("%s in %.2f ms", self.path[:100], 1000 * (time.perf_counter() - started))

        def _refuse(self) -> None:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only API: GET only")

        do_POST = do_PUT = do_DELETE = do_PATCH = _refuse  # noqa: N815

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256

    server = Server((host or config.serving.host, config.serving.port if port is None else port), Handler)
    server.table = table
    return server


def recs(config: Config, user_id: str, limit: int | None = None) -> dict[str, Any]:
    """What the API answers for this user (``insights recs``)."""
    limit = config.serving.default_limit if limit is None else limit
    if not 1 <= limit <= config.serving.max_limit:
        raise ValueError(f"--limit must be from 1 to {config.serving.max_limit}")
    return RecTable(config).user_recommendations(user_id, limit)


def forget(config: Config, ids: list[str], dry_run: bool = False) -> dict[str, int]:
    """Remove the lists, purchases and cookies of ``ids`` from the published table; swapped in
    as a new publication is (the API picks it up), the copy vacuumed so nothing of theirs stays
    in its free pages. Returns the rows removed per table."""
    path = Path(config.resolve(config.serving.path))
    if not path.is_file():
        return {}
    _remove_leftovers(path)
    building = path.with_name(f".{path.name}.forget.{os.getpid()}.building")
    shutil.copyfile(path, building)
    db = sqlite3.connect(building)
    try:
        db.execute("create temp table forget_ids (id text primary key)")
        db.executemany("insert or ignore into forget_ids values (?)", [(i,) for i in ids])
        tables = {r[0] for r in db.execute("select name from sqlite_master where type = 'table'")}
        checks = {
            "recs": "key in (select id from forget_ids)",
            "bought": "key in (select id from forget_ids)",
            "aliases": "key in (select id from forget_ids) or user_id in (select id from forget_ids)",
        }
        verb = "select count(*) from" if dry_run else "delete from"
        removed = {}
        for table, condition in checks.items():
            if table in tables:
                cursor = db.execute(f"{verb} {table} where {condition}")
                count = cursor.fetchone()[0] if dry_run else cursor.rowcount
                if count:
                    removed[table] = count
        db.commit()
        if removed and not dry_run:
            db.execute("vacuum")
    finally:
        db.close()
    if removed and not dry_run:
        swap_in(building, path)
    else:
        building.unlink(missing_ok=True)
    return removed
