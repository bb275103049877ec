"""Unit tasks, composite tasks and their review workflow (DESIGN.md §5).

A task's work runs as AgentSessions of its AgentTask: queuing a session is what hands a
job to the workers. State changes are compare-and-set updates, so of two concurrent calls
on one task exactly one wins and the other gets FailedPrecondition naming both states.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import cascade
from delidev.services.common import (
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_URL_LENGTH,
    Page,
    check_optional_text,
    check_text,
    get_row,
    owner_filter,
    page_bounds,
    transaction,
)
from delidev.services.common import now as _now
from delidev.services.plans import MAX_PLAN_BYTES, InvalidPlan, PlanTask, parse_plan
from delidev.services.repositories import get_repository_group
from delidev.services.workspaces import get_workspace

S = m.UnitTaskStatus
C = m.CompositeTaskStatus
SessionStatus = m.AgentSessionStatus

DEFAULT_AGENT = m.AiAgentType.CLAUDE_CODE
RETRYABLE = frozenset({SessionStatus.FAILED, SessionStatus.STOPPED, SessionStatus.LOST})
ACTIVE = frozenset({SessionStatus.QUEUED, SessionStatus.RUNNING})
_BRANCH_CHARS = re.compile(r"[^A-Za-z0-9\-_/]")

Task = m.UnitTask | m.CompositeTask


class NodeState(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    IN_REVIEW = "in_review"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class NodeView:
    node: m.CompositeTaskNode
    unit_task: m.UnitTask
    depends_on: list[UUID]
    state: NodeState


# Names and branches -------------------------------------------------------------------


def sanitize_branch(name: str) -> str:
    """FACTS.md: characters other than letters, digits, - _ / become -."""
    return _BRANCH_CHARS.sub("-", name.strip()).strip("/")[:MAX_NAME_LENGTH]


def _slug(text: str) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:40].rstrip("-") or "task"


def branch_name_for(
    *, task_id: UUID, explicit: str | None, template: str | None, title: str | None, prompt: str
) -> str:
    """FACTS.md: the explicit name, else the template, else ``delidev/${taskId}``.

    ``${taskId}`` is the whole task id: a prefix of it could name two tasks' branches alike.
    """
    if explicit:
        return sanitize_branch(explicit)
    if template:
        filled = template.replace("${taskId}", str(task_id))
        return sanitize_branch(filled.replace("${slug}", _slug(title or prompt)))
    return f"delidev/{task_id}"


# Lookups ----------------------------------------------------------------------------


async def get_task(*, actor: Principal, task_id: UUID) -> Task:
    """A unit or composite task of the actor. Raises: NotFound."""
    scope = owner_filter(actor, "workspace__")
    unit = await m.UnitTask.get_or_none(id=task_id, **scope)
    if unit is not None:
        return unit
    composite = await m.CompositeTask.get_or_none(id=task_id, **scope)
    if composite is not None:
        return composite
    raise NotFound(f"task {task_id} not found", field="task_id")


async def get_unit_task(
    *, actor: Principal, task_id: UUID, to: m.UnitTaskStatus, operation: str
) -> m.UnitTask:
    """A unit task of the actor, for an ``operation`` that moves unit tasks ``to`` a state.

    Raises: NotFound, FailedPrecondition (a composite task, named with its state).
    """
    task = await get_task(actor=actor, task_id=task_id)
    if not isinstance(task, m.UnitTask):
        raise FailedPrecondition(
            f"composite task {task_id} cannot move from {task.status.value} to {to.value}: "
            f"{operation} applies to unit tasks only"
        )
    return task


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


# Creation ---------------------------------------------------------------------------


async def _queue_session(
    agent_task: m.AgentTask, *, kind: m.JobKind, attempt: int
) -> m.AgentSession:
    return await m.AgentSession.create(
        agent_task_id=agent_task.id,
        ai_agent_type=agent_task.ai_agent_type or DEFAULT_AGENT,
        ai_agent_model=agent_task.ai_agent_model,
        kind=kind,
        attempt=attempt,
        status=SessionStatus.QUEUED,
    )


async def _agent_task_for_group(
    group: m.RepositoryGroup,
    *,
    agent_type: m.AiAgentType,
    model: str | None,
    expects_secrets: bool,
) -> m.AgentTask:
    """An AgentTask whose base remotes are the group's repositories at their default branch."""
    agent = await m.AgentTask.create(
        ai_agent_type=agent_type, ai_agent_model=model, expects_secrets=expects_secrets
    )
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


