"""Where benchmark results go: one JSON line per run in bench/results/<name>.jsonl."""

from __future__ import annotations

import json
import os
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
