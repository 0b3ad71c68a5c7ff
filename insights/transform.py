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
import shutil
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
        "INSIGHTS_AS_OF": _as_of_env(as_of),
        "INSIGHTS_WAREHOUSE_PATH": str(warehouse),
        "INSIGHTS_DBT_THREADS": str(config.warehouse.threads),
        "INSIGHTS_DBT_MEMORY_LIMIT": config.warehouse.memory_limit,
        "DBT_TARGET_PATH": str(work / "target"),
        "DBT_LOG_PATH": str(work / "logs"),
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DBT_PARTIAL_PARSE": "true",
    }
    return env, work


@dataclass(frozen=True)
class DbtInvocation:
    """One dbt command as of one instant (what :func:`run_dbt` takes, as a value)."""

    as_of: datetime
    command: str = "build"
    select: list[str] | None = None
    full_refresh: bool = False
    extra_args: list[str] | None = None
    extra_vars: dict[str, Any] | None = None
    unit_tests: bool | None = None  # None: the configuration's transform.unit_tests


def run_dbt(
    config: Config,
    as_of: datetime,
    command: str = "build",
    select: list[str] | None = None,
    full_refresh: bool = False,
    extra_args: list[str] | None = None,
    extra_vars: dict[str, Any] | None = None,
    unit_tests: bool | None = None,
) -> TransformResult:
    """Run one dbt command (build by default) on the warehouse as of ``as_of``.

    dbt runs in a child process: its DuckDB connection, memory and global state end with
    it, and the warehouse file is free for the next step. Raises TransformError naming
    every failed node and dbt's message.

    A build or test leaves out the project's unit tests unless ``unit_tests`` (by default
    ``transform.unit_tests``) says to run them: their inputs are fixed fixtures, so they
    check the SQL, which only changes with the code (``make test`` runs them), and in the
    hourly build at 10M events they took 2.6 s of dbt's threads, most of it on the path to
    the models they gate.
    """
    invocation = DbtInvocation(as_of, command, select, full_refresh, extra_args, extra_vars, unit_tests)
    return run_dbt_many(config, [invocation])[0]


def _as_of_env(as_of: datetime) -> str:
    return as_of.strftime("%Y-%m-%d %H:%M:%S.%f")


def run_dbt_many(config: Config, invocations: list[DbtInvocation]) -> list[TransformResult]:
    """Run dbt commands one after the other in one child process (``python -m
    insights.transform``), stopping at the first that fails; returns one result each.

    dbt takes about 1.6 s to import: the learning step's point-in-time snapshots, ten
    commands in a row, pay it once. Raises TransformError naming the failed command's
    failed nodes and dbt's message.
    """
    if not invocations:
        return []
    Path(config.resolve(config.warehouse.path)).parent.mkdir(parents=True, exist_ok=True)
    env, work = _dbt_environment(config, invocations[0].as_of)
    (work / "target").mkdir(parents=True, exist_ok=True)
    spec = []
    project = ["--project-dir", str(DBT_PROJECT_DIR), "--profiles-dir", str(DBT_PROJECT_DIR)]
    for i, invocation in enumerate(invocations):
        dbt_vars = {**config.transform.dbt_vars(), **(invocation.extra_vars or {})}
        args = [invocation.command, *project, "--vars", json.dumps(dbt_vars), "--no-use-colors"]
        if invocation.select:
            args += ["--select", *invocation.select]
        if invocation.full_refresh:
            args.append("--full-refresh")
        unit_tests = config.transform.unit_tests if invocation.unit_tests is None else invocation.unit_tests
        if invocation.command in ("build", "test") and not unit_tests:
            args += ["--exclude-resource-type", "unit_test"]
        args += invocation.extra_args or []
        results = work / "target" / f"run_results.{i}.json"
        results.unlink(missing_ok=True)
        item = {"args": args, "as_of": _as_of_env(invocation.as_of), "results": str(results)}
        if dbt_vars.get(SNAPSHOT_VAR):
            parse_vars = json.dumps({**dbt_vars, SNAPSHOT_VAR: _PARSED_SNAPSHOT})
            item["snapshot"] = {
                "schema": dbt_vars[SNAPSHOT_VAR],
                # Its own target folder: the parse's saved state (partial_parse.msgpack)
                # would replace the main one, made with other vars, and the next
                # transform would parse the whole project again (1.8 s at 10M events).
                "parse": [
                    "parse",
                    *project,
                    "--vars",
                    parse_vars,
                    "--no-use-colors",
                    "--target-path",
                    str(work / "target" / "snapshot_parse"),
                ],
            }
        spec.append(item)
    spec_file = work / "invocations.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    faults.reached("transform.dbt")
    proc = subprocess.run(
        [sys.executable, "-m", "insights.transform", str(spec_file)], capture_output=True, text=True, env=env
    )
    log.debug("dbt output:\n%s", proc.stdout)
    outcomes = []
    for invocation, item in zip(invocations, spec):
        results_file = Path(item["results"])
        result = TransformResult(as_of=invocation.as_of.isoformat(sep=" "), command=invocation.command)
        failures: list[str] = []
        for entry in json.loads(results_file.read_text()).get("results", []) if results_file.exists() else []:
            unique_id = entry.get("unique_id", "")
            kind = unique_id.split(".")[0]
            # A unit test's id is unit_test.<project>.<model>.<test>: it is named model.test.
            parts = unique_id.split(".")
            name = ".".join(parts[2:] if kind == "unit_test" else parts[2:3]) if len(parts) >= 3 else unique_id
            rows = (entry.get("adapter_response") or {}).get("rows_affected")
            node = NodeResult(
                name=name,
                kind=kind,
                status=str(entry.get("status", "")).lower(),
                seconds=round(float(entry.get("execution_time") or 0.0), 3),
                rows=rows if isinstance(rows, int) and rows >= 0 else None,
                message=entry.get("message"),
            )
            result.nodes.append(node)
            if node.status in ("error", "fail"):
                reason = (node.message or node.status).strip().splitlines()[0]
                failures.append(f"{kind} {name}: {reason}")
        if failures or (proc.returncode != 0 and not results_file.exists()):
            if not failures:
                lines = _output_lines(proc)
                errors = [line for line in lines if "error" in line.lower()] or lines[-3:]
                # dbt prefixes its lines with a clock time: keep only what it says.
                failures.append(" | ".join(re.sub(r"^\d\d:\d\d:\d\d\s+", "", line.strip()) for line in errors[:4]))
            raise TransformError(f"dbt {invocation.command} failed: " + "; ".join(failures))
        outcomes.append(result)
    if proc.returncode != 0:
        raise TransformError(f"dbt failed: {' | '.join(_output_lines(proc)[-3:])}")
    return outcomes