async def _branch_template(group: m.RepositoryGroup) -> str | None:
    first = (
        await m.Repository.filter(group_memberships__group_id=group.id)
        .order_by("group_memberships__created_at")
        .first()
    )
    return first.branch_name_template if first else None


async def create_unit_task(
    *,
    actor: Principal,
    repository_group_id: UUID,
    prompt: str,
    title: str | None = None,
    branch_name: str | None = None,
    ai_agent_type: m.AiAgentType | None = None,
    ai_agent_model: str | None = None,
    expects_secrets: bool = False,
) -> m.UnitTask:
    """Creates the AgentTask, the UnitTask (in_progress) and its first queued session.

    Raises: InvalidArgument, NotFound.
    """
    prompt = check_text(prompt, "prompt", max_length=MAX_TEXT_LENGTH)
    title = check_optional_text(title, "title")
    explicit = check_optional_text(branch_name, "branch_name")
    if explicit is not None and not sanitize_branch(explicit):
        raise InvalidArgument("branch_name has no usable characters", field="branch_name")
    model = check_optional_text(ai_agent_model, "ai_agent_model")
    group = await get_repository_group(
        actor=actor, group_id=repository_group_id, field="repository_group_id"
    )
    task_id = uuid4()
    template = await _branch_template(group)
    async with transaction():
        agent = await _agent_task_for_group(
            group,
            agent_type=ai_agent_type or DEFAULT_AGENT,
            model=model,
            expects_secrets=expects_secrets,
        )
        task = await m.UnitTask.create(
            id=task_id,
            workspace_id=group.workspace_id,
            repository_group_id=group.id,
            agent_task_id=agent.id,
            branch_name=branch_name_for(
                task_id=task_id, explicit=explicit, template=template, title=title, prompt=prompt
            ),
            status=S.IN_PROGRESS,
            prompt=prompt,
            title=title,
        )
        await _queue_session(agent, kind=m.JobKind.UNIT_TASK, attempt=1)
    _task_changed(task)
    events.publish(events.JobQueued())
    return task


async def create_composite_task(
    *,
    actor: Principal,
    repository_group_id: UUID,
    prompt: str,
    title: str | None = None,
    execution_agent_type: m.AiAgentType | None = None,
    planning_agent_type: m.AiAgentType | None = None,
    ai_agent_model: str | None = None,
    expects_secrets: bool = False,
) -> m.CompositeTask:
    """Creates the CompositeTask (planning) and queues its planning job.

    Raises: InvalidArgument, NotFound.
    """
    prompt = check_text(prompt, "prompt", max_length=MAX_TEXT_LENGTH)
    title = check_optional_text(title, "title")
    model = check_optional_text(ai_agent_model, "ai_agent_model")
    group = await get_repository_group(
        actor=actor, group_id=repository_group_id, field="repository_group_id"
    )
    execution = execution_agent_type or DEFAULT_AGENT
    async with transaction():
        planner = await _agent_task_for_group(
            group,
            agent_type=planning_agent_type or execution,
            model=model,
            expects_secrets=expects_secrets,
        )
        composite = await m.CompositeTask.create(
            workspace_id=group.workspace_id,
            repository_group_id=group.id,
            planning_task_id=planner.id,
            status=C.PLANNING,
            execution_agent_type=execution,
            prompt=prompt,
            title=title,
        )
        await _queue_session(planner, kind=m.JobKind.PLANNING, attempt=1)
    _task_changed(composite)
    events.publish(events.JobQueued())
    return composite


# Listing ----------------------------------------------------------------------------


