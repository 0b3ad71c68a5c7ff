"""Singer JSONL and events files mapped onto the canonical schema by configuration."""

import json
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from insights.ingest import IngestError
from tests.helpers import ingest, query, source_files

STREAM = {
    "columns": {
        "event_id": "insert_id",
        "event_name": "event_type",
        "occurred_at": "event_time",
        "user_id": "user_id",
        "anonymous_id": "device_id",
        "item_id": "props.product_id",
        "price": "props.price",
    },
    "event_types": {"Product Viewed": "product_view", "Order Completed": "purchase"},
}


def _record(i: int, event: str = "Product Viewed", price: object = 9.5) -> str:
    rec = {
        "insert_id": f"e{i}",
        "event_type": event,
        "event_time": "2026-10-01T10:00:00Z",
        "user_id": "u1",
        "device_id": "d1",
        "props": {"product_id": "sku-1", "price": price},
    }
    return json.dumps({"type": "RECORD", "stream": "events", "record": rec})


def test_singer_messages_records_schema_state_and_bad_lines(tmp_path: Path) -> None:
    lines = [
        json.dumps(
            {"type": "SCHEMA", "stream": "events", "schema": {"type": "object"}, "key_properties": ["insert_id"]}
        ),
        _record(1),
        _record(2, "Order Completed"),
        _record(3, "Wishlist Opened"),
        _record(1),  # a replayed record: same id
        '{"type": "RECORD", "stream": "events", "record": {"insert_id": "e4"',  # cut off
        _record(5, price="ten dollars"),
        json.dumps({"type": "RECORD", "stream": "customers", "record": {"customer_id": "u1", "email": "a@b.c"}}),
        json.dumps({"type": "STATE", "value": {"bookmarks": {"events": "2026-10-01"}}}),
    ]
    src = source_files(tmp_path, {"tap.jsonl": "\n".join(lines) + "\n"}, "singer")

    summary = ingest(
        tmp_path, [{"name": "app", "kind": "singer_jsonl", "path": str(src), "streams": {"events": STREAM}}]
    )

    t = summary["totals"]
    assert (t["lines_read"], t["loaded"], t["duplicates"], t["quarantined"], t["control_messages"]) == (9, 4, 1, 2, 2)
    events = dict(query(tmp_path, "select event_id, event_type from raw.events"))
    assert events == {"e1": "product_view", "e2": "purchase", "e3": "custom"}
    name, price, item = query(tmp_path, "select event_name, price, item_id from raw.events where event_id = 'e3'")[0]
    assert (name, price, item) == ("Wishlist Opened", 9.5, "sku-1")
    reasons = [r[0] for r in query(tmp_path, "select reason from ingest.quarantine order by line_number")]
    assert reasons[0].startswith("invalid JSON")
    assert "price (props.price): not a double 'ten dollars'" in reasons[1]
    assert query(tmp_path, "select count(*) from raw.singer_records where stream = 'customers'") == [(1,)]
    assert query(tmp_path, "select count(*) from raw.singer_state") == [(1,)]


