"""A generated site big enough to learn from (several cutoffs, hundreds of buyers), ingested,
transformed, trained and scored once per test session."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from insights import steps
from insights.config import default_sources, load_config
from insights.sample import generate
from tests.conftest import write_config


@pytest.fixture(scope="session")
def learned(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Folder, config, as-of instant, train and score summaries (do not modify)."""
    root = tmp_path_factory.mktemp("learned")
    generate(str(root / "site"), users=1000, days=63, seed=11)
    summary = json.loads((root / "site" / "truth" / "summary.json").read_text())
    as_of = steps.parse_as_of(summary["end"])
    path = write_config(
        root,
        default_sources(str(root / "site")),
        ml={"model_dir": str(root / "models"), "report_dir": str(root / "eval")},
    )
    config = load_config(path, environ={})
    steps.ingest(config)
    steps.transform(config, as_of)
    trained = steps.train(config, as_of)
    scored = steps.score(config, as_of)
    return {"root": root, "config": config, "as_of": as_of, "train": trained, "score": scored}


def truth(root: Path) -> dict[str, dict]:
    users = {}
    for line in (root / "site" / "truth" / "users.jsonl").read_text().splitlines():
        row = json.loads(line)
        users[row["user_id"]] = row
    return users


def as_datetime(value: str) -> datetime:
    return steps.parse_as_of(value)
