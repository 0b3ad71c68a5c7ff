"""
### clickstream_ingest

Loads new and changed clickstream and catalog files from every configured source
(Snowplow enriched TSV or atomic exports, Meltano/Singer JSONL, events files, the catalog)
into the DuckDB warehouse, validates each batch with Great Expectations and quarantines bad
lines. When events landed, it updates the `insights://warehouse/raw.events` Asset, which
can start `insights_refresh`.

Schedule: `airflow.ingest_schedule` (hourly by default). Each task calls the same step
function as `insights ingest`.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from insights import orchestration
from insights.config import load_config

CONFIG = load_config()


@dag(schedule=orchestration.ingest_schedule(CONFIG), doc_md=__doc__, **orchestration.dag_settings(CONFIG))
def clickstream_ingest() -> None:
    @task
    def ingest() -> dict:
        return orchestration.run_step("ingest")

    @task(outlets=[orchestration.clickstream_asset()])
    def announce_new_data(summary: dict) -> dict:
        return orchestration.announce_new_data(summary)

    announce_new_data(ingest())


clickstream_ingest()
