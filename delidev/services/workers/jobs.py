"""Calls about a leased job: status reports, log uploads, secrets and TTY questions.

A claim hands a job out with a lease token. Every later call about that job must carry the
current lease: after a reassignment, a stop or a delete the old lease is dead and such calls
change nothing (``leased_session``; ``@_lease_bound`` makes a call that loses its lease
midway fail the same way). What a worker sends is masked with the task's secrets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Awaitable, Callable, Sequence
from enum import StrEnum
from typing import ParamSpec, TypeVar, cast
from uuid import UUID

from cachetools import LRUCache
from tortoise.exceptions import DoesNotExist

from delidev import events
from delidev import models as m
from delidev.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common, prepared
from delidev.services import secrets as secret_service
from delidev.services import sessions as session_service
from delidev.services.common import check_optional_text, check_text
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.workers import quick_append, quick_report
from delidev.services.workers.limits import BUDGET_ERROR, timeout_error
from delidev.services.workers.registry import get_worker
from delidev.services.workers.waiting import MAX_WAIT_MS, wait_deadline
from delidev.settings import Settings

SessionStatus = m.AgentSessionStatus
P = ParamSpec("P")
R = TypeVar("R")
# A commit a worker reports (a hash: 40 hex digits, 64 for SHA-256 repositories; what is
# stored is cut to 40). Longer text is no commit.
MAX_COMMIT_CHARS = 256


class FailureKind(StrEnum):
    """Why a run failed, as its worker reports it (stored in ``AgentSession.failure_kind``)."""

    CONTAINER_START = "container_start"
    AGENT_CRASHED = "agent_crashed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    OTHER = "other"


def tty_expiry(*, settings: Settings, timeout_ms: int) -> dt.timedelta:
    """How long a worker's TTY question stays open: ``timeout_ms``, or the configured
    default (``tty_input_timeout_ms``) when it is 0 (left out).

    Raises: InvalidArgument (negative).
    """
    if timeout_ms < 0:
        raise InvalidArgument("timeout_ms must not be negative", field="timeout_ms")
    return dt.timedelta(milliseconds=timeout_ms or settings.tty_input_timeout_ms)


async def leased_session(*, worker_id: UUID, session_id: UUID, lease_token: str) -> m.AgentSession:
    """The running session this worker holds under this lease. Raises: Conflict, NotFound."""
    session = await prepared.get_one(m.AgentSession, id=session_id)
    if (
        session is None
        or session.worker_id != worker_id
        or session.status != SessionStatus.RUNNING
        or not lease_token
        or session.lease_token is None
        or not common.same_secret(lease_token, session.lease_token)
    ):
        await get_worker(worker_id=worker_id)  # an unknown worker is NotFound, not Conflict
        raise Conflict(
            f"the lease on session {session_id} is no longer current "
            "(reassigned, stopped, finished or deleted)",
            field="lease_token",
        )
    return session


def _lease_bound(call: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """For a call about a leased job: when it fails because the job moved on after its lease
    was checked (the sweep released it, a user stopped it, its task was deleted), the lease
    is checked again and the call refused as a stale lease (Conflict), as it would have been
    a moment later. So a worker always hears "aborted" for a job it lost, however close the
    race (issue 9: FailedPrecondition or NotFound came through before)."""

    @functools.wraps(call)
    async def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await call(*args, **kwargs)
        except (FailedPrecondition, NotFound, DoesNotExist):
            await leased_session(
                worker_id=cast(UUID, kwargs["worker_id"]),
                session_id=cast(UUID, kwargs["session_id"]),
                lease_token=cast(str, kwargs["lease_token"]),
            )
            raise  # the lease holds: the failure has another cause

    return checked


@_lease_bound
async def report_status(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    status: m.AgentSessionStatus,
    error: str | None = None,
    failure_kind: FailureKind | None = None,
    plan_yaml: str | None = None,
    base_commit: str | None = None,
    end_commit: str | None = None,
    store: secret_service.SecretStore | None = None,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008  # frozen
) -> m.AgentSession:
    """Ends the job (succeeded / failed / stopped); ``running`` is a no-op acknowledgement.

    Every text the worker sends (error, PLAN.yaml, commits) is masked with the task's
    secrets (also those cleared or expired during the run); then a unit task's secrets are
    dropped, and what was kept for the run's masking. A run asked to stop for its time limit
    that ends stopped or failed ends failed (timeout); a failure of the machinery is retried
    as ``policy`` allows.
    Raises: Conflict (stale lease), InvalidArgument, FailedPrecondition.
    """
    if failure_kind is not None and failure_kind not in set(FailureKind):
        raise InvalidArgument(
            f"failure_kind has an unknown value {str(failure_kind)[:32]!r}", field="failure_kind"
        )
    kind = None if failure_kind is None else FailureKind(failure_kind).value
    # Checked before anything is written: text a database cannot store (a NUL) failed the
    # report on PostgreSQL with the run still running, or, in a plan, after it had ended.
    base_commit = check_optional_text(base_commit, "base_commit", max_length=MAX_COMMIT_CHARS)
    end_commit = check_optional_text(end_commit, "end_commit", max_length=MAX_COMMIT_CHARS)
    if plan_yaml is not None and "\x00" in plan_yaml:
        raise InvalidArgument("plan_yaml must not contain NUL characters", field="plan_yaml")
    if (store is None or not store.kept_task_ids()) and quick_report.applies(
        status=status, failure_kind=kind, plan_yaml=plan_yaml, store=store
    ):
        ended = await quick_report.end_run(
            worker_id=worker_id,
            session_id=session_id,
            lease_token=lease_token,
            status=status,
            error=(
                None
                if error is None
                else check_text(error, "error", max_length=10_000, required=False) or None
            ),
            failure_kind=kind,
            base_commit=base_commit,
            end_commit=end_commit,
        )
        if ended is not None:
            return ended
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    if status == SessionStatus.RUNNING:
        return session
    mask = await _mask_of(store, session.agent_task_id)
    error = None if error is None else mask(error)
    if session.stop_reason == m.StopReason.TIMEOUT and status in (
        SessionStatus.STOPPED,
        SessionStatus.FAILED,
    ):
        said = f": {error}" if error else ""
        status, kind = SessionStatus.FAILED, FailureKind.TIMEOUT.value
        error = timeout_error(session, by_server=False) + said
    elif session.stop_reason == m.StopReason.BUDGET and status in (
        SessionStatus.STOPPED,
        SessionStatus.FAILED,
    ):
        # Ended because it was asked to: a stop, whatever the agent made of it, not retried.
        status, kind = SessionStatus.STOPPED, None
        error = BUDGET_ERROR
    ended = await session_service.complete_session(
        session_id=session.id,
        status=status,
        error=error,
        failure_kind=kind,
        plan_yaml=None if plan_yaml is None else mask(plan_yaml),
        base_commit=None if base_commit is None else mask(base_commit),
        end_commit=None if end_commit is None else mask(end_commit),
        loaded=session,
        lease_token=session.lease_token,
        policy=policy,
    )
    # No second masking of ``output_log`` here (there was one, of it alone): it is the join
    # of the stored chunks, which GetLog serves and which were masked as they arrived with
    # every value the run could have been given (masking outlives Clear and the TTL until
    # the run ends); a second pass could only make it differ from the log.
    await m.Worker.filter(id=worker_id, current_session_id=session.id).update(
        **common.changed(status=m.WorkerStatus.IDLE, current_session_id=None, current_task_id=None)
    )
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    if store is not None:
        await secret_service.run_ended(store, session.agent_task_id)
    return ended


async def _masker_of(
    store: secret_service.SecretStore | None, agent_task_id: UUID
) -> secret_service.OutputMasker | None:
    """What a run's output is masked with (see ``secrets.output_masker``); None: nothing."""
    if store is None:
        return None
    return await secret_service.output_masker(store, agent_task_id)


