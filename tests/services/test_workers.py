from __future__ import annotations

import asyncio
import base64
import datetime as dt
import itertools
import uuid
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from tortoise import connections

from delidev import db, events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from delidev.services import secrets, sessions, tasks, workers
from delidev.services.workers import claims as worker_claims
from delidev.services.workers import health as worker_health
from delidev.services.workers import jobs as worker_jobs
from delidev.services.workers import quick_heartbeat
from delidev.settings import Settings
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace
from tests.loop_watchdog import Watchdog
from tests.waiting import GUARD_S

pytestmark = pytest.mark.usefixtures("database")

Q = m.AgentSessionStatus
T = TypeVar("T")


async def _tasks(n: int, **kwargs: object) -> list[m.UnitTask]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    return [
        await tasks.create_unit_task(
            actor=LOCAL_USER,
            repository_group_id=group.id,
            prompt=f"job {i}",
            **kwargs,  # type: ignore[arg-type]
        )
        for i in range(n)
    ]


async def _worker(name: str = "w") -> m.Worker:
    return (await workers.register_worker(name=name, endpoint_url="http://w:54872")).worker


async def _busy_worker(name: str = "w") -> tuple[m.Worker, workers.Job]:
    worker = await _worker(name)
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    return worker, job


async def _silence(worker: m.Worker) -> None:
    """As if the worker had sent its last heartbeat an hour ago."""
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await m.Worker.filter(id=worker.id).update(last_heartbeat=an_hour_ago)


async def _after(delay: float, call: Awaitable[T]) -> T:
    # A sleep on purpose: the offset between two racing calls is what the race tests vary.
    await asyncio.sleep(delay)
    return await call


def _seen_waiting(monkeypatch: pytest.MonkeyPatch, owner: Any) -> asyncio.Event:
    """Set once a call blocks in ``owner.wait`` (a JobSignal, a bus Watch): from then on
    only a wake-up (not its first look at the database) can end its wait early."""
    waiting = asyncio.Event()
    wait = owner.wait

    async def seen(*args: object) -> object:
        waiting.set()
        return await wait(*args)

    monkeypatch.setattr(owner, "wait", seen)
    return waiting


# Delays that shift one call against another over the few queries each of them sends: a
# race test runs every offset and checks its invariant after each. On SQLite every query
# waits for the one connection, so some interleavings only happen on PostgreSQL.
OFFSETS = [i * 0.0003 for i in range(25)]


async def _check_status_matches_job(worker_id: uuid.UUID) -> None:
    """A healthy worker is busy exactly when it holds a running session."""
    worker = await m.Worker.get(id=worker_id)
    held = await m.AgentSession.filter(worker_id=worker_id, status=Q.RUNNING).first()
    if worker.status != m.WorkerStatus.UNHEALTHY:
        assert (worker.status == m.WorkerStatus.BUSY) == (held is not None), worker.status
    assert worker.current_session_id == (held.id if held else None)


async def test_register_and_authenticate() -> None:
    reg = await workers.register_worker(name="worker-1", endpoint_url="http://10.0.0.1:54872")
    assert reg.worker.status == m.WorkerStatus.IDLE
    assert reg.credential not in (reg.worker.credential_hash or "")
    found = await workers.authenticate_worker(worker_id=reg.worker.id, credential=reg.credential)
    assert found.id == reg.worker.id
    with pytest.raises(Unauthenticated):
        await workers.authenticate_worker(worker_id=reg.worker.id, credential="guess")
    with pytest.raises(InvalidArgument) as info:
        await workers.register_worker(name="x", endpoint_url="ftp://x")
    assert info.value.field == "endpoint_url"


async def test_claims_go_oldest_first_and_a_worker_holds_one_job() -> None:
    jobs = await _tasks(3)
    worker = await _worker()
    first = await workers.claim_job(worker_id=worker.id)
    assert first is not None
    assert first.task_id == jobs[0].id
    assert first.session.status == Q.RUNNING
    assert first.lease_token
    again = await workers.claim_job(worker_id=worker.id)
    assert again is not None
    assert (again.session.id, again.lease_token) == (first.session.id, first.lease_token)
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.BUSY


