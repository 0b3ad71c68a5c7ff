"""Where benchmark results go: one JSON line per run in bench/results/<name>.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"

# /proc/stat's first line: the machine's CPU time since boot by kind, in clock ticks.
_KINDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def machine_cpu(stat: Path = Path("/proc/stat")) -> dict[str, int] | None:
    """The machine's CPU time so far by kind (clock ticks, all CPUs together), or None where
    there is no /proc/stat (not Linux)."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return {kind: int(value) for kind, value in zip(_KINDS, first[1:])}


def machine_load(before: dict[str, int] | None, after: dict[str, int] | None, own_cpu: float) -> dict[str, Any]:
    """How busy the machine was between two :func:`machine_cpu` samples, besides the
    benchmark's own ``own_cpu`` seconds: ``steal_pct``, the share of the machine's CPU time
    the hypervisor gave to other guests (a slow hour of a shared host shows here, not in the
    code), and ``others_cpu_seconds``, CPU time used by processes other than the benchmark
    (another job on the machine). Empty without /proc/stat."""
    if before is None or after is None:
        return {}
    delta = {kind: after.get(kind, 0) - before.get(kind, 0) for kind in _KINDS}
    total = sum(delta.values())
    if total <= 0:
        return {}
    tick = os.sysconf("SC_CLK_TCK")  # /proc/stat was read: this is Linux
    busy = (total - delta["idle"] - delta["iowait"] - delta["steal"]) / tick
    return {
        "steal_pct": round(100 * delta["steal"] / total, 1),
        "others_cpu_seconds": round(max(0.0, busy - own_cpu), 1),
    }


# A fixed piece of the work the pipeline does, on one thread: DuckDB hashing, grouping (a
# hash table of 4M groups, larger than the caches: memory-bound, as most stages are) and
# sorting, and plain Python. Timed around a run, it says how fast the machine was then, so
# runs of different hours can be told apart by the machine as well as by the code (this
# shared host's speed changes by up to 1.7x an hour).
_PROBE_SQL = (
    "select count(*), sum(n) from (select hash(i) % 4000037 as k, count(*) as n from range(8000000) t(i) group by k)",
    "select sum(h) from (select hash(i) as h from range(3000000) t(i) order by h desc limit 100000)",
    "select count(distinct md5(i::varchar)) from range(1000000) t(i)",
)


def machine_probe(repeats: int = 3) -> dict[str, float]:
    """The fastest of ``repeats`` timings (seconds) of a fixed single-threaded workload:
    ``duckdb_s`` (hash, group, sort) and ``python_s`` (an interpreter loop); lower is a
    faster machine. About 5 s in all (bench/README.md gives the figures of its runs)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("set threads = 1")
        timings: dict[str, list[float]] = {"duckdb_s": [], "python_s": []}
        for _ in range(repeats):
            started = time.perf_counter()
            for sql in _PROBE_SQL:
                con.execute(sql).fetchall()
            timings["duckdb_s"].append(time.perf_counter() - started)
            started = time.perf_counter()
            counts: dict[str, int] = {}
            for i in range(800_000):
                text = str(i * 7919)
                counts[text[:4]] = counts.get(text[:4], 0) + 1
            timings["python_s"].append(time.perf_counter() - started)
    finally:
        con.close()
    return {name: round(min(values), 3) for name, values in timings.items()}


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The processor's name as the kernel reports it (which machine a figure came from)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def record(name: str, result: dict[str, Any]) -> None:
    """Append a run's figures (with the machine's CPU count and model, and the time) and print them."""
    result = {
        **result,
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps(result) + "\n")
    print(json.dumps(result, indent=2))


def run_child(command: list[str], **popen: Any) -> tuple[int, str, str, Any, float]:
    """Run a command; returns its exit code, stdout, stderr, its ``wait4`` resource usage
    (peak memory and CPU time, its own children included) and wall seconds. The output is
    read after the wait: commands whose output fits the pipes' buffers only."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out, err = proc.stdout.read(), proc.stderr.read()
    return proc.returncode, out, err, usage, time.perf_counter() - started
