"""The benchmarks' record of how busy the machine was beside them (bench/_record.py)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("bench_record", ROOT / "bench" / "_record.py")
assert _spec is not None and _spec.loader is not None
bench_record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_record)

TICK = os.sysconf("SC_CLK_TCK")


def _stat(tmp_path: Path, name: str, user: int, system: int, idle: int, steal: int) -> Path:
    path = tmp_path / name
    # user nice system idle iowait irq softirq steal guest guest_nice, then the per-CPU lines
    path.write_text(f"cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\nintr 5\n")
    return path


def test_steal_and_other_processes_are_shares_of_the_interval(tmp_path: Path) -> None:
    before = bench_record.machine_cpu(_stat(tmp_path, "a", user=1000, system=100, idle=5000, steal=10))
    # Over the interval: 300 ticks of user, 100 of system, 50 idle, 50 stolen (500 in all).
    after = bench_record.machine_cpu(_stat(tmp_path, "b", user=1300, system=200, idle=5050, steal=60))
    assert before == {
        "user": 1000,
        "nice": 0,
        "system": 100,
        "idle": 5000,
        "iowait": 0,
        "irq": 0,
        "softirq": 0,
        "steal": 10,
    }
    own = 250 / TICK  # the benchmark's own CPU time: 250 of the 400 busy ticks
    load = bench_record.machine_load(before, after, own)
    assert load == {"steal_pct": 10.0, "others_cpu_seconds": round(150 / TICK, 1)}


def test_a_benchmark_alone_on_the_machine_shows_no_other_load(tmp_path: Path) -> None:
    before = bench_record.machine_cpu(_stat(tmp_path, "a", user=0, system=0, idle=0, steal=0))
    after = bench_record.machine_cpu(_stat(tmp_path, "b", user=900, system=100, idle=0, steal=0))
    # Its own CPU time can read a little above the machine's (different clocks): never negative.
    assert bench_record.machine_load(before, after, 1000 / TICK + 0.3) == {"steal_pct": 0.0, "others_cpu_seconds": 0.0}


@pytest.mark.parametrize("text", ["", "intr 5\n", "cpu0 1 2 3\n"])
def test_no_machine_figures_without_the_summary_line(tmp_path: Path, text: str) -> None:
    path = tmp_path / "stat"
    path.write_text(text)
    assert bench_record.machine_cpu(path) is None
    assert bench_record.machine_cpu(tmp_path / "missing") is None
    assert bench_record.machine_load(None, None, 1.0) == {}


def test_the_processor_is_named(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert bench_record.cpu_model(cpuinfo) == "Intel(R) Xeon(R) Processor"
    assert bench_record.cpu_model(tmp_path / "missing") is None


def test_the_machine_probe_runs_its_fixed_work_and_keeps_each_fastest_time(monkeypatch: pytest.MonkeyPatch) -> None:
    # Clock readings around each repeat's DuckDB part, then its Python part: the DuckDB part
    # takes 3, 1 and 2 s, the Python part 0.5, 0.75 and 0.25 s.
    readings = iter([0, 3, 3, 3.5, 10, 11, 11, 11.75, 20, 22, 22, 22.25])
    monkeypatch.setattr(bench_record.time, "perf_counter", lambda: next(readings))
    assert bench_record.machine_probe(repeats=3) == {"duckdb_s": 1.0, "python_s": 0.25}
    assert next(readings, None) is None, "each part is timed once per repeat"
