from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, InvalidArgument, NotFound, Unauthenticated
from delidev.services import secrets, sessions, tasks, workers
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

Q = m.AgentSessionStatus


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
    monkeypatch.setattr(workers, "RECHECK_S", 60.0)
    worker = await _worker()
    bus = events.EventBus()
    signal = workers.JobSignal()
    bus.subscribe(signal.on_event)
    token = events.bind(bus)
    waiting = asyncio.create_task(
        workers.claim_job(worker_id=worker.id, wait=dt.timedelta(seconds=5), signal=signal)
    )
    await asyncio.sleep(0.1)
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
    interval = dt.timedelta(milliseconds=20)
    assert await workers.sweep_workers(heartbeat_interval=interval) == 0
    await asyncio.sleep(0.08)
    assert await workers.sweep_workers(heartbeat_interval=interval) == 1
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.UNHEALTHY
    lost = await m.AgentSession.get(id=job.session.id)
    assert (lost.status, lost.lease_token) == (Q.LOST, None)
    requeued = await m.AgentSession.filter(agent_task_id=task.agent_task_id, status=Q.QUEUED)
    assert [s.attempt for s in requeued] == [2]
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
    monkeypatch.setattr(workers, "TTY_POLL_S", 60.0)  # only the event can wake it in time
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
        await asyncio.sleep(0.1)
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
