"""Workers: registration, heartbeats, atomic job claims with leases, reports and sweeps.

A claim hands the oldest queued session to one worker with a fresh lease token. Every later
call about that job (report, log upload, TTY, secrets) must carry the current lease: after a
reassignment, a stop or a delete the old lease is dead and such calls change nothing.

Claiming is one statement: ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING`` on PostgreSQL (safe with many server processes), the same without the locking
clause on SQLite (one process; SQLite serialises writers).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import ParamSpec, TypeVar, cast
from uuid import UUID

from tortoise import connections
from tortoise.exceptions import DoesNotExist, IntegrityError
from tortoise.expressions import Q

from delidev import events
from delidev import models as m
from delidev.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from delidev.services import secrets as secret_service
from delidev.services import sessions as session_service
from delidev.services.common import MAX_URL_LENGTH, check_text, get_row, transaction
from delidev.services.common import now as _now
from delidev.settings import Settings

SessionStatus = m.AgentSessionStatus
P = ParamSpec("P")
R = TypeVar("R")
MISSED_BEATS = 3
MAX_WAIT_MS = 30_000
# Safety net for wake-ups this process cannot see (a job queued through another replica).
RECHECK_S = 1.0


def hash_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


class JobSignal:
    """Wakes workers waiting in GetTask when a job may have appeared.

    It listens to the event bus (``JobQueued``, ``SecretsArrived``). A waiter takes the
    current generation *before* it looks at the database, so a job queued between its look
    and its wait still wakes it. Woken waiters re-check the database: a spurious wake-up
    costs one query, a missed one (another process queued the job) costs at most
    ``RECHECK_S``.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.JobQueued | events.SecretsArrived | events.Resync):
            self.notify()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def generation(self) -> asyncio.Event:
        return self._event

    @staticmethod
    async def wait(generation: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(generation.wait(), seconds)


class FailureKind(StrEnum):
    """Why a run failed, as its worker reports it (stored in ``AgentSession.failure_kind``)."""

    CONTAINER_START = "container_start"
    AGENT_CRASHED = "agent_crashed"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Registration:
    worker: m.Worker
    credential: str


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    worker: m.Worker
    stop_session_ids: list[UUID]


@dataclass(frozen=True, slots=True)
class Job:
    session: m.AgentSession
    lease_token: str
    task_id: UUID | None
    prompt: str
    title: str | None
    branch_name: str | None
    base_remotes: list[m.AgentTaskBaseRemote]
    expects_secrets: bool


async def register_worker(*, name: str, endpoint_url: str) -> Registration:
    """A new worker (idle) and its credential, shown once. Raises: InvalidArgument."""
    name = check_text(name, "name")
    endpoint = check_text(endpoint_url, "endpoint_url", max_length=MAX_URL_LENGTH)
    if not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument("endpoint_url must be an http(s) URL", field="endpoint_url")
    credential = secrets.token_urlsafe(32)
    worker = await m.Worker.create(
        name=name,
        endpoint_url=endpoint,
        status=m.WorkerStatus.IDLE,
        last_heartbeat=_now(),
        credential_hash=hash_credential(credential),
    )
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    return Registration(worker=worker, credential=credential)


async def get_worker(*, worker_id: UUID) -> m.Worker:
    """Raises: NotFound."""
    worker = await m.Worker.get_or_none(id=worker_id)
    if worker is None:
        raise NotFound(f"worker {worker_id} not found", field="worker_id")
    return worker


def admit_registration(*, settings: Settings, token: str) -> None:
    """Whether a worker may register with ``token``: in multi-user mode it must be the
    configured registration token (none configured: registration is closed); in
    single-user mode auth is off.

    Raises: Unauthenticated.
    """
    if settings.single_user_mode:
        return
    expected = settings.worker_registration_token
    if not expected:
        raise Unauthenticated(
            "worker registration is closed: DELIDEV_WORKER_REGISTRATION_TOKEN is not set"
        )
    if not secrets.compare_digest(token, expected):
        raise Unauthenticated("registration token not accepted")


async def authenticate_caller(
    *, settings: Settings, worker_id: UUID, credential: str, must_exist: bool = True
) -> None:
    """Checks that a call comes from worker ``worker_id``. In multi-user mode its
    credential must be the worker's; in single-user mode there is no credential to check,
    and with ``must_exist`` the worker must exist (calls that look it up anyway skip that).

    Raises: Unauthenticated, NotFound.
    """
    if settings.single_user_mode:
        if must_exist:
            await get_worker(worker_id=worker_id)
        return
    if not credential:
        raise Unauthenticated("worker methods need the worker's credential")
    await authenticate_worker(worker_id=worker_id, credential=credential)


def tty_expiry(*, settings: Settings, timeout_ms: int) -> dt.timedelta:
    """How long a worker's TTY question stays open: ``timeout_ms``, or the configured
    default (``tty_input_timeout_ms``) when it is 0 (left out).

    Raises: InvalidArgument (negative).
    """
    if timeout_ms < 0:
        raise InvalidArgument("timeout_ms must not be negative", field="timeout_ms")
    return dt.timedelta(milliseconds=timeout_ms or settings.tty_input_timeout_ms)


def _check_wait(wait: dt.timedelta) -> None:
    if wait < dt.timedelta(0):
        raise InvalidArgument("wait_ms must not be negative", field="wait_ms")


async def authenticate_worker(*, worker_id: UUID, credential: str) -> m.Worker:
    """The worker whose credential this is. Raises: Unauthenticated."""
    worker = await m.Worker.get_or_none(id=worker_id)
    expected = worker.credential_hash if worker else None
    given = hash_credential(credential)
    if worker is None or expected is None or not secrets.compare_digest(expected, given):
        raise Unauthenticated("worker credential not accepted")
    return worker


async def heartbeat(
    *,
    worker_id: UUID,
    session_id: UUID | None = None,
    task_id: UUID | None = None,
) -> HeartbeatReply:
    """Records a heartbeat; the reply lists the sessions this worker must stop.

    Those are its running sessions with a stop request, and the session (or the task) it says
    it runs when that is no longer its job (deleted, reassigned, ended). Its status follows
    from the session it holds, never from what it says: busy with a running session, else
    idle. A worker that was marked unhealthy is healthy again, but its old leases stay dead.
    Raises: NotFound.
    """
    async with transaction():
        # The row lock orders this against a claim, a release or a sweep for this worker:
        # the sessions read below are the ones committed before it (PostgreSQL).
        worker = await m.Worker.filter(id=worker_id).select_for_update().first()
        if worker is None:
            raise NotFound(f"worker {worker_id} not found", field="worker_id")
        held = await m.AgentSession.filter(worker_id=worker.id, status=SessionStatus.RUNNING)
        current = held[0] if held else None  # a unique index allows one at most
        status = m.WorkerStatus.BUSY if current else m.WorkerStatus.IDLE
        unchanged = current is not None and current.id == worker.current_session_id
        now = _now()
        await m.Worker.filter(id=worker.id).update(
            last_heartbeat=now,
            updated_at=now,
            status=status,
            current_session_id=current.id if current else None,
            current_task_id=worker.current_task_id if unchanged else await _unit_task_of(current),
        )
    if status != worker.status:
        events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    held_ids = {s.id for s in held}
    stop = [s.id for s in held if s.stop_requested]
    if session_id is not None and session_id not in held_ids:
        stop.append(session_id)
    if task_id is not None:
        last = await _last_session_on(worker.id, task_id)
        if last is not None and last not in held_ids and last not in stop:
            stop.append(last)
    return HeartbeatReply(worker=await get_worker(worker_id=worker.id), stop_session_ids=stop)


async def _unit_task_of(session: m.AgentSession | None) -> UUID | None:
    """The UnitTask a session runs for (``Worker.current_task`` refers to unit tasks only)."""
    if session is None or session.kind == m.JobKind.PLANNING:
        return None
    unit = (
        await m.UnitTask.filter(agent_task_id=session.agent_task_id)
        .first()
        .values_list("id", flat=True)
    )
    return cast(UUID | None, unit)


async def _last_session_on(worker_id: UUID, task_id: UUID) -> UUID | None:
    """The newest session of a task (unit, or composite being planned) this worker ran."""
    agent_id = await m.UnitTask.filter(id=task_id).first().values_list("agent_task_id", flat=True)
    if agent_id is None:
        agent_id = (
            await m.CompositeTask.filter(id=task_id)
            .first()
            .values_list("planning_task_id", flat=True)
        )
    if agent_id is None:
        return None
    last = (
        await m.AgentSession.filter(agent_task_id=agent_id, worker_id=worker_id)
        .order_by("-attempt")
        .first()
        .values_list("id", flat=True)
    )
    return cast(UUID | None, last)


async def unregister_worker(*, worker_id: UUID) -> None:
    """Removes a worker; its running session goes back to the queue. Raises: NotFound."""
    async with transaction():
        # Locked, a claim by this worker waits (its foreign key check needs the row) and then
        # fails on the deleted row: no job is left running for a worker that is gone.
        worker = await m.Worker.filter(id=worker_id).select_for_update().first()
        if worker is None:
            raise NotFound(f"worker {worker_id} not found", field="worker_id")
        released = [
            session
            for session in await m.AgentSession.filter(
                worker_id=worker.id, status=SessionStatus.RUNNING
            )
            if await _release(session, reason="its worker unregistered")
        ]
        await m.Worker.filter(id=worker.id).delete()
    await _announce_released(released)
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))


