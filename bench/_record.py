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