async def list_tasks(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    repository_group_id: UUID | None = None,
    kind: str | None = None,
    unit_status: m.UnitTaskStatus | None = None,
    composite_status: m.CompositeTaskStatus | None = None,
    include_nodes: bool = False,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[Task]:
    """Unit and composite tasks, oldest first (ties broken by id), as every list is.

    ``kind`` is "unit", "composite" or None for both. A status filter of one kind leaves
    out the other kind. Nodes of composite tasks are left out unless ``include_nodes``.

    Raises: InvalidArgument, NotFound (unknown workspace or group).
    """
    limit, offset = page_bounds(limit, offset)
    if kind not in (None, "unit", "composite"):
        raise InvalidArgument("kind must be unit or composite", field="kind")
    scope = owner_filter(actor, "workspace__")
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        scope["workspace_id"] = workspace_id
    if repository_group_id is not None:
        await get_repository_group(
            actor=actor, group_id=repository_group_id, field="repository_group_id"
        )
        scope["repository_group_id"] = repository_group_id
    want_unit = kind != "composite" and composite_status is None
    want_composite = kind != "unit" and unit_status is None
    unit_query = m.UnitTask.filter(**scope)
    if not include_nodes:
        unit_query = unit_query.filter(composite_task_id__isnull=True)
    if unit_status is not None:
        unit_query = unit_query.filter(status=unit_status)
    composite_query = m.CompositeTask.filter(**scope)
    if composite_status is not None:
        composite_query = composite_query.filter(status=composite_status)

    total = 0
    merged: list[Task] = []
    window = offset + limit
    if want_unit:
        total += await unit_query.count()
        merged.extend(await unit_query.order_by("created_at", "id").limit(window))
    if want_composite:
        total += await composite_query.count()
        merged.extend(await composite_query.order_by("created_at", "id").limit(window))
    merged.sort(key=lambda t: (t.created_at, str(t.id)))
    return Page(items=merged[offset:window], total_count=total)


# Transitions ------------------------------------------------------------------------


def _task_changed(task: m.UnitTask | m.CompositeTask) -> None:
    """Publishes (after commit, when inside a transaction) that the task changed."""
    workspace = str(task.workspace_id)
    events.publish(events.TaskChanged(task_id=str(task.id), workspace_id=workspace))
    if isinstance(task, m.UnitTask) and task.composite_task_id is not None:
        events.publish(
            events.TaskChanged(task_id=str(task.composite_task_id), workspace_id=workspace)
        )


async def _move_unit(
    task: m.UnitTask,
    allowed_from: Iterable[m.UnitTaskStatus],
    to: m.UnitTaskStatus,
    **fields: object,
) -> m.UnitTask:
    """Compare-and-set the status; raises FailedPrecondition naming both states."""
    allowed = set(allowed_from)
    if task.status not in allowed:
        raise FailedPrecondition(
            f"task {task.id} cannot move from {task.status.value} to {to.value}"
        )
    changed = await m.UnitTask.filter(id=task.id, status=task.status).update(
        status=to, updated_at=_now(), **fields
    )
    fresh = await m.UnitTask.get_or_none(id=task.id)
    if fresh is None:  # deleted since it was read
        raise NotFound(f"task {task.id} not found", field="task_id")
    if not changed:
        raise FailedPrecondition(
            f"task {task.id} cannot move from {fresh.status.value} to {to.value}"
        )
    _task_changed(fresh)
    return fresh


async def _move_composite(
    task: m.CompositeTask, allowed_from: m.CompositeTaskStatus, to: m.CompositeTaskStatus
) -> m.CompositeTask:
    if task.status != allowed_from:
        raise FailedPrecondition(
            f"composite task {task.id} cannot move from {task.status.value} to {to.value}"
        )
    changed = await m.CompositeTask.filter(id=task.id, status=allowed_from).update(
        status=to, updated_at=_now()
    )
    fresh = await m.CompositeTask.get_or_none(id=task.id)
    if fresh is None:  # deleted since it was read
        raise NotFound(f"task {task.id} not found", field="task_id")
    if not changed:
        raise FailedPrecondition(
            f"composite task {task.id} cannot move from {fresh.status.value} to {to.value}"
        )
    _task_changed(fresh)
    return fresh


async def approve_task(*, actor: Principal, task_id: UUID) -> Task:
    """A unit task in review → approved; a composite's plan → its nodes are created.

    Raises: NotFound, FailedPrecondition.
    """
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask):
        return await _move_unit(task, [S.IN_REVIEW], S.APPROVED)
    return await _approve_plan(task)


