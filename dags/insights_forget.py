"""
### insights_forget

Forgets people on request (the right to erasure): their events, every warehouse row derived
from them, their rows in the datastore, the cohort CSVs, Segment's dry-run file, the
recommendation table and the saved models, and asks Segment to delete the users it was sent
(`api_token` in the Segment connection's extra); ingestion never loads their ids again.
Calls the same step function as `insights forget`.

Not scheduled: trigger it with the ids, user ids or cookie ids (a user id brings the cookies
it was seen with), e.g. `airflow dags trigger insights_forget --conf '{"ids": ["u123"]}'`,
or from the UI's trigger form. The task's result counts what was removed where; the ids
themselves are not logged. `{"compact": true}` then rewrites the warehouse file so that no
byte of the removed rows stays on disk. When Segment's deletion cannot be requested (no token, an outage)
the task fails after everything else is done; a retry, or a run triggered without ids, asks
Segment again for the deletions still pending.
"""

from __future__ import annotations

from airflow.sdk import Param, dag, task

from insights import orchestration
from insights.config import load_config

CONFIG = load_config()


@dag(
    schedule=None,
    doc_md=__doc__,
    params={
        "ids": Param(
            [],
            type="array",
            items={"type": "string", "minLength": 1},
            description="User ids or cookie ids of the people to forget.",
        ),
        "compact": Param(
            False,
            type="boolean",
            description="Then rewrite the warehouse file so that no byte of the removed rows stays on disk.",
        ),
    },
    **orchestration.dag_settings(CONFIG),
)
def insights_forget() -> None:
    @task
    def forget() -> dict:
        return orchestration.forget()

    forget()


insights_forget()