async def test_many_concurrent_claimers_get_each_job_once() -> None:
    await _tasks(20)
    fleet = [await _worker(f"w{i}") for i in range(25)]
    results = await asyncio.gather(*(workers.claim_job(worker_id=w.id) for w in fleet))
    claimed = [r.session.id for r in results if r is not None]
    assert len(claimed) == len(set(claimed)) == 20
    assert await m.AgentSession.filter(status=Q.QUEUED).count() == 0


async def test_jobs_expecting_secrets_wait_until_they_are_ready() -> None:
    (secret_job,) = await _tasks(1, expects_secrets=True)
    (plain_job,) = await _tasks(1)
    worker, other = await _worker(), await _worker("other")
    store = secrets.SecretStore()
    first = await workers.claim_job(worker_id=worker.id, store=store)
    assert first is not None
    assert first.task_id == plain_job.id  # the older job waits for its secrets
    assert await workers.claim_job(worker_id=other.id, store=store) is None
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=secret_job.id, values={"API_KEY": "sk-123456"}
    )
    job = await workers.claim_job(worker_id=other.id, store=store)
    assert job is not None
    assert job.task_id == secret_job.id
    assert job.expects_secrets


async def test_get_task_waits_and_is_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    # With the safety-net re-check out of reach, only the JobQueued event can wake it.
    monkeypatch.setattr(worker_claims, "RECHECK_S", 60.0)
    waiting_for_it = _seen_waiting(monkeypatch, workers.JobSignal)
    worker = await _worker()
    bus = events.EventBus()
    signal = workers.JobSignal()
    bus.subscribe(signal.on_event)
    token = events.bind(bus)
    waiting = asyncio.create_task(
        workers.claim_job(worker_id=worker.id, wait=dt.timedelta(seconds=5), signal=signal)
    )
    await asyncio.wait_for(waiting_for_it.wait(), GUARD_S)
    assert not waiting.done()
    try:
        (job_task,) = await _tasks(1)  # publishes JobQueued after its commit
    finally:
        events.unbind(token)
    job = await asyncio.wait_for(waiting, 3)
    assert job is not None
    assert job.task_id == job_task.id


async def test_reports_need_the_current_lease() -> None:
    (task,) = await _tasks(1)
    worker = await _worker()
    other = await _worker("other")
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    for wid, lease in ((worker.id, "stale"), (other.id, job.lease_token), (worker.id, "")):
        with pytest.raises(Conflict):
            await workers.report_status(
                worker_id=wid, session_id=job.session.id, lease_token=lease, status=Q.SUCCEEDED
            )
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_PROGRESS
    with pytest.raises(Conflict):
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token="stale",
            chunks=[sessions.LogChunkIn(sequence=0, data="x")],
        )
    await workers.append_job_log(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        chunks=[sessions.LogChunkIn(sequence=0, data="ok")],
    )
    done = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
    )
    assert (done.status, done.output_log) == (Q.SUCCEEDED, "ok")
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_REVIEW
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.IDLE
    with pytest.raises(Conflict):  # the lease ended with the job
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.FAILED,
        )


async def test_a_silent_worker_loses_its_job_and_its_lease() -> None:
    (task,) = await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    interval = dt.timedelta(seconds=30)
    assert await workers.sweep_workers(heartbeat_interval=interval) == 0
    # Three intervals later (an injected clock, not a sleep) it has missed its beats.
    later = dt.datetime.now(dt.UTC) + interval * 3 + dt.timedelta(seconds=1)
    assert await workers.sweep_workers(heartbeat_interval=interval, now=later) == 1
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.UNHEALTHY
    lost = await m.AgentSession.get(id=job.session.id)
    assert (lost.status, lost.lease_token) == (Q.LOST, None)
    requeued = await m.AgentSession.filter(agent_task_id=task.agent_task_id, status=Q.QUEUED)
    assert [(s.attempt, s.auto_retries) for s in requeued] == [(2, 1)]
    # A lost worker is an infrastructure failure: the new run waits out a backoff, ended
    # here by moving it into the past instead of waiting.
    assert requeued[0].not_before is not None
    assert requeued[0].not_before > dt.datetime.now(dt.UTC)
    await m.AgentSession.filter(id=requeued[0].id).update(not_before=None)
    # It comes back: healthy again, but the old lease stays dead.
    beat = await workers.heartbeat(worker_id=worker.id)
    assert beat.worker.status == m.WorkerStatus.IDLE
    with pytest.raises(Conflict):
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.SUCCEEDED,
        )
    again = await workers.claim_job(worker_id=worker.id)
    assert again is not None
    assert again.session.attempt == 2


