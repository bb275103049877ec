"""Push dispatch (the service behind WorkerService.Watch): jobs, stops, drain, keep-alives."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import FailedPrecondition, NotFound
from delidev.services import tasks, workers
from delidev.services.workers import push
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")


async def _next(stream: AsyncIterator[push.Push], seconds: float = 5) -> push.Push:
    return await asyncio.wait_for(anext(stream), seconds)


async def _task() -> m.UnitTask:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="push me"
    )


def _stream(
    bus: events.EventBus, worker: m.Worker, keepalive: float = 30
) -> AsyncIterator[push.Push]:
    signal = workers.JobSignal()
    bus.subscribe(signal.on_event)
    return push.watch_worker(
        worker_id=worker.id,
        bus=bus,
        signal=signal,
        claim=push.default_claim(None),
        keepalive=dt.timedelta(seconds=keepalive),
    )


async def _worker() -> m.Worker:
    return (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker


async def test_a_new_job_is_pushed_to_an_idle_worker(bus: events.EventBus) -> None:
    worker = await _worker()
    stream = _stream(bus, worker)
    pending = asyncio.ensure_future(_next(stream))
    await asyncio.sleep(0.05)  # the stream is waiting (nothing queued): then a task arrives
    assert not pending.done()
    task = await _task()
    pushed = await pending
    assert isinstance(pushed, push.JobAssigned)
    assert pushed.job.task_id == task.id
    session = await m.AgentSession.get(id=pushed.job.session.id)
    assert session.status == m.AgentSessionStatus.RUNNING
    assert session.worker_id == worker.id
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_held_job_is_told_again_on_reconnect_then_its_stop(bus: events.EventBus) -> None:
    worker = await _worker()
    await _task()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    stream = _stream(bus, worker)
    again = await _next(stream)
    assert isinstance(again, push.JobAssigned)
    assert again.job.session.id == job.session.id
    assert again.job.lease_token == job.lease_token

    await m.AgentSession.filter(id=job.session.id).update(
        stop_requested=True, stop_reason=m.StopReason.TIMEOUT.value
    )
    events.publish(events.SessionChanged(session_id=str(job.session.id), status="running"))
    stop = await _next(stream)
    assert isinstance(stop, push.StopSession)
    assert stop.session_id == job.session.id
    assert "time limit" in stop.reason
    await stream.aclose()  # type: ignore[attr-defined]


async def test_drain_is_told_and_a_draining_worker_gets_no_job(bus: events.EventBus) -> None:
    worker = await _worker()
    stream = _stream(bus, worker, keepalive=0.2)
    await m.Worker.filter(id=worker.id).update(draining=True)
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    assert await _next(stream) == push.DrainChanged(draining=True)
    await _task()
    assert isinstance(await _next(stream), push.KeepAlive)  # no job for a draining worker
    await m.Worker.filter(id=worker.id).update(draining=False)
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    assert await _next(stream) == push.DrainChanged(draining=False)
    assert isinstance(await _next(stream), push.JobAssigned)
    await stream.aclose()  # type: ignore[attr-defined]


async def test_keepalives_and_the_end_when_unregistered(bus: events.EventBus) -> None:
    worker = await _worker()
    stream = _stream(bus, worker, keepalive=0.05)
    assert isinstance(await _next(stream), push.KeepAlive)
    assert isinstance(await _next(stream), push.KeepAlive)
    await workers.unregister_worker(worker_id=worker.id)
    with pytest.raises(NotFound):
        await _next(stream)


async def test_the_next_job_is_pushed_as_soon_as_the_last_one_is_reported(
    bus: events.EventBus,
) -> None:
    """Jobs queued before the worker connected: after each report the stream claims the
    next at once (woken by its session's change, not by the periodic re-check)."""
    worker = await _worker()
    for _ in range(3):
        await _task()
    stream = _stream(bus, worker)
    for _ in range(3):
        pushed = await _next(stream, seconds=1)
        assert isinstance(pushed, push.JobAssigned)
        await workers.report_status(
            worker_id=worker.id,
            session_id=pushed.job.session.id,
            lease_token=pushed.job.lease_token,
            status=m.AgentSessionStatus.SUCCEEDED,
        )
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_newer_stream_of_a_worker_ends_the_one_before(bus: events.EventBus) -> None:
    """Regression: any number of streams of one worker were served, each re-reading the
    database every second (1,500 of them kept a server's core busy)."""
    worker = await _worker()
    first = _stream(bus, worker, keepalive=0.05)
    assert isinstance(await _next(first), push.KeepAlive)
    second = _stream(bus, worker, keepalive=0.05)
    assert isinstance(await _next(second), push.KeepAlive)
    with pytest.raises(FailedPrecondition, match="a newer Watch stream of worker"):
        await _next(first)
    # The newer one goes on, and a job queued now reaches it.
    task = await _task()
    while not isinstance(pushed := await _next(second), push.JobAssigned):
        pass
    assert pushed.job.task_id == task.id
    await second.aclose()  # type: ignore[attr-defined]
    # Its place is free again: a stream after it is the worker's one.
    third = _stream(bus, worker, keepalive=0.05)
    assert isinstance(await _next(third), push.JobAssigned)  # told again of the job it holds
    assert push._streams.keys() == {worker.id}
    await third.aclose()  # type: ignore[attr-defined]
    assert push._streams == {}


async def test_an_idle_stream_does_not_read_the_database(
    bus: events.EventBus, sql_counter: SqlCounter
) -> None:
    """Regression: every idle stream re-read its worker and its session and tried a claim
    every second (and at each keep-alive), with no event at all: 1,500 idle streams kept a
    server's core busy. Now only keep-alives flow until an event concerns it."""
    worker = await _worker()
    sql_counter.reset()  # the stream runs in this task: its statements are counted
    stream = _stream(bus, worker, keepalive=0.2)
    assert isinstance(await _next(stream), push.KeepAlive)
    sql_counter.statements.clear()
    for _ in range(12):  # 2.4 s: more than two of the old once-a-second re-checks
        assert isinstance(await _next(stream), push.KeepAlive)
    assert sql_counter.statements == []
    # Still as fast as ever when a job comes.
    task = await _task()
    while not isinstance(pushed := await _next(stream, seconds=1), push.JobAssigned):
        pass
    assert pushed.job.task_id == task.id
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_resync_makes_an_idle_stream_look_for_a_job_it_was_not_told_of(
    bus: events.EventBus,
) -> None:
    """A job queued while this replica's listener reconnected is announced by no event it
    hears; the Resync that follows the reconnect makes the stream claim it at once."""
    worker = await _worker()
    stream = _stream(bus, worker, keepalive=30)
    first = asyncio.ensure_future(_next(stream))
    await asyncio.sleep(0.2)  # the stream waits, idle
    token = events.bind(events.EventBus())  # the JobQueued of this task goes elsewhere
    try:
        task = await _task()
    finally:
        events.unbind(token)
    await asyncio.sleep(0.2)
    assert not first.done()
    bus.deliver(events.Resync())
    pushed = await asyncio.wait_for(first, 1)
    assert isinstance(pushed, push.JobAssigned)
    assert pushed.job.task_id == task.id
    await stream.aclose()  # type: ignore[attr-defined]


async def test_the_safety_net_recheck_is_jittered_around_its_period() -> None:
    delays = [push._recheck_delay() for _ in range(200)]
    low, high = (
        push.RECHECK_S * (1 - push.RECHECK_JITTER),
        push.RECHECK_S * (1 + push.RECHECK_JITTER),
    )
    assert all(low <= d <= high for d in delays)
    assert push.RECHECK_S >= 10  # idle streams re-read rarely
    assert len({round(d, 3) for d in delays}) > 100
