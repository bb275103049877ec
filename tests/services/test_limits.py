"""Run time limits, stops with grace and the retry policy for infrastructure failures.

Time is injected (``sweep_workers(now=...)``), never slept. The sweeps here use a long
heartbeat interval, so that a sweep "hours later" does not also find the worker silent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from uuid import UUID

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, FailedPrecondition
from delidev.services import sessions, tasks, workers
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.workers import limits
from tests.conftest import BACKEND
from tests.factories import make_group, make_repository, make_workspace
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")

Q = m.AgentSessionStatus
BEAT = dt.timedelta(hours=24)  # no worker falls silent within these tests' injected times
GRACE = dt.timedelta(seconds=60)
POLICY = RetryPolicy(
    max_attempts=3,
    backoff_base=dt.timedelta(seconds=10),
    backoff_max=dt.timedelta(seconds=25),
)


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _task(group: m.RepositoryGroup, prompt: str = "job") -> m.UnitTask:
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
    )


async def _worker(name: str = "w") -> m.Worker:
    return (await workers.register_worker(name=name, endpoint_url="http://w:54872")).worker


async def _claim(worker: m.Worker, **kwargs: int) -> workers.Job:
    job = await workers.claim_job(worker_id=worker.id, **kwargs)
    assert job is not None
    return job


async def _sweep(now: dt.datetime, **kwargs: object) -> int:
    return await workers.sweep_workers(
        heartbeat_interval=BEAT,
        now=now,
        stop_grace=GRACE,
        **kwargs,  # type: ignore[arg-type]
    )


async def _runs(agent_task_id: UUID) -> list[m.AgentSession]:
    return await m.AgentSession.filter(agent_task_id=agent_task_id).order_by("attempt")


async def _end_backoff(session_id: UUID) -> None:
    """The backoff is over: moved into the past instead of waited for."""
    await m.AgentSession.filter(id=session_id).update(not_before=None)


async def _report(job: workers.Job, worker: m.Worker, status: Q, **kwargs: object) -> None:
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=status,
        **kwargs,  # type: ignore[arg-type]
    )


# Time limits --------------------------------------------------------------------------


async def test_a_run_past_its_limit_is_asked_to_stop_and_its_confirmation_fails_it(
    bus: events.EventBus,
) -> None:
    task = await _task(await _group())
    worker = await _worker()
    job = await _claim(worker, max_run_seconds=4 * 3600)
    session = await m.AgentSession.get(id=job.session.id)
    assert session.deadline_at is not None
    assert await limits.ask_overdue_to_stop(now=session.deadline_at) == 0  # not yet past

    watch = bus.watch(("session", str(session.id)))
    past = session.deadline_at + dt.timedelta(seconds=1)
    await _sweep(past)
    asked = await m.AgentSession.get(id=session.id)
    assert (asked.status, asked.stop_requested, asked.stop_reason) == (Q.RUNNING, True, "timeout")
    assert asked.stop_requested_at == past
    assert any(isinstance(e, events.SessionChanged) for e in watch.drain())
    beat = await workers.heartbeat(worker_id=worker.id)
    assert beat.stop_session_ids == [session.id]
    # A user's stop now keeps the reason (and the grace) of the timeout.
    await sessions.stop_session(actor=LOCAL_USER, session_id=session.id)
    assert (await m.AgentSession.get(id=session.id)).stop_reason == "timeout"

    # The worker confirms (as stopped, or as failed): the run failed for its time limit.
    await _report(job, worker, Q.STOPPED, error="killed the agent")
    ended = await m.AgentSession.get(id=session.id)
    assert (ended.status, ended.failure_kind) == (Q.FAILED, "timeout")
    assert ended.error == (
        "ran longer than its limit of 4 h 0 min; its worker stopped it: killed the agent"
    )
    assert [r.id for r in await _runs(task.agent_task_id)] == [session.id]  # never retried
    freed = await m.Worker.get(id=worker.id)
    assert (freed.status, freed.current_session_id) == (m.WorkerStatus.IDLE, None)


async def test_a_silent_worker_past_the_limit_is_finalised_after_the_grace() -> None:
    task = await _task(await _group())
    worker = await _worker()
    job = await _claim(worker, max_run_seconds=90)
    session = await m.AgentSession.get(id=job.session.id)
    assert session.deadline_at is not None
    asked_at = session.deadline_at + dt.timedelta(seconds=1)
    await _sweep(asked_at)
    await _sweep(asked_at + GRACE)  # the grace is not over yet
    assert (await m.AgentSession.get(id=session.id)).status == Q.RUNNING

    await _sweep(asked_at + GRACE + dt.timedelta(seconds=1))
    ended = await m.AgentSession.get(id=session.id)
    assert (ended.status, ended.failure_kind, ended.lease_token) == (Q.FAILED, "timeout", None)
    assert ended.error == "ran longer than its limit of 1 min 30 s; stopped by the server"
    assert ended.completed_at is not None
    freed = await m.Worker.get(id=worker.id)
    assert (freed.status, freed.current_session_id, freed.current_task_id) == (
        m.WorkerStatus.IDLE,
        None,
        None,
    )
    assert len(await _runs(task.agent_task_id)) == 1  # a timeout is never retried
    # The worker's later calls are refused as stale (aborted on the wire).
    with pytest.raises(Conflict):
        await _report(job, worker, Q.STOPPED)
    with pytest.raises(Conflict):
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            chunks=[sessions.LogChunkIn(sequence=0, data="late")],
        )
    # Sweeping again changes nothing.
    await _sweep(asked_at + GRACE * 10)
    assert (await m.AgentSession.get(id=session.id)).updated_at == ended.updated_at


async def test_a_users_stop_unconfirmed_within_the_grace_ends_stopped() -> None:
    await _task(await _group())
    worker = await _worker()
    job = await _claim(worker)
    flagged = await sessions.stop_session(actor=LOCAL_USER, session_id=job.session.id)
    assert (flagged.stop_requested, flagged.stop_reason) == (True, "user")
    assert flagged.stop_requested_at is not None
    await _sweep(flagged.stop_requested_at + GRACE - dt.timedelta(seconds=1))
    assert (await m.AgentSession.get(id=job.session.id)).status == Q.RUNNING

    await _sweep(flagged.stop_requested_at + GRACE + dt.timedelta(seconds=1))
    ended = await m.AgentSession.get(id=job.session.id)
    assert (ended.status, ended.failure_kind, ended.error) == (Q.STOPPED, None, None)
    assert (await m.Worker.get(id=worker.id)).status == m.WorkerStatus.IDLE
    with pytest.raises(Conflict):
        await _report(job, worker, Q.STOPPED)


async def test_rejecting_a_composite_stops_its_running_node_and_the_grace_ends_it() -> None:
    group = await _group()
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="Build it"
    )
    planner = await _worker("planner")
    planning = await _claim(planner)
    await _report(planning, planner, Q.SUCCEEDED, plan_yaml="tasks:\n  - id: a\n    prompt: a\n")
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
    worker = await _worker("node")
    job = await _claim(worker)
    await tasks.reject_task(actor=LOCAL_USER, task_id=composite.id)
    flagged = await m.AgentSession.get(id=job.session.id)
    assert (flagged.status, flagged.stop_reason) == (Q.RUNNING, "user")
    assert flagged.stop_requested_at is not None

    await _sweep(flagged.stop_requested_at + GRACE + dt.timedelta(seconds=1))
    assert (await m.AgentSession.get(id=job.session.id)).status == Q.STOPPED
    assert (await m.Worker.get(id=worker.id)).current_session_id is None
    with pytest.raises(Conflict):
        await _report(job, worker, Q.STOPPED)


# Retry policy -------------------------------------------------------------------------


def _within_backoff(run: m.AgentSession, *, retry: int, before: dt.datetime) -> None:
    """``run`` waits between half and all of the capped, doubled base (equal jitter)."""
    full = min(POLICY.backoff_base * 2 ** (retry - 1), POLICY.backoff_max)
    assert run.not_before is not None
    after = dt.datetime.now(dt.UTC)
    assert before + full / 2 <= run.not_before <= after + full


async def test_a_job_that_loses_every_worker_ends_after_the_policys_attempts() -> None:
    group = await _group()
    poison = await _task(group, "poison")
    for attempt in range(1, 4):
        worker = await _worker(f"w{attempt}")
        job = await _claim(worker)
        assert (job.session.attempt, job.session.auto_retries) == (attempt, attempt - 1)
        await m.Worker.filter(id=worker.id).update(
            last_heartbeat=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        )
        before = dt.datetime.now(dt.UTC)
        assert (
            await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1), policy=POLICY)
            == 1
        )
        runs = await _runs(poison.agent_task_id)
        if attempt < 3:
            retry = runs[-1]
            assert (retry.status, retry.attempt, retry.auto_retries) == (
                Q.QUEUED,
                attempt + 1,
                attempt,
            )
            _within_backoff(retry, retry=attempt, before=before)
            if attempt == 1:
                # In backoff, the poison job holds nobody up: a job queued meanwhile goes first.
                other = await _task(group, "other")
                taken = await _claim(await _worker("other"))
                assert taken.session.agent_task_id == other.agent_task_id
            await _end_backoff(retry.id)
    runs = await _runs(poison.agent_task_id)
    assert [r.status for r in runs] == [Q.LOST] * 3
    assert runs[-1].error == (
        "its worker stopped sending heartbeats; gave up after 3 attempts: "
        "a person's Retry runs it again"
    )
    assert runs[0].error == "its worker stopped sending heartbeats"
    assert await workers.claim_job(worker_id=(await _worker("idle")).id) is None

    # A person's Retry starts again from the top, without backoff.
    await tasks.retry_task(actor=LOCAL_USER, task_id=poison.id)
    again = (await _runs(poison.agent_task_id))[-1]
    assert (again.status, again.attempt, again.auto_retries, again.not_before) == (
        Q.QUEUED,
        4,
        0,
        None,
    )


@pytest.mark.parametrize("kind", ["out_of_memory", "container_start"])
async def test_a_run_that_keeps_failing_on_the_machinery_ends_after_n_attempts(kind: str) -> None:
    task = await _task(await _group())
    worker = await _worker()
    for attempt in range(1, 4):
        job = await _claim(worker)
        before = dt.datetime.now(dt.UTC)
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.FAILED,
            error="the container died",
            failure_kind=workers.FailureKind(kind),
            policy=POLICY,
        )
        runs = await _runs(task.agent_task_id)
        if attempt < 3:
            assert (runs[-1].status, runs[-1].auto_retries) == (Q.QUEUED, attempt)
            _within_backoff(runs[-1], retry=attempt, before=before)
            await _end_backoff(runs[-1].id)
    runs = await _runs(task.agent_task_id)
    assert [(r.status, r.failure_kind) for r in runs] == [(Q.FAILED, kind)] * 3
    assert runs[-1].error == (
        "the container died; gave up after 3 attempts: a person's Retry runs it again"
    )


@pytest.mark.parametrize("kind", ["agent_crashed", "timeout", "other", None])
async def test_an_agents_own_failure_is_never_retried(kind: str | None) -> None:
    task = await _task(await _group())
    worker = await _worker()
    job = await _claim(worker)
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.FAILED,
        error="it broke",
        failure_kind=None if kind is None else workers.FailureKind(kind),
        policy=POLICY,
    )
    (run,) = await _runs(task.agent_task_id)
    assert (run.status, run.failure_kind, run.error) == (Q.FAILED, kind, "it broke")


async def test_a_run_being_stopped_is_not_retried_after_the_machinery_fails() -> None:
    task = await _task(await _group())
    worker = await _worker()
    job = await _claim(worker)
    await sessions.stop_session(actor=LOCAL_USER, session_id=job.session.id)
    await _report(
        job, worker, Q.FAILED, error="oom", failure_kind=workers.FailureKind("out_of_memory")
    )
    (run,) = await _runs(task.agent_task_id)
    assert (run.status, run.error) == (Q.FAILED, "oom")


def test_the_backoff_doubles_up_to_its_cap_with_jitter_in_bounds() -> None:
    rng = random.Random(7)
    for retry, full in [(0, 10), (1, 20), (2, 25), (9, 25)]:
        for _ in range(50):
            wait = POLICY.backoff(auto_retries=retry, rng=rng).total_seconds()
            assert full / 2 <= wait <= full


# Races (PostgreSQL) -------------------------------------------------------------------


@pytest.mark.skipif(BACKEND != "postgres", reason="concurrent transactions need PostgreSQL")
async def test_the_sweeps_finalisation_and_the_workers_report_at_once_end_the_run_once() -> None:
    group = await _group()
    fleet = [await _worker(f"w{i}") for i in range(8)]
    held: list[tuple[m.Worker, workers.Job]] = []
    for i, worker in enumerate(fleet):
        await _task(group, f"job {i}")
        held.append((worker, await _claim(worker)))
    for _, job in held:
        await sessions.stop_session(actor=LOCAL_USER, session_id=job.session.id)
    later = dt.datetime.now(dt.UTC) + GRACE * 2

    async def report(worker: m.Worker, job: workers.Job, delay: float) -> str:
        await asyncio.sleep(delay)
        try:
            await _report(job, worker, Q.SUCCEEDED)
        except (Conflict, FailedPrecondition) as refused:
            return type(refused).__name__
        return "reported"

    outcomes = await asyncio.gather(
        limits.finalise_unconfirmed_stops(now=later, stop_grace=GRACE),
        *(report(w, j, 0.006 * i) for i, (w, j) in enumerate(held)),
    )
    finalised, reports = outcomes[0], outcomes[1:]
    assert isinstance(finalised, int)
    assert finalised + reports.count("reported") == len(held)
    assert set(reports) <= {"reported", "Conflict"}
    for (worker, job), outcome in zip(held, reports, strict=True):
        ended = await m.AgentSession.get(id=job.session.id)
        assert ended.lease_token is None
        assert ended.status == (Q.SUCCEEDED if outcome == "reported" else Q.STOPPED)
        row = await m.Worker.get(id=worker.id)
        assert (row.status, row.current_session_id) == (m.WorkerStatus.IDLE, None)


async def test_finalising_many_unconfirmed_stops_never_holds_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """Runs whose stop went unconfirmed are read a page at a time. Regression: all of them
    were loaded at once, every sweep (3,000 held the event loop for ~0.5 s on SQLite)."""
    count = 1_000
    task = await _task(await _group())
    queued = await m.AgentSession.get(agent_task_id=task.agent_task_id)
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await m.AgentSession.bulk_create(
        [
            m.AgentSession(
                agent_task_id=task.agent_task_id,
                ai_agent_type=queued.ai_agent_type,
                status=m.AgentSessionStatus.RUNNING,
                attempt=2 + i,
                lease_token=f"lease-{i}",
                started_at=long_ago,
                stop_requested=True,
                stop_reason=m.StopReason.USER.value,
                stop_requested_at=long_ago,
                output_log="x" * 2_000,
            )
            for i in range(count)
        ],
        batch_size=500,
    )
    loop_watchdog.take()
    with loop_watchdog.armed():
        ended = await limits.finalise_unconfirmed_stops(
            now=dt.datetime.now(dt.UTC), stop_grace=GRACE
        )
    assert loop_watchdog.take() == []
    assert ended == count
    assert await m.AgentSession.filter(status=m.AgentSessionStatus.STOPPED).count() == count