async def test_stop_reaches_the_worker_in_its_heartbeat() -> None:
    await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    assert (await workers.heartbeat(worker_id=worker.id)).stop_session_ids == []
    await sessions.stop_session(actor=LOCAL_USER, session_id=job.session.id)
    reply = await workers.heartbeat(worker_id=worker.id)
    assert reply.stop_session_ids == [job.session.id]
    stopped = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.STOPPED,
    )
    assert stopped.status == Q.STOPPED


async def test_unregister_hands_the_job_back() -> None:
    (task,) = await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    await workers.unregister_worker(worker_id=worker.id)
    assert not await m.Worker.exists(id=worker.id)
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).order_by("attempt")
    assert [(s.attempt, s.status) for s in runs] == [(1, Q.LOST), (2, Q.QUEUED)]


async def test_a_deleted_tasks_job_is_stopped_through_the_heartbeat() -> None:
    (task,) = await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    beat = await workers.heartbeat(worker_id=worker.id, session_id=job.session.id)
    assert beat.stop_session_ids == []
    await tasks.delete_task(actor=LOCAL_USER, task_id=task.id)
    beat = await workers.heartbeat(worker_id=worker.id, session_id=job.session.id)
    assert beat.stop_session_ids == [job.session.id]
    assert beat.worker.status == m.WorkerStatus.IDLE
    with pytest.raises(Conflict):
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.STOPPED,
        )


async def test_one_worker_claiming_twice_at_once_holds_one_job() -> None:
    await _tasks(4)
    worker = await _worker()
    results = await asyncio.gather(*(workers.claim_job(worker_id=worker.id) for _ in range(4)))
    assert all(r is not None for r in results)
    assert len({r.session.id for r in results if r is not None}) == 1
    assert await m.AgentSession.filter(worker_id=worker.id, status=Q.RUNNING).count() == 1
    assert await m.AgentSession.filter(status=Q.QUEUED).count() == 3


async def test_an_unknown_worker_cannot_claim() -> None:
    await _tasks(1)
    with pytest.raises(NotFound):
        await workers.claim_job(worker_id=uuid.uuid4())
    assert await m.AgentSession.filter(status=Q.QUEUED).count() == 1


async def test_waiting_for_an_answer_is_woken_by_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_jobs, "TTY_POLL_S", 60.0)  # only the event can wake it in time
    waiting_for_it = _seen_waiting(monkeypatch, events.Watch)
    (task,) = await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    bus = events.EventBus()
    token = events.bind(bus)
    try:
        question = await workers.ask_tty_input(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            prompt="Which branch?",
            input_type=m.TtyInputType.TEXT,
            options=[],
            expires_in=dt.timedelta(minutes=5),
        )
        waiting = asyncio.create_task(
            workers.wait_tty_answer(
                worker_id=worker.id,
                session_id=job.session.id,
                lease_token=job.lease_token,
                request_id=question.id,
                wait=dt.timedelta(seconds=20),
            )
        )
        await asyncio.wait_for(waiting_for_it.wait(), GUARD_S)
        assert not waiting.done()
        await sessions.submit_tty_input(actor=LOCAL_USER, request_id=question.id, response="main")
        answered = await asyncio.wait_for(waiting, 5)
    finally:
        events.unbind(token)
    assert (answered.status, answered.response) == (m.TtyInputStatus.RESPONDED, "main")
    assert task.id == answered.task_id


async def test_an_unanswered_question_times_out_while_waited_for() -> None:
    await _tasks(1)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    bus = events.EventBus()
    token = events.bind(bus)
    try:
        question = await workers.ask_tty_input(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            prompt="Anyone?",
            input_type=m.TtyInputType.CONFIRM,
            options=[],
            expires_in=dt.timedelta(milliseconds=200),
        )
        answered = await asyncio.wait_for(
            workers.wait_tty_answer(
                worker_id=worker.id,
                session_id=job.session.id,
                lease_token=job.lease_token,
                request_id=question.id,
                wait=dt.timedelta(seconds=20),
            ),
            5,
        )
    finally:
        events.unbind(token)
    assert answered.status == m.TtyInputStatus.TIMEOUT


