"""A warehouse with the committed sample site ingested once per test session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from insights.config import default_sources
from tests.conftest import ROOT
from tests.helpers import ingest


@pytest.fixture(scope="session")
def sample_ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a config and warehouse holding the ingested sample (do not modify)."""
    tmp_path = tmp_path_factory.mktemp("sample_ingested")
    ingest(tmp_path, default_sources(str(ROOT / "data_samples")))
    return tmp_path


@pytest.fixture
def sample_warehouse(sample_ingested: Path, tmp_path: Path) -> Path:
    """A private copy of the ingested sample, with its config pointing at the copy."""
    shutil.copy(sample_ingested / "wh.duckdb", tmp_path / "wh.duckdb")
    config = (sample_ingested / "insights.yml").read_text().replace(str(sample_ingested), str(tmp_path))
    (tmp_path / "insights.yml").write_text(config)
    return tmp_path