async def _release(session: m.AgentSession, *, reason: str) -> bool:
    """A running session → lost, and a new run of it is queued (unless it was being stopped).

    A compare-and-set on its lease, run in the caller's transaction; False when it already
    moved on (ended, or released by another replica).
    """
    same_worker = (
        {"worker_id__isnull": True}
        if session.worker_id is None
        else {"worker_id": session.worker_id}
    )
    changed = await m.AgentSession.filter(
        id=session.id, status=SessionStatus.RUNNING, lease_token=session.lease_token, **same_worker
    ).update(
        status=SessionStatus.LOST,
        lease_token=None,
        error=reason,
        completed_at=_now(),
        updated_at=_now(),
    )
    if not changed:
        return False
    if not session.stop_requested:
        await m.AgentSession.create(
            agent_task_id=session.agent_task_id,
            ai_agent_type=session.ai_agent_type,
            ai_agent_model=session.ai_agent_model,
            kind=session.kind,
            attempt=session.attempt + 1,
            status=SessionStatus.QUEUED,
        )
    await m.Worker.filter(current_session_id=session.id).update(
        current_session_id=None, current_task_id=None, updated_at=_now()
    )
    return True


async def _announce_released(released: Sequence[m.AgentSession]) -> None:
    for session in released:
        await session_service.end_questions(session.id)
        await session_service.announce_session(await get_row(m.AgentSession, id=session.id))
    if released:
        events.publish(events.JobQueued())