def test_events_file_csv_with_column_and_event_type_maps(tmp_path: Path) -> None:
    src = source_files(
        tmp_path,
        {
            "export.csv": "ts,visitor,member,action,sku,amount\n"
            "2026-10-01 10:00:00,v1,,view,sku-1,\n"
            "2026-10-01 10:05:00,v1,m1,buy,sku-1,19.99\n"
            "not a time,v2,,view,sku-2,\n"
            "2026-10-01 10:09:00,,,view,sku-2,\n"
            "2026-10-01 10:10:00,v3\n"
        },
    )
    source = {
        "name": "clicks",
        "kind": "events_file",
        "path": str(src),
        "columns": {
            "occurred_at": "ts",
            "anonymous_id": "visitor",
            "user_id": "member",
            "event_name": "action",
            "item_id": "sku",
            "price": "amount",
        },
        "event_types": {"view": "product_view", "buy": "purchase"},
    }
    summary = ingest(tmp_path, [source])
    t = summary["totals"]
    assert (t["lines_read"], t["loaded"], t["quarantined"]) == (5, 2, 3)
    rows = query(tmp_path, "select event_type, user_id, anonymous_id, price from raw.events order by occurred_at")
    assert rows == [("product_view", None, "v1", None), ("purchase", "m1", "v1", 19.99)]
    reasons = [r[0] for r in query(tmp_path, "select reason from ingest.quarantine order by line_number")]
    assert "occurred_at (ts): not a timestamp 'not a time'" in reasons[0]
    assert reasons[1] == "no user_id or anonymous_id"
    assert reasons[2] == "expected 6 comma-separated fields, found 2"
    # Rows without an id get a deterministic one: loading again from another copy dedups.
    ids = [r[0] for r in query(tmp_path, "select event_id from raw.events")]
    assert all(len(i) == 32 for i in ids)


def test_times_as_epoch_numbers_and_compact_dates(tmp_path: Path) -> None:
    """Exports from GA4 (microseconds), Mixpanel (seconds), Segment or a warehouse
    (milliseconds) hold times as Unix epoch numbers; they were quarantined as 'not a
    timestamp'. Their size tells the unit; a number of no such size is still refused."""
    src = source_files(
        tmp_path,
        {
            "export.csv": "ts,visitor\n"
            "1759312800,v-seconds\n"
            "1759312800250,v-millis\n"
            "1759312800250123,v-micros\n"
            "1759312800.5,v-fraction\n"
            "20261001,v-date\n"
            "2026-10-01T12:00:00+02:00,v-iso\n"
            "12345,v-short\n"
        },
    )
    source = {"name": "x", "kind": "events_file", "path": str(src), "event_type": "page_view",
              "columns": {"occurred_at": "ts", "anonymous_id": "visitor"}}  # fmt: skip
    t = ingest(tmp_path, [source])["totals"]
    assert (t["loaded"], t["quarantined"]) == (6, 1)
    assert query(tmp_path, "select anonymous_id, occurred_at from raw.events order by anonymous_id") == [
        ("v-date", datetime(2026, 10, 1)),
        ("v-fraction", datetime(2025, 10, 1, 10, 0, 0, 500000)),
        ("v-iso", datetime(2026, 10, 1, 10)),
        ("v-micros", datetime(2025, 10, 1, 10, 0, 0, 250123)),
        ("v-millis", datetime(2025, 10, 1, 10, 0, 0, 250000)),
        ("v-seconds", datetime(2025, 10, 1, 10)),
    ]
    assert query(tmp_path, "select reason from ingest.quarantine") == [("occurred_at (ts): not a timestamp '12345'",)]


def test_events_file_parquet_canonical_names(tmp_path: Path) -> None:
    src = tmp_path / "files"
    src.mkdir()
    pq.write_table(
        pa.table(
            {
                "event_id": ["a", "b"],
                "event_type": ["purchase", "page_view"],
                "occurred_at": ["2026-10-01T10:00:00Z", "2026-10-01T11:00:00+02:00"],
                "user_id": ["u1", "u2"],
                "price": [5.0, None],
            }
        ),
        src / "e.parquet",
    )
    ingest(tmp_path, [{"name": "pq", "kind": "events_file", "path": str(src)}])
    rows = query(tmp_path, "select event_id, event_type, strftime(occurred_at, '%H:%M') from raw.events order by 1")
    assert rows == [("a", "purchase", "10:00"), ("b", "page_view", "09:00")]


def test_mapping_to_a_missing_column_names_it(tmp_path: Path) -> None:
    src = source_files(tmp_path, {"e.csv": "when,who\n2026-10-01,v1\n"})
    source = {"name": "x", "kind": "events_file", "path": str(src), "columns": {"occurred_at": "timestamp"}}
    with pytest.raises(IngestError, match="column 'timestamp'.*not in the data.*when, who"):
        ingest(tmp_path, [source])


