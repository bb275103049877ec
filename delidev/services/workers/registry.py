"""Workers joining and leaving: registration, credentials, heartbeats, unregistering, and
the fleet as one user sees it.

A worker registers once (with the registration token in multi-user mode) and gets a
credential, shown once and stored hashed; every later call carries it. Heartbeats keep it
healthy and tell it which of its runs to stop; its status follows from the session it holds.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument, NotFound, Unauthenticated
from delidev.services import common, prepared
from delidev.services.common import (
    MAX_URL_LENGTH,
    Page,
    check_text,
    owner_filter,
    page_bounds,
    transaction,
)
from delidev.services.scheduling.labels import parse_agent_types, parse_labels
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.workers import quick_heartbeat
from delidev.services.workers.health import announce_released, release_session
from delidev.settings import Settings

SessionStatus = m.AgentSessionStatus


def hash_credential(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Registration:
    worker: m.Worker
    credential: str


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    worker: m.Worker
    stop_session_ids: list[UUID]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """A worker as one user sees it: the fleet is shared between tenants, their tasks are not."""

    worker: m.Worker
    current_task_id: UUID | None
    """The task it runs, when the user may see that task."""


async def register_worker(
    *,
    name: str,
    endpoint_url: str,
    agent_types: Iterable[str | m.AiAgentType] = (),
    labels: Iterable[str] = (),
) -> Registration:
    """A new worker (idle) and its credential, shown once. ``agent_types``: what it can run
    (none = every type); ``labels``: ``key=value`` labels jobs may require. Both are fixed
    for the worker's id: a worker whose tools change registers again.
    Raises: InvalidArgument."""
    name = check_text(name, "name")
    endpoint = check_text(endpoint_url, "endpoint_url", max_length=MAX_URL_LENGTH)
    if not endpoint.startswith(("http://", "https://")):
        raise InvalidArgument("endpoint_url must be an http(s) URL", field="endpoint_url")
    types = parse_agent_types(agent_types, "agent_types")
    offered = parse_labels(labels, "labels")
    credential = secrets.token_urlsafe(32)
    worker = await m.Worker.create(
        name=name,
        endpoint_url=endpoint,
        status=m.WorkerStatus.IDLE,
        last_heartbeat=common.now(),
        credential_hash=hash_credential(credential),
        agent_types=types,
        labels=offered,
    )
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    return Registration(worker=worker, credential=credential)


async def get_worker(*, worker_id: UUID) -> m.Worker:
    """Raises: NotFound."""
    worker = await prepared.get_one(m.Worker, id=worker_id)
    if worker is None:
        raise NotFound(f"worker {worker_id} not found", field="worker_id")
    return worker


async def list_workers(
    *, actor: Principal, limit: int | None = None, offset: int | None = None
) -> Page[WorkerView]:
    """The fleet by name (then id). Every user sees every worker (as ``workerUpdated``
    shows them), but a worker's task only when it is the user's own.
    Raises: InvalidArgument, PermissionDenied (worker credentials)."""
    limit, offset = page_bounds(limit, offset)
    owner_filter(actor)  # refuses worker credentials before anything is read
    total = await m.Worker.all().count()
    fleet = await m.Worker.all().order_by("name", "id").offset(offset).limit(limit)
    tasks = await visible_tasks(actor=actor, workers=fleet)
    return Page(
        items=[WorkerView(worker=w, current_task_id=tasks.get(w.id)) for w in fleet],
        total_count=total,
    )


async def visible_tasks(*, actor: Principal, workers: Sequence[m.Worker]) -> dict[UUID, UUID]:
    """Worker id -> the task (unit, or composite being planned) of the session it runs, for
    the workers whose task the actor may see. At most three statements, however many
    workers: a page of the fleet must not cost one query per worker."""
    sessions = [w.current_session_id for w in workers if w.current_session_id is not None]
    if not sessions:
        return {}
    scope = owner_filter(actor, "workspace__")
    agent_of: dict[UUID, UUID] = dict(
        await m.AgentSession.filter(id__in=sessions).values_list("id", "agent_task_id")
    )
    agents = set(agent_of.values())
    task_of: dict[UUID, UUID] = dict(
        await m.UnitTask.filter(agent_task_id__in=agents, **scope).values_list(
            "agent_task_id", "id"
        )
    )
    planning = agents - task_of.keys()
    if planning:
        task_of |= dict(
            await m.CompositeTask.filter(planning_task_id__in=planning, **scope).values_list(
                "planning_task_id", "id"
            )
        )
    shown: dict[UUID, UUID] = {}
    for w in workers:
        agent = agent_of.get(w.current_session_id) if w.current_session_id else None
        task = task_of.get(agent) if agent else None
        if task is not None:
            shown[w.id] = task
    return shown


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
    if not common.same_secret(token, expected):
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


async def authenticate_worker(*, worker_id: UUID, credential: str) -> m.Worker:
    """The worker whose credential this is. Raises: Unauthenticated."""
    worker = await prepared.get_one(m.Worker, id=worker_id)
    expected = worker.credential_hash if worker else None
    given = hash_credential(credential)
    if worker is None or expected is None or not common.same_secret(given, expected):
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
    if quick_heartbeat.applies(task_id=task_id):
        steady = await quick_heartbeat.beat(worker_id=worker_id, session_id=session_id)
        if steady is not None:
            return HeartbeatReply(worker=steady[0], stop_session_ids=steady[1])
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
        before = worker.status
        values = common.changed(
            last_heartbeat=common.now(),
            status=status,
            current_session_id=current.id if current else None,
            current_task_id=worker.current_task_id if unchanged else await unit_task_of(current),
        )
        await m.Worker.filter(id=worker.id).update(**values)
        common.mirror(worker, values)
    if status != before:
        events.publish(events.WorkerChanged(worker_id=str(worker.id)))
    held_ids = {s.id for s in held}
    stop = [s.id for s in held if s.stop_requested]
    if session_id is not None and session_id not in held_ids:
        stop.append(session_id)
    if task_id is not None:
        last = await _last_session_on(worker.id, task_id)
        if last is not None and last not in held_ids and last not in stop:
            stop.append(last)
    return HeartbeatReply(worker=worker, stop_session_ids=stop)


async def set_draining(*, worker_id: UUID, draining: bool) -> m.Worker:
    """Marks a worker draining (it finishes the job it holds and is handed no new one), or
    not. Its Watch stream and its next heartbeat tell it. Raises: NotFound."""
    changed = await m.Worker.filter(id=worker_id, draining=not draining).update(
        **common.changed(draining=draining)
    )
    worker = await get_worker(worker_id=worker_id)
    if changed:
        events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return worker


def authorize_operator(*, settings: Settings, token: str) -> bool:
    """Whether ``token`` is the operator token (``DELIDEV_OPERATOR_TOKEN``; unset: nobody
    is an operator)."""
    expected = settings.operator_token
    return bool(expected and token) and common.same_secret(token, expected or "")


async def authenticate_drain(*, settings: Settings, worker_id: UUID, credential: str) -> None:
    """Who may drain a worker: the worker itself (its credential, as for its other calls) or
    an operator (the operator token). Raises: Unauthenticated, NotFound."""
    if authorize_operator(settings=settings, token=credential):
        await get_worker(worker_id=worker_id)
        return
    await authenticate_caller(settings=settings, worker_id=worker_id, credential=credential)


async def unit_task_of(session: m.AgentSession | None) -> UUID | None:
    """The UnitTask a session runs for (``Worker.current_task`` refers to unit tasks only)."""
    if session is None or session.kind == m.JobKind.PLANNING:
        return None
    unit = (
        await m.UnitTask.filter(agent_task_id=session.agent_task_id)
        .first()
        .values_list("id", flat=True)
    )
    if unit is None and session.kind == m.JobKind.AUTO_FIX:
        unit = (
            await m.UnitTaskAutoFixTask.filter(agent_task_id=session.agent_task_id)
            .first()
            .values_list("unit_task_id", flat=True)
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


async def unregister_worker(*, worker_id: UUID, policy: RetryPolicy | None = None) -> None:
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
            if await release_session(
                session, reason="its worker unregistered", policy=policy or RetryPolicy()
            )
        ]
        await m.Worker.filter(id=worker.id).delete()
    await announce_released(released)
    events.publish(events.WorkerChanged(worker_id=str(worker.id)))