# Races and leftovers ------------------------------------------------------------------------


async def test_a_heartbeat_during_the_sweep_keeps_the_job() -> None:
    await _tasks(len(OFFSETS))
    interval = dt.timedelta(milliseconds=50)
    for delay in OFFSETS:
        worker, job = await _busy_worker(f"w{delay}")
        await _silence(worker)
        await asyncio.gather(
            workers.sweep_workers(heartbeat_interval=interval),
            _after(delay, workers.heartbeat(worker_id=worker.id)),
        )
        await _check_status_matches_job(worker.id)
        session = await m.AgentSession.get(id=job.session.id)
        if session.status == Q.LOST:  # only once the sweep had marked it unhealthy
            assert session.error == "its worker stopped sending heartbeats"
        else:
            assert session.status == Q.RUNNING
            assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.BUSY


async def test_jobs_of_an_unhealthy_worker_are_released_by_a_later_sweep() -> None:
    (task,) = await _tasks(1)
    worker, job = await _busy_worker()
    # The replica that marked it died before it released the job.
    await m.Worker.filter(id=worker.id).update(status=m.WorkerStatus.UNHEALTHY)
    interval = dt.timedelta(hours=1)  # nobody is silent: only the leftover is handled
    sweeps = [workers.sweep_workers(heartbeat_interval=interval) for _ in range(4)]
    assert sum(await asyncio.gather(*sweeps)) == 1  # every replica at once: released once
    assert await workers.sweep_workers(heartbeat_interval=interval) == 0
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).order_by("attempt")
    assert [(s.attempt, s.status) for s in runs] == [(1, Q.LOST), (2, Q.QUEUED)]
    assert (await m.Worker.get(id=worker.id)).current_session_id is None
    with pytest.raises(Conflict):
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            chunks=[sessions.LogChunkIn(sequence=0, data="late")],
        )


async def test_a_running_job_without_a_worker_is_released_after_the_grace() -> None:
    (task,) = await _tasks(1)
    worker, job = await _busy_worker()
    # Its worker's row went away under it (the foreign key set the session's worker to NULL).
    await m.Worker.filter(id=worker.id).delete()
    interval = dt.timedelta(milliseconds=20)
    assert await workers.sweep_workers(heartbeat_interval=interval) == 0  # just started
    # Past the grace of three intervals by the clock handed to the sweep, not by sleeping.
    later = dt.datetime.now(dt.UTC) + interval * 4
    assert await workers.sweep_workers(heartbeat_interval=interval, now=later) == 1
    assert await workers.sweep_workers(heartbeat_interval=interval, now=later) == 0
    lost = await m.AgentSession.get(id=job.session.id)
    assert (lost.status, lost.error) == (Q.LOST, "its worker is gone")
    queued = await m.AgentSession.filter(agent_task_id=task.agent_task_id, status=Q.QUEUED)
    assert [s.attempt for s in queued] == [2]


async def test_a_claim_racing_unregister_leaves_no_job_behind() -> None:
    await _tasks(len(OFFSETS))
    for delay in OFFSETS:
        worker = await _worker(f"w{delay}")
        await asyncio.gather(
            workers.unregister_worker(worker_id=worker.id),
            _after(delay, workers.claim_job(worker_id=worker.id)),
            return_exceptions=True,
        )
        assert not await m.Worker.exists(id=worker.id)
        orphans = await m.AgentSession.filter(status=Q.RUNNING, worker_id__isnull=True)
        assert orphans == [], f"a job runs for a worker that is gone (delay {delay})"
    assert await m.AgentSession.filter(status=Q.RUNNING).count() == 0


async def test_a_heartbeat_racing_a_claim_leaves_the_worker_busy() -> None:
    await _tasks(len(OFFSETS))
    for delay in OFFSETS:
        worker = await _worker(f"w{delay}")
        job, _ = await asyncio.gather(
            _after(delay, workers.claim_job(worker_id=worker.id)),
            workers.heartbeat(worker_id=worker.id),
        )
        assert job is not None
        await _check_status_matches_job(worker.id)
        assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.BUSY