async def sweep_workers(*, heartbeat_interval: dt.timedelta, now: dt.datetime | None = None) -> int:
    """Workers silent for three intervals → unhealthy; the jobs they held are queued again.

    So are running jobs of any unhealthy worker (the replica that marked it may have died
    before releasing them) and of a worker that is gone. Safe when every replica runs it:
    each change is a compare-and-set, and a job is released only while its worker's row,
    locked, still says unhealthy (a heartbeat that arrives in between keeps the job).
    Returns the number of sessions handed back. ``now``: the time of the sweep (tests pass
    a later one instead of waiting).
    """
    deadline = (now or _now()) - heartbeat_interval * MISSED_BEATS
    silent = await m.Worker.filter(
        last_heartbeat__lt=deadline, status__not=m.WorkerStatus.UNHEALTHY
    ).values_list("id", flat=True)
    for worker_id in silent:
        # Re-checked in the UPDATE: a heartbeat since the look above keeps the worker healthy.
        marked = await m.Worker.filter(
            id=worker_id, last_heartbeat__lt=deadline, status__not=m.WorkerStatus.UNHEALTHY
        ).update(status=m.WorkerStatus.UNHEALTHY, updated_at=_now())
        if marked:
            events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return await _release_abandoned(started_before=deadline)


async def _release_abandoned(*, started_before: dt.datetime) -> int:
    """Releases running sessions whose worker is unhealthy, or gone (then only those that
    started before ``started_before``: a session is never without a worker for long)."""
    abandoned = await m.AgentSession.filter(
        Q(worker__status=m.WorkerStatus.UNHEALTHY)
        | Q(worker_id__isnull=True, started_at__lt=started_before),
        status=SessionStatus.RUNNING,
    )
    released = []
    for session in abandoned:
        async with transaction():
            if session.worker_id is not None:
                still_unhealthy = (
                    await m.Worker.filter(id=session.worker_id, status=m.WorkerStatus.UNHEALTHY)
                    .select_for_update()
                    .first()
                )
                if still_unhealthy is None:
                    continue
            reason = (
                "its worker stopped sending heartbeats"
                if session.worker_id is not None
                else "its worker is gone"
            )
            if await _release(session, reason=reason):
                released.append(session)
    await _announce_released(released)
    return len(released)


