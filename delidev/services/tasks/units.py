"""Unit tasks and the review workflow of every task: approve, reject, request changes,
the manual moves to pr_open and done, retry and delete. A composite task's side of these
(its plan, closing it) is in ``composites``."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import UUID, uuid4

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import cascade, common
from delidev.services.pr_urls import pr_key
from delidev.services.repositories import get_repository_group
from delidev.services.tasks import composites
from delidev.services.tasks._shared import (
    DEFAULT_AGENT,
    RETRYABLE,
    C,
    S,
    SessionStatus,
    Task,
    agent_task_for_group,
    branch_template,
    closed_composite,
    get_task,
    latest_sessions,
    move,
    queue_next_session,
    queue_session,
    scheduling_for,
    task_changed,
)
from delidev.services.tasks.branches import branch_name_for, sanitize_branch


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
    priority: m.TaskPriority | None = None,
    required_labels: Sequence[str] | None = None,
    max_run_seconds: int | None = None,
) -> m.UnitTask:
    """Creates the AgentTask, the UnitTask (in_progress) and its first queued session.

    No ``required_labels`` → the repository group's default labels.

    Raises: InvalidArgument, NotFound.
    """
    prompt = common.check_text(prompt, "prompt", max_length=common.MAX_TEXT_LENGTH)
    title = common.check_optional_text(title, "title")
    explicit = common.check_optional_text(branch_name, "branch_name")
    if explicit is not None and not sanitize_branch(explicit):
        raise InvalidArgument("branch_name has no usable characters", field="branch_name")
    model = common.check_optional_text(ai_agent_model, "ai_agent_model")
    group = await get_repository_group(
        actor=actor, group_id=repository_group_id, field="repository_group_id"
    )
    scheduling = scheduling_for(
        group,
        priority=priority,
        required_labels=required_labels,
        max_run_seconds=max_run_seconds,
    )
    task_id = uuid4()
    template = await branch_template(group)
    async with common.transaction():
        agent = await agent_task_for_group(
            group,
            agent_type=ai_agent_type or DEFAULT_AGENT,
            model=model,
            expects_secrets=expects_secrets,
            scheduling=scheduling,
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
        await queue_session(agent, kind=m.JobKind.UNIT_TASK, attempt=1)
    metrics.task_created("unit")
    task_changed(task)
    events.publish(events.JobQueued())
    return task


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


# Review -----------------------------------------------------------------------------


async def approve_task(*, actor: Principal, task_id: UUID) -> Task:
    """A unit task in review → approved; a composite's plan → its nodes are created.

    Raises: NotFound, FailedPrecondition.
    """
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask):
        return await move(task, [S.IN_REVIEW], S.APPROVED)
    return await composites.approve_plan(task)


async def reject_task(*, actor: Principal, task_id: UUID, reason: str | None = None) -> Task:
    """A unit task in review → rejected; a composite's plan → rejected.

    A composite in progress can be rejected too: that is how a user closes one whose node
    was rejected (it would otherwise wait for that node for ever) or abandons it. Its
    nodes' queued runs are stopped, running ones are asked to stop, and no node starts
    any more; nodes keep their own status.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    reason = common.check_optional_text(reason, "reason", max_length=common.MAX_TEXT_LENGTH)
    task = await get_task(actor=actor, task_id=task_id)
    if isinstance(task, m.UnitTask):
        return await move(task, [S.IN_REVIEW], S.REJECTED, rejection_reason=reason)
    if task.status == C.IN_PROGRESS:
        return await composites.close_composite(task)
    return await composites.reject_plan(task)


async def request_changes(*, actor: Principal, task_id: UUID, feedback: str) -> m.UnitTask:
    """In review → in progress: the feedback is appended to the prompt, a new run queued.

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    feedback = common.check_text(feedback, "feedback", max_length=common.MAX_TEXT_LENGTH)
    task = await get_unit_task(
        actor=actor, task_id=task_id, to=S.IN_PROGRESS, operation="RequestChanges"
    )
    prompt = f"{task.prompt}\n\n## Requested changes\n\n{feedback}"
    if len(prompt) > 4 * common.MAX_TEXT_LENGTH:
        raise InvalidArgument("the prompt would grow too long", field="feedback")
    async with common.transaction():
        await _check_node_may_run(task)
        moved = await move(task, [S.IN_REVIEW], S.IN_PROGRESS, prompt=prompt)
        await queue_next_session(moved.agent_task_id, kind=m.JobKind.UNIT_TASK)
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
        url = common.check_web_url(linked_pr_url or "", "linked_pr_url")
        return await move(
            task,
            [S.APPROVED],
            S.PR_OPEN,
            linked_pr_url=url,
            pr_key=pr_key(url),
            pr_state=m.PullRequestState.OPEN,
            pr_state_changed_at=common.now(),
        )
    if status == S.DONE:
        return await finish_unit_task(task)
    raise FailedPrecondition(
        f"task {task.id} cannot move from {task.status.value} to {status.value} "
        "with UpdateStatus (use Approve, Reject or RequestChanges)"
    )


async def finish_unit_task(task: m.UnitTask, **fields: object) -> m.UnitTask:
    """approved | pr_open → done (with ``fields``); the composite it is a node of advances.

    Raises: NotFound, FailedPrecondition.
    """
    done = await move(task, [S.APPROVED, S.PR_OPEN], S.DONE, **fields)
    if done.composite_task_id is not None:
        await composites.advance_composite(done.composite_task_id)
    return done


# Retry and delete -------------------------------------------------------------------


async def _check_node_may_run(task: m.UnitTask) -> None:
    """A node runs again (Retry, RequestChanges) only while its composite is in progress:
    a rejected composite starts no node. Its row is locked (PostgreSQL) so that a Reject
    racing this call comes wholly before or after it.

    Raises: NotFound (the composite was deleted meanwhile), FailedPrecondition."""
    why = await closed_composite(task, lock=True)
    if why is None:
        return
    if not await m.CompositeTask.exists(id=task.composite_task_id):
        raise NotFound(f"task {task.id} not found", field="task_id")
    raise FailedPrecondition(f"task {task.id}: {why}: its nodes run no more")


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
    async with common.transaction():
        if isinstance(task, m.UnitTask):
            await _check_node_may_run(task)
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
        await queue_next_session(agent_id, kind=kind)
    task_changed(task)
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
    async with common.transaction():
        if isinstance(task, m.UnitTask):
            removed = await cascade.remove_tasks(units=[task], composites=[])
        else:
            # Locked first (PostgreSQL), as the plan's approval locks it to add nodes: nodes
            # added after the read of them would go with the cascade and leave their runs.
            removed = await cascade.remove_composites([task])
        if not removed:  # a concurrent delete came first; this one's changes roll back
            raise NotFound(f"task {task.id} not found", field="task_id")