def test_catalog_snapshot_upserts_and_quarantines(tmp_path: Path) -> None:
    src = source_files(
        tmp_path,
        {
            "items.csv": "item_id,title,category,brand,price,in_stock,created_at\n"
            "sku-1,Tent,Outdoor > Tents,Northpeak,120.5,true,2026-01-01\n"
            "sku-2,Mug,Home,Casa,cheap,yes,2026-01-01\n"
            ",Nameless,Home,Casa,1,no,2026-01-01\n"
        },
        "catalog",
    )
    summary = ingest(tmp_path, [{"name": "catalog", "kind": "catalog", "path": str(src)}])
    assert (summary["totals"]["loaded"], summary["totals"]["quarantined"]) == (1, 2)
    (src / "items.csv").write_text(
        "item_id,title,category,brand,price,in_stock,created_at\n"
        "sku-1,Tent v2,Outdoor > Tents,Northpeak,99,false,2026-01-01\n"
        "sku-2,Mug,Home,Casa,4.5,yes,2026-01-01\n"
    )
    ingest(tmp_path, [{"name": "catalog", "kind": "catalog", "path": str(src)}])
    assert query(tmp_path, "select item_id, title, price, in_stock from raw.catalog_items order by 1") == [
        ("sku-1", "Tent v2", 99.0, False),
        ("sku-2", "Mug", 4.5, True),
    ]
    assert query(tmp_path, "select count(*) from ingest.quarantine") == [(0,)]


def _message(kind: str, stream: str = "products", **body: object) -> str:
    return json.dumps({"type": kind, "stream": stream, **body})


def test_catalog_from_a_singer_products_stream(tmp_path: Path) -> None:
    """A tap's products stream as target-jsonl writes it: RECORDs of `stream` are the items
    (other streams, SCHEMA and STATE are counted as control messages, not quarantined),
    `variants.0.price` reads the first variant's price from the JSON list, a stock count
    maps to in_stock (above zero), and a bad value is quarantined naming the mapped column
    and the value."""
    product = {"id": 101, "title": "Trail Tent", "body_html": "<p>Two-person tent</p>", "product_type": "Outdoor > Tents",
               "vendor": "Northpeak", "created_at": "2026-09-01T10:00:00-04:00",
               "variants": [{"price": "199.00", "inventory_quantity": 3}, {"price": "229.00"}]}  # fmt: skip
    lines = [
        _message("SCHEMA", schema={"properties": {"id": {"type": "integer"}}}, key_properties=["id"]),
        _message("RECORD", record=product),
        _message(
            "RECORD", record={"id": 102, "title": "Stove", "variants": [{"price": 49.5, "inventory_quantity": 0}]}
        ),
        _message("RECORD", "collections", record={"id": 9, "title": "Summer"}),
        _message("RECORD", record={"id": 103, "title": "Odd", "variants": [{"price": "free"}]}),
        json.dumps({"type": "STATE", "value": {"bookmarks": {"products": "2026-11-01"}}}),
    ]
    src = source_files(tmp_path, {"products-20261101.jsonl": "\n".join(lines) + "\n"}, "shop")
    columns = {"item_id": "id", "description": "body_html", "category": "product_type", "brand": "vendor",
               "price": "variants.0.price", "in_stock": "variants.0.inventory_quantity"}  # fmt: skip
    source = {"name": "shop", "kind": "catalog", "path": str(src), "stream": "products", "columns": columns}
    t = ingest(tmp_path, [source])["totals"]
    assert (t["lines_read"], t["loaded"], t["quarantined"], t["control_messages"]) == (6, 2, 1, 3)
    assert query(
        tmp_path,
        "select item_id, title, description, category, brand, price, in_stock, created_at from raw.catalog_items order by 1",
    ) == [
        (
            "101",
            "Trail Tent",
            "<p>Two-person tent</p>",
            "Outdoor > Tents",
            "Northpeak",
            199.0,
            True,
            datetime(2026, 9, 1, 14),
        ),
        ("102", "Stove", None, None, None, 49.5, False, None),  # a stock count of 0: out of stock
    ]
    assert query(tmp_path, "select line_number, reason from ingest.quarantine") == [
        (5, "price (variants.0.price): not a number 'free'")
    ]
    assert ingest(tmp_path, [source])["loads"] == []  # nothing twice
    # Without `stream`, every stream's records are items (the collection too).
    (tmp_path / "all").mkdir()
    t = ingest(tmp_path / "all", [{**source, "stream": None}])["totals"]
    assert (t["loaded"], t["control_messages"]) == (3, 2)


