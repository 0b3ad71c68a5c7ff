"""Forgetting people: which rows are theirs (a shared device's other user keeps theirs),
which raw text names them, and ingestion never loading them again; collecting their rows
for an access request by the same rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from insights import steps
from insights.config import ConfigError, load_config
from insights.privacy import ForgetError, mention_condition, read_ids, register_ids
from tests.conftest import write_config
from tests.helpers import query, source_files

HEADER = "ts,visitor,member,action,sku\n"
SOURCE = {
    "name": "clicks",
    "kind": "events_file",
    "columns": {"occurred_at": "ts", "anonymous_id": "visitor", "user_id": "member", "event_name": "action",
                "item_id": "sku"},
    "event_types": {"view": "product_view", "buy": "purchase"},
}  # fmt: skip


def test_a_user_their_cookies_and_their_lines_go_a_shared_devices_other_user_stays(tmp_path: Path) -> None:
    src = source_files(
        tmp_path,
        {
            "day1.csv": HEADER + "2026-10-01 10:00:00,c1,,view,sku-1\n"  # u1 before logging in: goes
            "2026-10-01 10:01:00,c1,u1,view,sku-1\n"  # u1: goes
            "2026-10-01 10:02:00,c2,u1,view,sku-2\n"  # u1 on a shared device: goes
            "2026-10-01 10:03:00,c2,u10,view,sku-2\n"  # u10 logged in on that device: stays
            "2026-10-01 10:04:00,c2,,view,sku-3\n"  # logged out on the shared device: goes (whose?)
            "2026-10-01 10:05:00,c3,u10,buy,sku-3\n"  # stays
            "2026-10-01 10:06:00,c4,,view,sku-4\n"  # stays
            "not a time,c1,u1,view,sku-1\n"  # quarantined, names u1: goes
            "not a time,c3,u10,view,sku-1\n"  # quarantined, u10 (u1 is part of the text): stays
        },
    )
    config = load_config(write_config(tmp_path, [{**SOURCE, "path": str(src)}]), environ={})
    steps.ingest(config)

    # What the warehouse holds about u1 (an access request): the rows forget would remove.
    found = steps.person(config, ["u1"], str(tmp_path / "requests" / "u1.json"))
    assert found["rows"] == {"ingest.quarantine": 1, "raw.events": 4} and (found["users"], found["cookies"]) == (1, 2)
    written = json.loads((tmp_path / "requests" / "u1.json").read_text())
    assert sorted((r["anonymous_id"], r["user_id"] or "") for r in written["tables"]["raw.events"]) == [
        ("c1", ""),
        ("c1", "u1"),
        ("c2", ""),
        ("c2", "u1"),
    ]
    assert written["tables"]["ingest.quarantine"][0]["raw_text"] == "not a time,c1,u1,view,sku-1"

    dry = steps.forget(config, ["u1"], dry_run=True)
    assert dry["warehouse"] == {"ingest.quarantine": 1, "raw.events": 4} and dry["request_id"] is None
    assert len(query(tmp_path, "select * from raw.events")) == 7

    summary = steps.forget(config, ["u1"])
    assert (summary["users"], summary["cookies"], summary["unknown"]) == (1, 2, [])
    assert summary["warehouse"] == {"ingest.quarantine": 1, "raw.events": 4}
    assert query(tmp_path, "select anonymous_id, user_id from raw.events order by occurred_at") == [
        ("c2", "u10"),
        ("c3", "u10"),
        ("c4", None),
    ]
    assert [r[0] for r in query(tmp_path, "select raw_text from ingest.quarantine")] == ["not a time,c3,u10,view,sku-1"]
    assert query(tmp_path, "select id, kind, person from privacy.forgotten order by id") == [
        ("c1", "cookie", "u1"),
        ("c2", "cookie", "u1"),
        ("u1", "user", "u1"),
    ]

    # The next delivery: u1 under a new cookie, their old cookie, a bad line of theirs.
    (src / "day2.csv").write_text(
        HEADER + "2026-10-02 10:00:00,c1,,view,sku-1\n"  # forgotten cookie
        "2026-10-02 10:01:00,c9,u1,view,sku-1\n"  # forgotten user
        "2026-10-02 10:02:00,c2,u10,view,sku-1\n"  # u10 on the shared device: loads
        "2026-10-02 10:03:00,c5,,view,sku-1\n"  # loads
        "not a time,c9,u1,buy,sku-1\n"  # forgotten, not quarantined
    )
    loaded = steps.ingest(config)["totals"]
    assert (loaded["lines_read"], loaded["loaded"], loaded["quarantined"], loaded["forgotten"]) == (5, 2, 0, 3)
    assert query(tmp_path, "select count(*) from raw.events where user_id = 'u1' or anonymous_id = 'c1'") == [(0,)]
    assert query(tmp_path, "select sum(forgotten) from ingest.loads") == [(3,)]
    assert "3 of forgotten people" in steps.headline("ingest", {"totals": loaded})

    # Asking again for the same person finds the ids recorded before (their events are gone).
    again = steps.forget(config, ["u1"])
    assert (again["users"], again["cookies"], again["warehouse"]) == (1, 2, {})
    # An access request now shows no rows, and the erasure's trail: which request, when done.
    audit = steps.person(config, ["u1"], str(tmp_path / "requests" / "u1-after.json"))
    assert audit["rows"] == {}
    assert [(e["id"], e["kind"], e["request_id"]) for e in audit["erasure"]] == [
        ("c1", "cookie", summary["request_id"]),
        ("c2", "cookie", summary["request_id"]),
        ("u1", "user", summary["request_id"]),
    ]
    assert all(e["finished_at"] and not e["segment_pending"] for e in audit["erasure"])
    # A warehouse from before Segment deletions, read before any step that writes.
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("drop table privacy.segment_deletions")
    con.close()
    older = steps.person(config, ["u1"], str(tmp_path / "requests" / "u1-older.json"))
    assert older["erasure"] == audit["erasure"]


def test_an_unknown_id_is_recorded_so_it_never_loads(tmp_path: Path) -> None:
    src = source_files(tmp_path, {"day1.csv": HEADER + "2026-10-01 10:00:00,c1,,view,sku-1\n"})
    config = load_config(write_config(tmp_path, [{**SOURCE, "path": str(src)}]), environ={})
    steps.ingest(config)
    assert steps.forget(config, ["u-later"])["unknown"] == ["u-later"]
    (src / "day2.csv").write_text(HEADER + "2026-10-02 10:00:00,c7,u-later,view,sku-1\n")
    assert steps.ingest(config)["totals"]["forgotten"] == 1


def test_the_models_lose_the_shared_devices_anonymous_events_with_the_raw_ones(tmp_path: Path) -> None:
    src = source_files(
        tmp_path,
        {
            "day1.csv": HEADER + "2026-10-01 10:00:00,c1,u1,view,sku-1\n"
            "2026-10-01 10:02:00,c2,u1,view,sku-2\n"  # u1 on a device u10 uses later
            "2026-10-01 12:03:00,c2,u10,view,sku-2\n"  # u10's session: stays ...
            "2026-10-01 12:04:00,c2,,view,sku-3\n"  # ... but its anonymous event goes
            "2026-10-01 12:05:00,c3,u10,buy,sku-3\n"  # stays
            "2026-10-01 15:00:00,c2,,view,sku-5\n"  # an anonymous session on the device: goes
        },
    )
    config = load_config(write_config(tmp_path, [{**SOURCE, "path": str(src)}]), environ={})
    steps.ingest(config)
    steps.transform(config, steps.parse_as_of("2026-10-02"))
    sessions = "select min(occurred_at)::varchar, session_id from main.fct_events group by 2 order by 1"
    by_start = dict(query(tmp_path, sessions))
    # The models stitch the anonymous session to the device's last user (u10).
    assert query(tmp_path, "select user_id, logged_in_user_id from main.fct_sessions where session_id = ?",
                 [by_start["2026-10-01 15:00:00"]]) == [("u10", None)]  # fmt: skip

    held = steps.person(config, ["u1"], str(tmp_path / "u1.json"))["rows"]
    summary = steps.forget(config, ["u1"])
    assert summary["warehouse"]["raw.events"] == 4 and held == summary["warehouse"]
    # The models hold exactly the raw events that stayed, and only sessions with events left.
    assert query(tmp_path, "select event_id from main.fct_events order by 1") == query(
        tmp_path, "select event_id from raw.events order by 1"
    )
    assert query(tmp_path, "select session_id from main.fct_sessions order by 1") == sorted(
        (by_start[t],) for t in ("2026-10-01 12:03:00", "2026-10-01 12:05:00")
    )


def test_events_past_the_retention_go_with_the_models_rows_made_from_them(tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)

    def ago(days: int, minutes: int = 0) -> str:
        return f"{now - timedelta(days=days) + timedelta(minutes=minutes):%Y-%m-%d %H:%M:%S}"

    src = source_files(
        tmp_path,
        {
            "day1.csv": HEADER + f"{ago(200)},c1,u1,view,sku-1\n"  # older than the retention: goes
            f"{ago(200, 1)},c1,,view,sku-2\n"  # goes, and their session with them
            f"{ago(10)},c1,u1,buy,sku-1\n"  # stays
            f"{ago(10, 1)},c2,,view,sku-3\n"  # stays
            "not a time,c3,,view,sku-1\n"  # quarantined now: stays until it is old
            "not a time either,c4,,view,sku-1\n"  # aged by hand below: goes
        },
    )
    path = write_config(tmp_path, [{**SOURCE, "path": str(src)}])
    config = load_config(path, environ={})
    assert steps.ingest(config)["expired"] == {}  # no retention set: nothing expires
    steps.transform(config, now)
    assert query(tmp_path, "select count(*) from main.fct_events") == [(4,)]
    sessions = query(tmp_path, "select count(*) from main.fct_sessions")[0][0]
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("update ingest.quarantine set quarantined_at = now() - interval 300 day where raw_text like '%c4%'")
    con.close()

    with pytest.raises(ConfigError, match=r"privacy.retention_days 100 is shorter than the 154 days"):
        load_config(path, environ={"INSIGHTS__PRIVACY__RETENTION_DAYS": "100"})
    kept = load_config(path, environ={"INSIGHTS__PRIVACY__RETENTION_DAYS": "180"})
    summary = steps.ingest(kept)  # nothing new to load: the expiry runs all the same
    removed = summary["expired"]["removed"]
    assert removed["raw.events"] == 2 and removed["main.fct_events"] == 2 and removed["main.fct_sessions"] == 1
    assert removed["ingest.quarantine"] == 1
    assert "2 events past privacy.retention_days removed" in steps.headline("ingest", summary)
    assert query(tmp_path, "select event_id from main.fct_events order by 1") == query(
        tmp_path, "select event_id from raw.events order by 1"
    )
    assert query(tmp_path, "select count(*) from main.fct_sessions") == [(sessions - 1,)]
    assert query(tmp_path, "select count(*), min(raw_text) from ingest.quarantine") == [
        (1, "not a time,c3,,view,sku-1")
    ]
    assert steps.ingest(kept)["expired"]["removed"] == {}


def test_compaction_leaves_no_byte_of_the_removed_rows(tmp_path: Path) -> None:
    lines = "".join(f"2026-10-01 10:{m:02d}:00,c{m},,view,sku-{m}\n" for m in range(50))
    src = source_files(tmp_path, {"day1.csv": HEADER + lines + "2026-10-01 11:00:00,c99,u1,buy,sku-only-u1-bought\n"})
    config = load_config(write_config(tmp_path, [{**SOURCE, "path": str(src)}]), environ={})
    steps.ingest(config)
    warehouse = tmp_path / "wh.duckdb"
    assert b"sku-only-u1-bought" in warehouse.read_bytes()  # not vacuous: the value is in the file
    leftover = tmp_path / ".wh.duckdb.compact"
    leftover.write_bytes(b"a copy a killed compaction left")

    summary = steps.forget(config, ["u1"], compact=True)
    assert summary["warehouse"] == {"raw.events": 1}
    assert summary["compaction"]["tables"] >= 8 and summary["compaction"]["bytes_after"] == warehouse.stat().st_size
    assert b"sku-only-u1-bought" not in warehouse.read_bytes() and not leftover.exists()
    # The rest is all there, the forgotten ids still refused.
    assert query(tmp_path, "select count(*), count(distinct item_id) from raw.events") == [(50, 50)]
    (src / "day2.csv").write_text(
        HEADER + "2026-10-02 10:00:00,c99,u1,view,sku-1\n2026-10-02 10:01:00,c7,,view,sku-1\n"
    )
    totals = steps.ingest(config)["totals"]
    assert (totals["loaded"], totals["forgotten"]) == (1, 1)
    assert steps.compact(config)["tables"] == summary["compaction"]["tables"]


@pytest.mark.parametrize(
    ("text", "id_", "names"),
    [
        ('{"user_id": "u1", "email": "x@example.com"}', "u1", True),
        ('{"user_id": "u10"}', "u1", False),
        ("a\tu1\tb", "u1", True),
        ("a\tu10\tb", "u1", False),
        ("2026-10-01,u1,view", "u1", True),
        ('{"customer_id": 12345, "price": 9}', "12345", True),
        ('{"price": 123456}', "12345", False),
        ('{"price": 12345.5}', "12345", False),
        ('{"ids": ["a", "u1"]}', "u1", True),
        ("the user u1 said", "u1", False),  # not a field
        ("it's o'brien", "o'brien", False),
        ('{"id": "o\'brien"}', "o'brien", True),  # quotes in ids are data
        ('{"user_id": "jos\\u00e9"}', "josé", True),  # written as ASCII only
        ('{"user_id": "say \\"hi\\""}', 'say "hi"', True),
        ('{"user_id": "jos\\u00e9x"}', "josé", False),
    ],
)
def test_raw_text_names_an_id_only_as_a_field(text: str, id_: str, names: bool) -> None:
    con = duckdb.connect()
    register_ids(con, [id_])
    con.execute("create table t as select ?::varchar as text", [text])
    assert con.execute(f"select {mention_condition('t', 'text')} from t").fetchone()[0] is names


def test_ids_from_arguments_and_a_file(tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("# erasure requests, week 48\nu2\n\nu1\nu3\n")
    assert read_ids(["u1", "u1"], str(path)) == ["u1", "u2", "u3"]
    with pytest.raises(ForgetError, match="no ids given"):
        read_ids([])
    with pytest.raises(ForgetError, match="argument 2: an empty id"):
        read_ids(["u1", " "])
    path.write_bytes(b"u1\r\n u2 \r\n")  # a file's lines are trimmed (Windows line ends too)
    assert read_ids([], str(path)) == ["u1", "u2"]
    with pytest.raises(ForgetError, match=r"argument 1: ' u2' has spaces around it"):
        read_ids([" u2"])
    with pytest.raises(ForgetError, match="cannot read the ids file"):
        read_ids([], str(tmp_path / "missing.txt"))
