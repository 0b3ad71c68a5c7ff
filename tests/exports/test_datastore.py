"""The datastore: Hive partitions with manifests, atomic for readers, locally and on S3."""

from __future__ import annotations

import gc
import json
from datetime import datetime
from pathlib import Path

import boto3
import duckdb
import polars as pl
import pytest

from exports.datastore import DatastoreError, S3Store, TableData, latest, open_store, publish, read_latest
from insights import steps
from insights.config import Config
from insights.warehouse import connect
from tests.exports.conftest import on_s3

TABLES = [TableData("user_insights"), TableData("recommendations"), TableData("trending")]


def _publish(config: Config, as_of: str, run: str, store=None) -> dict:  # noqa: ANN001
    con = connect(config)
    try:
        return publish(config, con, TABLES, datetime.fromisoformat(as_of), run, {"model_version": "v1"}, store)
    finally:
        con.close()


def test_partitions_manifests_and_readers(small: Config) -> None:
    result = _publish(small, "2026-11-01", "run1")
    root = Path(small.datastore.uri)
    manifest = json.loads((root / "user_insights/dt=2026-11-01/_manifest.json").read_text())
    assert (
        manifest["rows"] == 60
        and manifest["run_id"] == "run1"
        and manifest["model_versions"] == {"model_version": "v1"}
    )
    assert {c["name"] for c in manifest["schema"]} >= {"user_id", "top_interests", "purchase_probability"}
    assert json.loads((root / "user_insights/_latest").read_text())["dt"] == "2026-11-01"
    assert result["tables"]["recommendations"]["rows"] == 600
    # Readable as it is: DuckDB with Hive partitioning, polars, pandas through the manifest.
    con = duckdb.connect()
    dt, rows = con.execute(
        f"select dt::varchar, count(*) from read_parquet('{root}/recommendations/*/*.parquet', hive_partitioning = true) group by 1"
    ).fetchone()
    assert (dt, rows) == ("2026-11-01", 600)
    frame = pl.read_parquet(root / "user_insights/dt=2026-11-01/*.parquet")
    assert frame.schema["top_interests"] == pl.List(
        pl.Struct({"dimension": pl.String, "value": pl.String, "strength": pl.Float64})
    )
    assert len(read_latest(small, "trending")) == 20


def test_rerun_replaces_the_partition_and_retention_keeps_the_last(small: Config) -> None:
    root = Path(small.datastore.uri)
    _publish(small, "2026-11-01", "run1")
    _publish(small, "2026-11-01", "run2")
    files = sorted(p.name for p in (root / "user_insights/dt=2026-11-01").iterdir())
    assert files == ["_manifest.json", "part-run2.parquet"]
    _publish(small, "2026-11-02", "run3")
    _publish(small, "2026-11-03", "run4")  # retention 2: 2026-11-01 goes
    assert sorted(p.name for p in (root / "user_insights").iterdir()) == ["_latest", "dt=2026-11-02", "dt=2026-11-03"]
    assert latest(open_store(small), "user_insights")["run_id"] == "run4"


