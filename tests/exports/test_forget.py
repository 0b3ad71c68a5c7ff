"""insights forget across the deliveries: the datastore (locally and on S3), the cohort
CSVs, Segment's dry-run file, the recommendation table the API reads, and the deletion
requests to Segment's Public API for the users it was sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from exports import datastore, segment
from exports.datastore import S3Store, latest, read_latest, read_manifest
from exports.serving import recs
from insights import steps
from insights.cli import main
from insights.config import Config, load_config
from insights.warehouse import connect
from tests.exports.conftest import on_s3, rows
from tests.exports.segment_server import FakeSegment
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


def _live_segment(tmp_path: Path, fake: FakeSegment, **segment: object) -> Config:
    """The ``small`` config file made to send to ``fake`` (both its APIs), read back."""
    path = tmp_path / "insights.yml"
    body = yaml.safe_load(path.read_text())
    body["segment"].update(
        dry_run=False,
        endpoint=fake.endpoint,
        api_url=fake.api_url,
        backoff_seconds=0.01,
        max_retries=2,
        timeout_seconds=2.0,
        **segment,
    )
    path.write_text(yaml.safe_dump(body))
    return load_config(path, environ={})


def test_segment_is_asked_to_delete_the_users_it_was_sent(
    small: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = ["--config", str(tmp_path / "insights.yml"), "forget"]
    with FakeSegment() as fake:
        config = _live_segment(tmp_path, fake)
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-test")
        monkeypatch.delenv("SEGMENT_API_TOKEN", raising=False)
        steps.export(config)
        assert len(fake.users()) == 40 and "u001" in fake.users()

        # A dry run says ahead that Segment's deletion could not be asked for.
        assert main([*cli, "u001", "--dry-run"]) == 0
        assert "no token in $SEGMENT_API_TOKEN" in " ".join(capsys.readouterr().out.split())
        # No Public API token: everything else is forgotten, Segment's deletion is kept
        # pending and the command fails saying what to do. (cookie-x was never sent.)
        assert main([*cli, "u001", "cookie-x"]) == 1
        err = capsys.readouterr().err
        assert "Segment's deletion of 1 forgotten user(s) is pending" in err and "$SEGMENT_API_TOKEN" in err
        assert "insights forget --segment-pending" in err
        assert "u001" not in read_latest(config, "user_insights")["user_id"].tolist()
        assert rows(config, "select user_id, regulate_id from privacy.segment_deletions") == [("u001", None)]
        assert fake.regulations == []
        audit = {e["id"]: e for e in steps.person(config, ["u001"], str(tmp_path / "u001.json"))["erasure"]}
        assert audit["u001"]["segment_pending"] and not audit["cookie-a"]["segment_pending"]

        # Segment's API down past the retries: still pending, the reason recorded.
        monkeypatch.setenv("SEGMENT_API_TOKEN", "sgp-test")
        assert main([*cli, "u004", "--dry-run"]) == 0
        assert "their deletion would be requested" in " ".join(capsys.readouterr().out.split())
        fake.script = ["500", ("429", 0), "500"]
        assert main([*cli, "--segment-pending"]) == 1
        assert "gave up after 3 attempts: HTTP 500" in capsys.readouterr().err
        assert rows(config, "select attempts, last_error like 'gave up%' from privacy.segment_deletions") == [(3, True)]

        # The next request asks for both people in one regulation, and records it.
        summary = steps.forget(config, ["u002"])
        assert summary["segment"] | {"regulations": None} == {
            "profiles": 1,
            "delete_on_forget": True,
            "pending": 2,
            "requested": 2,
            "left": 0,
            "regulations": None,
            "reopened": 0,
            "statuses": {},
        }
        assert fake.regulations == [
            {"id": "reg-1", "type": "SUPPRESS_WITH_DELETE", "subject_type": "USER_ID", "subject_ids": ["u001", "u002"]}
        ]
        assert rows(
            config,
            "select user_id, regulate_id, regulated_at is not null, last_error from privacy.segment_deletions "
            "order by user_id",
        ) == [("u001", "reg-1", True, None), ("u002", "reg-1", True, None)]
        assert main([*cli, "--segment-pending"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "no deletion pending" in out and "Segment's deletions so far: INITIALIZED 2 users" in out
        # A regulation that ended PARTIAL_SUCCESS (or FAILED) did not delete them everywhere:
        # they are asked for again in a new regulation, the old one kept on record.
        fake.status["reg-1"] = "PARTIAL_SUCCESS"
        assert main([*cli, "--segment-pending"]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert "the regulation of 2 users ended FAILED or PARTIAL_SUCCESS: asked for again" in out
        assert "(regulation reg-2)" in out
        assert fake.regulations[-1]["subject_ids"] == ["u001", "u002"]
        assert rows(
            config,
            "select user_id, regulate_id, regulation_status, failed_regulations, last_error "
            "from privacy.segment_deletions order by user_id",
        ) == [
            ("u001", "reg-2", None, "reg-1 PARTIAL_SUCCESS", None),
            ("u002", "reg-2", None, "reg-1 PARTIAL_SUCCESS", None),
        ]
        asked = fake.status_asked["reg-1"]
        # Segment's progress is followed while the regulation is open, then no more.
        fake.status["reg-2"] = "FINISHED"
        assert steps.segment_pending(config)["statuses"] == {"FINISHED": 2}
        assert fake.status_asked["reg-1"] == asked
        asked = fake.status_asked["reg-2"]
        assert steps.segment_pending(config)["statuses"] == {"FINISHED": 2} and fake.status_asked["reg-2"] == asked
        assert (
            main(["--config", str(tmp_path / "insights.yml"), "person", "u001", "--out", str(tmp_path / "p.json")]) == 0
        )
        assert "Segment deletion: regulation reg-2" in " ".join(capsys.readouterr().out.split())
        audit = {e["id"]: e for e in steps.person(config, ["u001"], str(tmp_path / "u001.json"))["erasure"]}
        assert audit["u001"]["segment_regulation_status"] == "FINISHED"
        assert audit["u001"]["segment_failed_regulations"] == "reg-1 PARTIAL_SUCCESS"
        assert len(fake.regulations) == 2

        # A token Segment rejects is not retried, and says which credential.
        monkeypatch.setenv("SEGMENT_API_TOKEN", "wrong")
        before = len(fake.requests)
        assert main([*cli, "u004"]) == 1
        assert "HTTP 401: Public API token rejected" in capsys.readouterr().err
        assert len(fake.requests) == before + 1

        # Segment's own copy left to the operator: nothing recorded, the command says so.
        config = _live_segment(tmp_path, fake, delete_on_forget=False)
        assert main([*cli, "u005"]) == 0
        assert "delete them there too" in capsys.readouterr().out
        assert rows(config, "select count(*) from privacy.segment_deletions where user_id = 'u005'") == [(0,)]
    # The traits never reached Segment again for any of them.
    assert not {m["userId"] for m in fake.accepted.values()} - {f"u{u:03d}" for u in range(60) if u % 3 != 0}


def test_segment_deletions_go_five_thousand_users_a_request(small: Config, tmp_path: Path) -> None:
    with FakeSegment() as fake:
        config = _live_segment(tmp_path, fake, regulation_type="DELETE_ONLY")
        con = connect(config)
        con.execute(
            "insert into privacy.segment_deletions (user_id, request_id, recorded_at, attempts) "
            "select printf('user-%05d', i), 'r', now()::timestamp, 0 from range(5001) t(i)"
        )
        summary = segment.request_deletions(config, con, environ={"SEGMENT_API_TOKEN": "sgp-test"})
        con.close()
    assert (summary["requested"], summary["left"], summary["regulations"]) == (5001, 0, ["reg-1", "reg-2"])
    assert [len(r["subject_ids"]) for r in fake.regulations] == [5000, 1]
    assert {r["type"] for r in fake.regulations} == {"DELETE_ONLY"}
    assert sorted(fake.deleted()) == [f"user-{i:05d}" for i in range(5001)]


def test_a_forget_killed_after_segment_accepted_asks_again(
    small: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeSegment() as fake:
        config = _live_segment(tmp_path, fake)
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-test")
        steps.export(config)
        command = [str(Path(sys.executable).with_name("insights")), "--config", str(tmp_path / "insights.yml")]
        command += ["forget", "u001"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHTS")} | {"SEGMENT_API_TOKEN": "sgp-test"}
        killed = subprocess.run(
            command, env=env | {"INSIGHTS_FAILPOINT": "segment.regulation"}, capture_output=True, timeout=120
        )
        assert killed.returncode == -signal.SIGKILL
        assert [r["subject_ids"] for r in fake.regulations] == [["u001"]]
        assert rows(config, "select regulate_id from privacy.segment_deletions") == [(None,)]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "SUPPRESS_WITH_DELETE requested for 1 user (regulation reg-2)" in done.stdout
    # Asked twice for the same user (a second deletion changes nothing), recorded once.
    assert fake.deleted() == ["u001", "u001"]
    assert rows(config, "select user_id, regulate_id from privacy.segment_deletions") == [("u001", "reg-2")]
    assert rows(config, "select count(*) from privacy.requests") == [(1,)]


def test_the_forget_task_fails_while_segment_waits_and_without_ids_asks_again(
    small: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from insights import orchestration

    with FakeSegment() as fake:
        config = _live_segment(tmp_path, fake)
        monkeypatch.setenv("INSIGHTS_CONFIG", str(tmp_path / "insights.yml"))
        monkeypatch.setenv("SEGMENT_WRITE_KEY", "wk-test")
        monkeypatch.delenv("SEGMENT_API_TOKEN", raising=False)
        steps.export(config)
        # The Airflow task fails (a retry asks again) once everything else is done.
        with pytest.raises(RuntimeError, match=r"deletion of 1 forgotten user\(s\) is pending"):
            orchestration.forget({"params": {"ids": ["u001"]}})
        assert "u001" not in read_latest(config, "user_insights")["user_id"].tolist()
        monkeypatch.setenv("SEGMENT_API_TOKEN", "sgp-test")
        result = orchestration.forget({"params": {"ids": []}})
    assert (result["requested"], result["left"], result["regulations"]) == (1, 0, ["reg-1"])
    assert fake.deleted() == ["u001"] and "u001" not in json.dumps(result)


def test_only_regulations_that_ended_short_of_deleting_are_asked_for_again() -> None:
    """FAILED and PARTIAL_SUCCESS reopen their users (each time, the history kept); open,
    finished, INVALID and NOT_SUPPORTED regulations stay as they are."""
    con = duckdb.connect()
    con.execute("create schema privacy")
    con.execute(
        "create table privacy.segment_deletions (user_id varchar, regulate_id varchar, regulated_at timestamp, "
        "regulation_status varchar, status_checked_at timestamp, last_error varchar, failed_regulations varchar)"
    )
    statuses = ["FAILED", "PARTIAL_SUCCESS", "FINISHED", "INVALID", "NOT_SUPPORTED", "RUNNING", "INITIALIZED", None]
    for i, status in enumerate(statuses):
        con.execute(
            "insert into privacy.segment_deletions values (?, ?, now(), ?, now(), null, ?)",
            [f"u{i}", f"reg-{i}", status, "reg-0 FAILED" if i == 0 else None],
        )
    assert segment._reopen_failed(con) == 2
    assert con.execute(
        "select user_id, regulate_id, regulated_at, regulation_status, failed_regulations, last_error "
        "from privacy.segment_deletions where user_id in ('u0', 'u1') order by user_id"
    ).fetchall() == [
        ("u0", None, None, None, "reg-0 FAILED; reg-0 FAILED", "regulation reg-0 ended FAILED"),
        ("u1", None, None, None, "reg-1 PARTIAL_SUCCESS", "regulation reg-1 ended PARTIAL_SUCCESS"),
    ]
    assert con.execute(
        "select list(regulation_status order by user_id) from privacy.segment_deletions where regulate_id is not null"
    ).fetchone()[0] == ["FINISHED", "INVALID", "NOT_SUPPORTED", "RUNNING", "INITIALIZED", None]
    assert segment._reopen_failed(con) == 0
