"""Airflow runs in child processes with a private AIRFLOW_HOME: its configuration is
process-wide and read at import, and the tests must never touch ~/airflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


def airflow_env(home: Path, config: Path, **extra: str) -> dict[str, str]:
    """The environment of an Airflow child: private home and database, this repo's dags/,
    no examples, and no AWS or Segment secrets of the caller (they must come from the
    connections the test defines)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "AIRFLOW", "INSIGHTS__", "SEGMENT_")) and k != "INSIGHTS_CONFIG"
    }
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
        INSIGHTS_CONFIG=str(config),
        OPENBLAS_NUM_THREADS="1",
        **extra,
    )
    return env


def airflow(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [AIRFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=env["AIRFLOW_HOME"]
    )
    if result.returncode != 0:
        pytest.fail(
            f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    return result


def prepare(env: dict[str, str]) -> None:
    """What Airflow 3.3 needs before dag.test(): a migrated database and serialized DAGs."""
    airflow(env, "db", "migrate")
    airflow(env, "dags", "reserialize")
