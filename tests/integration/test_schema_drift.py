"""Schema drift of a source between loads: a new column is ignored, a lost mapped column stops
the load with a message naming it (or, with schema_drift: load, loads the rest and warns),
a changed type quarantines the rows it breaks; earlier data is never touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from insights.ingest import IngestError
from tests.helpers import ingest, query

SOURCE = {
    "name": "clicks",
    "kind": "events_file",
    "columns": {
        "event_id": "id",
        "occurred_at": "ts",
        "anonymous_id": "visitor",
        "event_name": "action",
        "price": "amount",
    },
    "event_types": {"view": "product_view", "buy": "purchase"},
}
FIRST = "id,ts,visitor,action,amount\ne1,2026-10-01 10:00:00,v1,view,\ne2,2026-10-01 10:05:00,v1,buy,19.99\n"


def _start(tmp_path: Path, **extra: object) -> tuple[Path, dict]:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "2026-10-01.csv").write_text(FIRST)
    source = {**SOURCE, "path": str(folder), **extra}
    assert ingest(tmp_path, [source])["totals"]["loaded"] == 2
    return folder, source


def _events(tmp_path: Path) -> list[tuple]:
    return query(tmp_path, "select event_id, event_type, price from raw.events order by event_id")


def test_a_new_column_is_ignored(tmp_path: Path) -> None:
    folder, source = _start(tmp_path)
    (folder / "2026-10-02.csv").write_text("id,ts,visitor,action,amount,coupon\ne3,2026-10-02 09:00:00,v2,view,,XMAS\n")
    assert ingest(tmp_path, [source])["totals"]["loaded"] == 1
    assert [e[0] for e in _events(tmp_path)] == ["e1", "e2", "e3"]


def test_a_lost_column_stops_by_default_and_names_it(tmp_path: Path) -> None:
    folder, source = _start(tmp_path)
    before = _events(tmp_path)
    (folder / "2026-10-02.csv").write_text("id,ts,visitor,action\ne3,2026-10-02 09:00:00,v2,buy\n")
    with pytest.raises(
        IngestError, match=r"column 'amount' \(mapped to price\) is not in the data.*schema_drift: load"
    ):
        ingest(tmp_path, [source])
    assert _events(tmp_path) == before
    assert query(tmp_path, "select status from ingest.loads order by started_at desc limit 1") == [("failed",)]
    # Fixing the file (or the config) and running again loads it: nothing was marked as loaded.
    (folder / "2026-10-02.csv").write_text("id,ts,visitor,action,amount\ne3,2026-10-02 09:00:00,v2,buy,5\n")
    assert ingest(tmp_path, [source])["totals"]["loaded"] == 1


def test_a_lost_column_loads_the_rest_when_configured(tmp_path: Path) -> None:
    folder, source = _start(tmp_path, schema_drift="load")
    (folder / "2026-10-02.csv").write_text("id,ts,visitor,action\ne3,2026-10-02 09:00:00,v2,buy\n")
    summary = ingest(tmp_path, [source])
    assert summary["totals"]["loaded"] == 1
    assert any("column 'amount' (mapped to price) is missing" in w for w in summary["loads"][0]["warnings"])
    assert _events(tmp_path)[-1] == ("e3", "purchase", None)
    message = query(tmp_path, "select message from ingest.loads order by started_at desc limit 1")[0][0]
    assert "amount" in message


def test_a_changed_type_quarantines_the_rows_it_breaks(tmp_path: Path) -> None:
    folder, source = _start(tmp_path)
    (folder / "2026-10-02.csv").write_text(
        "id,ts,visitor,action,amount\ne3,2026-10-02 09:00:00,v2,buy,EUR 5\ne4,2026-10-02 09:01:00,v2,buy,6\n"
    )
    summary = ingest(tmp_path, [source])
    assert (summary["totals"]["loaded"], summary["totals"]["quarantined"]) == (1, 1)
    reason = query(tmp_path, "select reason from ingest.quarantine")[0][0]
    assert reason == "price (amount): not a double 'EUR 5'"
    assert [e[0] for e in _events(tmp_path)] == ["e1", "e2", "e4"]