async def reject_task(*, actor: Principal, task_id: UUID, reason: str | None = None) -> Task:
    """A unit task in review → rejected; a composite's plan → rejected.

    A composite in progress can be rejected too: that is how a user closes one whose node
    was rejected (it would otherwise wait for that node for ever) or abandons it. Its
    nodes' queued runs are stopped, running ones are asked to stop, and no node starts
    any more; nodes keep their own status.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    reason = check_optional_text(reason, "reason", max_length=MAX_TEXT_LENGTH)
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask):
        return await _move_unit(task, [S.IN_REVIEW], S.REJECTED, rejection_reason=reason)
    if task.status == C.IN_PROGRESS:
        return await _close_composite(task)
    return await _move_composite(task, C.PENDING_APPROVAL, C.REJECTED)


async def _close_composite(composite: m.CompositeTask) -> m.CompositeTask:
    """in_progress → rejected, stopping the runs of its nodes."""
    async with transaction():
        closed = await _move_composite(composite, C.IN_PROGRESS, C.REJECTED)
        nodes = await m.UnitTask.filter(composite_task_id=composite.id).values_list(
            "id", "agent_task_id"
        )
        active = await m.AgentSession.filter(
            agent_task_id__in=[agent_id for _, agent_id in nodes], status__in=list(ACTIVE)
        ).values_list("id", flat=True)
        now = _now()
        # Queued runs stop at once; then every run that is running, also one claimed
        # meanwhile, is asked to stop (its worker confirms).
        await m.AgentSession.filter(id__in=list(active), status=SessionStatus.QUEUED).update(
            status=SessionStatus.STOPPED, stop_requested=True, completed_at=now, updated_at=now
        )
        await m.AgentSession.filter(id__in=list(active), status=SessionStatus.RUNNING).update(
            stop_requested=True, updated_at=now
        )
        changed = await m.AgentSession.filter(id__in=list(active)).values_list("id", "status")
        for session_id, status in changed:
            events.publish(events.SessionChanged(session_id=str(session_id), status=status))
        for unit_id, _ in nodes:
            workspace_id = str(composite.workspace_id)
            events.publish(events.TaskChanged(task_id=str(unit_id), workspace_id=workspace_id))
    return closed


async def request_changes(*, actor: Principal, task_id: UUID, feedback: str) -> m.UnitTask:
    """In review → in progress: the feedback is appended to the prompt, a new run queued.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    feedback = check_text(feedback, "feedback", max_length=MAX_TEXT_LENGTH)
    task = await get_unit_task(
        actor=actor, task_id=task_id, to=S.IN_PROGRESS, operation="RequestChanges"
    )
    prompt = f"{task.prompt}\n\n## Requested changes\n\n{feedback}"
    if len(prompt) > 4 * MAX_TEXT_LENGTH:
        raise InvalidArgument("the prompt would grow too long", field="feedback")
    async with transaction():
        moved = await _move_unit(task, [S.IN_REVIEW], S.IN_PROGRESS, prompt=prompt)
        await _queue_next_session(moved.agent_task_id, kind=m.JobKind.UNIT_TASK)
    events.publish(events.JobQueued())
    return moved


