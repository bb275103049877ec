"""The app's background sweep, driven by an injected time instead of waiting for it."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from typing import Any

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.background import Sweeper, WaitReconciler
from delidev.services import tasks, workers, workspaces
from delidev.services.scheduling.policy import RetryPolicy
from delidev.settings import Settings
from tests.factories import make_group, make_repository, make_workspace
from tests.waiting import GUARD_S, eventually, until


async def test_one_pass_of_the_apps_sweeper_as_of_a_later_time(app: Any) -> None:
    sweeper: Sweeper = app.state.sweeper
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    registered = await workers.register_worker(name="bg", endpoint_url="http://w:54872")
    worker = registered.worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    await sweeper.sweep()  # now: the worker has just beaten, nothing changes
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.BUSY

    later = dt.datetime.now(dt.UTC) + sweeper.interval * workers.MISSED_BEATS * 2
    await sweeper.sweep(later)
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.UNHEALTHY
    lost = await m.AgentSession.get(id=job.session.id)
    assert lost.status == m.AgentSessionStatus.LOST
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).order_by("attempt")
    assert [r.status for r in runs] == [m.AgentSessionStatus.LOST, m.AgentSessionStatus.QUEUED]


async def test_the_apps_sweeper_takes_the_grace_and_the_retry_policy_from_settings(
    app: Any, settings: Settings
) -> None:
    sweeper: Sweeper = app.state.sweeper
    assert sweeper.stop_grace == dt.timedelta(seconds=settings.stop_grace_seconds)
    assert sweeper.policy == RetryPolicy.from_settings(settings)
    assert isinstance(app.state.reconciler, WaitReconciler)


async def test_the_sweeper_finalises_a_run_past_its_limit_after_the_grace(app: Any) -> None:
    sweeper: Sweeper = app.state.sweeper
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    worker = (await workers.register_worker(name="bg", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id, max_run_seconds=1)
    assert job is not None
    session = await m.AgentSession.get(id=job.session.id)
    assert session.deadline_at is not None
    overdue = session.deadline_at + dt.timedelta(seconds=1)
    await sweeper.sweep(overdue)  # the worker has beaten within three intervals of this
    asked = await m.AgentSession.get(id=session.id)
    assert (asked.status, asked.stop_reason) == (m.AgentSessionStatus.RUNNING, "timeout")
    await workers.heartbeat(worker_id=worker.id)
    await sweeper.sweep(overdue + sweeper.stop_grace + dt.timedelta(milliseconds=10))
    ended = await m.AgentSession.get(id=session.id)
    assert (ended.status, ended.failure_kind) == (m.AgentSessionStatus.FAILED, "timeout")


async def test_the_wait_reconciler_stores_why_a_job_waits_after_an_event(app: Any) -> None:
    bus: events.EventBus = app.state.events
    reconciler = WaitReconciler(bus=bus, store=app.state.secrets)
    running = asyncio.create_task(reconciler.run_forever())
    try:
        await until(lambda: bus._listeners, what="the reconciler listening")
        ws = await make_workspace()
        group = await make_group(ws, [await make_repository(ws)])
        # Queuing publishes JobQueued; no worker is registered, so none can run it.
        task = await tasks.create_unit_task(
            actor=LOCAL_USER, repository_group_id=group.id, prompt="p"
        )
        session = await eventually(
            lambda: m.AgentSession.get(agent_task_id=task.agent_task_id),
            lambda s: s.wait_reason is not None,
            within=GUARD_S,
            every=0.02,
        )
        assert session.wait_reason == m.WaitReason.NO_CAPABLE_WORKER
        # A worker that can run it comes: the next pass says it is simply queued.
        await workers.register_worker(name="w", endpoint_url="http://w:54872")
        bus.publish(events.WorkerChanged(worker_id="w"))
        session = await eventually(
            lambda: m.AgentSession.get(id=session.id),
            lambda s: s.wait_reason is None,  # claimable: stored as no reason
            within=GUARD_S,
            every=0.02,
        )
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert not bus._listeners or reconciler._hear not in bus._listeners


async def test_the_reconciler_reads_the_whole_queue_only_when_a_waiting_job_may_change(
    app: Any,
) -> None:
    """Claims and reports alone change no queued job's reason; new jobs need only theirs;
    a change of the fleet or of a cap (or, with a cap, of the running jobs) needs all."""
    reconciler = WaitReconciler(bus=app.state.events, store=app.state.secrets)
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])

    async def queue(prompt: str) -> m.UnitTask:
        return await tasks.create_unit_task(
            actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
        )

    async def reason(task: m.UnitTask) -> str | None:
        session = await m.AgentSession.get(agent_task_id=task.agent_task_id)
        return session.wait_reason

    old = await queue("old")
    await reconciler.reconcile({events.JobQueued})
    assert reconciler.full_passes == 1
    assert await reason(old) == m.WaitReason.NO_CAPABLE_WORKER
    # Workers going busy and idle: nothing to read again.
    await reconciler.reconcile({events.WorkerChanged, events.SessionChanged})
    assert reconciler.full_passes == 1
    # A new job: its own reason, without a read of the whole queue.
    new = await queue("new")
    await reconciler.reconcile({events.JobQueued})
    assert reconciler.full_passes == 1
    assert await reason(new) == m.WaitReason.NO_CAPABLE_WORKER
    # A worker that can run both: the fleet changed, every job is looked at again.
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    await reconciler.reconcile({events.WorkerChanged})
    assert reconciler.full_passes == 2
    assert (await reason(old), await reason(new)) == (None, None)
    # A cap of one, and one job running: the other waits for the cap.
    await workspaces.update_workspace(actor=LOCAL_USER, workspace_id=ws.id, max_concurrent_jobs=1)
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    await reconciler.reconcile({events.JobQueued, events.SessionChanged})
    assert reconciler.full_passes == 3
    waiting = new if job.task_id == old.id else old
    assert await reason(waiting) == m.WaitReason.CONCURRENCY_CAP
    # With a cap, the end of a run is looked at too.
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
    )
    await reconciler.reconcile({events.SessionChanged, events.WorkerChanged})
    assert reconciler.full_passes == 4
    assert await reason(waiting) is None
