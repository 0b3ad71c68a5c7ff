"""Where benchmark results go: one JSON line per run in bench/results/<name>.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def record(name: str, result: dict[str, Any]) -> None:
    """Append a run's figures (with the machine's CPU count and the time) and print them."""
    result = {**result, "cpus": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
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