# Claiming ----------------------------------------------------------------------------------

# One statement claims the oldest claimable session, marks the worker busy and returns what
# the job description needs (everything but the base remotes). A worker marked unhealthy
# claims nothing until a heartbeat makes it healthy again: the sweep would only take the job
# back (and queue yet another run of it). The partial unique index
# ``agent_sessions_one_running_per_worker`` (see db.EXTRA_INDEXES) refuses a second running
# session for one worker, so two GetTask calls of one worker at once cannot both claim.
_CLAIM_PG = """
WITH claimed AS (
    UPDATE agent_sessions SET status = 'running', worker_id = $1, lease_token = $2,
           started_at = $3, updated_at = $3
    WHERE id = (
        SELECT s.id FROM agent_sessions s JOIN agent_tasks a ON a.id = s.agent_task_id
        WHERE s.status = 'queued' AND (NOT a.expects_secrets OR a.id::text = ANY($4::text[]))
          AND EXISTS (SELECT 1 FROM workers w WHERE w.id = $1 AND w.status <> 'unhealthy')
        ORDER BY s.created_at, s.id
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    )
    RETURNING *
), busy AS (
    UPDATE workers SET status = 'busy', current_session_id = claimed.id, updated_at = $3,
           current_task_id = (SELECT u.id FROM unit_tasks u
                              WHERE u.agent_task_id = claimed.agent_task_id)
    FROM claimed WHERE workers.id = $1 AND workers.status <> 'unhealthy'
)
SELECT claimed.*, a.expects_secrets,
       u.id AS unit_id, u.prompt AS unit_prompt, u.title AS unit_title, u.branch_name,
       u.workspace_id AS unit_workspace_id, u.composite_task_id AS unit_composite_id,
       c.id AS composite_id, c.prompt AS composite_prompt, c.title AS composite_title,
       c.workspace_id AS composite_workspace_id,
       (SELECT json_agg(json_build_array(r.git_remote_dir_path, r.git_branch_name)
                        ORDER BY r.git_remote_dir_path)
        FROM agent_task_base_remotes r WHERE r.agent_task_id = claimed.agent_task_id) AS remotes
FROM claimed
JOIN agent_tasks a ON a.id = claimed.agent_task_id
LEFT JOIN unit_tasks u ON u.agent_task_id = claimed.agent_task_id
LEFT JOIN composite_tasks c ON c.planning_task_id = claimed.agent_task_id
"""

_CLAIM_SQLITE = """
UPDATE agent_sessions SET status = 'running', worker_id = ?, lease_token = ?,
       started_at = ?, updated_at = ?
WHERE id = (
    SELECT s.id FROM agent_sessions s JOIN agent_tasks a ON a.id = s.agent_task_id
    WHERE s.status = 'queued'
      AND EXISTS (SELECT 1 FROM workers w WHERE w.id = ? AND w.status <> 'unhealthy')
      AND (a.expects_secrets = 0 OR a.id IN ({ready}))
    ORDER BY s.created_at, s.id
    LIMIT 1
)
RETURNING id
"""


