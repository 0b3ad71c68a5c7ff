"""
### insights_training

Brings the warehouse models up to date (dbt build), then fits, versions and (when not worse than the published version) publishes the models as of
the end of the data interval: ALS user and item embeddings, the catalog-text encoder for new
items, and the calibrated purchase, churn and value propensities. `insights_refresh` scores
with whatever is published.

Schedule: `airflow.training_schedule` (daily by default). Calls the same step function as
`insights train`.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from insights import orchestration
from insights.config import load_config

CONFIG = load_config()


@dag(schedule=orchestration.training_schedule(CONFIG), doc_md=__doc__, **orchestration.dag_settings(CONFIG))
def insights_training() -> None:
    @task
    def transform() -> dict:
        return orchestration.run_step("transform")

    @task
    def train() -> dict:
        return orchestration.run_step("train")

    transform() >> train()


insights_training()
