"""Removing tasks with everything under them, announced as it happens.

One place for what DeleteTask and DeleteWorkspace both do (a workspace once went away in
silence: subscribers of its tasks and followers of its runs were never told). Kept apart
from ``tasks`` and ``workspaces`` because each of those imports the other's lookups.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import cast
from uuid import UUID

from delidev import events, metrics
from delidev import models as m
from delidev.services import common

ACTIVE = (m.AgentSessionStatus.QUEUED, m.AgentSessionStatus.RUNNING)
NODES_PER_STEP = 200
"""A composite's nodes removed per step (a plan may hold 1,000: all at once held the event
loop for ~0.12 s, twice)."""


async def remove_composites(composites: Sequence[m.CompositeTask]) -> int:
    """``remove_tasks`` for composites with all their nodes, inside the caller's
    transaction: the composites are locked first (the order every writer of them uses), then
    their nodes go ``NODES_PER_STEP`` at a time, other tasks running between the steps, then
    the composites. Returns how many task rows were deleted (0: a concurrent delete came
    first)."""
    ids = [c.id for c in composites]
    await m.CompositeTask.filter(id__in=ids).order_by("id").select_for_update()
    removed = 0
    while (
        nodes := await m.UnitTask.filter(composite_task_id__in=ids)
        .order_by("id")
        .limit(NODES_PER_STEP)
    ):
        step = await remove_tasks(units=nodes, composites=[])
        if not step:
            break  # cannot happen under the composites' lock; never loop on it
        removed += step
    return removed + await remove_tasks(units=[], composites=composites)


async def remove_tasks(
    *,
    units: Sequence[m.UnitTask],
    composites: Sequence[m.CompositeTask],
) -> int:
    """Removes these tasks (a composite's nodes must be among ``units``) with their runs,
    logs and TTY questions, inside the caller's transaction, and publishes (after its commit)
    what a follower must hear: each active run stopped, each pending question cancelled, each
    task changed (it reads as deleted). Runs are stopped first so that their workers' leases
    are dead. Returns how many task rows were deleted (0: a concurrent delete came first).
    """
    unit_ids = [u.id for u in units]
    # Locked first, composites then units, in the order of every other writer of them
    # (a node's Retry or RequestChanges locks its composite, then changes the node; an
    # auto-fix run is added under its unit's lock): what they add commits before the reads
    # below see it, or waits and finds the task gone (PostgreSQL).
    await (
        m.CompositeTask.filter(id__in=[c.id for c in composites]).order_by("id").select_for_update()
    )
    await m.UnitTask.filter(id__in=unit_ids).order_by("id").select_for_update()
    fix_ids = await m.UnitTaskAutoFixTask.filter(unit_task_id__in=unit_ids).values_list(
        "agent_task_id", flat=True
    )
    agent_ids = [
        *(u.agent_task_id for u in units),
        *(c.planning_task_id for c in composites),
        *cast(list[UUID], fix_ids),
    ]
    running = await m.AgentSession.filter(
        agent_task_id__in=agent_ids, status__in=list(ACTIVE)
    ).values_list("id", "kind")
    active = [session_id for session_id, _ in running]
    await m.AgentSession.filter(id__in=active).update(
        **common.changed(status=m.AgentSessionStatus.STOPPED, lease_token=None)
    )
    kinds = collections.Counter(m.JobKind(k).value for _, k in running)
    for kind, count in kinds.items():
        metrics.session_finished(kind, "stopped", count)
    pending = await m.TtyInputRequest.filter(
        session__agent_task_id__in=agent_ids, status=m.TtyInputStatus.PENDING
    ).values_list("id", "session_id", "workspace_id")
    await m.TtyInputRequest.filter(id__in=[p[0] for p in pending]).update(
        status=m.TtyInputStatus.CANCELLED
    )
    deleted = await m.UnitTask.filter(id__in=unit_ids).delete()
    deleted += await m.CompositeTask.filter(id__in=[c.id for c in composites]).delete()
    if agent_ids:
        await m.AgentTask.filter(id__in=agent_ids).delete()
    for session_id in active:
        events.publish(
            events.SessionChanged(
                session_id=str(session_id), status=m.AgentSessionStatus.STOPPED.value
            )
        )
    for request_id, session_id, workspace_id in pending:
        events.publish(
            events.TtyChanged(
                request_id=str(request_id),
                session_id=str(session_id),
                workspace_id=str(workspace_id),
            )
        )
    gone: list[m.UnitTask | m.CompositeTask] = [*composites, *units]
    for task in gone:
        workspace_id = str(task.workspace_id)
        events.publish(events.TaskChanged(task_id=str(task.id), workspace_id=workspace_id))
    return deleted