async def update_task_status(
    *,
    actor: Principal,
    task_id: UUID,
    status: m.UnitTaskStatus,
    linked_pr_url: str | None = None,
) -> m.UnitTask:
    """The manual moves: approved → pr_open (with the PR URL), approved | pr_open → done.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    task = await get_unit_task(actor=actor, task_id=task_id, to=status, operation="UpdateStatus")
    if status == S.PR_OPEN:
        url = check_text(linked_pr_url or "", "linked_pr_url", max_length=MAX_URL_LENGTH)
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidArgument("linked_pr_url must be an http(s) URL", field="linked_pr_url")
        return await _move_unit(task, [S.APPROVED], S.PR_OPEN, linked_pr_url=url)
    if status == S.DONE:
        done = await _move_unit(task, [S.APPROVED, S.PR_OPEN], S.DONE)
        if done.composite_task_id is not None:
            await advance_composite(done.composite_task_id)
        return done
    raise FailedPrecondition(
        f"task {task.id} cannot move from {task.status.value} to {status.value} "
        "with UpdateStatus (use Approve, Reject or RequestChanges)"
    )


async def _queue_next_session(agent_task_id: UUID, *, kind: m.JobKind) -> m.AgentSession:
    agent = await get_row(m.AgentTask, id=agent_task_id)
    last = await m.AgentSession.filter(agent_task_id=agent.id).order_by("-attempt").first()
    return await _queue_session(agent, kind=kind, attempt=(last.attempt + 1) if last else 1)


async def retry_task(*, actor: Principal, task_id: UUID) -> Task:
    """Queues a new run after a failed, stopped or lost one (a composite re-plans).

    Raises: NotFound, FailedPrecondition.
    """
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask):
        agent_id, kind = task.agent_task_id, m.JobKind.UNIT_TASK
        if task.status != S.IN_PROGRESS:
            raise FailedPrecondition(
                f"task {task.id} is {task.status.value}: only a task in progress can be retried"
            )
    else:
        agent_id, kind = task.planning_task_id, m.JobKind.PLANNING
        if task.status != C.PLANNING:
            raise FailedPrecondition(
                f"composite task {task.id} is {task.status.value}: only planning can be retried"
            )
    async with transaction():
        # Lock the AgentTask so that two retries cannot both queue a run.
        if await m.AgentTask.filter(id=agent_id).select_for_update().first() is None:
            raise NotFound(f"task {task.id} not found", field="task_id")  # deleted meanwhile
        latest = (await latest_sessions([agent_id])).get(agent_id)
        failed_plan = isinstance(task, m.CompositeTask) and task.plan_error is not None
        if (
            latest is not None
            and latest.status not in RETRYABLE
            and not (failed_plan and latest.status == SessionStatus.SUCCEEDED)
        ):
            raise FailedPrecondition(
                f"task {task.id} cannot be retried: its latest run is {latest.status.value}"
            )
        await _queue_next_session(agent_id, kind=kind)
    _task_changed(task)
    events.publish(events.JobQueued())
    return await get_task(actor=actor, task_id=task_id)


async def delete_task(*, actor: Principal, task_id: UUID) -> None:
    """Deletes a task with its runs, logs, TTY requests and (composite) nodes.

    Running sessions are marked stopped first, so that their workers' leases are dead.

    Raises: NotFound, FailedPrecondition (a node of a composite task).
    """
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask) and task.composite_task_id is not None:
        raise FailedPrecondition(
            f"task {task.id} is a node of composite task {task.composite_task_id}: "
            "delete the composite task"
        )
    async with transaction():
        if isinstance(task, m.UnitTask):
            removed = await cascade.remove_tasks(units=[task], composites=[])
        else:
            nodes = await m.UnitTask.filter(composite_task_id=task.id)
            removed = await cascade.remove_tasks(units=nodes, composites=[task])
        if not removed:  # a concurrent delete came first; this one's changes roll back
            raise NotFound(f"task {task.id} not found", field="task_id")


# Composite plans ----------------------------------------------------------------------


def _parse_plan(plan_yaml: str) -> list[PlanTask]:
    """``parse_plan``, plus the branch-name rule of ``create_unit_task``. Raises: InvalidPlan."""
    plan = parse_plan(plan_yaml)
    for item in plan:
        if item.branch_name is not None and not sanitize_branch(item.branch_name):
            raise InvalidPlan(
                "InvalidBranchName",
                f"task {item.id!r} has a branchName with no usable characters",
            )
    return plan


async def submit_plan(*, composite_task_id: UUID, plan_yaml: str) -> m.CompositeTask:
    """Stores a planning run's PLAN.yaml: planning → pending_approval when valid.

    An invalid plan leaves the composite in planning with the error visible (Retry
    re-plans) and raises the InvalidPlan error.

    Raises: InvalidPlan, NotFound, FailedPrecondition.
    """
    composite = await m.CompositeTask.get_or_none(id=composite_task_id)
    if composite is None:
        raise NotFound(f"composite task {composite_task_id} not found", field="task_id")
    if composite.status != C.PLANNING:
        raise FailedPrecondition(
            f"composite task {composite.id} is {composite.status.value}, not planning"
        )
    try:
        # A plan near the size limit takes a while to parse: not on the event loop.
        await asyncio.to_thread(_parse_plan, plan_yaml)
    except InvalidArgument as exc:
        # An oversized plan is not kept: the error says what was wrong with it.
        kept = plan_yaml if len(plan_yaml.encode()) <= MAX_PLAN_BYTES else None
        await m.CompositeTask.filter(id=composite.id, status=C.PLANNING).update(
            plan_error=exc.message, plan_yaml=kept, updated_at=_now()
        )
        _task_changed(composite)
        raise
    changed = await m.CompositeTask.filter(id=composite.id, status=C.PLANNING).update(
        status=C.PENDING_APPROVAL, plan_yaml=plan_yaml, plan_error=None, updated_at=_now()
    )
    fresh = await m.CompositeTask.get_or_none(id=composite.id)
    if fresh is None:
        raise NotFound(f"composite task {composite.id} not found")
    if not changed:
        raise FailedPrecondition(
            f"composite task {composite.id} is {fresh.status.value}, not planning"
        )
    _task_changed(fresh)
    return fresh


async def _approve_plan(composite: m.CompositeTask) -> m.CompositeTask:
    if composite.status != C.PENDING_APPROVAL or composite.plan_yaml is None:
        raise FailedPrecondition(
            f"composite task {composite.id} cannot move from {composite.status.value} "
            f"to {C.IN_PROGRESS.value}"
        )
    plan = _parse_plan(composite.plan_yaml)
    group = await get_row(m.RepositoryGroup, id=composite.repository_group_id)
    template = await _branch_template(group)
    remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=composite.planning_task_id)
    async with transaction():
        moved = await _move_composite(composite, C.PENDING_APPROVAL, C.IN_PROGRESS)
        await _create_nodes(moved, plan, template=template, remotes=remotes)
    await advance_composite(moved.id)
    fresh = await m.CompositeTask.get_or_none(id=moved.id)
    if fresh is None:  # deleted since it was approved
        raise NotFound(f"task {moved.id} not found", field="task_id")
    return fresh


async def _create_nodes(
    composite: m.CompositeTask,
    plan: Sequence[PlanTask],
    *,
    template: str | None,
    remotes: Sequence[m.AgentTaskBaseRemote],
) -> None:
    planner = await get_row(m.AgentTask, id=composite.planning_task_id)
    agents = [
        m.AgentTask(
            id=uuid4(),
            ai_agent_type=composite.execution_agent_type or DEFAULT_AGENT,
            ai_agent_model=planner.ai_agent_model,
            expects_secrets=planner.expects_secrets,
        )
        for _ in plan
    ]
    await m.AgentTask.bulk_create(agents)
    await m.AgentTaskBaseRemote.bulk_create(
        [
            m.AgentTaskBaseRemote(
                agent_task_id=agent.id,
                git_remote_dir_path=remote.git_remote_dir_path,
                git_branch_name=remote.git_branch_name,
            )
            for agent in agents
            for remote in remotes
        ]
    )
    units = []
    for item, agent in zip(plan, agents, strict=True):
        unit_id = uuid4()
        units.append(
            m.UnitTask(
                id=unit_id,
                workspace_id=composite.workspace_id,
                repository_group_id=composite.repository_group_id,
                agent_task_id=agent.id,
                composite_task_id=composite.id,
                branch_name=branch_name_for(
                    task_id=unit_id,
                    explicit=item.branch_name,
                    template=template,
                    title=item.title,
                    prompt=item.prompt,
                ),
                status=S.IN_PROGRESS,
                prompt=item.prompt,
                title=item.title[:MAX_NAME_LENGTH],
            )
        )
    await m.UnitTask.bulk_create(units)
    nodes = [
        m.CompositeTaskNode(
            id=uuid4(), composite_task_id=composite.id, unit_task_id=unit.id, plan_id=item.id
        )
        for item, unit in zip(plan, units, strict=True)
    ]
    await m.CompositeTaskNode.bulk_create(nodes)
    node_of = {item.id: node.id for item, node in zip(plan, nodes, strict=True)}
    await m.CompositeTaskNodeDependency.bulk_create(
        [
            m.CompositeTaskNodeDependency(node_id=node_of[item.id], depends_on_node_id=node_of[d])
            for item in plan
            for d in item.depends_on
        ]
    )


async def advance_composite(composite_task_id: UUID) -> None:
    """Queues every node whose dependencies are all done; all nodes done → composite done."""
    async with transaction():
        composite = await m.CompositeTask.filter(id=composite_task_id).select_for_update().first()
        if composite is None or composite.status != C.IN_PROGRESS:
            return
        nodes = await m.CompositeTaskNode.filter(composite_task_id=composite.id)
        units = {u.id: u for u in await m.UnitTask.filter(id__in=[n.unit_task_id for n in nodes])}
        deps = await m.CompositeTaskNodeDependency.filter(
            node_id__in=[n.id for n in nodes]
        ).values_list("node_id", "depends_on_node_id")
        depends: dict[UUID, list[UUID]] = {n.id: [] for n in nodes}
        for node_id, dep_id in deps:
            depends[node_id].append(dep_id)
        done = {n.id for n in nodes if units[n.unit_task_id].status == S.DONE}
        if len(done) == len(nodes):
            await m.CompositeTask.filter(id=composite.id, status=C.IN_PROGRESS).update(
                status=C.DONE, updated_at=_now()
            )
            _task_changed(composite)
            return
        started = set(
            await m.AgentSession.filter(
                agent_task_id__in=[u.agent_task_id for u in units.values()]
            ).values_list("agent_task_id", flat=True)
        )
        ready = [
            units[n.unit_task_id]
            for n in nodes
            if units[n.unit_task_id].agent_task_id not in started
            and all(d in done for d in depends[n.id])
        ]
        agents = {
            a.id: a for a in await m.AgentTask.filter(id__in=[u.agent_task_id for u in ready])
        }
        await m.AgentSession.bulk_create(
            [
                m.AgentSession(
                    agent_task_id=unit.agent_task_id,
                    ai_agent_type=agents[unit.agent_task_id].ai_agent_type or DEFAULT_AGENT,
                    ai_agent_model=agents[unit.agent_task_id].ai_agent_model,
                    kind=m.JobKind.UNIT_TASK,
                    attempt=1,
                    status=SessionStatus.QUEUED,
                )
                for unit in ready
            ]
        )
    if ready:
        for unit in ready:
            _task_changed(unit)
        events.publish(events.JobQueued())


async def composite_nodes(composite_task_ids: Sequence[UUID]) -> dict[UUID, list[NodeView]]:
    """Nodes of each composite with their unit task, dependencies and state (4 queries)."""
    result: dict[UUID, list[NodeView]] = {cid: [] for cid in composite_task_ids}
    if not composite_task_ids:
        return result
    nodes = await m.CompositeTaskNode.filter(
        composite_task_id__in=list(composite_task_ids)
    ).order_by("created_at", "id")
    if not nodes:
        return result
    units = {u.id: u for u in await m.UnitTask.filter(id__in=[n.unit_task_id for n in nodes])}
    deps = await m.CompositeTaskNodeDependency.filter(
        node_id__in=[n.id for n in nodes]
    ).values_list("node_id", "depends_on_node_id")
    depends: dict[UUID, list[UUID]] = {n.id: [] for n in nodes}
    for node_id, dep_id in deps:
        depends[node_id].append(dep_id)
    latest = await latest_sessions([u.agent_task_id for u in units.values()])
    for node in nodes:
        unit = units.get(node.unit_task_id)
        if unit is None:  # its composite was deleted between the two reads
            continue
        result[node.composite_task_id].append(
            NodeView(
                node=node,
                unit_task=unit,
                depends_on=depends[node.id],
                state=node_state(unit, latest.get(unit.agent_task_id)),
            )
        )
    return result


def node_state(unit: m.UnitTask, latest: m.AgentSession | None) -> NodeState:
    if unit.status == S.DONE:
        return NodeState.DONE
    if unit.status == S.REJECTED:
        return NodeState.REJECTED
    if unit.status in (S.IN_REVIEW, S.APPROVED, S.PR_OPEN):
        return NodeState.IN_REVIEW
    if latest is None:
        return NodeState.WAITING
    if latest.status == SessionStatus.QUEUED:
        return NodeState.QUEUED
    if latest.status == SessionStatus.RUNNING:
        return NodeState.RUNNING
    if latest.status in RETRYABLE:
        return NodeState.FAILED
    return NodeState.RUNNING


async def agent_tasks_by_id(agent_task_ids: Sequence[UUID]) -> dict[UUID, m.AgentTask]:
    """AgentTasks by id (one query; for DataLoaders)."""
    if not agent_task_ids:
        return {}
    return {a.id: a for a in await m.AgentTask.filter(id__in=list(agent_task_ids))}


async def base_remotes_of(
    agent_task_ids: Sequence[UUID],
) -> dict[UUID, list[m.AgentTaskBaseRemote]]:
    """Base remotes of each AgentTask (one query; for DataLoaders)."""
    result: dict[UUID, list[m.AgentTaskBaseRemote]] = {a: [] for a in agent_task_ids}
    if agent_task_ids:
        for remote in await m.AgentTaskBaseRemote.filter(agent_task_id__in=list(agent_task_ids)):
            result[remote.agent_task_id].append(remote)
    return result


# Read model -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskBundle:
    """Everything needed to show a set of tasks, loaded in a fixed number of queries."""

    agents: dict[UUID, m.AgentTask]
    remotes: dict[UUID, list[m.AgentTaskBaseRemote]]
    sessions: dict[UUID, list[m.AgentSession]]
    auto_fix: dict[UUID, list[UUID]]
    nodes: dict[UUID, list[NodeView]]
    gone: frozenset[UUID] = frozenset()
    """Tasks deleted while the bundle was read: their rows are partly missing."""

    def latest(self, agent_task_id: UUID) -> m.AgentSession | None:
        runs = self.sessions.get(agent_task_id) or []
        return runs[-1] if runs else None

    def shown(self, items: Sequence[Task]) -> list[Task]:
        """``items`` without those deleted while the bundle was read."""
        return [t for t in items if t.id not in self.gone]


async def load_task_bundle(items: Sequence[Task]) -> TaskBundle:
    """Everything needed to show ``items``; tasks deleted meanwhile are named in ``gone``
    (a concurrent delete removes their AgentTasks between our reads)."""
    composite_ids = [t.id for t in items if isinstance(t, m.CompositeTask)]
    nodes = await composite_nodes(composite_ids)
    units = [t for t in items if isinstance(t, m.UnitTask)]
    units += [v.unit_task for views in nodes.values() for v in views]
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id__in=[u.id for u in units]).order_by(
        "created_at"
    )
    auto_fix: dict[UUID, list[UUID]] = {}
    for fix in fixes:
        auto_fix.setdefault(fix.unit_task_id, []).append(fix.agent_task_id)
    agent_ids = {u.agent_task_id for u in units}
    agent_ids |= {t.planning_task_id for t in items if isinstance(t, m.CompositeTask)}
    agent_ids |= {f.agent_task_id for f in fixes}
    ids = list(agent_ids)
    agents = {a.id: a for a in await m.AgentTask.filter(id__in=ids)} if ids else {}
    remotes: dict[UUID, list[m.AgentTaskBaseRemote]] = {a: [] for a in ids}
    sessions: dict[UUID, list[m.AgentSession]] = {a: [] for a in ids}
    if ids:
        for remote in await m.AgentTaskBaseRemote.filter(agent_task_id__in=ids):
            remotes[remote.agent_task_id].append(remote)
        for session in await m.AgentSession.filter(agent_task_id__in=ids).order_by("attempt"):
            sessions[session.agent_task_id].append(session)

    def agents_of(unit: m.UnitTask) -> list[UUID]:
        return [unit.agent_task_id, *auto_fix.get(unit.id, [])]

    def complete(task: Task) -> bool:
        if isinstance(task, m.UnitTask):
            needed = agents_of(task)
        else:
            needed = [task.planning_task_id]
            needed += [a for v in nodes.get(task.id, []) for a in agents_of(v.unit_task)]
        return all(a in agents for a in needed)

    return TaskBundle(
        agents=agents,
        remotes=remotes,
        sessions=sessions,
        auto_fix=auto_fix,
        nodes=nodes,
        gone=frozenset(t.id for t in items if not complete(t)),
    )


async def load_task_view(task: Task) -> TaskBundle:
    """What showing one task needs, just after it was read or changed.

    Raises: NotFound (the task was deleted meanwhile, e.g. by a concurrent DeleteTask).
    """
    bundle = await load_task_bundle([task])
    if task.id in bundle.gone:
        raise NotFound(f"task {task.id} not found (it was deleted)", field="task_id")
    return bundle
