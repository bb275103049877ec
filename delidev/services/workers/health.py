"""Worker health: the sweep that marks silent workers unhealthy, and handing their jobs back.

A released job's run ends as ``lost`` and a new run of it is queued (unless it was being
stopped). Every change here is a compare-and-set, so every replica may sweep at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from tortoise.expressions import Q

from delidev import events
from delidev import models as m
from delidev.services import common
from delidev.services import sessions as session_service
from delidev.services.common import get_row, transaction

SessionStatus = m.AgentSessionStatus
MISSED_BEATS = 3


async def sweep_workers(*, heartbeat_interval: dt.timedelta, now: dt.datetime | None = None) -> int:
    """Workers silent for three intervals → unhealthy; the jobs they held are queued again.

    So are running jobs of any unhealthy worker (the replica that marked it may have died
    before releasing them) and of a worker that is gone. Safe when every replica runs it:
    each change is a compare-and-set, and a job is released only while its worker's row,
    locked, still says unhealthy (a heartbeat that arrives in between keeps the job).
    Returns the number of sessions handed back. ``now``: the time of the sweep (tests pass
    a later one instead of waiting).
    """
    deadline = (now or common.now()) - heartbeat_interval * MISSED_BEATS
    silent = await m.Worker.filter(
        last_heartbeat__lt=deadline, status__not=m.WorkerStatus.UNHEALTHY
    ).values_list("id", flat=True)
    for worker_id in silent:
        # Re-checked in the UPDATE: a heartbeat since the look above keeps the worker healthy.
        marked = await m.Worker.filter(
            id=worker_id, last_heartbeat__lt=deadline, status__not=m.WorkerStatus.UNHEALTHY
        ).update(**common.changed(status=m.WorkerStatus.UNHEALTHY))
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
            if await release_session(session, reason=reason):
                released.append(session)
    await announce_released(released)
    return len(released)


async def release_session(session: m.AgentSession, *, reason: str) -> bool:
    """A running session → lost, and a new run of it is queued (unless it was being stopped).

    A compare-and-set on its lease, run in the caller's transaction; False when it already
    moved on (ended, or released by another replica).
    """
    same_worker = (
        {"worker_id__isnull": True}
        if session.worker_id is None
        else {"worker_id": session.worker_id}
    )
    moved = await m.AgentSession.filter(
        id=session.id, status=SessionStatus.RUNNING, lease_token=session.lease_token, **same_worker
    ).update(
        **common.changed(
            status=SessionStatus.LOST, lease_token=None, error=reason, completed_at=common.now()
        )
    )
    if not moved:
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
        **common.changed(current_session_id=None, current_task_id=None)
    )
    return True


async def announce_released(released: Sequence[m.AgentSession]) -> None:
    """After the commit: what ``release_session`` changed is announced, and the workers woken."""
    for session in released:
        await session_service.end_questions(session.id)
        await session_service.announce_session(await get_row(m.AgentSession, id=session.id))
    if released:
        events.publish(events.JobQueued())
