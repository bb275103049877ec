"""Why a queued job waits: each reason, its detail, since when, and the position."""

from __future__ import annotations

import datetime as dt

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import secrets, tasks, workers
from delidev.services.scheduling import waits
from tests.factories import make_group, make_repository, make_workspace
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")
R = m.WaitReason


async def _unit(group: m.RepositoryGroup, **kwargs: object) -> m.UnitTask:
    task = await tasks.create_unit_task(
        actor=LOCAL_USER,
        repository_group_id=group.id,
        prompt="job",
        **kwargs,  # type: ignore[arg-type]
    )
    # Until task creation writes them (issue 11): the scheduling attributes of its AgentTask.
    await m.AgentTask.filter(id=task.agent_task_id).update(workspace_id=group.workspace_id)
    return task


async def _session(task: m.UnitTask) -> m.AgentSession:
    session = await m.AgentSession.filter(agent_task_id=task.agent_task_id).first()
    assert session is not None
    return session


async def _wait(task: m.UnitTask) -> waits.Wait:
    session = await _session(task)
    return (await waits.waits_of([session]))[session.id]


async def _worker(types: list[str] | None = None, labels: list[str] | None = None) -> m.Worker:
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    await m.Worker.filter(id=worker.id).update(agent_types=types or [], labels=labels or [])
    return worker


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def test_no_worker_at_all_then_queued_with_position() -> None:
    group = await _group()
    first, second = await _unit(group), await _unit(group)
    assert await waits.reconcile_waits() == 2
    wait = await _wait(first)
    assert wait.reason == R.NO_CAPABLE_WORKER
    assert "no registered worker runs the agent type claude_code" in wait.detail
    no_worker_since = wait.since

    await _worker()
    assert await waits.reconcile_waits() == 2
    assert await waits.reconcile_waits() == 0  # nothing changed: nothing written
    first_wait, second_wait = await _wait(first), await _wait(second)
    assert (first_wait.reason, first_wait.position) == (R.QUEUED, 0)
    assert (second_wait.reason, second_wait.position) == (R.QUEUED, 1)
    assert first_wait.since >= no_worker_since


async def test_agent_type_and_labels() -> None:
    group = await _group()
    task = await _unit(group)
    await m.AgentTask.filter(id=task.agent_task_id).update(required_labels=["gpu=true", "os=linux"])
    await _worker(types=["codex_cli"], labels=["gpu=true", "os=linux"])
    await waits.reconcile_waits()
    wait = await _wait(task)
    assert wait.reason == R.NO_CAPABLE_WORKER
    assert "no registered worker runs the agent type claude_code" in wait.detail

    await _worker(types=["claude_code"], labels=["os=linux"])
    await waits.reconcile_waits()
    wait = await _wait(task)
    assert wait.reason == R.NO_CAPABLE_WORKER
    assert "closest lacks gpu=true" in wait.detail

    await _worker(labels=["gpu=true", "os=linux", "region=eu"])
    await waits.reconcile_waits()
    assert (await _wait(task)).reason == R.QUEUED


async def test_unhealthy_and_draining_workers_do_not_count() -> None:
    group = await _group()
    task = await _unit(group)
    sick, draining = await _worker(), await _worker()
    await m.Worker.filter(id=sick.id).update(status=m.WorkerStatus.UNHEALTHY)
    await m.Worker.filter(id=draining.id).update(draining=True)
    await waits.reconcile_waits()
    wait = await _wait(task)
    assert wait.reason == R.NO_CAPABLE_WORKER
    assert "no live worker runs" in wait.detail


