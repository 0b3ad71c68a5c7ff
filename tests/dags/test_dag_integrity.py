"""DAG integrity: the files import cleanly under Airflow, form no cycles, and every task
retries with backoff; the schedules and the Asset follow the configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.dags.conftest import DAGS, airflow_env

INSPECT = r"""
import json
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=DAGS_FOLDER)
out = {"errors": {k: str(v)[:2000] for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    tasks = {}
    for t in dag.tasks:
        tasks[t.task_id] = {
            "upstream": sorted(t.upstream_task_ids),
            "retries": t.retries,
            "backoff": bool(t.retry_exponential_backoff),
            "timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
            "pool": t.pool,
            "outlets": [getattr(o, "uri", str(o)) for o in (t.outlets or [])],
        }
    timetable = dag.timetable
    clock = getattr(timetable, "timetable", timetable)
    condition = getattr(timetable, "asset_condition", None)
    out["dags"][dag_id] = {
        "tags": sorted(dag.tags),
        "max_active_runs": dag.max_active_runs,
        "catchup": dag.catchup,
        "doc_md": bool(dag.doc_md),
        "timetable": type(timetable).__name__,
        "cron": getattr(clock, "expression", None),
        "asset_uris": sorted(o.uri for o in getattr(condition, "objects", [])),
        "tasks": tasks,
    }
print("INSPECT" + json.dumps(out))
"""


def inspect(tmp_path: Path, config: dict) -> dict:
    path = tmp_path / "insights.yml"
    path.write_text(yaml.safe_dump(config))
    env = airflow_env(tmp_path / "airflow", path)
    code = f"DAGS_FOLDER = {str(DAGS)!r}\n" + INSPECT
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("INSPECT"))
    return json.loads(line[len("INSPECT") :])


def _acyclic(tasks: dict) -> bool:
    done: set[str] = set()
    while len(done) < len(tasks):
        ready = [t for t, info in tasks.items() if t not in done and set(info["upstream"]) <= done]
        if not ready:
            return False
        done.update(ready)
    return True


@pytest.fixture(scope="module")
def defaults(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return inspect(tmp_path_factory.mktemp("dags_default"), {})


def test_dags_import_cleanly_without_cycles_and_retry(defaults: dict) -> None:
    assert defaults["errors"] == {}
    assert set(defaults["dags"]) == {"clickstream_ingest", "insights_refresh", "insights_training", "insights_forget"}
    for dag_id, dag in defaults["dags"].items():
        assert "user-insights" in dag["tags"], dag_id
        assert dag["max_active_runs"] == 1, dag_id
        assert dag["catchup"] is False, dag_id
        assert dag["doc_md"], dag_id
        assert _acyclic(dag["tasks"]), dag_id
        for task_id, task in dag["tasks"].items():
            assert task["retries"] >= 1 and task["backoff"], f"{dag_id}.{task_id}"
            assert task["timeout"], f"{dag_id}.{task_id}"


def test_wiring_and_schedules_follow_the_defaults(defaults: dict) -> None:
    dags = defaults["dags"]
    ingest, refresh, training = dags["clickstream_ingest"], dags["insights_refresh"], dags["insights_training"]
    assert ingest["tasks"]["announce_new_data"]["upstream"] == ["ingest"]
    assert ingest["tasks"]["announce_new_data"]["outlets"] == ["insights://warehouse/raw.events"]
    assert ingest["tasks"]["ingest"]["outlets"] == []
    assert refresh["tasks"]["score"]["upstream"] == ["transform"]
    assert refresh["tasks"]["export"]["upstream"] == ["score"]
    assert set(refresh["tasks"]["report"]["upstream"]) == {"transform", "score", "export"}
    assert training["tasks"]["train"]["upstream"] == ["transform"]
    # Every 4 hours or on new data, whichever comes first; training once a day.
    assert refresh["timetable"] == "AssetOrTimeSchedule"
    assert refresh["asset_uris"] == ["insights://warehouse/raw.events"]
    assert refresh["cron"] == "0 */4 * * *"
    assert training["timetable"] == "CronTriggerTimetable" and training["cron"] == "0 0 * * *"
    assert ingest["cron"] == "0 * * * *"
    # Forgetting people runs only when triggered, with their ids.
    assert dags["insights_forget"]["timetable"] == "NullTimetable" and list(dags["insights_forget"]["tasks"]) == [
        "forget"
    ]


def test_schedule_knobs_and_pool(tmp_path: Path) -> None:
    found = inspect(
        tmp_path,
        {
            "airflow": {
                "refresh_schedule": None,
                "training_schedule": "0 3 * * 1",
                "ingest_schedule": "*/15 * * * *",
                "retries": 4,
                "pool": "insights_warehouse",
            }
        },
    )
    assert found["errors"] == {}
    refresh = found["dags"]["insights_refresh"]
    assert refresh["cron"] is None and refresh["asset_uris"] == ["insights://warehouse/raw.events"]
    assert found["dags"]["insights_training"]["cron"] == "0 3 * * 1"
    assert found["dags"]["clickstream_ingest"]["cron"] == "*/15 * * * *"
    for dag in found["dags"].values():
        for task in dag["tasks"].values():
            assert task["retries"] == 4
            assert task["pool"] == "insights_warehouse"


def test_a_bad_config_is_an_import_error_that_names_the_key(tmp_path: Path) -> None:
    found = inspect(tmp_path, {"airflow": {"retries": "often"}})
    assert set(found["errors"]) == {
        str(DAGS / f"{d}.py")
        for d in ("clickstream_ingest", "insights_refresh", "insights_training", "insights_forget")
    }
    assert all("airflow.retries" in message for message in found["errors"].values())
