"""Shared test helpers: configs pointing at temporary warehouses, the shared fixtures."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INSIGHTS_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"


def write_config(tmp_path: Path, sources: list[dict[str, Any]], **sections: Any) -> Path:
    """An insights.yml in tmp_path with a private warehouse and the given sources."""
    body = {"warehouse": {"path": str(tmp_path / "wh.duckdb")}, "sources": sources, **sections}
    path = tmp_path / "insights.yml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.exists():
        pytest.fail(f"shared fixtures not found at {FIXTURES}; set INSIGHTS_SHARED")
    return FIXTURES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A real S3-protocol server (moto in server mode) on 127.0.0.1 for the session."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)
