"""insights forget across the deliveries: the datastore (locally and on S3), the cohort
CSVs, Segment's dry-run file and the recommendation table the API reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exports import datastore
from exports.datastore import S3Store, latest, read_latest, read_manifest
from exports.serving import recs
from insights import steps
from insights.config import Config
from insights.warehouse import connect
from tests.exports.conftest import on_s3
from tests.exports.test_datastore import _publish


def test_forgetting_a_user_reaches_every_delivery(small: Config) -> None:
    steps.export(small)
    before = {u: recs(small, u, 10) for u in ("u002", "cookie-x")}
    assert [i["reason"] for i in recs(small, "cookie-a", 10)["items"]][0] != "trending"  # u001's list
    members = len(read_latest(small, "cohorts"))

    summary = steps.forget(small, ["u001"])
    assert (summary["users"], summary["cookies"]) == (1, 2)  # cookie-a and cookie-b
    assert summary["warehouse"]["main.user_insights"] == 1
    assert summary["warehouse"]["main.dim_identity_map"] == 2
    out = summary["outputs"]
    assert out["recommendation_table"] == {"recs": 1, "bought": 1, "aliases": 2}
    assert out["segment_dry_run_file"] == 1
    assert out["datastore"]["user_insights"] == 1 and out["datastore"]["recommendations"] == 10
    assert out["cohort_csvs"]["rows"] == out["datastore"]["cohorts"] > 0

    # The API now answers u001 and their cookies as strangers; everyone else as before.
    for asked in ("u001", "cookie-a", "cookie-b"):
        assert {i["reason"] for i in recs(small, asked, 10)["items"]} == {"trending"}
    assert {u: recs(small, u, 10) for u in before} == before
    users = read_latest(small, "user_insights")
    assert len(users) == 59 and "u001" not in set(users["user_id"])
    assert len(read_latest(small, "cohorts")) == members - out["datastore"]["cohorts"]
    for path in Path(small.cohorts.out_dir).glob("*.csv"):
        assert "u001" not in path.read_text()
    sent = [json.loads(line)["userId"] for line in Path(small.segment.dry_run_path).read_text().splitlines()]
    assert len(sent) == 39 and "u001" not in sent
    # The next export sends nobody again for it, and the user's traits are not re-created.
    con = connect(small)
    assert con.execute("select count(*) from segment.sent_traits where user_id = 'u001'").fetchone()[0] == 0
    con.close()


def test_forgetting_rewrites_every_retained_partition_on_s3(
    small: Config, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = on_s3(small, s3_endpoint, monkeypatch, "s3://insights-forget/ds")
    store = S3Store(config, config.datastore.uri)
    for dt, run in (("2026-10-31", "run1"), ("2026-11-01", "run2")):
        _publish(config, dt, run, store)
    old_keys = set(store.list(""))

    assert datastore.forget(config, ["u001", "anon-003"], dry_run=True, store=store) == {
        "recommendations": 40,
        "user_insights": 4,
    }
    assert set(store.list("")) == old_keys
    removed = datastore.forget(config, ["u001", "anon-003"], store=store)
    assert removed == {"recommendations": 40, "user_insights": 4}
    for dt in ("2026-10-31", "2026-11-01"):
        manifest = read_manifest(store, "user_insights", dt)
        assert manifest["rows"] == 58 and manifest["run_id"] in manifest["files"][0]["key"]
        assert "-forget-" in manifest["files"][0]["key"] and manifest["forgotten_at"]
    assert latest(store, "user_insights")["dt"] == "2026-11-01"
    users = read_latest(config, "user_insights", store)  # checks every file's sha256
    assert len(users) == 58 and not {"u001", "anon-003"} & set(users["user_id"])
    # The old files are gone; trending names nobody and was left alone.
    keys = set(store.list(""))
    assert not [k for k in keys if k.startswith("user_insights") and k.endswith("run1.parquet")]
    assert {k for k in keys if k.startswith("trending")} == {k for k in old_keys if k.startswith("trending")}
    assert datastore.forget(config, ["u001"], store=store) == {}


@pytest.mark.parametrize("point", ["forget.recorded", "forget.warehouse"])
def test_a_killed_forget_is_completed_by_the_same_command(small: Config, tmp_path: Path, point: str) -> None:
    steps.export(small)
    command = [str(Path(sys.executable).with_name("insights")), "--config", str(tmp_path / "insights.yml")]
    command += ["forget", "u001"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHTS")}
    killed = subprocess.run(command, env=env | {"INSIGHTS_FAILPOINT": point}, capture_output=True, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    # Recorded before anything was removed: ingestion already refuses u001.
    con = connect(small)
    assert con.execute("select count(*) from privacy.forgotten").fetchone()[0] == 3
    con.close()
    assert "u001" in read_latest(small, "user_insights")["user_id"].tolist()  # outputs not reached yet
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "u001" not in read_latest(small, "user_insights")["user_id"].tolist()
    assert {i["reason"] for i in recs(small, "cookie-a", 10)["items"]} == {"trending"}
    con = connect(small, read_only=True)
    for table in ("main.user_insights", "main.recommendations", "main.dim_identity_map", "segment.sync_log"):
        assert con.execute(f"select count(*) from {table} where user_id = 'u001'").fetchone()[0] == 0
    con.close()
