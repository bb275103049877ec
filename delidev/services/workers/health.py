"""Worker health: the sweep that marks silent workers unhealthy, hands their jobs back, and
removes workers silent for long (a fleet that scales up and down registers new workers all
the time: without that, their rows would pile up for ever).

A released job's run ends as ``lost``; a new run of it is queued in backoff as the
``RetryPolicy`` allows (unless it was being stopped), else the lost run says that it gave up.
The sweep also enforces run time limits and stop graces (``limits``). Every change here is
a compare-and-set, so every replica may sweep at once.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from uuid import UUID

from tortoise import connections
from tortoise.expressions import Q

from delidev import events, metrics
from delidev import models as m
from delidev.services import common
from delidev.services import sessions as session_service
from delidev.services.common import get_row, transaction
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.sessions.lifecycle import retry_or_give_up
from delidev.services.workers import limits

log = logging.getLogger(__name__)
SessionStatus = m.AgentSessionStatus
MISSED_BEATS = 3
SWEEP_BATCH = 500
"""Workers marked unhealthy (or removed) per statement of a sweep."""


async def sweep_workers(
    *,
    heartbeat_interval: dt.timedelta,
    now: dt.datetime | None = None,
    stop_grace: dt.timedelta = limits.DEFAULT_STOP_GRACE,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008  # frozen
    forget_after: dt.timedelta | None = None,
    mark_silent: bool = True,
) -> int:
    """Workers silent for three intervals → unhealthy; the jobs they held are queued again.
    Not with ``mark_silent`` False: the caller knows that beats may have been lost (the
    database was unreachable a moment ago), and waits until they cannot have been.
    Workers silent for ``forget_after`` (None: never), unhealthy and holding no job, are
    removed (their past runs keep their history, without a worker).

    So are running jobs of any unhealthy worker (the replica that marked it may have died
    before releasing them) and of a worker that is gone. Safe when every replica runs it:
    each change is a compare-and-set, and a job is released only while its worker's row,
    locked, still says unhealthy (a heartbeat that arrives in between keeps the job).
    Then runs past their deadline are asked to stop, and stops unconfirmed for
    ``stop_grace`` are finalised (``limits.enforce_limits``).
    Returns the number of sessions handed back. ``now``: the time of the sweep (tests pass
    a later one instead of waiting).
    """
    now = now or common.now()
    deadline = now - heartbeat_interval * MISSED_BEATS
    if mark_silent:
        await _in_batches(lambda: _mark_silent(deadline))
    released = await _release_abandoned(started_before=deadline, policy=policy)
    await limits.enforce_limits(now=now, stop_grace=stop_grace)
    if forget_after is not None:
        cutoff = now - forget_after
        forgotten = await _in_batches(lambda: _forget_silent(cutoff))
        if forgotten:
            log.info("removed %d workers silent since before %s", forgotten, cutoff)
    return released


async def _in_batches(change: Callable[[], Awaitable[list[UUID]]]) -> int:
    """Runs ``change`` (one statement that changes at most ``SWEEP_BATCH`` workers and
    returns them) until a batch comes back short, announcing each worker; returns how many
    changed. Other tasks run between batches: a rack of workers falling silent at once
    never holds the event loop for all of them."""
    changed = 0
    while True:
        batch = await change()
        for worker_id in batch:
            events.publish(events.WorkerChanged(worker_id=str(worker_id)))
        changed += len(batch)
        if len(batch) < SWEEP_BATCH:
            return changed


async def _mark_silent(deadline: dt.datetime) -> list[UUID]:
    """Up to ``SWEEP_BATCH`` workers silent since before ``deadline`` → unhealthy, in one
    statement that returns them (a heartbeat that commits first keeps its worker healthy:
    the outer conditions are checked again on the row). Through the index on
    ``last_heartbeat``, its cost grows with the silent and unhealthy workers, not the fleet."""
    conn = connections.get("default")
    now = common.now()
    args: list[object]
    if conn.capabilities.dialect == "postgres":
        sql = _MARK_SILENT.format(now="$1", deadline="$2", batch=SWEEP_BATCH)
        args = [now, deadline]
    else:  # stamps compared as Tortoise writes them
        sql = _MARK_SILENT.format(now="?1", deadline="?2", batch=SWEEP_BATCH)
        args = [now.isoformat(" "), deadline.isoformat(" ")]
    rows = await conn.execute_query_dict(sql, args)
    return [UUID(str(row["id"])) for row in rows]


async def _forget_silent(cutoff: dt.datetime) -> list[UUID]:
    """Removes up to ``SWEEP_BATCH`` unhealthy workers silent since before ``cutoff`` that
    hold no job, in one statement that returns them (a heartbeat or a claim that commits
    first keeps its row)."""
    conn = connections.get("default")
    args: list[object]
    if conn.capabilities.dialect == "postgres":
        sql, args = _FORGET_SILENT.format(cutoff="$1", batch=SWEEP_BATCH), [cutoff]
    else:  # stamps compared as Tortoise writes them
        sql = _FORGET_SILENT.format(cutoff="?1", batch=SWEEP_BATCH)
        args = [cutoff.isoformat(" ")]
    rows = await conn.execute_query_dict(sql, args)
    return [UUID(str(row["id"])) for row in rows]


_FORGOTTEN = """
status = 'unhealthy' AND last_heartbeat < {cutoff}
AND NOT EXISTS (SELECT 1 FROM agent_sessions s
                WHERE s.worker_id = workers.id AND s.status = 'running')
"""
_FORGET_SILENT = (
    "DELETE FROM workers WHERE id IN (SELECT id FROM workers WHERE"
    + _FORGOTTEN
    + "LIMIT {batch}) AND"
    + _FORGOTTEN
    + "RETURNING id"
)


_MARK_SILENT = """
UPDATE workers SET status = 'unhealthy', updated_at = {now}
WHERE id IN (SELECT id FROM workers
             WHERE last_heartbeat < {deadline} AND status <> 'unhealthy' LIMIT {batch})
  AND last_heartbeat < {deadline} AND status <> 'unhealthy'
RETURNING id
"""


async def _release_abandoned(*, started_before: dt.datetime, policy: RetryPolicy) -> int:
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
            if await release_session(session, reason=reason, policy=policy):
                released.append(session)
    await announce_released(released)
    return len(released)


async def release_session(
    session: m.AgentSession,
    *,
    reason: str,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008  # frozen
) -> bool:
    """A running session → lost; a new run of it is queued in backoff (``retry_or_give_up``:
    unless it was being stopped, and only as often as ``policy`` allows).

    A compare-and-set on its lease, run in the caller's transaction; False when it already
    moved on (ended, or released by another replica).
    """
    same_worker = (
        {"worker_id__isnull": True}
        if session.worker_id is None
        else {"worker_id": session.worker_id}
    )
    moved = await m.AgentSession.filter(
        id=session.id,
        status=SessionStatus.RUNNING,
        lease_token=session.lease_token,
        # A stop asked since it was loaded fails the compare-and-set: the next sweep sees it.
        stop_requested=session.stop_requested,
        **same_worker,
    ).update(
        **common.changed(
            status=SessionStatus.LOST, lease_token=None, error=reason, completed_at=common.now()
        )
    )
    if not moved:
        return False
    metrics.session_finished(session.kind.value, "lost")
    if await retry_or_give_up(
        await get_row(m.AgentSession, id=session.id), error=reason, policy=policy
    ):
        metrics.jobs_reassigned(1)
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
