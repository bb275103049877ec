"""What unit and composite tasks share: the task lookup, the compare-and-set that moves a
task between states (``move``), the TaskChanged events, and queuing an AgentTask's runs.

Names here are private to the ``tasks`` package; callers outside use its ``__init__``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar
from uuid import UUID

from delidev import events, tracing
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services.scheduling.labels import parse_labels

S = m.UnitTaskStatus
C = m.CompositeTaskStatus
SessionStatus = m.AgentSessionStatus

DEFAULT_AGENT = m.AiAgentType.CLAUDE_CODE
RETRYABLE = frozenset({SessionStatus.FAILED, SessionStatus.STOPPED, SessionStatus.LOST})
ACTIVE = frozenset({SessionStatus.QUEUED, SessionStatus.RUNNING})

# A task's own run time limit: at most a week (the server's setting applies when unset).
MAX_RUN_SECONDS = 7 * 24 * 3600

Task = m.UnitTask | m.CompositeTask
AnyTask = TypeVar("AnyTask", m.UnitTask, m.CompositeTask)


# Lookups ----------------------------------------------------------------------------


async def get_task(*, actor: Principal, task_id: UUID) -> Task:
    """A unit or composite task of the actor. Raises: NotFound."""
    scope = common.owner_filter(actor, "workspace__")
    unit = await m.UnitTask.get_or_none(id=task_id, **scope)
    if unit is not None:
        return unit
    composite = await m.CompositeTask.get_or_none(id=task_id, **scope)
    if composite is not None:
        return composite
    raise NotFound(f"task {task_id} not found", field="task_id")


async def latest_sessions(agent_task_ids: Sequence[UUID]) -> dict[UUID, m.AgentSession]:
    """The newest session of each AgentTask (one query)."""
    if not agent_task_ids:
        return {}
    sessions = await m.AgentSession.filter(agent_task_id__in=list(agent_task_ids)).order_by(
        "agent_task_id", "-attempt"
    )
    latest: dict[UUID, m.AgentSession] = {}
    for session in sessions:
        latest.setdefault(session.agent_task_id, session)
    return latest


# Transitions ------------------------------------------------------------------------


def task_changed(task: Task) -> None:
    """Publishes (after commit, when inside a transaction) that the task changed."""
    workspace = str(task.workspace_id)
    events.publish(events.TaskChanged(task_id=str(task.id), workspace_id=workspace))
    if isinstance(task, m.UnitTask) and task.composite_task_id is not None:
        events.publish(
            events.TaskChanged(task_id=str(task.composite_task_id), workspace_id=workspace)
        )


async def move(
    task: AnyTask,
    allowed_from: Iterable[m.UnitTaskStatus | m.CompositeTaskStatus],
    to: m.UnitTaskStatus | m.CompositeTaskStatus,
    **fields: object,
) -> AnyTask:
    """Compare-and-set the status: of two concurrent moves of one task exactly one wins.

    Raises: FailedPrecondition naming both states (``task`` is not in ``allowed_from``, or
    left it meanwhile), NotFound (deleted since it was read).
    """
    kind = "composite task" if isinstance(task, m.CompositeTask) else "task"
    if task.status not in set(allowed_from):
        raise FailedPrecondition(
            f"{kind} {task.id} cannot move from {task.status.value} to {to.value}"
        )
    model = type(task)
    moved = await model.filter(id=task.id, status=task.status).update(
        **common.changed(status=to, **fields)
    )
    fresh = await model.get_or_none(id=task.id)
    if fresh is None:  # deleted since it was read
        raise NotFound(f"task {task.id} not found", field="task_id")
    if not moved:
        raise FailedPrecondition(
            f"{kind} {task.id} cannot move from {fresh.status.value} to {to.value}"
        )
    task_changed(fresh)
    return fresh


# Runs -------------------------------------------------------------------------------


async def queue_session(
    agent_task: m.AgentTask, *, kind: m.JobKind, attempt: int
) -> m.AgentSession:
    return await m.AgentSession.create(
        agent_task_id=agent_task.id,
        ai_agent_type=agent_task.ai_agent_type or DEFAULT_AGENT,
        ai_agent_model=agent_task.ai_agent_model,
        kind=kind,
        attempt=attempt,
        status=SessionStatus.QUEUED,
        traceparent=tracing.current_traceparent(),  # the worker continues the request's trace
    )


async def queue_next_session(agent_task_id: UUID, *, kind: m.JobKind) -> m.AgentSession:
    agent = await common.get_row(m.AgentTask, id=agent_task_id)
    last = await m.AgentSession.filter(agent_task_id=agent.id).order_by("-attempt").first()
    return await queue_session(agent, kind=kind, attempt=(last.attempt + 1) if last else 1)


@dataclass(frozen=True, slots=True)
class Scheduling:
    """How an AgentTask's jobs are handed out; a composite's nodes inherit its planner's."""

    priority: int
    """``TaskPriority.rank``."""
    required_labels: list[str]
    max_run_seconds: int | None

    @classmethod
    def of(cls, agent: m.AgentTask) -> Scheduling:
        return cls(
            priority=agent.priority,
            required_labels=list(agent.required_labels or []),
            max_run_seconds=agent.max_run_seconds,
        )

    def agent_task(self, **fields: object) -> m.AgentTask:
        """A new AgentTask (not saved) scheduled so, in ``workspace_id`` (among ``fields``)."""
        return m.AgentTask(
            priority=self.priority,
            required_labels=self.required_labels,
            max_run_seconds=self.max_run_seconds,
            **fields,
        )