ORDERS = {
    "explode": "line_items",
    "event_type": "purchase",
    "columns": {
        "event_id": "id",
        "occurred_at": "created_at",
        "user_id": "customer.id",
        "order_id": "id",
        "currency": "currency",
        "item_id": "line_items.product_id",
        "quantity": "line_items.quantity",
        "price": "line_items.price_set.amount",
    },
}


def _order(order_id: str, items: object, **extra: object) -> str:
    rec = {"id": order_id, "created_at": "2026-10-02T09:00:00Z", "customer": {"id": "c1"}, "currency": "EUR"}
    return json.dumps({"type": "RECORD", "stream": "orders", "record": {**rec, "line_items": items, **extra}})


def _item(sku: str, quantity: object, amount: object) -> dict:
    return {"product_id": sku, "quantity": quantity, "price_set": {"amount": amount}}


def test_singer_orders_explode_into_one_purchase_per_line_item(tmp_path: Path) -> None:
    """An order record (as a Shopify or WooCommerce tap writes it) becomes one purchase per
    line item; a record with an element of the wrong type, or line items that are not an
    array, is quarantined whole; counts stay per record; loading again adds nothing."""
    lines = [
        _order("o1", [_item("sku-1", 2, "10.50"), _item("sku-2", 1, 4), _item("sku-3", 1, None)]),
        _order("o2", [_item("sku-1", 1, 10.5)]),
        _order("o3", [_item("sku-1", 1, 10.5), _item("sku-2", "two", 4)]),
        _order("o4", {"product_id": "sku-1"}),
        _order("o5", []),
        _order("o1", [_item("sku-1", 2, "10.50")]),  # a replayed order: the same id
    ]
    src = source_files(tmp_path, {"orders.jsonl": "\n".join(lines) + "\n"}, "singer")
    source = {"name": "shop", "kind": "singer_jsonl", "path": str(src), "streams": {"orders": ORDERS}}

    t = ingest(tmp_path, [source])["totals"]
    assert (t["lines_read"], t["loaded"], t["duplicates"], t["quarantined"]) == (6, 3, 1, 2)
    rows = query(
        tmp_path,
        "select event_id, event_type, order_id, user_id, item_id, quantity, price, currency from raw.events order by 1",
    )
    assert rows == [
        ("o1", "purchase", "o1", "c1", "sku-1", 2.0, 10.5, "EUR"),
        ("o1#2", "purchase", "o1", "c1", "sku-2", 1.0, 4.0, "EUR"),
        ("o1#3", "purchase", "o1", "c1", "sku-3", 1.0, None, "EUR"),
        ("o2", "purchase", "o2", "c1", "sku-1", 1.0, 10.5, "EUR"),
        ("o5", "purchase", "o5", "c1", None, None, None, "EUR"),  # no line items: the order alone
    ]
    reasons = dict(query(tmp_path, "select line_number, reason from ingest.quarantine"))
    assert reasons == {
        3: "quantity (line_items.quantity): not a double 'two'",
        4: "line_items: not a JSON array",
    }
    again = ingest(tmp_path, [source])["totals"]
    assert again["files"] == 0 and query(tmp_path, "select count(*) from raw.events") == [(5,)]