def test_crash_before_the_manifest_leaves_the_previous_partition_latest(
    small: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    _publish(small, "2026-11-01", "run1")
    store = open_store(small)
    real = store.put_bytes

    def failing(key: str, data: bytes) -> None:
        if key.endswith("_manifest.json") and key.startswith("recommendations/"):
            raise OSError("disk full")
        real(key, data)

    monkeypatch.setattr(store, "put_bytes", failing)
    with pytest.raises(DatastoreError, match="previous partitions stay the latest"):
        _publish(small, "2026-11-02", "run2", store)
    for table in ("user_insights", "recommendations", "trending"):
        assert latest(store, table)["dt"] == "2026-11-01"  # no pointer moved
    assert len(read_latest(small, "recommendations")) == 600
    monkeypatch.setattr(store, "put_bytes", real)
    _publish(small, "2026-11-02", "run3", store)
    assert latest(store, "recommendations") == {
        "dt": "2026-11-02",
        "run_id": "run3",
        "manifest": "dt=2026-11-02/_manifest.json",
    }
    assert sorted(p.name for p in (Path(small.datastore.uri) / "recommendations/dt=2026-11-02").iterdir()) == [
        "_manifest.json",
        "part-run3.parquet",
    ]


def test_s3_publish_with_failure_mid_publish(small: Config, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = on_s3(small, s3_endpoint, monkeypatch, "s3://insights-out/prod/datastore", multipart_threshold_mb=5)
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    _publish(config, "2026-11-01", "run1")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="insights-out", Prefix="prod/")["Contents"]}
    assert "prod/datastore/user_insights/dt=2026-11-01/part-run1.parquet" in keys
    assert "prod/datastore/user_insights/_latest" in keys

    # The S3 endpoint fails on the second manifest upload of the next date.
    store = S3Store(config, config.datastore.uri)
    calls = {"manifests": 0}

    def inject(params, **_):  # noqa: ANN001, ANN003, ANN202
        if params.get("Key", "").endswith("_manifest.json"):
            calls["manifests"] += 1
            if calls["manifests"] == 2:
                raise ConnectionError("injected: endpoint went away")

    store.client.meta.events.register("before-parameter-build.s3.PutObject", inject)
    with pytest.raises(DatastoreError):
        _publish(config, "2026-11-02", "run2", store)
    reader = S3Store(config, config.datastore.uri)
    for table in ("user_insights", "recommendations", "trending"):
        assert latest(reader, table)["dt"] == "2026-11-01"
    assert len(read_latest(config, "user_insights", reader)) == 60
    # The next run completes it.
    _publish(config, "2026-11-02", "run3", reader)
    assert all(latest(reader, t)["run_id"] == "run3" for t in ("user_insights", "recommendations", "trending"))
    leftover = [k for k in reader.list("user_insights/dt=2026-11-02/") if "run2" in k]
    assert leftover == []


def test_export_step_delivers_everything(small: Config) -> None:
    summary = steps.export(small)
    assert summary["datastore"]["dt"] == "2026-11-01"
    assert set(summary["datastore"]["tables"]) == {
        "user_insights",
        "recommendations",
        "item_similar",
        "trending",
        "user_interests",
        "cohorts",
        "cohort_summary",
        "model_metrics",
    }
    assert summary["segment"]["dry_run"] and summary["segment"]["would_send"] == 40  # identified users only
    assert summary["serving"]["users"] == 60
    assert Path(small.cohorts.out_dir, "ready_to_buy.csv").exists()
    assert gc.isenabled()  # paused while the export builds its rows, then given back
    with pytest.raises(RuntimeError, match="scored as of 2026-11-01"):
        steps.export(small, datetime(2026, 11, 2))


def test_a_failed_export_says_export_failed(small: Config, capsys: pytest.CaptureFixture[str]) -> None:
    """`insights export` names itself when the datastore cannot be written (it said
    "run failed", as if `insights run` had been called)."""
    from insights.cli import main

    blocked = Path(small.source_file).parent / "blocked"
    blocked.write_text("a file where the datastore folder should be")
    config_file = Path(small.source_file)
    config_file.write_text(config_file.read_text().replace(str(Path(small.datastore.uri)), str(blocked)))
    code = main(["--config", str(config_file), "export", "--as-of", "2026-11-01"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"insights: export failed: publishing to {blocked}")
    assert gc.isenabled()  # the cycle collector, paused during the export, is back on


def test_a_recommendation_table_that_cannot_be_built_fails_the_export(small: Config) -> None:
    """The table is built beside the other deliveries; its failure is not lost, and they are
    still delivered."""
    blocked = Path(small.source_file).parent / "blocked"
    blocked.write_text("a file where the recommendation table's folder should be")
    small.serving.path = str(blocked / "recommendations.sqlite")
    with pytest.raises(OSError, match="blocked"):
        steps.export(small)
    assert gc.isenabled()
    assert latest(open_store(small), "user_insights")["dt"] == "2026-11-01"
    assert Path(small.cohorts.out_dir, "ready_to_buy.csv").exists()


def test_a_segment_sync_that_cannot_start_fails_the_export(small: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sync runs beside the cohorts and the datastore; its error is raised after they
    were delivered."""
    from exports.segment import SegmentError

    small.segment.dry_run = False
    monkeypatch.delenv(small.segment.write_key_env, raising=False)
    with pytest.raises(SegmentError, match="no write key"):
        steps.export(small)
    assert latest(open_store(small), "user_insights")["dt"] == "2026-11-01"
    assert Path(small.cohorts.out_dir, "ready_to_buy.csv").exists()