async def test_the_status_a_worker_states_does_not_count() -> None:
    await _tasks(1)
    worker, job = await _busy_worker()
    await m.Worker.filter(id=worker.id).update(status=m.WorkerStatus.IDLE)  # drifted
    assert (await workers.heartbeat(worker_id=worker.id)).worker.status == m.WorkerStatus.BUSY
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.FAILED,
        error="boom",
    )
    await m.Worker.filter(id=worker.id).update(status=m.WorkerStatus.BUSY)  # drifted
    assert (await workers.heartbeat(worker_id=worker.id)).worker.status == m.WorkerStatus.IDLE


# The worker's current task ----------------------------------------------------------------


async def test_the_current_task_follows_claims_reports_and_releases() -> None:
    first, second = await _tasks(2)
    worker, job = await _busy_worker()
    held = await m.Worker.get(id=worker.id)
    assert (held.current_task_id, held.current_session_id) == (first.id, job.session.id)
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
    )
    done = await m.Worker.get(id=worker.id)
    assert (done.status, done.current_task_id, done.current_session_id) == (
        m.WorkerStatus.IDLE,
        None,
        None,
    )
    again = await workers.claim_job(worker_id=worker.id)
    assert again is not None
    assert (await m.Worker.get(id=worker.id)).current_task_id == second.id
    await _silence(worker)
    assert await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1)) == 1
    assert (await m.Worker.get(id=worker.id)).current_task_id is None


async def test_a_heartbeat_naming_a_task_that_is_no_longer_its_job_is_told_to_stop() -> None:
    (task,) = await _tasks(1)
    worker, job = await _busy_worker()
    beat = await workers.heartbeat(worker_id=worker.id, task_id=task.id)
    assert beat.stop_session_ids == []
    await _silence(worker)
    await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1))
    beat = await workers.heartbeat(worker_id=worker.id, task_id=task.id)
    assert beat.stop_session_ids == [job.session.id]
    assert beat.worker.current_task_id is None
    unknown = await workers.heartbeat(worker_id=worker.id, task_id=uuid.uuid4())
    assert unknown.stop_session_ids == []


# Masking ---------------------------------------------------------------------------------

SECRET = "sk-live-5f3a9c1e7b"


async def test_the_error_and_the_plan_a_worker_reports_are_masked() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="big"
    )
    (unit,) = await _tasks(1)
    store = secrets.SecretStore()
    for task_id in (composite.id, unit.id):
        await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=task_id, values={"TOKEN": SECRET}
        )
    planner, plan_job = await _busy_worker("planner")
    runner, unit_job = await _busy_worker("runner")
    assert plan_job.session.kind == m.JobKind.PLANNING
    await workers.report_status(
        worker_id=planner.id,
        session_id=plan_job.session.id,
        lease_token=plan_job.lease_token,
        status=Q.SUCCEEDED,
        plan_yaml=f'tasks:\n  - id: a\n    prompt: "use {SECRET}"\n',
        store=store,
    )
    planned = await m.CompositeTask.get(id=composite.id)
    assert planned.plan_yaml is not None
    assert SECRET not in planned.plan_yaml
    assert secrets.MASK in planned.plan_yaml
    failed = await workers.report_status(
        worker_id=runner.id,
        session_id=unit_job.session.id,
        lease_token=unit_job.lease_token,
        status=Q.FAILED,
        error=f"auth failed with {SECRET}",
        store=store,
    )
    assert failed.error == f"auth failed with {secrets.MASK}"


async def test_a_secret_split_between_two_chunks_is_masked_where_it_is_stored() -> None:
    (task,) = await _tasks(1)
    store = secrets.SecretStore()
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"TOKEN": SECRET}
    )
    worker, job = await _busy_worker()
    half = len(SECRET) // 2
    await workers.append_job_log(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        chunks=[
            sessions.LogChunkIn(sequence=0, data=f"token={SECRET[:half]}"),
            sessions.LogChunkIn(sequence=1, data=f"{SECRET[half:]}\nwhole: {SECRET}\n"),
        ],
        store=store,
    )
    done = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        store=store,
    )
    # Split between two chunks, the value is masked like any other (the end of the first
    # chunk waited for the second): in the chunks and in the final log.
    expected = f"token={secrets.MASK}\nwhole: {secrets.MASK}\n"
    assert done.output_log == expected
    stored = await m.AgentSession.get(id=job.session.id)
    assert stored.output_log == done.output_log
    read = await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)
    assert read.content == expected