def test_events_file_explodes_a_json_array_column(tmp_path: Path) -> None:
    src = source_files(
        tmp_path,
        {
            "orders.csv": "order,ts,buyer,items\n"
            'A1,2026-10-01 10:00:00,m1,"[{""sku"": ""s1"", ""qty"": 3}, {""sku"": ""s2"", ""qty"": 1}]"\n'
            "A2,2026-10-01 11:00:00,m2,not json\n"
        },
    )
    source = {
        "name": "orders",
        "kind": "events_file",
        "path": str(src),
        "explode": "items",
        "event_type": "purchase",
        "columns": {"event_id": "order", "order_id": "order", "occurred_at": "ts", "user_id": "buyer",
                    "item_id": "items.sku", "quantity": "items.qty"},
    }  # fmt: skip
    t = ingest(tmp_path, [source])["totals"]
    assert (t["lines_read"], t["loaded"], t["quarantined"]) == (2, 1, 1)
    assert query(tmp_path, "select event_id, item_id, quantity from raw.events order by 1") == [
        ("A1", "s1", 3.0),
        ("A1#2", "s2", 1.0),
    ]
    assert query(tmp_path, "select reason from ingest.quarantine") == [("items: not a JSON array",)]


def test_an_explode_column_missing_from_the_data_names_it(tmp_path: Path) -> None:
    src = source_files(tmp_path, {"e.csv": "order,ts,buyer\nA1,2026-10-01,m1\n"})
    source = {
        "name": "x",
        "kind": "events_file",
        "path": str(src),
        "explode": "items",
        "columns": {"event_id": "order", "occurred_at": "ts", "user_id": "buyer", "item_id": "items.sku"},
    }
    with pytest.raises(IngestError, match="column 'items' \\(explode\\) is not in the data.*buyer, order, ts"):
        ingest(tmp_path, [source])
    summary = ingest(tmp_path, [{**source, "schema_drift": "load"}])
    assert (
        summary["totals"]["loaded"] == 1 and "column 'items' (explode) is missing" in summary["loads"][0]["warnings"][0]
    )


def test_dots_reach_into_parquet_structs_and_json_text_columns(tmp_path: Path) -> None:
    """Nested Parquet values (structs, lists of structs, with decimals and times inside) and
    JSON text in a CSV column are read by dotted names; a list explodes into line items."""
    from datetime import datetime
    from decimal import Decimal

    src = tmp_path / "files"
    src.mkdir()
    pq.write_table(
        pa.table(
            {
                "id": ["A1", "A2"],
                "ts": [datetime(2026, 10, 1, 10), datetime(2026, 10, 1, 11)],
                "who": [{"id": "u1"}, {"id": "u2"}],
                "items": [
                    [{"sku": "s1", "qty": 2, "price": Decimal("9.50"), "at": datetime(2026, 10, 1, 9, 59)}],
                    [{"sku": "s2", "qty": 1, "price": Decimal("3.00"), "at": datetime(2026, 10, 1, 10, 59)}] * 2,
                ],
            }
        ),
        src / "orders.parquet",
    )
    (src / "orders.csv").write_text(
        "id,ts,who,items\n"
        'A3,2026-10-02 10:00:00,"{""id"": ""u3""}","[{""sku"": ""s3"", ""qty"": 1, ""price"": 5}]"\n'
        'A4,2026-10-02 11:00:00,not json,"[]"\n'
    )
    columns = {"event_id": "id", "occurred_at": "ts", "user_id": "who.id", "item_id": "items.sku",
               "quantity": "items.qty", "price": "items.price"}  # fmt: skip
    source = {"name": "o", "kind": "events_file", "path": str(src), "pattern": "orders.*", "explode": "items",
              "event_type": "purchase", "columns": columns}  # fmt: skip
    t = ingest(tmp_path, [source])["totals"]
    assert (t["lines_read"], t["loaded"], t["quarantined"]) == (4, 3, 1)
    assert query(tmp_path, "select event_id, user_id, item_id, quantity, price from raw.events order by 1") == [
        ("A1", "u1", "s1", 2.0, 9.5),
        ("A2", "u2", "s2", 1.0, 3.0),
        ("A2#2", "u2", "s2", 1.0, 3.0),
        ("A3", "u3", "s3", 1.0, 5.0),
    ]
    # Not JSON where JSON is mapped: no user id found, and the line says so.
    assert query(tmp_path, "select reason from ingest.quarantine") == [("no user_id or anonymous_id",)]


