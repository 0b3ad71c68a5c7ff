"""Failpoints for the crash tests: ``INSIGHTS_FAILPOINT=<point>[@<seconds>]`` kills the run by
SIGKILL when it reaches that point (after the delay, if given), as an out-of-memory kill or
a lost worker would, with no chance to clean up. Unset, a point costs one dictionary lookup.

Points: ``ingest.batch`` (a load batch committed, more to come), ``transform.dbt`` (dbt
started; use a delay to land inside the build), ``export.cohorts`` (cohort CSVs written, the
datastore not yet published; the Segment sync and the recommendation table run beside it),
``publish.data`` (data files uploaded, no manifest yet), ``publish.manifests`` (manifests
written, no ``_latest`` moved yet), ``segment.batch`` (a batch accepted by Segment, not yet
recorded), ``forget.recorded`` (the ids recorded, nothing removed yet), ``forget.warehouse``
(the warehouse done, no output yet), ``segment.regulation`` (a deletion request accepted by
Segment, not yet recorded).
"""

from __future__ import annotations

import os
import signal
import threading

VARIABLE = "INSIGHTS_FAILPOINT"


def _die() -> None:
    # The whole process group when this process leads one (its dbt child dies with it, as
    # under a real kill of the worker); only this process otherwise, never a caller's shell.
    if os.getpgid(0) == os.getpid():
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def reached(point: str) -> None:
    spec = os.environ.get(VARIABLE)
    if not spec:
        return
    name, _, delay = spec.partition("@")
    if name != point:
        return
    if delay:
        timer = threading.Timer(float(delay), _die)
        timer.daemon = True
        timer.start()
    else:
        _die()
