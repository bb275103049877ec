"""Push dispatch: what a worker connected to ``WorkerService.Watch`` is told, as it happens.

A connected worker that is idle and not draining has jobs claimed for it (the same claim as
``GetTask``, under a lease; the worker then works as with a job from GetTask). It hears a stop
request for the session it holds, a change of its draining flag, and a keep-alive every
``keepalive`` so that either side notices a dead connection. Everything is woken by the event
bus, which crosses replicas on PostgreSQL: a job that becomes claimable is announced
(``JobQueued``: queued, retried, a backoff or a cap that ended, by the wait reconcile), and
events lost while a replica's listener reconnected come as ``Resync``, which makes every
stream read its worker again and try a claim.

On connect, a worker that already holds a job is told of it again: a job claimed for it just
before its previous stream dropped is not lost.

A worker has one stream per process: a new one ends the one before (FailedPrecondition),
which is what a worker that reconnects needs (its old stream may not have noticed the drop
yet). An idle stream costs nothing but its keep-alives: it reads the database only when an
event concerns it, and as a safety net about every ``RECHECK_S`` (jittered, so that streams
opened together do not re-check together). It once re-read every second, and 1,500 idle
streams kept a server's core busy.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.errors import FailedPrecondition
from delidev.services import secrets as secret_service
from delidev.services.common import now as current_time
from delidev.services.workers.claims import DEFAULT_MAX_RUN_SECONDS, Job, claim_now, describe_job
from delidev.services.workers.registry import get_worker
from delidev.services.workers.waiting import JobSignal

# Re-check without an event about this often. Dispatch never waits for it (every change
# that makes a job claimable is announced, and lost events come as Resync): it only bounds
# the cost of a wake-up this code misses by mistake.
RECHECK_S = 30.0
RECHECK_JITTER = 0.2  # each re-check comes after RECHECK_S times 1 ± this


def _recheck_delay() -> float:
    return RECHECK_S * random.uniform(1 - RECHECK_JITTER, 1 + RECHECK_JITTER)


@dataclass(frozen=True, slots=True)
class JobAssigned:
    job: Job


@dataclass(frozen=True, slots=True)
class StopSession:
    session_id: UUID
    reason: str


@dataclass(frozen=True, slots=True)
class DrainChanged:
    draining: bool


@dataclass(frozen=True, slots=True)
class KeepAlive:
    server_time: dt.datetime


Push = JobAssigned | StopSession | DrainChanged | KeepAlive
Claim = Callable[[UUID], Awaitable[Job | None]]


def _stop_reason(session: m.AgentSession) -> str:
    if session.stop_reason == m.StopReason.TIMEOUT.value:
        return "it ran longer than its time limit"
    return "a user stopped it"


async def watch_worker(
    *,
    worker_id: UUID,
    bus: events.EventBus,
    signal: JobSignal,
    claim: Claim,
    keepalive: dt.timedelta,
    closing: asyncio.Event | None = None,
) -> AsyncIterator[Push]:
    """What ``worker_id`` must know, until it is unregistered (then NotFound ends the stream)
    or the server shuts down (``closing``: the stream ends, and the worker reconnects to
    another replica or polls).

    ``claim(worker_id)`` claims a job for it without waiting (the caller binds the secret
    store and the run-time settings). Raises: NotFound, FailedPrecondition (a newer stream of
    the worker took over).
    """
    worker = await get_worker(worker_id=worker_id)
    loop = asyncio.get_running_loop()
    next_keepalive = loop.time() + keepalive.total_seconds()
    next_recheck = loop.time() + _recheck_delay()
    draining = False  # a worker draining when it connects is told so at once
    told_job: UUID | None = None
    told_stop: UUID | None = None
    held: m.AgentSession | None = None
    # Whether the worker's row and the job it holds must be read again. A wake-up that only
    # says "a job was queued" skips that and goes straight to the claim (which checks the
    # worker itself): with many idle workers each wake-up costs one statement, not three.
    stale = True
    # Whether a claim may find something: not after a keep-alive alone, only after a
    # wake-up (or the safety net) since the last claim that found nothing.
    look = True
    with (
        _only_stream(worker_id) as superseded,
        bus.watch(("worker", str(worker_id)), ("jobs",)) as fleet,
    ):
        session_watch: events.Watch | None = None
        generation = signal.generation()
        try:
            while closing is None or not closing.is_set():
                if superseded.is_set():
                    raise FailedPrecondition(
                        f"a newer Watch stream of worker {worker_id} took over this one"
                    )
                if generation.is_set():  # heard of a job since the last look
                    look = True
                generation = signal.generation()
                news = fleet.drain()
                if not all(isinstance(e, _JOB_NEWS) for e in news) or fleet.overflowed:
                    fleet.overflowed = False
                    stale = True
                if session_watch is not None and session_watch.drain():
                    stale = True
                look = look or stale or bool(news)
                if stale:
                    stale = False
                    worker = await get_worker(worker_id=worker_id)
                    if worker.draining != draining:
                        draining = worker.draining
                        yield DrainChanged(draining=draining)
                    held = await m.AgentSession.filter(
                        worker_id=worker_id, status=m.AgentSessionStatus.RUNNING
                    ).first()
                if held is not None:
                    key = ("session", str(held.id))
                    if session_watch is None or session_watch.keys != [key]:
                        # Watch first, then read again: a stop asked in between is not missed.
                        if session_watch is not None:
                            session_watch.close()
                        session_watch = bus.watch(key)
                        stale = True
                        continue
                    if held.id != told_job:
                        told_job = held.id
                        yield JobAssigned(job=await describe_job(held))
                        continue
                    if held.stop_requested and held.id != told_stop:
                        told_stop = held.id
                        yield StopSession(session_id=held.id, reason=_stop_reason(held))
                        continue
                elif look and not worker.draining and worker.status != m.WorkerStatus.UNHEALTHY:
                    look = False
                    job = await claim(worker_id)
                    if job is not None:
                        told_job = job.session.id
                        stale = True
                        yield JobAssigned(job=job)
                        continue
                remaining = next_keepalive - loop.time()
                if remaining <= 0:
                    next_keepalive = loop.time() + keepalive.total_seconds()
                    yield KeepAlive(server_time=current_time())
                    continue
                woken = await _wake(
                    [generation, fleet.changed, superseded]
                    + ([closing] if closing is not None else [])
                    + ([session_watch.changed] if session_watch is not None else []),
                    max(0.0, min(remaining, next_recheck - loop.time())),
                )
                look = look or woken
                if loop.time() >= next_recheck:  # the safety net reads everything
                    next_recheck = loop.time() + _recheck_delay()
                    stale = look = True
        finally:
            if session_watch is not None:
                session_watch.close()


_JOB_NEWS = (events.JobQueued, events.SecretsArrived)
# The stream of each worker in this process, by the event that tells it a newer one took over.
_streams: dict[UUID, asyncio.Event] = {}


@contextlib.contextmanager
def _only_stream(worker_id: UUID) -> Iterator[asyncio.Event]:
    """Registers a stream as its worker's one, telling the one before it to end; yields the
    event that tells this one a newer one took over."""
    superseded = asyncio.Event()
    before = _streams.get(worker_id)
    if before is not None:
        before.set()
    _streams[worker_id] = superseded
    try:
        yield superseded
    finally:
        if _streams.get(worker_id) is superseded:
            del _streams[worker_id]


async def _wake(flags: list[asyncio.Event], seconds: float) -> bool:
    """Returns when any flag is set (True), or after ``seconds`` (False)."""
    if any(flag.is_set() for flag in flags):
        return True
    waiters = [asyncio.ensure_future(flag.wait()) for flag in flags]
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED), seconds
            )
            return True
        return False
    finally:
        for waiter in waiters:
            waiter.cancel()


def default_claim(
    store: secret_service.SecretStore | None, max_run_seconds: int = DEFAULT_MAX_RUN_SECONDS
) -> Claim:
    """The claim GetTask makes, without waiting (and without its look at a held job: the
    stream knows what its worker holds)."""

    async def claim(worker_id: UUID) -> Job | None:
        return await claim_now(worker_id=worker_id, store=store, max_run_seconds=max_run_seconds)

    return claim