def test_record_columns_cannot_come_from_an_exploded_array(tmp_path: Path) -> None:
    src = source_files(tmp_path, {"e.csv": "order,ts,items\nA1,2026-10-01,[]\n"})
    source = {"name": "x", "kind": "events_file", "path": str(src), "explode": "items",
              "columns": {"event_id": "order", "occurred_at": "items.at", "user_id": "items.buyer"}}  # fmt: skip
    with pytest.raises(IngestError, match="occurred_at is mapped into the exploded array \\('items.at'\\)"):
        ingest(tmp_path, [source])


def test_a_ga4_export_with_key_value_params_and_items(tmp_path: Path) -> None:
    """GA4's BigQuery export (here as Parquet): times in epoch microseconds, the page and
    session in `event_params`, a list of {key, value} structs read with `[key=...]`, and a
    purchase's `items` exploded into one event per item. It has no event id: each event
    gets a deterministic one, so loading the same export again adds nothing."""
    params = pa.list_(
        pa.struct(
            [("key", pa.string()), ("value", pa.struct([("string_value", pa.string()), ("int_value", pa.int64())]))]
        )
    )
    items = pa.list_(pa.struct([("item_id", pa.string()), ("price", pa.float64()), ("quantity", pa.int64())]))

    def event(micros: int, name: str, page: str, bought: list[dict] | None = None) -> dict:
        return {
            "event_timestamp": micros, "event_name": name, "user_pseudo_id": "ga-1", "user_id": None,
            "event_params": [{"key": "ga_session_id", "value": {"string_value": None, "int_value": 1759312800}},
                             {"key": "page_location", "value": {"string_value": page, "int_value": None}}],
            "items": bought or [], "ecommerce": {"transaction_id": "T1" if name == "purchase" else None},
        }  # fmt: skip

    rows = [
        event(1759312800000000, "page_view", "https://shop/"),
        event(1759312805000000, "view_item", "https://shop/p/s1", [{"item_id": "s1", "price": 10.0, "quantity": 1}]),
        event(1759312900000000, "purchase", "https://shop/thanks",
              [{"item_id": "s1", "price": 10.0, "quantity": 2}, {"item_id": "s2", "price": 5.5, "quantity": 1}]),
    ]  # fmt: skip
    schema = pa.schema([("event_timestamp", pa.int64()), ("event_name", pa.string()), ("user_pseudo_id", pa.string()),
                        ("user_id", pa.string()), ("event_params", params), ("items", items),
                        ("ecommerce", pa.struct([("transaction_id", pa.string())]))])  # fmt: skip
    src = tmp_path / "ga4"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema), src / "events_20251001.parquet")
    source = {
        "name": "ga4", "kind": "events_file", "path": str(src), "explode": "items",
        "columns": {"occurred_at": "event_timestamp", "anonymous_id": "user_pseudo_id", "user_id": "user_id",
                    "event_name": "event_name", "session_id": "event_params[key=ga_session_id].value.int_value",
                    "page_url": "event_params[key=page_location].value.string_value", "item_id": "items.item_id",
                    "price": "items.price", "quantity": "items.quantity", "order_id": "ecommerce.transaction_id"},
        "event_types": {"page_view": "page_view", "view_item": "product_view", "purchase": "purchase"},
    }  # fmt: skip
    t = ingest(tmp_path, [source])["totals"]
    assert (t["lines_read"], t["loaded"], t["quarantined"]) == (3, 3, 0)  # records; the purchase is two events
    assert query(
        tmp_path,
        "select event_type, occurred_at, session_id, page_url, item_id, price, quantity, order_id "
        "from raw.events order by occurred_at, item_id",
    ) == [
        ("page_view", datetime(2025, 10, 1, 10), "1759312800", "https://shop/", None, None, None, None),
        ("product_view", datetime(2025, 10, 1, 10, 0, 5), "1759312800", "https://shop/p/s1", "s1", 10.0, 1.0, None),
        ("purchase", datetime(2025, 10, 1, 10, 1, 40), "1759312800", "https://shop/thanks", "s1", 10.0, 2.0, "T1"),
        ("purchase", datetime(2025, 10, 1, 10, 1, 40), "1759312800", "https://shop/thanks", "s2", 5.5, 1.0, "T1"),
    ]
    (src / "events_20251001_copy.parquet").write_bytes((src / "events_20251001.parquet").read_bytes())
    assert ingest(tmp_path, [source])["totals"]["duplicates"] == 3