async def _mask_of(
    store: secret_service.SecretStore | None, agent_task_id: UUID
) -> Callable[[str], str]:
    """Masks one text a run's worker sends."""
    masker = await _masker_of(store, agent_task_id)
    return masker.mask if masker is not None else str


# The AgentTask of a run never changes: kept per process (the latest ones) for AppendLog's
# quick path, which must know the task's secrets before it touches the run.
_task_of_run: LRUCache[UUID, UUID] = LRUCache(maxsize=10_000)


@_lease_bound
async def append_job_log(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    chunks: Sequence[session_service.LogChunkIn],
    store: secret_service.SecretStore | None = None,
    limits: session_service.LogLimits = session_service.LogLimits(),  # noqa: B008  # frozen
) -> quick_append.LogPosition:
    """Stores output of the leased job, masked with the task's secrets; returns where the
    log stands. Plain output (in order, after the stored log, nothing to mask) takes the
    quick path (``quick_append``), everything else the general one.

    Raises: Conflict (stale lease), InvalidArgument.
    """
    session_service.check_chunks(chunks, limits)
    task_id = _task_of_run.get(session_id)
    if (
        task_id is not None
        and quick_append.applies(chunks)
        and await _masker_of(store, task_id) is None
    ):
        position = await quick_append.append(
            worker_id=worker_id,
            session_id=session_id,
            lease_token=lease_token,
            chunks=chunks,
            limits=limits,
        )
        if position is not None:
            return position
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    _task_of_run[session.id] = session.agent_task_id
    masker = await _masker_of(store, session.agent_task_id)
    if masker is None:
        stored = await session_service.append_log(
            session_id=session_id, chunks=chunks, limits=limits
        )
    else:
        texts = await masker.mask_each([c.data for c in chunks])
        masked = [
            session_service.LogChunkIn(sequence=c.sequence, data=t)
            for c, t in zip(chunks, texts, strict=True)
        ]
        stored = await session_service.append_log(
            session_id=session_id, chunks=masked, hold=masker.feed, limits=limits
        )
    return quick_append.LogPosition(stored.log_size, stored.log_next_sequence)