async def test_secrets_cap_and_backoff() -> None:
    group = await _group()
    await _worker()
    store = secrets.SecretStore()
    secret_task = await _unit(group, expects_secrets=True)
    await waits.reconcile_waits(store=store)
    assert (await _wait(secret_task)).reason == R.SECRETS

    capped = await _unit(group)
    await m.Workspace.filter(id=group.workspace_id).update(max_concurrent_jobs=0)
    await waits.reconcile_waits(store=store)
    wait = await _wait(capped)
    assert wait.reason == R.CONCURRENCY_CAP
    assert "runs 0 of at most 0 jobs" in wait.detail

    await m.Workspace.filter(id=group.workspace_id).update(max_concurrent_jobs=None)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    await m.AgentSession.filter(id=(await _session(capped)).id).update(
        not_before=later, auto_retries=1
    )
    await waits.reconcile_waits(store=store)
    wait = await _wait(capped)
    assert wait.reason == R.BACKOFF
    assert wait.until is not None
    assert abs((wait.until - later).total_seconds()) < 1
    # Once the backoff is over it is claimable again.
    await waits.reconcile_waits(store=store, now=later + dt.timedelta(seconds=1))
    assert (await _wait(capped)).reason == R.QUEUED


async def test_a_changed_reason_announces_the_task() -> None:
    group = await _group()
    task = await _unit(group)
    bus = events.EventBus()
    token = events.bind(bus)
    try:
        with bus.watch(("task", str(task.id))) as watch:
            await waits.reconcile_waits()
            assert any(isinstance(e, events.TaskChanged) for e in watch.drain())
            await waits.reconcile_waits()  # nothing changed: nothing announced
            assert watch.drain() == []
    finally:
        events.unbind(token)


async def test_higher_priority_is_ahead() -> None:
    group = await _group()
    await _worker()
    low, urgent = await _unit(group), await _unit(group)
    await m.AgentTask.filter(id=urgent.agent_task_id).update(priority=m.TaskPriority.URGENT.rank)
    await waits.reconcile_waits()
    assert (await _wait(urgent)).position == 0
    assert (await _wait(low)).position == 1


async def _queue_behind(first: m.AgentSession, count: int) -> None:
    """``count`` more queued runs of ``first``'s task, queued after it."""
    await m.AgentSession.bulk_create(
        [
            m.AgentSession(
                agent_task_id=first.agent_task_id,
                ai_agent_type=first.ai_agent_type,
                status=m.AgentSessionStatus.QUEUED,
                workspace_id=first.workspace_id,
            )
            for _ in range(count)
        ],
        batch_size=1_000,
    )


async def test_positions_in_a_queue_of_thousands_without_holding_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """The database ranks the queue and answers for the sessions asked about. Regression:
    every read of a queued task's wait read up to 20,000 queued jobs of every user (without
    an order, so past 10,000 the ranks were of an arbitrary part of the queue) and sorted
    them on the event loop: ~0.4 s of it per read at 10,000 queued jobs."""
    count = 5_000
    task = await _unit(await _group())
    first = await _session(task)
    await _queue_behind(first, count)
    last = (
        await m.AgentSession.filter(agent_task_id=task.agent_task_id)
        .order_by("-created_at")
        .first()
    )
    assert last is not None
    loop_watchdog.take()
    with loop_watchdog.armed():
        found = await waits.waits_of([first, last])
    assert loop_watchdog.take() == []
    assert (found[first.id].position, found[last.id].position) == (0, count)
    # An urgent job goes ahead of all of them.
    await m.AgentSession.filter(id=last.id).update(priority=3)
    found = await waits.waits_of([first, await m.AgentSession.get(id=last.id)])
    assert (found[first.id].position, found[last.id].position) == (1, 0)


async def test_a_pass_over_thousands_of_queued_jobs_never_holds_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """The reconciler reads, judges and announces the queue in batches, other tasks running
    between them. Regression: it read its 5,000 oldest queued jobs in one answer and judged
    them in one go (~0.2 s of the event loop on SQLite, every sweep)."""
    count = waits.MAX_RECONCILED
    task = await _unit(await _group())
    first = await _session(task)
    await _queue_behind(first, count)
    loop_watchdog.take()
    with loop_watchdog.armed():
        changed = await waits.reconcile_waits()
    assert loop_watchdog.take() == []
    assert changed == count  # the oldest ``count``: no worker runs their agent type
    assert await m.AgentSession.filter(wait_reason=R.NO_CAPABLE_WORKER.value).count() == count
