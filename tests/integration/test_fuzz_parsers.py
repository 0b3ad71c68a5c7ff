"""Property-based tests of every parser: files made of valid lines, mutated lines and
arbitrary text never crash ingestion; every bad line is quarantined with a reason; the
counts reconcile (lines read = loaded + duplicates + quarantined + control messages); and
the event of every valid line is in the warehouse."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from hypothesis import given
from hypothesis import strategies as st

from insights import steps
from insights.config import load_config
from tests.conftest import FIXTURES, write_config
from tests.helpers import fuzz_settings
from tests.unit.test_mapped_sources import ORDERS, STREAM

SETTINGS = fuzz_settings(40)
TSV = (FIXTURES / "snowplow_enriched_tsv" / "enriched_event_sample.tsv").read_text().rstrip("\n").split("\t")
ATOMIC = (FIXTURES / "snowplow_web" / "source" / "snowplow_web_events.csv").read_text().splitlines()
ATOMIC_HEADER = next(csv.reader([ATOMIC[0]]))
ATOMIC_ID = ATOMIC_HEADER.index("event_id")

# Arbitrary single lines: any characters but line breaks (which would make several lines).
junk = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=300)


def mutate(line: str) -> st.SearchStrategy[str]:
    """A valid line with damage: cut short, a slice deleted or replaced, text inserted."""
    n = len(line)
    return st.one_of(
        st.integers(0, n).map(lambda i: line[:i]),
        st.tuples(st.integers(0, n), st.integers(0, 40)).map(lambda t: line[: t[0]] + line[t[0] + t[1] :]),
        st.tuples(st.integers(0, n), junk).map(lambda t: (line[: t[0]] + t[1] + line[t[0] :]).replace("\n", " ")),
        st.tuples(st.integers(0, n), st.integers(1, 20), junk).map(
            lambda t: (line[: t[0]] + t[2] + line[t[0] + t[1] :]).replace("\n", " ")
        ),
    )


def lines(valid: Callable[[int], str]) -> st.SearchStrategy[list[tuple[str, str | None]]]:
    """(line, event id when the line is valid as written) in any order."""

    def one(i: int) -> st.SearchStrategy[tuple[str, str | None]]:
        good = valid(i)
        return st.one_of(
            st.just((good, f"id-{i}")),
            mutate(good).map(lambda s: (s, None)),
            junk.map(lambda s: (s, None)),
        )

    return st.lists(st.integers(0, 10_000), min_size=1, max_size=25, unique=True).flatmap(
        lambda ids: st.tuples(*[one(i) for i in ids]).map(list)
    )


@contextmanager
def _ingest(source: dict, files: dict[str, str]) -> Iterator[tuple[dict, duckdb.DuckDBPyConnection]]:
    """Ingest the files into a fresh warehouse; yields the summary and a reader, then cleans up
    (hypothesis runs each test many times, so every example's folder is removed)."""
    with tempfile.TemporaryDirectory(prefix="fuzz") as tmp:
        root = Path(tmp)
        folder = root / "in"
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text, encoding="utf-8", errors="surrogatepass")
        config = load_config(
            write_config(root, [{**source, "path": str(folder)}], validation={"enabled": False}), environ={}
        )
        summary = steps.ingest(config)
        con = duckdb.connect(str(root / "wh.duckdb"), read_only=True)
        try:
            yield summary, con
        finally:
            con.close()


def _check(summary: dict, con: duckdb.DuckDBPyConnection, expected_ids: set[str], table: str = "raw.events") -> None:
    totals = summary["totals"]
    assert totals["lines_read"] == (
        totals["loaded"] + totals["duplicates"] + totals["quarantined"] + totals["control_messages"]
    ), totals
    quarantined = con.execute(
        "select count(*), count(*) filter (where coalesce(reason, '') = '') from ingest.quarantine"
    ).fetchone()
    assert quarantined == (totals["quarantined"], 0)
    id_column = "event_id" if table == "raw.events" else "item_id"
    present = {r[0] for r in con.execute(f"select {id_column} from {table}").fetchall()}
    assert expected_ids <= present, expected_ids - present


def _tsv(i: int) -> str:
    fields = TSV.copy()
    fields[6] = f"id-{i}"
    return "\t".join(fields)


@SETTINGS
@given(lines(_tsv))
def test_enriched_tsv(rows: list[tuple[str, str | None]]) -> None:
    with _ingest(
        {"name": "web", "kind": "snowplow_enriched"}, {"events.tsv": "\n".join(line for line, _ in rows) + "\n"}
    ) as (summary, con):
        _check(summary, con, {i for _, i in rows if i})