async def get_job_secrets(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    store: secret_service.SecretStore,
) -> dict[str, str]:
    """The secrets of the leased job's task (empty when none were sent). Values sent through
    another replica that have not reached this one yet are waited for, briefly.

    Raises: Conflict (stale lease).
    """
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    return await secret_service.job_secrets(
        store,
        session.agent_task_id,
        expects_secrets=await secret_service.expects_secrets(session.agent_task_id),
    )


@_lease_bound
async def ask_tty_input(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    prompt: str,
    input_type: m.TtyInputType,
    options: Sequence[str],
    expires_in: dt.timedelta,
    store: secret_service.SecretStore | None = None,
) -> m.TtyInputRequest:
    """The leased job's agent asks its user a question (the prompt is masked).

    Raises: Conflict (stale lease), InvalidArgument.
    """
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    mask = await _mask_of(store, session.agent_task_id)
    prompt = mask(prompt)
    options = [mask(o) for o in options]
    return await session_service.create_tty_request(
        session_id=session.id,
        prompt=prompt,
        input_type=input_type,
        options=list(options),
        expires_in=expires_in,
    )


TTY_POLL_S = 0.2  # without an event bus (a service called outside an app)


@_lease_bound
async def wait_tty_answer(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    request_id: UUID,
    wait: dt.timedelta,
) -> m.TtyInputRequest:
    """The question once answered, timed out or cancelled, or as it is after ``wait``.

    The answer itself (``response``) is for the worker only. Raises: InvalidArgument (a
    negative wait), Conflict, NotFound.
    """
    deadline = wait_deadline(wait)
    await leased_session(worker_id=worker_id, session_id=session_id, lease_token=lease_token)
    loop = asyncio.get_running_loop()
    bus = events.current()
    watch = bus.watch(("tty", str(request_id))) if bus is not None else None
    try:
        while True:
            await session_service.expire_tty_requests()
            question = await m.TtyInputRequest.get_or_none(id=request_id, session_id=session_id)
            if question is None:
                raise NotFound(f"TTY input request {request_id} not found", field="request_id")
            if question.status != m.TtyInputStatus.PENDING or loop.time() >= deadline:
                return question
            # Until the answer's event, the question's own expiry, or the caller's deadline.
            expires_in = (
                (question.expires_at - common.now()).total_seconds() + 0.01
                if question.expires_at is not None
                else float(MAX_WAIT_MS)
            )
            pause = max(0.0, min(deadline - loop.time(), expires_in))
            if watch is None:
                await asyncio.sleep(min(pause, TTY_POLL_S))
            elif await watch.wait(pause):
                watch.drain()
    finally:
        if watch is not None:
            watch.close()