async def test_a_secret_split_between_chunks_that_arrive_out_of_order_is_masked() -> None:
    (task,) = await _tasks(1)
    store = secrets.SecretStore()
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"TOKEN": SECRET}
    )
    worker, job = await _busy_worker()
    b64 = base64.b64encode(SECRET.encode()).decode()
    text = f"a {SECRET} b {b64} c\n"
    cuts = [0, 5, len(text) - 9, len(text)]  # inside the value, inside its base64 form
    parts = [text[i:j] for i, j in itertools.pairwise(cuts)]
    for sequence in (2, 0, 1):  # the last chunk first, then the first, then the middle
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            chunks=[sessions.LogChunkIn(sequence=sequence, data=parts[sequence])],
            store=store,
        )
    read = await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)
    assert SECRET[:4] not in read.content
    assert SECRET[-4:] not in read.content
    assert b64[:6] not in read.content
    assert read.content.startswith("a ")
    assert read.content.endswith(" c\n")


async def test_worker_and_session_changes_advance_updated_at() -> None:
    await _tasks(1)
    worker = await _worker()
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    async def age() -> None:
        await m.Worker.filter(id=worker.id).update(updated_at=an_hour_ago)
        await m.AgentSession.all().update(updated_at=an_hour_ago)

    async def advanced() -> bool:
        return (await m.Worker.get(id=worker.id)).updated_at > an_hour_ago

    await age()
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    assert await advanced()
    await age()
    await workers.heartbeat(worker_id=worker.id, session_id=job.session.id)
    assert await advanced()
    await age()
    await _silence(worker)
    assert await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1)) == 1
    assert await advanced()
    lost = await m.AgentSession.get(id=job.session.id)
    assert lost.status == Q.LOST
    assert lost.updated_at > an_hour_ago


async def test_a_lost_runs_password_answer_is_erased() -> None:
    await _tasks(1)
    worker, job = await _busy_worker()
    question = await workers.ask_tty_input(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        prompt="Passphrase?",
        input_type=m.TtyInputType.PASSWORD,
        options=[],
        expires_in=dt.timedelta(minutes=5),
    )
    await sessions.submit_tty_input(actor=LOCAL_USER, request_id=question.id, response="pw-91")
    assert (await m.TtyInputRequest.get(id=question.id)).response == "pw-91"
    await _silence(worker)
    assert await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1)) == 1
    assert (await m.TtyInputRequest.get(id=question.id)).response is None


# Unhealthy workers, unknown failure kinds ---------------------------------------------------


async def test_an_unhealthy_worker_claims_nothing_until_a_heartbeat() -> None:
    (task,) = await _tasks(1)
    worker = await _worker()
    await m.Worker.filter(id=worker.id).update(status=m.WorkerStatus.UNHEALTHY)
    signal = workers.JobSignal()
    for wait in (dt.timedelta(0), dt.timedelta(milliseconds=20)):
        with pytest.raises(FailedPrecondition) as info:
            await workers.claim_job(worker_id=worker.id, wait=wait, signal=signal)
        assert "unhealthy" in info.value.message
    queued = await m.AgentSession.get(agent_task_id=task.agent_task_id)
    assert (queued.status, queued.worker_id) == (Q.QUEUED, None)
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.UNHEALTHY
    await workers.heartbeat(worker_id=worker.id)
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    assert job.session.id == queued.id


async def test_an_unknown_failure_kind_is_refused() -> None:
    await _tasks(1)
    worker, job = await _busy_worker()
    with pytest.raises(InvalidArgument) as info:
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.FAILED,
            failure_kind="bogus",  # type: ignore[arg-type]  # what a careless caller sends
        )
    assert info.value.field == "failure_kind"
    assert (await m.AgentSession.get(id=job.session.id)).status == Q.RUNNING
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.FAILED,
        failure_kind=workers.FailureKind.OUT_OF_MEMORY,
    )
    assert ended.failure_kind == "out_of_memory"


