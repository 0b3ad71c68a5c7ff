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


def test_each_command_out_of_order_says_what_to_run_first(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """A new user's commands in the wrong order: each says which step comes first (some
    answered with a raw 'Catalog Error: Table ... does not exist'), and none but ingest
    makes a warehouse file (export and transform made an empty one)."""
    from insights.cli import main

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "items.csv").write_text("item_id,title\nsku-1,Tent\n")
    config = tmp_path / "insights.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "warehouse": {"path": str(tmp_path / "wh.duckdb")},
                "sources": [{"name": "catalog", "kind": "catalog", "path": str(catalog)}],
            }
        )
    )

    def said(*args: str) -> str:
        assert main(["--config", str(config), *args]) == 1
        return capsys.readouterr().err.strip()

    for command in (["transform"], ["train"], ["score"], ["export"], ["report"], ["cohort"], ["evaluate"]):
        assert said(*command).endswith(f"warehouse not found: {tmp_path / 'wh.duckdb'} (run `insights ingest` first)")
    assert not (tmp_path / "wh.duckdb").exists()
    assert main(["--config", str(config), "ingest"]) == 0
    capsys.readouterr()
    assert said("train") == "insights: train failed: main.fct_events does not exist yet: run insights transform first"
    assert said("evaluate").endswith("main.fct_events does not exist yet: run insights transform first")
    assert (
        said("cohort")
        == "insights: cohort failed: main.user_insights does not exist yet: run insights score before cohort"
    )
    assert said("export").endswith("main.user_insights does not exist yet: run insights score before export")
