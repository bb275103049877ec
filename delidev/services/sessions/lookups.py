"""Finding an agent session, its task and its workspace, and announcing its changes: what
the other modules of ``services.sessions`` build on."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import NotFound
from delidev.services import prepared
from delidev.services.common import owner_filter

SessionStatus = m.AgentSessionStatus
FINAL = frozenset(
    {SessionStatus.SUCCEEDED, SessionStatus.FAILED, SessionStatus.STOPPED, SessionStatus.LOST}
)


async def workspace_of_session(session: m.AgentSession) -> UUID | None:
    """The workspace of the task a session runs for (None once that task is gone)."""
    agent_id = session.agent_task_id
    unit = await m.UnitTask.get_or_none(agent_task_id=agent_id).values("workspace_id")
    if unit:
        return unit["workspace_id"]  # type: ignore[no-any-return]  # a UUID column
    composite = await m.CompositeTask.get_or_none(planning_task_id=agent_id).values("workspace_id")
    if composite:
        return composite["workspace_id"]  # type: ignore[no-any-return]  # a UUID column
    fix = await m.UnitTaskAutoFixTask.get_or_none(agent_task_id=agent_id).values(
        "unit_task__workspace_id"
    )
    return fix["unit_task__workspace_id"] if fix else None


async def task_id_of_session(session: m.AgentSession) -> UUID | None:
    """The UnitTask or CompositeTask a session runs for."""
    unit = await m.UnitTask.get_or_none(agent_task_id=session.agent_task_id)
    if unit is not None:
        return unit.id
    composite = await m.CompositeTask.get_or_none(planning_task_id=session.agent_task_id)
    if composite is not None:
        return composite.id
    fix = await m.UnitTaskAutoFixTask.get_or_none(agent_task_id=session.agent_task_id)
    return fix.unit_task_id if fix else None


async def announce_session(session: m.AgentSession) -> None:
    """Publishes that a session changed, and so did its task (and its composite task)."""
    events.publish(events.SessionChanged(session_id=str(session.id), status=session.status.value))
    await announce_tasks_of([session.agent_task_id])


async def announce_tasks_of(agent_task_ids: Sequence[UUID]) -> None:
    """Publishes TaskChanged for the tasks these AgentTasks run for (and their composites)."""
    units = await m.UnitTask.filter(agent_task_id__in=list(agent_task_ids)).values_list(
        "id", "workspace_id", "composite_task_id"
    )
    if len(units) < len(agent_task_ids):  # auto-fix runs show on their unit task
        units += await m.UnitTask.filter(
            auto_fix_tasks__agent_task_id__in=list(agent_task_ids)
        ).values_list("id", "workspace_id", "composite_task_id")
    for unit_id, workspace_id, composite_id in units:
        events.publish(events.TaskChanged(task_id=str(unit_id), workspace_id=str(workspace_id)))
        if composite_id is not None:
            events.publish(
                events.TaskChanged(task_id=str(composite_id), workspace_id=str(workspace_id))
            )
    if len(units) < len(agent_task_ids):
        planners = await m.CompositeTask.filter(
            planning_task_id__in=list(agent_task_ids)
        ).values_list("id", "workspace_id")
        for composite_id, workspace_id in planners:
            events.publish(
                events.TaskChanged(task_id=str(composite_id), workspace_id=str(workspace_id))
            )


async def get_session(*, actor: Principal, session_id: UUID) -> m.AgentSession:
    """Raises: NotFound (also for another user's session)."""
    session = await prepared.get_one(m.AgentSession, id=session_id)
    if session is not None:
        workspace_id = await workspace_of_session(session)
        if workspace_id is not None and await m.Workspace.exists(
            id=workspace_id, **owner_filter(actor)
        ):
            return session
    raise NotFound(f"session {session_id} not found", field="session_id")


async def sessions_of(agent_task_ids: Sequence[UUID]) -> dict[UUID, list[m.AgentSession]]:
    """Sessions of each AgentTask, oldest first (one query)."""
    result: dict[UUID, list[m.AgentSession]] = {a: [] for a in agent_task_ids}
    if agent_task_ids:
        for session in await m.AgentSession.filter(agent_task_id__in=list(agent_task_ids)).order_by(
            "attempt"
        ):
            result[session.agent_task_id].append(session)
    return result
