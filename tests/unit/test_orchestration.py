"""What the Airflow tasks rely on, without Airflow running: the as-of instant of a DAG run
and credentials from connections."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from insights import orchestration
from insights.config import load_config


def test_as_of_is_the_end_of_the_data_interval_in_utc() -> None:
    end = datetime(2026, 11, 1, 6, 0, tzinfo=timezone(timedelta(hours=2)))
    context = {"data_interval_end": end, "logical_date": end - timedelta(hours=4)}
    assert orchestration.as_of_from_context(context) == datetime(2026, 11, 1, 4, 0)


def test_as_of_of_a_run_started_by_new_data_is_the_latest_ingest_interval() -> None:
    events = [
        SimpleNamespace(extra={"as_of": "2026-11-01T05:00:00"}),
        SimpleNamespace(extra={"as_of": "2026-11-01T07:00:00"}),
    ]
    context = {
        "data_interval_end": None,
        "logical_date": None,
        "triggering_asset_events": {"asset": events},
        "dag_run": SimpleNamespace(run_after=datetime(2026, 11, 1, 7, 3, 12, 999, tzinfo=UTC)),
    }
    assert orchestration.as_of_from_context(context) == datetime(2026, 11, 1, 7, 0)
    context["triggering_asset_events"] = {}
    assert orchestration.as_of_from_context(context) == datetime(2026, 11, 1, 7, 3, 12)
    with pytest.raises(ValueError, match="as-of"):
        orchestration.as_of_from_context({"dag_run": SimpleNamespace(run_after=None)})


def _ingest_summary(**loads: tuple[str, int]) -> dict:
    """What `steps.ingest` returns for loads of (source kind, rows loaded)."""
    from insights.ingest.loader import LoadResult
    from insights.steps import ingest_summary

    return ingest_summary([LoadResult(f"l-{n}", n, kind, files=1, loaded=rows) for n, (kind, rows) in loads.items()])


def test_ingest_headline_and_asset_tell_events_from_catalog_items() -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from insights.steps import headline

    end = datetime(2026, 11, 1, 1, 0, tzinfo=UTC)

    def announce(summary: dict) -> dict:
        outlets = {orchestration.clickstream_asset(): SimpleNamespace(extra=None)}
        return orchestration.announce_new_data(summary, {"data_interval_end": end, "outlet_events": outlets})

    both = _ingest_summary(web=("snowplow_enriched", 950), shop=("singer_jsonl", 50), items=("catalog", 20))
    assert headline("ingest", both).startswith("1,000 events and 20 catalog items loaded from 3 files")
    assert announce(both) == {"events_loaded": 1000, "catalog_items_loaded": 20, "as_of": "2026-11-01T01:00:00"}

    events_only = _ingest_summary(web=("snowplow_enriched", 7))
    assert headline("ingest", events_only).startswith("7 events loaded from 1 files")
    # New or changed items alone start a refresh too: they are recommended from their text.
    items_only = _ingest_summary(items=("catalog", 3))
    assert headline("ingest", items_only).startswith("0 events and 3 catalog items loaded")
    assert announce(items_only)["catalog_items_loaded"] == 3
    with pytest.raises(AirflowSkipException, match="no new events or catalog items"):
        announce(_ingest_summary())
    # A run with no new file says so, not "0 events loaded from 0 files".
    assert headline("ingest", _ingest_summary() | {"warehouse_files": 793}) == (
        "nothing new to load (793 files loaded before)"
    )


def _conn(login: str | None, password: str | None, extra: dict) -> SimpleNamespace:
    return SimpleNamespace(login=login, password=password, extra_dejson=extra)


def test_credentials_come_from_connections_for_the_task_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "insights.yml").write_text(
        "airflow: {aws_conn_id: s3conn, segment_conn_id: segconn}\nsegment: {write_key_env: MY_SEGMENT_KEY}\n"
    )
    config = load_config(tmp_path / "insights.yml", environ={})
    connections = {
        "s3conn": _conn("AKIA1", "s3-secret", {"endpoint_url": "http://127.0.0.1:9", "region_name": "eu-west-1"}),
        "segconn": _conn(
            None,
            "seg-secret",
            {
                "endpoint": "https://events.eu1.segmentapis.com/v1/batch",
                "api_token": "sgp-secret",
                "api_url": "https://eu1.api.segmentapis.com",
            },
        ),
    }
    monkeypatch.setattr(orchestration, "_connection", connections.__getitem__)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-worker")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("SEGMENT_API_TOKEN", raising=False)
    with orchestration.connection_credentials(config) as resolved:
        assert os.environ["AWS_ACCESS_KEY_ID"] == "AKIA1"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == "s3-secret"
        assert os.environ["MY_SEGMENT_KEY"] == "seg-secret"
        assert os.environ["SEGMENT_API_TOKEN"] == "sgp-secret"  # the Public API's, for deletions
        assert resolved.s3.endpoint_url == "http://127.0.0.1:9" and resolved.s3.region == "eu-west-1"
        assert resolved.segment.endpoint.startswith("https://events.eu1")
        assert resolved.segment.api_url == "https://eu1.api.segmentapis.com"
        assert "secret" not in resolved.model_dump_json()
    assert os.environ["AWS_ACCESS_KEY_ID"] == "from-the-worker"
    assert "AWS_SECRET_ACCESS_KEY" not in os.environ and "MY_SEGMENT_KEY" not in os.environ
    assert "SEGMENT_API_TOKEN" not in os.environ
    assert config.s3.endpoint_url is None


def test_a_segment_connection_without_the_key_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "insights.yml").write_text("airflow: {segment_conn_id: segconn}\n")
    config = load_config(tmp_path / "insights.yml", environ={})
    monkeypatch.setattr(orchestration, "_connection", lambda conn_id: _conn("user", None, {}))
    with pytest.raises(ValueError, match="'segconn'.*no password"):
        with orchestration.connection_credentials(config):
            pass