async def _claim_once(worker_id: UUID, ready_agent_ids: Sequence[UUID]) -> Job | None:
    """Claims the oldest claimable session for this worker, or None.

    Raises: IntegrityError when the worker already runs a session.
    """
    conn = connections.get("default")
    lease = secrets.token_urlsafe(24)
    now = _now()
    if conn.capabilities.dialect == "postgres":
        rows = await conn.execute_query_dict(
            _CLAIM_PG, [worker_id, lease, now, [str(a) for a in ready_agent_ids]]
        )
        if not rows:
            return None
        row = rows[0]
        session = m.AgentSession._init_from_db(**row)  # takes its columns, ignores the rest
        unit = row["unit_id"] is not None
        workspace = str(row["unit_workspace_id"] if unit else row["composite_workspace_id"])
        events.publish(events.SessionChanged(session_id=str(session.id), status="running"))
        for task_id in (row["unit_id"], row["unit_composite_id"], row["composite_id"]):
            if task_id is not None:
                events.publish(events.TaskChanged(task_id=str(task_id), workspace_id=workspace))
        events.publish(events.WorkerChanged(worker_id=str(worker_id)))
        return Job(
            session=session,
            lease_token=lease,
            task_id=row["unit_id"] if unit else row["composite_id"],
            prompt=(row["unit_prompt"] if unit else row["composite_prompt"]) or "",
            title=row["unit_title"] if unit else row["composite_title"],
            branch_name=row["branch_name"] if unit else None,
            base_remotes=[
                m.AgentTaskBaseRemote(
                    agent_task_id=session.agent_task_id, git_remote_dir_path=p, git_branch_name=b
                )
                for p, b in json.loads(row["remotes"] or "[]")
            ],
            expects_secrets=bool(row["expects_secrets"]),
        )
    ready = ", ".join("?" for _ in ready_agent_ids) or "NULL"
    stamp = now.isoformat(" ")  # as Tortoise writes it, so that comparisons with it hold
    rows = await conn.execute_query_dict(
        _CLAIM_SQLITE.format(ready=ready),
        [str(worker_id), lease, stamp, stamp, str(worker_id), *map(str, ready_agent_ids)],
    )
    if not rows:
        return None
    claimed = await get_row(m.AgentSession, id=UUID(str(rows[0]["id"])))
    # Marked unhealthy since the claim: it stays so (the sweep takes the job back).
    await m.Worker.filter(id=worker_id, status__not=m.WorkerStatus.UNHEALTHY).update(
        status=m.WorkerStatus.BUSY,
        updated_at=_now(),
        current_session_id=claimed.id,
        current_task_id=await _unit_task_of(claimed),
    )
    await session_service.announce_session(claimed)
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return await describe_job(claimed)


async def _held_job(worker_id: UUID) -> Job | None:
    held = await m.AgentSession.filter(worker_id=worker_id, status=SessionStatus.RUNNING).first()
    return None if held is None else await describe_job(held)


async def claim_job(
    *,
    worker_id: UUID,
    wait: dt.timedelta = dt.timedelta(0),
    signal: JobSignal | None = None,
    store: secret_service.SecretStore | None = None,
) -> Job | None:
    """The worker's current job, or the oldest queued one claimed for it, or None.

    A worker holds at most one job: asking again returns the job it holds. A job whose task
    expects secrets is handed out only once they are in ``store``. Waits up to ``wait``
    (bounded by ``MAX_WAIT_MS``) for a job to appear, woken by ``signal``. A worker marked
    unhealthy claims nothing until a heartbeat makes it healthy again.
    Raises: InvalidArgument (a negative wait), NotFound, FailedPrecondition (the worker is
    unhealthy).
    """
    _check_wait(wait)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait.total_seconds(), MAX_WAIT_MS / 1000)
    checked = False
    while True:
        generation = signal.generation() if signal is not None else None
        ready = await secret_service.ready_agent_task_ids(store) if store is not None else []
        try:
            job = await _claim_once(worker_id, ready)
        except IntegrityError:  # it already runs one (or it does not exist)
            job = None
        if job is not None:
            return job
        if not checked:  # the slow path, once: an unknown worker, or the job it holds
            worker = await get_worker(worker_id=worker_id)
            held = await _held_job(worker_id)
            if held is not None:
                return held
            if worker.status == m.WorkerStatus.UNHEALTHY:
                raise FailedPrecondition(
                    f"worker {worker_id} is unhealthy (it missed its heartbeats): "
                    "send a Heartbeat before claiming jobs"
                )
            checked = True
        remaining = deadline - loop.time()
        if remaining <= 0 or generation is None:
            return None
        await JobSignal.wait(generation, min(remaining, RECHECK_S))


async def describe_job(session: m.AgentSession) -> Job:
    agent = await get_row(m.AgentTask, id=session.agent_task_id)
    remotes = list(
        await m.AgentTaskBaseRemote.filter(agent_task_id=agent.id).order_by("git_remote_dir_path")
    )
    unit = await m.UnitTask.get_or_none(agent_task_id=agent.id)
    composite = None if unit else await m.CompositeTask.get_or_none(planning_task_id=agent.id)
    task_id = unit.id if unit else (composite.id if composite else None)
    prompt = unit.prompt if unit else (composite.prompt if composite else "")
    title = unit.title if unit else (composite.title if composite else None)
    return Job(
        session=session,
        lease_token=session.lease_token or "",
        task_id=task_id,
        prompt=prompt,
        title=title,
        branch_name=unit.branch_name if unit else None,
        base_remotes=remotes,
        expects_secrets=agent.expects_secrets,
    )