def scheduling_for(
    group: m.RepositoryGroup,
    *,
    priority: m.TaskPriority | None,
    required_labels: Sequence[str] | None,
    max_run_seconds: int | None,
) -> Scheduling:
    """A new task's scheduling: normal priority unless given, the group's default labels
    unless some are given. Raises: InvalidArgument (a bad label, a limit out of range)."""
    if max_run_seconds is not None and not 1 <= max_run_seconds <= MAX_RUN_SECONDS:
        raise InvalidArgument(
            f"max_run_seconds must be between 1 and {MAX_RUN_SECONDS} (7 days)",
            field="max_run_seconds",
        )
    labels = (
        parse_labels(required_labels, "required_labels")
        if required_labels
        else list(group.default_required_labels or [])
    )
    return Scheduling(
        priority=(priority or m.TaskPriority.NORMAL).rank,
        required_labels=labels,
        max_run_seconds=max_run_seconds,
    )


async def agent_task_for_group(
    group: m.RepositoryGroup,
    *,
    agent_type: m.AiAgentType,
    model: str | None,
    expects_secrets: bool,
    scheduling: Scheduling,
) -> m.AgentTask:
    """An AgentTask whose base remotes are the group's repositories at their default branch.
    The first step of a task's creation: the workspace is held first (``hold_workspace``)."""
    await common.hold_workspace(group.workspace_id)
    await common.hold_group(group.id)  # its members are read below
    agent = scheduling.agent_task(
        ai_agent_type=agent_type,
        ai_agent_model=model,
        expects_secrets=expects_secrets,
        workspace_id=group.workspace_id,
    )
    await agent.save(force_create=True)
    repos = await m.Repository.filter(group_memberships__group_id=group.id).order_by(
        "group_memberships__created_at"
    )
    await m.AgentTaskBaseRemote.bulk_create(
        [
            m.AgentTaskBaseRemote(
                agent_task_id=agent.id,
                git_remote_dir_path=repo.local_path or repo.remote_url,
                git_branch_name=repo.default_branch,
            )
            for repo in repos
        ]
    )
    return agent


async def branch_template(group: m.RepositoryGroup) -> str | None:
    """The branch name template of the group's first repository."""
    first = (
        await m.Repository.filter(group_memberships__group_id=group.id)
        .order_by("group_memberships__created_at")
        .first()
    )
    return first.branch_name_template if first else None


async def closed_composite(unit: m.UnitTask, *, lock: bool = False) -> str | None:
    """Why a node may not run again (its composite is no longer in progress: a rejected
    composite starts no node), or None; None for a task that is no node. With ``lock`` the
    composite's row is locked (PostgreSQL), so that a racing Reject comes wholly before or
    after the caller's transaction."""
    if unit.composite_task_id is None:
        return None
    query = m.CompositeTask.filter(id=unit.composite_task_id)
    parent = await (query.select_for_update() if lock else query).first()
    state = "gone" if parent is None else parent.status.value
    if parent is not None and parent.status == m.CompositeTaskStatus.IN_PROGRESS:
        return None
    return f"it is a node of composite task {unit.composite_task_id}, which is {state}"