def test_catalog_columns_over_every_variant(tmp_path: Path) -> None:
    """`variants.*.x` takes every variant's value: in stock if any variant is (a product
    whose first variant is sold out is still on sale), the lowest price ("from 19.00"), the
    first value otherwise; a bad value in any variant is quarantined naming it. An events
    map refuses `*` (an event takes one element, or explode)."""
    products = [
        {"id": 1, "variants": [{"sku": "1-S", "price": "24.00", "inventory_quantity": 0},
                               {"sku": "1-M", "price": "19.00", "inventory_quantity": 4}]},
        {"id": 2, "variants": [{"sku": "2-S", "price": "9.50", "inventory_quantity": 0},
                               {"sku": "2-M", "inventory_quantity": 0}]},
        {"id": 3, "variants": []},
        {"id": 4, "variants": [{"price": "12.00"}, {"price": "soon"}]},
    ]  # fmt: skip
    src = source_files(
        tmp_path, {"products.jsonl": "\n".join(_message("RECORD", record=p) for p in products) + "\n"}, "shop"
    )
    columns = {"item_id": "id", "title": "variants.*.sku", "price": "variants.*.price",
               "in_stock": "variants.*.inventory_quantity"}  # fmt: skip
    t = ingest(tmp_path, [{"name": "shop", "kind": "catalog", "path": str(src), "columns": columns}])["totals"]
    assert (t["loaded"], t["quarantined"]) == (3, 1)
    assert query(tmp_path, "select item_id, title, price, in_stock from raw.catalog_items order by 1") == [
        ("1", "1-S", 19.0, True),
        ("2", "2-S", 9.5, False),
        ("3", None, None, None),
    ]
    assert query(tmp_path, "select reason from ingest.quarantine") == [
        ("price (variants.*.price): not a number 'soon'",)
    ]

    events_wh = tmp_path / "events"
    events_wh.mkdir()
    events = source_files(events_wh, {"e.csv": 'id,ts,u,items\ne1,2026-10-01T10:00:00Z,a,"[{""sku"": ""x""}]"\n'})
    source = {"name": "ev", "kind": "events_file", "path": str(events), "event_type": "page_view",
              "columns": {"event_id": "id", "occurred_at": "ts", "anonymous_id": "u", "item_id": "items.*.sku"}}  # fmt: skip
    with pytest.raises(IngestError, match=r"'items\.\*\.sku': '\*' \(every element of a list\) is for catalog"):
        ingest(events_wh, [source])
    source["columns"]["item_id"] = "items.0.sku"  # one element: loads
    assert ingest(events_wh, [source])["totals"]["loaded"] == 1
    assert query(events_wh, "select item_id from raw.events") == [("x",)]