def _output_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]


def _run_invocations(spec_file: str) -> int:
    """The child's side of :func:`run_dbt_many`: each command through dbt's Python entry
    point, its run results kept under the name the parent reads; stops at a failure."""
    from dbt.cli.main import dbtRunner

    runner = dbtRunner()
    latest = Path(os.environ["DBT_TARGET_PATH"]) / "run_results.json"
    snapshots = _SnapshotManifest()
    for item in json.loads(Path(spec_file).read_text()):
        os.environ["INSIGHTS_AS_OF"] = item["as_of"]
        latest.unlink(missing_ok=True)
        if item.get("snapshot"):
            manifest = snapshots.moved_to(item["snapshot"]["schema"], item["snapshot"]["parse"])
            if manifest is None:
                print(
                    f"Error: dbt could not parse the project for snapshot {item['snapshot']['schema']}", file=sys.stderr
                )
                return 2
            outcome = dbtRunner(manifest=manifest).invoke(item["args"])
        else:
            outcome = runner.invoke(item["args"])
        if latest.exists():
            shutil.copyfile(latest, item["results"])
        if not outcome.success:
            if outcome.exception is not None:
                print(f"Error: {outcome.exception}", file=sys.stderr)
                return 2
            return 1
    return 0


SNAPSHOT_VAR = "insights__snapshot_schema"
_PARSED_SNAPSHOT = "pit_parsed"  # the snapshot schema the shared parse is made with


class _SnapshotManifest:
    """One parsed project for every snapshot of a child: dbt parses the whole project again
    (1.3 s at each snapshot) whenever a var changes, and the snapshot schema is a var.
    Parsed once with a placeholder schema, the models ``generate_schema_name`` sent there
    are pointed at each snapshot's schema in turn. Everything a model reads at run time
    (the vars, the as-of instant) is rendered when it runs, from that run's own values."""

    def __init__(self) -> None:
        self.manifest: Any = None
        self.parse_args: list[str] | None = None
        self.nodes: list[Any] = []

    def moved_to(self, schema: str, parse_args: list[str]) -> Any:
        from dbt.cli.main import dbtRunner

        if self.manifest is None or parse_args != self.parse_args:
            parsed = dbtRunner().invoke(parse_args)
            if not parsed.success:
                return None
            self.manifest, self.parse_args = parsed.result, parse_args
            self.nodes = [node for node in self.manifest.nodes.values() if node.schema == _PARSED_SNAPSHOT]
        for node in self.nodes:
            old = f'"{node.schema}"'
            node.schema = schema
            if node.relation_name:
                node.relation_name = node.relation_name.replace(old, f'"{schema}"', 1)
        return self.manifest


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


def build_snapshots(config: Config, needs: dict[datetime, frozenset[str] | None]) -> dict[datetime, str]:
    """Build the as-of-dependent models (features, interactions, item stats; or only the
    given models of them) as of past instants, each into its own schema, and return the
    schema names; main is left as it is. One dbt child process builds them all.

    The learning step needs features at several past cutoffs (training examples) from the
    very SQL that computes today's features, so there is one definition of every feature.
    """
    schemas = {instant: snapshot_schema_name(instant) for instant in needs}
    run_dbt_many(
        config,
        [
            DbtInvocation(
                instant,
                "run",
                select=[m for m in SNAPSHOT_MODELS if models is None or m in models],
                extra_vars={SNAPSHOT_VAR: schemas[instant]},
            )
            for instant, models in needs.items()
        ],
    )
    return schemas


if __name__ == "__main__":
    sys.exit(_run_invocations(sys.argv[1]))