async def _beats(app_events: events.EventBus) -> list[tuple[str, ...]]:
    """Heartbeats in the states a worker goes through (idle; holding a run, named or not;
    asked to stop it; unhealthy and back), each as (status, draining, stops, current run,
    current task, events), ids by their role."""
    (task,) = await _tasks(1)
    worker = await _worker()
    heard: list[str] = []
    unsubscribe = app_events.subscribe(lambda e: heard.append(type(e).__name__))
    outcomes: list[tuple[str, ...]] = []

    async def beat(session_id: uuid.UUID | None = None) -> None:
        heard.clear()
        reply = await workers.heartbeat(worker_id=worker.id, session_id=session_id)
        stored = await m.Worker.get(id=worker.id)
        assert (reply.worker.status, reply.worker.draining) == (stored.status, stored.draining)
        assert reply.worker.last_heartbeat == stored.last_heartbeat
        roles = {job.session.id: "run", task.id: "task", None: "-"} if job else {None: "-"}
        outcomes.append(
            (
                stored.status.value,
                str(stored.draining),
                ",".join(roles.get(s, "other") for s in reply.stop_session_ids),
                roles.get(stored.current_session_id, "other"),
                roles.get(stored.current_task_id, "other"),
                ",".join(sorted(heard)),
            )
        )

    try:
        job = None
        await beat()
        job = await workers.claim_job(worker_id=worker.id)
        assert job is not None
        await beat()
        await beat(job.session.id)
        await sessions.stop_session(actor=LOCAL_USER, session_id=job.session.id)
        await beat(job.session.id)
        await _silence(worker)
        await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=30))
        await beat()
    finally:
        unsubscribe()
    return outcomes


