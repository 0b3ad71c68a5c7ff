"""Running ingestion in tests against a private warehouse."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from insights import steps
from insights.config import load_config
from tests.conftest import write_config


def source_files(tmp_path: Path, files: dict[str, str], folder: str = "files") -> Path:
    """A source folder under ``tmp_path`` holding these text files; returns the folder."""
    src = tmp_path / folder
    src.mkdir(exist_ok=True)
    for name, text in files.items():
        (src / name).write_text(text)
    return src


def ingest(tmp_path: Path, sources: list[dict[str, Any]], **sections: Any) -> dict[str, Any]:
    config = load_config(write_config(tmp_path, sources, **sections), environ={})
    return steps.ingest(config)


def query(tmp_path: Path, sql: str, params: list[Any] | None = None) -> list[tuple]:
    con = duckdb.connect(str(tmp_path / "wh.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def transform(tmp_path: Path, as_of: str, full_refresh: bool = False) -> dict[str, Any]:
    """dbt build of the warehouse written by :func:`ingest` (same tmp_path) as of ``as_of``."""
    config = load_config(tmp_path / "insights.yml", environ={})
    return steps.transform(config, steps.parse_as_of(as_of), full_refresh=full_refresh)


def fuzz_settings(max_examples: int) -> Any:
    """Settings of the property tests: the same examples every run (derandomized, no
    example database), no deadline (an example may ingest a warehouse)."""
    from hypothesis import HealthCheck, settings

    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
