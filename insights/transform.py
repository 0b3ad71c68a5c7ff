"""Running the dbt project (``dbt_project/``) against the warehouse, in a child process.

The CLI's ``insights transform`` and the Airflow tasks call :func:`run_dbt`; it turns the
configuration's ``transform`` section and the as-of instant into dbt vars, points the
profile at the warehouse file and keeps dbt's target/ and logs/ next to that file.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from insights import faults
from insights.config import Config

log = logging.getLogger(__name__)

DBT_PROJECT_DIR = Path(__file__).resolve().parents[1] / "dbt_project"


class TransformError(RuntimeError):
    """dbt failed: the message names the failing model or test and dbt's reason."""


@dataclass
class NodeResult:
    name: str
    kind: str
    status: str
    seconds: float
    rows: int | None = None
    message: str | None = None


@dataclass
class TransformResult:
    as_of: str
    command: str
    nodes: list[NodeResult] = field(default_factory=list)

    @property
    def models(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.kind == "model"]

    @property
    def tests(self) -> list[NodeResult]:
        return [n for n in self.nodes if n.kind in ("test", "unit_test")]


def _dbt_environment(config: Config, as_of: datetime) -> tuple[dict[str, str], Path]:
    """The child process's environment (profile settings, target and log folders beside the
    warehouse, the as-of instant) and that folder; this process's own environment is left
    alone. The instant goes by environment, not as a dbt var: vars that change every run
    make dbt parse the whole project again, a changed environment variable only the files
    that read it (dbt_project's as_of_text macro)."""
    warehouse = Path(config.resolve(config.warehouse.path)).resolve()
    work = warehouse.parent / "dbt"
    env = {
        **os.environ,
        "INSIGHTS_AS_OF": as_of.strftime("%Y-%m-%d %H:%M:%S.%f"),
        "INSIGHTS_WAREHOUSE_PATH": str(warehouse),
        "INSIGHTS_DBT_THREADS": str(config.warehouse.threads),
        "INSIGHTS_DBT_MEMORY_LIMIT": config.warehouse.memory_limit,
        "DBT_TARGET_PATH": str(work / "target"),
        "DBT_LOG_PATH": str(work / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_PARTIAL_PARSE": "true",
    }
    return env, work


def run_dbt(
    config: Config,
    as_of: datetime,
    command: str = "build",
    select: list[str] | None = None,
    full_refresh: bool = False,
    extra_args: list[str] | None = None,
    extra_vars: dict[str, Any] | None = None,
) -> TransformResult:
    """Run one dbt command (build by default) on the warehouse as of ``as_of``.

    dbt runs in a child process: its DuckDB connection, memory and global state end with
    it, and the warehouse file is free for the next step. Raises TransformError naming
    every failed node and dbt's message.
    """
    Path(config.resolve(config.warehouse.path)).parent.mkdir(parents=True, exist_ok=True)
    args = [
        command,
        "--project-dir",
        str(DBT_PROJECT_DIR),
        "--profiles-dir",
        str(DBT_PROJECT_DIR),
        "--vars",
        json.dumps({**config.transform.dbt_vars(), **(extra_vars or {})}),
        "--no-use-colors",
    ]
    if select:
        args += ["--select", *select]
    if full_refresh:
        args.append("--full-refresh")
    args += extra_args or []
    dbt = Path(sys.executable).with_name("dbt")
    runner = [str(dbt)] if dbt.exists() else [sys.executable, "-m", "dbt.cli.main"]
    env, work = _dbt_environment(config, as_of)
    results_file = work / "target" / "run_results.json"
    results_file.unlink(missing_ok=True)
    faults.reached("transform.dbt")
    proc = subprocess.run(runner + args, capture_output=True, text=True, env=env)
    log.debug("dbt %s output:\n%s", command, proc.stdout)
    result = TransformResult(as_of=as_of.isoformat(sep=" "), command=command)
    failures: list[str] = []
    if results_file.exists():
        for item in json.loads(results_file.read_text()).get("results", []):
            unique_id = item.get("unique_id", "")
            kind = unique_id.split(".")[0]
            name = unique_id.split(".")[2] if unique_id.count(".") >= 2 else unique_id
            rows = (item.get("adapter_response") or {}).get("rows_affected")
            node = NodeResult(
                name=name,
                kind=kind,
                status=str(item.get("status", "")).lower(),
                seconds=round(float(item.get("execution_time") or 0.0), 3),
                rows=rows if isinstance(rows, int) and rows >= 0 else None,
                message=item.get("message"),
            )
            result.nodes.append(node)
            if node.status in ("error", "fail"):
                reason = (node.message or node.status).strip().splitlines()[0]
                failures.append(f"{kind} {name}: {reason}")
    if proc.returncode != 0:
        if not failures:
            lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
            errors = [line for line in lines if "error" in line.lower()] or lines[-3:]
            # dbt prefixes its lines with a clock time: keep only what it says.
            failures.append(" | ".join(re.sub(r"^\d\d:\d\d:\d\d\s+", "", line.strip()) for line in errors[:4]))
        raise TransformError(f"dbt {command} failed: " + "; ".join(failures))
    return result


# The as-of-dependent models the learning step reads, with what they need.
SNAPSHOT_MODELS = (
    "int_events_as_of",
    "int_funnel_user_days",
    "fct_user_affinities",
    "dim_users",
    "fct_interactions",
    "dim_items",
)
# What the training examples of a past cutoff read (dim_users and the models it is built from),
# and what the ALS time split reads.
FEATURE_MODELS = frozenset({"int_events_as_of", "int_funnel_user_days", "fct_user_affinities", "dim_users"})
INTERACTION_MODELS = frozenset({"int_events_as_of", "fct_interactions"})


def snapshot_schema_name(as_of: datetime) -> str:
    """The schema that holds the point-in-time snapshot as of ``as_of``."""
    return f"pit_{as_of:%Y%m%d_%H%M%S}"


def build_snapshot(config: Config, as_of: datetime, models: frozenset[str] | None = None) -> str:
    """Build the as-of-dependent models (features, interactions, item stats; or only
    ``models`` of them) as of a past instant into their own schema and return its name; main
    is left as it is.

    The learning step needs features at several past cutoffs (training examples) from the
    very SQL that computes today's features, so there is one definition of every feature.
    """
    schema = snapshot_schema_name(as_of)
    wanted = set(SNAPSHOT_MODELS) if models is None else set(models)
    run_dbt(
        config,
        as_of,
        "run",
        select=[m for m in SNAPSHOT_MODELS if m in wanted],
        extra_vars={"insights__snapshot_schema": schema},
    )
    return schema
