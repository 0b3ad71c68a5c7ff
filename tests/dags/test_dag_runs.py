"""End to end under Airflow: ``airflow dags test`` of the three DAGs on the committed sample,
with the datastore on a local S3 server (moto) and Segment on a local fake, both reached
with credentials that exist only in Airflow connections."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import boto3
import duckdb
import pyarrow.parquet as pq
import pytest
import yaml

from insights.config import default_sources
from tests.dags.conftest import REPO, airflow, airflow_env, prepare
from tests.exports.segment_server import FakeSegment

INTERVAL = "2026-11-01T00:00:00+00:00"
WRITE_KEY = "wk-airflow-connection-only"
API_TOKEN = "sgp-airflow-connection-only"
AWS_SECRET = "secret-from-the-airflow-connection"


def _asset_events(home: Path) -> list[dict]:
    con = sqlite3.connect(home / "airflow.db")
    try:
        rows = con.execute("select extra, source_dag_id from asset_event order by id").fetchall()
    finally:
        con.close()
    return [{"extra": json.loads(extra or "{}"), "dag": dag} for extra, dag in rows]


def _manifest(s3, bucket: str, table: str) -> dict:
    latest = json.loads(s3.get_object(Bucket=bucket, Key=f"insights/{table}/_latest")["Body"].read())
    return json.loads(s3.get_object(Bucket=bucket, Key=f"insights/{table}/{latest['manifest']}")["Body"].read())


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str):
    root = tmp_path_factory.mktemp("airflow_e2e")
    s3 = boto3.client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    s3.create_bucket(Bucket="dag-test")
    config = root / "insights.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "sources": default_sources(str(REPO / "data_samples")),
                "cohorts": {"folder": None},
                "datastore": {"uri": "s3://dag-test/insights"},
                "segment": {"dry_run": False, "backoff_seconds": 0.01},
                "airflow": {"aws_conn_id": "insights_s3", "segment_conn_id": "insights_segment"},
            }
        )
    )
    with FakeSegment(write_key=WRITE_KEY, api_token=API_TOKEN) as segment:
        env = airflow_env(
            root / "airflow",
            config,
            AIRFLOW_CONN_INSIGHTS_S3=json.dumps(
                {
                    "conn_type": "aws",
                    "login": "AKIAAIRFLOWCONNECTION",
                    "password": AWS_SECRET,
                    "extra": {"endpoint_url": s3_endpoint, "region_name": "us-east-1"},
                }
            ),
            AIRFLOW_CONN_INSIGHTS_SEGMENT=json.dumps(
                {
                    "conn_type": "http",
                    "password": WRITE_KEY,
                    "extra": {"endpoint": segment.endpoint, "api_token": API_TOKEN, "api_url": segment.api_url},
                }
            ),
        )
        (root / "airflow").mkdir()
        prepare(env)
        yield {"root": root, "env": env, "s3": s3, "segment": segment, "home": root / "airflow"}


def test_ingest_then_refresh_then_training(deployment: dict) -> None:
    env, s3, segment, home = deployment["env"], deployment["s3"], deployment["segment"], deployment["home"]
    output = []

    # Ingest: new data lands, so the Asset is updated with what was loaded and up to when.
    output.append(airflow(env, "dags", "test", "clickstream_ingest", INTERVAL))
    events = _asset_events(home)
    assert len(events) == 1 and events[0]["dag"] == "clickstream_ingest"
    assert events[0]["extra"]["events_loaded"] > 30_000
    assert events[0]["extra"]["catalog_items_loaded"] == 200  # the sample's catalog
    assert events[0]["extra"]["as_of"] == "2026-11-01T00:00:00"

    # Nothing new an hour later: the run succeeds and no refresh is started for nothing.
    output.append(airflow(env, "dags", "test", "clickstream_ingest", "2026-11-01T01:00:00+00:00"))
    assert len(_asset_events(home)) == 1

    # Refresh: dbt build, score (training the first model), exports to S3 and Segment, the report.
    output.append(airflow(env, "dags", "test", "insights_refresh", INTERVAL))
    manifest = _manifest(s3, "dag-test", "user_insights")
    assert manifest["dt"] == "2026-11-01" and manifest["rows"] == 272
    rows = {t: _manifest(s3, "dag-test", t)["rows"] for t in ("recommendations", "cohorts", "model_metrics")}
    assert rows["recommendations"] == 2720 and rows["model_metrics"] == 1
    report = s3.get_object(Bucket="dag-test", Key="insights/reports/dt=2026-11-01/run_report.html")["Body"].read()
    assert b"Funnel" in report and b"transform" in report  # the steps of this DAG run are in it
    sent = len(segment.accepted)
    assert sent == 222 and all(m["type"] == "identify" for m in segment.accepted.values())
    assert (deployment["root"] / "warehouse" / "recommendations.sqlite").exists()

    # Re-running the same interval is idempotent: same partition, nothing re-sent to Segment.
    output.append(airflow(env, "dags", "test", "insights_refresh", INTERVAL))
    again = _manifest(s3, "dag-test", "user_insights")
    assert again["dt"] == "2026-11-01" and again["rows"] == 272 and again["run_id"] != manifest["run_id"]
    assert len(segment.accepted) == sent and sum(segment.received.values()) == sent
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="dag-test", Prefix="insights/user_insights/")["Contents"]]
    assert len([k for k in keys if k.endswith(".parquet")]) == 1  # the re-run replaced the partition

    # Training on its own DAG: the same data and parameters give the same, still published, version.
    output.append(airflow(env, "dags", "test", "insights_training", INTERVAL))
    metrics = _manifest(s3, "dag-test", "model_metrics")
    assert metrics["model_versions"]

    # Forgetting a person, triggered with their id: gone from the partition on S3 (and the
    # rest of the deliveries, see tests/exports/test_forget.py), Segment asked to delete
    # them with the Public API token of the connection, the warehouse file compacted.
    user = sorted(m["userId"] for m in segment.accepted.values())[0]
    output.append(
        airflow(env, "dags", "test", "insights_forget", INTERVAL, "-c", json.dumps({"ids": [user], "compact": True}))
    )
    forgotten = _manifest(s3, "dag-test", "user_insights")
    assert forgotten["rows"] == 271 and forgotten["forgotten_at"]
    body = s3.get_object(Bucket="dag-test", Key="insights/" + forgotten["files"][0]["key"])["Body"].read()
    users = pq.read_table(io.BytesIO(body)).column("user_id").to_pylist()
    assert len(users) == 271 and user not in users
    con = duckdb.connect(str(deployment["root"] / "warehouse" / "insights.duckdb"), read_only=True)
    assert con.execute("select count(*) from raw.events where user_id = ?", [user]).fetchone()[0] == 0
    assert con.execute("select count(*) from privacy.forgotten where person = ?", [user]).fetchone()[0] >= 1
    con.close()
    assert segment.regulations == [
        {"id": "reg-1", "type": "SUPPRESS_WITH_DELETE", "subject_type": "USER_ID", "subject_ids": [user]}
    ]
    forget_log = (
        output[-1].stdout + output[-1].stderr + "".join(p.read_text(errors="replace") for p in home.rglob("*.log"))
    )
    assert "Segment asked to delete 1 user" in forget_log and "warehouse file compacted" in forget_log

    # The secrets came from the connections and never reached the logs.
    logs = "".join(r.stdout + r.stderr for r in output)
    for path in home.rglob("*.log"):
        logs += path.read_text(errors="replace")
    assert WRITE_KEY not in logs and AWS_SECRET not in logs and API_TOKEN not in logs