# Calls about a job ---------------------------------------------------------------------


async def leased_session(*, worker_id: UUID, session_id: UUID, lease_token: str) -> m.AgentSession:
    """The running session this worker holds under this lease. Raises: Conflict, NotFound."""
    session = await m.AgentSession.get_or_none(id=session_id)
    if (
        session is None
        or session.worker_id != worker_id
        or session.status != SessionStatus.RUNNING
        or not lease_token
        or session.lease_token is None
        or not secrets.compare_digest(session.lease_token, lease_token)
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
) -> m.AgentSession:
    """Ends the job (succeeded / failed / stopped); ``running`` is a no-op acknowledgement.

    Every text the worker sends (error, PLAN.yaml, commits) is masked with the task's
    secrets, and the assembled output once more as a whole; then a unit task's secrets are
    dropped.
    Raises: Conflict (stale lease), InvalidArgument, FailedPrecondition.
    """
    if failure_kind is not None and failure_kind not in set(FailureKind):
        raise InvalidArgument(
            f"failure_kind has an unknown value {str(failure_kind)[:32]!r}", field="failure_kind"
        )
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    if status == SessionStatus.RUNNING:
        return session
    values = await _secrets_of(store, session)
    ended = await session_service.complete_session(
        session_id=session.id,
        status=status,
        error=None if error is None else secret_service.mask(error, values),
        failure_kind=None if failure_kind is None else FailureKind(failure_kind).value,
        plan_yaml=None if plan_yaml is None else secret_service.mask(plan_yaml, values),
        base_commit=None if base_commit is None else secret_service.mask(base_commit, values),
        end_commit=None if end_commit is None else secret_service.mask(end_commit, values),
        loaded=session,
    )
    if values and ended.output_log:
        (masked,) = await secret_service.OutputMasker(values).mask_each([ended.output_log])
        if masked != ended.output_log:
            await m.AgentSession.filter(id=ended.id).update(output_log=masked, updated_at=_now())
            ended.output_log = masked
    await m.Worker.filter(id=worker_id, current_session_id=session.id).update(
        status=m.WorkerStatus.IDLE,
        current_session_id=None,
        current_task_id=None,
        updated_at=_now(),
    )
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    if store is not None:
        await secret_service.run_ended(store, session.agent_task_id)
    return ended


async def _secrets_of(
    store: secret_service.SecretStore | None, session: m.AgentSession
) -> dict[str, str]:
    """The secrets a run sees (what its output is masked with); none without a store."""
    if store is None:
        return {}
    return await secret_service.output_secrets(store, session.agent_task_id)


@_lease_bound
async def append_job_log(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    chunks: Sequence[session_service.LogChunkIn],
    store: secret_service.SecretStore | None = None,
    limits: session_service.LogLimits = session_service.LogLimits(),  # noqa: B008  # frozen
) -> m.AgentSession:
    """Stores output of the leased job, masked with the task's secrets.

    Raises: Conflict (stale lease), InvalidArgument.
    """
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    values = await _secrets_of(store, session)
    if not values:
        return await session_service.append_log(session_id=session_id, chunks=chunks, limits=limits)
    masker = secret_service.OutputMasker(values)
    texts = await masker.mask_each([c.data for c in chunks])
    masked = [
        session_service.LogChunkIn(sequence=c.sequence, data=t)
        for c, t in zip(chunks, texts, strict=True)
    ]
    return await session_service.append_log(
        session_id=session_id, chunks=masked, hold=masker.feed, limits=limits
    )


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
    agent = await m.AgentTask.get_or_none(id=session.agent_task_id).only("id", "expects_secrets")
    return await secret_service.job_secrets(
        store, session.agent_task_id, expects_secrets=agent is not None and agent.expects_secrets
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
    values = await _secrets_of(store, session)
    prompt = secret_service.mask(prompt, values)
    options = [secret_service.mask(o, values) for o in options]
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
    _check_wait(wait)
    await leased_session(worker_id=worker_id, session_id=session_id, lease_token=lease_token)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait.total_seconds(), MAX_WAIT_MS / 1000)
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
                (question.expires_at - _now()).total_seconds() + 0.01
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
