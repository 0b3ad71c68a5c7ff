"""Shared test helpers: configs pointing at temporary warehouses, the shared fixtures."""

from __future__ import annotations

import os
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
