"""
### insights_refresh

Rebuilds the warehouse models (dbt build), scores every user with the published models,
delivers the results (cohort CSVs, the datastore partition, the Segment trait sync, the
recommendation table) and writes the run report. The as-of instant is the end of the data
interval (for a run started by new data: the end of the ingest run's interval), so a
re-run or backfill of an interval reproduces it.

Schedule: `airflow.refresh_schedule` (every 4 hours by default) and, when
`airflow.refresh_on_new_data` is true, whenever `clickstream_ingest` loaded new events.
Models are trained by `insights_training`; the first refresh trains one if none is
published yet. Each task calls the same step function as the `insights` command.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from insights import orchestration
from insights.config import load_config

CONFIG = load_config()


@dag(schedule=orchestration.refresh_schedule(CONFIG), doc_md=__doc__, **orchestration.dag_settings(CONFIG))
def insights_refresh() -> None:
    @task
    def transform() -> dict:
        return orchestration.run_step("transform")

    @task
    def score() -> dict:
        return orchestration.run_step("score", train_if_missing=True)

    @task
    def export() -> dict:
        return orchestration.run_step("export")

    @task
    def report(transformed: dict, scored: dict, exported: dict) -> dict:
        return orchestration.run_step(
            "report", steps_summary={"transform": transformed, "score": scored, "export": exported}
        )

    transformed, scored, exported = transform(), score(), export()
    transformed >> scored >> exported
    report(transformed, scored, exported)


insights_refresh()
