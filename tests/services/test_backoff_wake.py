"""A job whose backoff ends reaches a watching worker when it ends.

Regression (review): once idle Watch streams stopped re-reading every second, a retried
job whose backoff ran out waited for the stream's 30 s safety net: nothing announced the
end of a backoff (only the sweep, every heartbeat interval, and not at all when the backoff
was shorter than the reconciler's first pass). The reconciler now arms a pass for the
moment the next backoff (or budget block) ends. The real reconciler, stream and report.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.background import WaitReconciler
from delidev.services import tasks, workers
from delidev.services.scheduling import waits
from delidev.services.scheduling.policy import INFRASTRUCTURE_FAILURES, RetryPolicy
from delidev.services.workers import push
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")
BACKOFF = dt.timedelta(milliseconds=600)


class _Fixed(RetryPolicy):
    def backoff(self, *, auto_retries: int, rng: object = None) -> dt.timedelta:  # type: ignore[override]
        return BACKOFF


async def test_a_retried_job_is_pushed_when_its_backoff_ends(bus: events.EventBus) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    signal = workers.JobSignal()
    bus.subscribe(signal.on_event)
    reconciler = WaitReconciler(bus=bus, store=None)
    running = asyncio.ensure_future(reconciler.run_forever())
    stream = push.watch_worker(
        worker_id=worker.id,
        bus=bus,
        signal=signal,
        claim=push.default_claim(None),
        keepalive=dt.timedelta(seconds=300),
    )
    try:
        first = await asyncio.wait_for(anext(stream), 5)
        assert isinstance(first, push.JobAssigned)
        await workers.report_status(
            worker_id=worker.id,
            session_id=first.job.session.id,
            lease_token=first.job.lease_token,
            status=m.AgentSessionStatus.FAILED,
            failure_kind=next(iter(INFRASTRUCTURE_FAILURES)),
            error="the container did not start",
            policy=_Fixed(),
        )
        retry = await m.AgentSession.get(status=m.AgentSessionStatus.QUEUED)
        assert retry.not_before is not None
        assert await waits.next_change_by_time() == retry.not_before
        started = time.monotonic()
        pushed = await asyncio.wait_for(anext(stream), 10)
        assert isinstance(pushed, push.JobAssigned)
        assert pushed.job.session.id == retry.id
        # At the end of the backoff, not at the stream's safety net (push.RECHECK_S).
        assert time.monotonic() - started < push.RECHECK_S * (1 - push.RECHECK_JITTER)
    finally:
        running.cancel()
        await stream.aclose()
