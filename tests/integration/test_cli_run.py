"""``insights run`` as an operator sees it: a table of steps, and on failure a one-line
reason that names the failed step, with the later steps marked as not run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

INSIGHTS = str(Path(sys.executable).with_name("insights"))


def test_a_failed_step_is_named_with_its_cause(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-export"
    (tmp_path / "insights.yml").write_text(
        yaml.safe_dump(
            {
                "warehouse": {"path": str(tmp_path / "wh.duckdb")},
                "sources": [{"name": "web", "kind": "snowplow_enriched", "path": str(missing)}],
            }
        )
    )
    result = subprocess.run(
        [INSIGHTS, "--config", str(tmp_path / "insights.yml"), "run", "--as-of", "2026-11-01"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    reason = result.stderr.strip().splitlines()
    assert len(reason) == 1 and reason[0].startswith("insights: run failed: step 'ingest' failed")
    assert str(missing) in reason[0]
    board = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("│")}
    assert "failed" in board["ingest"]
    assert all("not run" in board[step] for step in ("transform", "train", "score", "export", "report"))
