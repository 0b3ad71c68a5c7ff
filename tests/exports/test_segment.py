"""Segment trait sync against a local /v1/batch server: only changes, limits, retries, no loss."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from exports.segment import SegmentError, batches, sync
from insights.config import Config
from insights.warehouse import connect
from tests.exports.conftest import rows
from tests.exports.segment_server import FakeSegment

AS_OF = datetime(2026, 11, 1)
IDENTIFIED = {f"u{u:03d}" for u in range(60) if u % 3 != 0}


def _live(config: Config, endpoint: str, **segment: object) -> Config:
    return config.model_copy(
        update={
            "segment": config.segment.model_copy(
                update={
                    "dry_run": False,
                    "endpoint": endpoint,
                    "backoff_seconds": 0.01,
                    "timeout_seconds": 2.0,
                    **segment,
                }
            )
        }
    )


def _run(config: Config, run_id: str, waits: list[float] | None = None, key: str = "wk-test") -> dict:
    con = connect(config)
    try:
        return sync(
            config,
            con,
            AS_OF,
            run_id,
            environ={"SEGMENT_WRITE_KEY": key},
            sleep=(waits.append if waits is not None else lambda s: None),
        )
    finally:
        con.close()


def test_dry_run_writes_what_would_be_sent(small: Config) -> None:
    summary = _run(small, "r1")
    assert summary["dry_run"] and summary["would_send"] == 40 and summary["added"] == 40 and summary["invalid"] == 0
    lines = [json.loads(line) for line in Path(small.segment.dry_run_path).read_text().splitlines()]
    assert {m["userId"] for m in lines} == IDENTIFIED
    traits = lines[0]["traits"]
    assert set(traits) == {f"insights_{k}" for k in small.segment.traits}
    assert traits["insights_recommended_items"][0].startswith("i0")
    assert rows(small, "select count(*) from segment.sent_traits") == [(0,)]
    assert rows(small, "select status, count(*) from segment.sync_log group by 1") == [("dry_run", 40)]


def test_sends_only_changes_within_limits(small: Config) -> None:
    with FakeSegment() as fake:
        config = _live(small, fake.endpoint, max_batch_messages=7)
        first = _run(config, "r1")
        assert first["sent"] == 40 and first["failed"] == 0 and first["batches"] == 6
        assert set(fake.users()) == IDENTIFIED  # anonymous users are never sent
        assert fake.users()["u001"]["insights_segment"] == "At risk"
        second = _run(config, "r2")
        assert (second["unchanged"], second["sent"], len(fake.requests)) == (40, 0, 6)
        con = connect(config)
        con.execute("update main.user_insights set purchase_probability = 0.99 where user_id = 'u004'")
        con.execute(
            "update main.user_insights set purchase_probability = purchase_probability + 0.0001 where user_id = 'u005'"
        )
        con.close()
        third = _run(config, "r3")
        assert (third["changed"], third["sent"]) == (1, 1)  # noise below the rounding is no change
        assert fake.users()["u004"]["insights_purchase_probability"] == 0.99
        assert max(fake.received.values()) == 1


def test_percentiles_go_whole_so_rank_drift_is_no_change(small: Config) -> None:
    """Every changed probability shifts the others' percentile ranks by hundredths; sent
    with two decimals, that alone re-sent most users each run. Percentiles go whole."""
    with FakeSegment() as fake:
        config = _live(small, fake.endpoint)
        assert _run(config, "r1")["sent"] == 40
        con = connect(config)
        con.execute("update main.user_insights set purchase_percentile = 55.42 where user_id in ('u004', 'u005')")
        con.close()
        _run(config, "r2")
        assert fake.users()["u004"]["insights_purchase_percentile"] == 55.0
        con = connect(config)
        con.execute("update main.user_insights set purchase_percentile = 55.45 where user_id = 'u004'")
        con.execute("update main.user_insights set purchase_percentile = 57.1 where user_id = 'u005'")
        con.close()
        third = _run(config, "r3")
        assert (third["changed"], third["sent"]) == (1, 1)
        assert fake.users()["u005"]["insights_purchase_percentile"] == 57.0
        assert fake.users()["u004"]["insights_purchase_probability"] is not None


def test_batches_respect_bytes_and_counts() -> None:
    messages = [{"messageId": str(i), "traits": {"x": "y" * 1000}} for i in range(2000)]
    groups = batches(messages, 2500, 500_000)
    assert sum(len(g) for g in groups) == 2000
    sizes = [len(json.dumps({"batch": g, "sentAt": "2026-11-01T00:00:00Z"}, separators=(",", ":"))) for g in groups]
    assert max(sizes) <= 500_000 and len(groups) == 5


def test_outage_then_recovery_delivers_everyone_once(small: Config) -> None:
    with FakeSegment() as fake:
        config = _live(small, fake.endpoint, max_batch_messages=10, max_retries=3, timeout_seconds=0.5)
        # Batch 1: 500, 429 (Retry-After 3), then accepted; batch 2: accepted but the reply is
        # late (the client times out and retries the same messages); batch 3: timeouts and 500s
        # past the retries, so it and batch 4 wait for the next run.
        fake.script = ["500", ("429", 3), None, "accept-then-hang", None, ("timeout", 1), "500", "500", "500"]
        waits: list[float] = []
        first = _run(config, "r1", waits)
        assert first["sent"] == 20 and first["failed"] == 20
        assert 3 in waits  # Retry-After honoured
        failed = rows(
            config, "select count(*), min(reason) from segment.sync_log where run_id = 'r1' and status = 'failed'"
        )
        assert failed[0][0] == 20 and ("gave up after 4 attempts" in failed[0][1] or "not attempted" in failed[0][1])
        assert rows(config, "select count(*) from segment.sent_traits") == [(20,)]
        second = _run(config, "r2", waits)  # endpoint recovered
        assert second["sent"] == 20 and second["unchanged"] == 20
    assert set(fake.users()) == IDENTIFIED
    duplicates = {m: n for m, n in fake.received.items() if n > 1}
    assert len(duplicates) == 10  # the late batch, received twice, kept once by its messageId
    assert len(fake.accepted) == 40


def test_invalid_messages_and_rejected_key(small: Config) -> None:
    con = connect(small)
    con.execute("update main.user_insights set segment = repeat('x', 40000) where user_id = 'u001'")
    con.close()
    with FakeSegment() as fake:
        config = _live(small, fake.endpoint)
        with pytest.raises(SegmentError, match="write key rejected"):
            _run(config, "r1", key="wrong")
        assert rows(config, "select count(*) from segment.sent_traits") == [(0,)]
        summary = _run(config, "r2")
        assert summary["invalid"] == 1 and summary["sent"] == 39
        reason = rows(config, "select reason from segment.sync_log where status = 'invalid' and run_id = 'r2'")[0][0]
        assert "over the 32,000-byte limit" in reason
    with pytest.raises(SegmentError, match=r"no write key in \$SEGMENT_WRITE_KEY"):
        _run(_live(small, "http://127.0.0.1:9/v1/batch"), "r3", key="")


def test_traits_are_encoded_as_json_would_encode_them() -> None:
    """The column-at-a-time encoder gives, for every kind of value, the very text of
    ``json.dumps`` over the cleaned value: the traits hash (and so what counts as changed)
    does not depend on how it was computed."""
    import duckdb

    from exports.segment import _clean, _encoded

    table = duckdb.sql(
        """
        select * from (values
            (0.125, 1.005::decimal(6, 3), 'plain', ['a', null, 'é "q" \\ n'],
             [{'dimension': 'category', 'value': 'Ünïcode', 'strength': 0.66666}, null,
              {'dimension': null, 'value': 'x', 'strength': 'nan'::double}],
             [[1.234, null], []], timestamp '2026-11-01 10:00:00', true, 42, map(['k'], [2.555]),
             {'b': 1, 'a': [0.5]}),
            ('nan'::double, null, null, null, null, null, null, null, null, null, null),
            ('inf'::double, -0.001, '', [], [], [null], date '2026-01-01', false, -1, map([], []), null),
            (-1e-7, 12345.678, '\t', ['x'], [{'dimension': 'brand', 'value': 'B', 'strength': 1.0}], [[2.0]],
             null, null, null, null, {'b': null, 'a': null})
        ) t(f, d, s, l, st, nested, ts, b, i, m, r)
        """
    ).to_arrow_table()
    rows = table.to_pylist()
    for name in table.column_names:
        got = _encoded(table.column(name), 2)
        values = [row[name] for row in rows]
        if name == "m":
            values = [None if v is None else dict(v) for v in values]
        want = [json.dumps(_clean(v, 2), sort_keys=True, separators=(",", ":")) for v in values]
        assert got == want, name