def _atomic(i: int) -> str:
    row = next(csv.reader([ATOMIC[1 + i % (len(ATOMIC) - 1)]]))
    row[ATOMIC_ID] = f"id-{i}"
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(row)
    return out.getvalue()


@SETTINGS
@given(lines(_atomic))
def test_atomic_csv(rows: list[tuple[str, str | None]]) -> None:
    text = ATOMIC[0] + "\n" + "\n".join(line for line, _ in rows) + "\n"
    with _ingest({"name": "atomic", "kind": "snowplow_atomic"}, {"events.csv": text}) as (summary, con):
        # A stray quote in a damaged line may carry later lines into one quoted field: those are
        # quarantined with it, so only the reconciliation and reasons are asserted here.
        _check(summary, con, set())


def _singer(i: int) -> str:
    record = {
        "insert_id": f"id-{i}",
        "event_type": "Product Viewed",
        "event_time": "2026-10-01T10:00:00Z",
        "user_id": f"u{i % 7}",
        "device_id": "d1",
        "props": {"product_id": f"sku-{i % 5}", "price": 9.5},
    }
    return json.dumps({"type": "RECORD", "stream": "events", "record": record})


# A damaged line may rename the only record's column: load what can be loaded.
SINGER = {"name": "app", "kind": "singer_jsonl", "schema_drift": "load", "streams": {"events": STREAM}}


@SETTINGS
@given(lines(_singer))
def test_singer_jsonl(rows: list[tuple[str, str | None]]) -> None:
    state = json.dumps({"type": "STATE", "value": {"bookmark": 1}})
    text = "\n".join([state, *(line for line, _ in rows)]) + "\n"
    with _ingest(SINGER, {"events.jsonl": text}) as (summary, con):
        _check(summary, con, {i for _, i in rows if i})


def _order(i: int) -> str:
    items = [{"product_id": f"sku-{k}", "quantity": 1 + k, "price_set": {"amount": f"{k}.5"}} for k in range(i % 4)]
    record = {
        "id": f"id-{i}",
        "created_at": "2026-10-02T09:00:00Z",
        "customer": {"id": f"c{i % 5}"},
        "currency": "EUR",
        "line_items": items,
    }
    return json.dumps({"type": "RECORD", "stream": "orders", "record": record})


@SETTINGS
@given(lines(_order))
def test_singer_orders_exploded(rows: list[tuple[str, str | None]]) -> None:
    """Orders whose line items become events: damage anywhere in a record (its array
    included) quarantines that record whole; counts stay per record."""
    source = {"name": "shop", "kind": "singer_jsonl", "schema_drift": "load", "streams": {"orders": ORDERS}}
    with _ingest(source, {"orders.jsonl": "\n".join(line for line, _ in rows) + "\n"}) as (summary, con):
        _check(summary, con, {i for _, i in rows if i})
        # One event per line item (one for an order without any), all of the record's.
        counts = dict(
            con.execute("select split_part(event_id, '#', 1), count(*) from raw.events group by 1").fetchall()
        )
        for line, i in rows:
            # (A damaged copy of a record may keep its id and win the de-duplication.)
            if i and sum(f'"{i}"' in other for other, _ in rows) == 1:
                assert counts[i] == max(1, len(json.loads(line)["record"]["line_items"])), i


EVENTS_FILE = {
    "name": "clicks",
    "kind": "events_file",
    "schema_drift": "load",
    "columns": {
        "event_id": "id",
        "occurred_at": "ts",
        "anonymous_id": "visitor",
        "event_name": "action",
        "item_id": "sku",
    },
    "event_types": {"view": "product_view", "buy": "purchase"},
}


def _event_row(i: int) -> str:
    return f"id-{i},2026-10-01 10:{i % 60:02d}:00,v{i % 9},{'view' if i % 3 else 'buy'},sku-{i % 4}"


@SETTINGS
@given(lines(_event_row))
def test_events_file(rows: list[tuple[str, str | None]]) -> None:
    text = "id,ts,visitor,action,sku\n" + "\n".join(line for line, _ in rows) + "\n"
    with _ingest(EVENTS_FILE, {"export.csv": text}) as (summary, con):
        _check(summary, con, set())  # as for atomic CSV: quotes may join lines


def _item(i: int) -> str:
    return f"id-{i},Item {i},Outdoor > Tents,Brand{i % 3},{10 + i % 50}.5,true,2026-01-01"


@SETTINGS
@given(lines(_item))
def test_catalog(rows: list[tuple[str, str | None]]) -> None:
    text = "item_id,title,category,brand,price,in_stock,created_at\n" + "\n".join(line for line, _ in rows) + "\n"
    with _ingest({"name": "catalog", "kind": "catalog"}, {"items.csv": text}) as (summary, con):
        _check(summary, con, set(), table="raw.catalog_items")