async def test_a_steady_heartbeat_answers_as_the_general_path_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On PostgreSQL a steady beat is one statement (``quick_heartbeat``); it must leave and
    answer exactly what the general path does, in every state."""
    bus = events.EventBus()
    token = events.bind(bus)
    answered: list[bool] = []
    original = quick_heartbeat.beat

    async def beat(**kwargs: Any) -> Any:
        steady = await original(**kwargs)
        answered.append(steady is not None)
        return steady

    monkeypatch.setattr(quick_heartbeat, "beat", beat)
    try:
        quick = await _beats(bus)
        if connections.get("default").capabilities.dialect == "postgres":
            assert answered == [True] * 5  # every beat of these states is a steady one
        monkeypatch.setattr(quick_heartbeat, "applies", lambda **_: False)
        general = await _beats(bus)
    finally:
        events.unbind(token)
    assert quick == general
    assert [o[0] for o in quick] == ["idle", "busy", "busy", "busy", "idle"]
    assert quick[3][2] == "run"  # the stop reaches it


async def test_the_sweep_marks_any_number_of_silent_workers_in_one_statement(
    sql_counter: SqlCounter,
) -> None:
    """Its cost grows with the silent workers' rows, not with statements per worker (a rack
    of workers dying at once) nor with the healthy fleet (an index on last_heartbeat)."""
    counts = []
    for silent in (1, 6):
        fleet = [await _worker(f"w{i}") for i in range(silent + 3)]
        for worker in fleet[:silent]:
            await _silence(worker)
        sql_counter.reset()
        await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=30))
        counts.append(len(sql_counter.statements))
        assert {w.id for w in fleet if (await m.Worker.get(id=w.id)).status == "unhealthy"} == {
            w.id for w in fleet[:silent]
        }
        await m.Worker.filter(id__in=[w.id for w in fleet]).delete()
    assert counts[0] == counts[1], sql_counter.statements


async def test_thousands_of_workers_falling_silent_at_once_never_hold_the_event_loop(
    settings: Settings, loop_watchdog: Watchdog
) -> None:
    """A rack of workers, or a region's network, gone at once: the sweep marks them (and
    later removes them) in batches, letting other tasks run between batches, and every one
    is announced. Regression: it took all 20,000 in one answer and published their events in
    one go, holding the event loop for 0.3-1 s of CPU (every call to the server waited)."""
    count = 20_000
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    await m.Worker.bulk_create(
        [m.Worker(name=f"w{i}", endpoint_url="http://w:1", last_heartbeat=long_ago)
         for i in range(count)],
        batch_size=2_000,
    )  # fmt: skip
    postgres = connections.get("default").capabilities.dialect == "postgres"
    bus = events.PostgresEventBus(db.asyncpg_dsn(settings)) if postgres else events.EventBus()
    await bus.start()
    heard: list[events.Event] = []
    unsubscribe = bus.subscribe(heard.append)
    token = events.bind(bus)
    try:
        interval = dt.timedelta(seconds=30)
        loop_watchdog.take()
        with loop_watchdog.armed():
            await workers.sweep_workers(heartbeat_interval=interval)
        assert loop_watchdog.take() == []
        assert await m.Worker.filter(status=m.WorkerStatus.UNHEALTHY).count() == count
        assert len({e.worker_id for e in heard if isinstance(e, events.WorkerChanged)}) == count
        heard.clear()
        with loop_watchdog.armed():
            await workers.sweep_workers(
                heartbeat_interval=interval, forget_after=dt.timedelta(days=7)
            )
        assert loop_watchdog.take() == []
        assert await m.Worker.all().count() == 0
        assert len({e.worker_id for e in heard if isinstance(e, events.WorkerChanged)}) == count
    finally:
        events.unbind(token)
        unsubscribe()
        await bus.stop()


async def test_workers_silent_for_long_are_removed_with_their_history_kept() -> None:
    """A fleet that scales up and down registers new workers all the time: those silent for
    ``forget_after`` (unhealthy, holding no job) are removed; their runs keep their history.
    Regression: unhealthy workers were never removed, so the table grew for ever."""
    interval = dt.timedelta(seconds=30)
    week = dt.timedelta(days=7)
    gone, holding, alive = await _worker("gone"), await _worker("holding"), await _worker("alive")
    await _tasks(1)
    job = await workers.claim_job(worker_id=gone.id)
    assert job is not None
    await workers.report_status(
        worker_id=gone.id, session_id=job.session.id, lease_token=job.lease_token,
        status=Q.SUCCEEDED,
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    # Not long enough: marked unhealthy, kept.
    soon = now + interval * 3 + dt.timedelta(seconds=1)
    await workers.sweep_workers(heartbeat_interval=interval, now=soon, forget_after=week)
    assert await m.Worker.filter(status=m.WorkerStatus.UNHEALTHY).count() == 3
    # A week on: a heartbeat keeps its worker. One found holding a job loses it to the
    # same sweep (lost, queued again), and then goes too.
    await m.Worker.filter(id=alive.id).update(last_heartbeat=now + week)
    (other,) = await _tasks(1)
    held = await m.AgentSession.get(agent_task_id=other.agent_task_id)
    await m.AgentSession.filter(id=held.id).update(
        status=Q.RUNNING, worker_id=holding.id, lease_token="held", started_at=now
    )
    # The statement itself never removes a worker with a running job (a safety net).
    assert await worker_health._forget_silent(now + week) == [gone.id]
    later = now + week + dt.timedelta(seconds=1)
    await workers.sweep_workers(heartbeat_interval=interval, now=later, forget_after=week)
    assert {w.name for w in await m.Worker.all()} == {"alive"}
    past = await m.AgentSession.get(id=job.session.id)
    assert (past.status, past.worker_id) == (Q.SUCCEEDED, None)
    lost = await m.AgentSession.get(id=held.id)
    assert (lost.status, lost.worker_id) == (Q.LOST, None)
    # Without forget_after, nobody is removed.
    await workers.sweep_workers(heartbeat_interval=interval, now=later + week)
    assert await m.Worker.all().count() == 1


async def test_a_job_deleted_as_it_is_claimed_is_no_job_not_an_unknown_worker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression (audit of user-operation races, SQLite): the steps after the claim read
    the run's rows one by one; a task deleted in between made GetTask answer not_found,
    which tells a worker it is unknown (the reference worker registered anew). The task is
    deleted right after the claim statement here."""
    if connections.get("default").capabilities.dialect != "sqlite":
        pytest.skip("the PostgreSQL claim is one statement")
    [job] = await _tasks(1)
    worker = await _worker()
    read = worker_claims.get_row

    async def deleted_first(model: Any, **where: Any) -> Any:
        if model is m.AgentTask:
            await tasks.delete_task(actor=LOCAL_USER, task_id=job.id)
        return await read(model, **where)

    monkeypatch.setattr(worker_claims, "get_row", deleted_first)
    assert await workers.claim_job(worker_id=worker.id) is None
    idle = await m.Worker.get(id=worker.id)
    assert (idle.status, idle.current_session_id) == (m.WorkerStatus.IDLE, None)
