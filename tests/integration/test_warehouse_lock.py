"""One writer at a time across processes: a step waits for another process's step to finish
writing the warehouse instead of failing on DuckDB's lock, and gives up with a message
that names the holder after warehouse.lock_timeout_seconds."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from insights.config import load_config
from insights.warehouse import WarehouseBusy, connect, exclusive, lock_path

HOLD = """
import sys, time
from insights.config import load_config
from insights.warehouse import connect, exclusive
config = load_config(sys.argv[1], environ={})
with exclusive(config, "transform"):
    con = connect(config, create=True)
    con.execute("create table if not exists main.owner as select 'child' as who")
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
    con.close()
"""


def _config(tmp_path: Path, timeout: float):  # noqa: ANN202
    (tmp_path / "insights.yml").write_text(
        f"warehouse: {{path: {tmp_path / 'wh.duckdb'}, lock_timeout_seconds: {timeout}}}\n"
    )
    return load_config(tmp_path / "insights.yml", environ={})


def _hold(tmp_path: Path, seconds: float) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "insights.yml"), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "holding"
    return child


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    config = _config(tmp_path, 60)
    child = _hold(tmp_path, 1.5)
    started = time.monotonic()
    with exclusive(config, "ingest"):
        waited = time.monotonic() - started
        con = connect(config)  # would fail on DuckDB's own lock while the child writes
        assert con.execute("select who from main.owner").fetchone()[0] == "child"
        con.close()
    assert child.wait(timeout=30) == 0
    assert waited >= 0.5


def test_giving_up_names_the_step_that_holds_the_warehouse(tmp_path: Path) -> None:
    config = _config(tmp_path, 0.5)
    child = _hold(tmp_path, 5)
    try:
        with pytest.raises(WarehouseBusy, match=r"ingest: .*step 'transform' \(pid \d+"):
            with exclusive(config, "ingest"):
                pass
    finally:
        child.kill()
        child.wait()
    # A killed holder leaves no lock behind: the kernel releases it with the process.
    with exclusive(config, "ingest"):
        assert lock_path(config).exists()


def test_steps_nest_within_one_process(tmp_path: Path) -> None:
    config = _config(tmp_path, 0.5)
    with exclusive(config, "run"):
        with exclusive(config, "ingest"):
            pass
        with exclusive(config, "transform"):
            pass
