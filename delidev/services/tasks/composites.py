"""Composite tasks: a planning run writes PLAN.yaml (``submit_plan``), approving the plan
turns it into a DAG of unit-task nodes, and ``advance_composite`` queues each node once its
dependencies are done (all done → the composite is done)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from uuid import UUID, uuid4

from delidev import events, metrics, tracing
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services.plans import MAX_PLAN_BYTES, InvalidPlan, PlanTask, parse_plan
from delidev.services.repositories import get_repository_group
from delidev.services.tasks._shared import (
    ACTIVE,
    DEFAULT_AGENT,
    C,
    S,
    Scheduling,
    SessionStatus,
    agent_task_for_group,
    branch_template,
    move,
    queue_session,
    scheduling_for,
    task_changed,
)
from delidev.services.tasks.branches import branch_name_for, sanitize_branch


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
    priority: m.TaskPriority | None = None,
    required_labels: Sequence[str] | None = None,
    max_run_seconds: int | None = None,
) -> m.CompositeTask:
    """Creates the CompositeTask (planning) and queues its planning job.

    The priority, required labels (none → the group's default) and run time limit are the
    planning job's and, later, every node's.

    Raises: InvalidArgument, NotFound.
    """
    prompt = common.check_text(prompt, "prompt", max_length=common.MAX_TEXT_LENGTH)
    title = common.check_optional_text(title, "title")
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
    execution = execution_agent_type or DEFAULT_AGENT
    async with common.transaction():
        planner = await agent_task_for_group(
            group,
            agent_type=planning_agent_type or execution,
            model=model,
            expects_secrets=expects_secrets,
            scheduling=scheduling,
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
        await queue_session(planner, kind=m.JobKind.PLANNING, attempt=1)
    metrics.task_created("composite")
    task_changed(composite)
    events.publish(events.JobQueued())
    return composite


# Plans ------------------------------------------------------------------------------


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
            **common.changed(plan_error=exc.message, plan_yaml=kept)
        )
        task_changed(composite)
        raise
    # Not ``move``: its message names the states, this one's (a planning run's) says planning.
    stored = await m.CompositeTask.filter(id=composite.id, status=C.PLANNING).update(
        **common.changed(status=C.PENDING_APPROVAL, plan_yaml=plan_yaml, plan_error=None)
    )
    fresh = await m.CompositeTask.get_or_none(id=composite.id)
    if fresh is None:
        raise NotFound(f"composite task {composite.id} not found")
    if not stored:
        raise FailedPrecondition(
            f"composite task {composite.id} is {fresh.status.value}, not planning"
        )
    task_changed(fresh)
    return fresh


async def approve_plan(composite: m.CompositeTask) -> m.CompositeTask:
    """pending_approval → in_progress: the plan's nodes are created and the first queued.

    Raises: NotFound, FailedPrecondition.
    """
    if composite.status != C.PENDING_APPROVAL or composite.plan_yaml is None:
        raise FailedPrecondition(
            f"composite task {composite.id} cannot move from {composite.status.value} "
            f"to {C.IN_PROGRESS.value}"
        )
    # In a thread: a plan of 1,000 tasks takes ~0.1 s to parse, which would hold the loop.
    plan = await asyncio.to_thread(_parse_plan, composite.plan_yaml)
    group = await common.get_row(m.RepositoryGroup, id=composite.repository_group_id)
    template = await branch_template(group)
    remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=composite.planning_task_id)
    async with common.transaction():
        await common.hold_workspace(composite.workspace_id)  # before the composite's lock
        moved = await move(composite, [C.PENDING_APPROVAL], C.IN_PROGRESS)
        await _create_nodes(moved, plan, template=template, remotes=remotes)
    await advance_composite(moved.id)
    fresh = await m.CompositeTask.get_or_none(id=moved.id)
    if fresh is None:  # deleted since it was approved
        raise NotFound(f"task {moved.id} not found", field="task_id")
    return fresh


async def reject_plan(composite: m.CompositeTask) -> m.CompositeTask:
    """pending_approval → rejected. Raises: NotFound, FailedPrecondition."""
    return await move(composite, [C.PENDING_APPROVAL], C.REJECTED)


async def _create_nodes(
    composite: m.CompositeTask,
    plan: Sequence[PlanTask],
    *,
    template: str | None,
    remotes: Sequence[m.AgentTaskBaseRemote],
) -> None:
    planner = await common.get_row(m.AgentTask, id=composite.planning_task_id)
    # Nodes inherit the composite's priority, labels and run time limit: the planner's (a
    # SetPriority changes the planner and the nodes together).
    scheduling = Scheduling.of(planner)
    node_of: dict[str, UUID] = {}
    # A slice of the plan at a time: other tasks run between the slices' statements (a plan
    # of 1,000 tasks built and inserted at once held the event loop for ~0.3 s).
    for start in range(0, len(plan), NODES_PER_STEP):
        part = plan[start : start + NODES_PER_STEP]
        agents = [
            scheduling.agent_task(
                id=uuid4(),
                ai_agent_type=composite.execution_agent_type or DEFAULT_AGENT,
                ai_agent_model=planner.ai_agent_model,
                expects_secrets=planner.expects_secrets,
                workspace_id=composite.workspace_id,
            )
            for _ in part
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
        for item, agent in zip(part, agents, strict=True):
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
                    title=item.title[: common.MAX_NAME_LENGTH],
                )
            )
        await m.UnitTask.bulk_create(units)
        nodes = [
            m.CompositeTaskNode(
                id=uuid4(), composite_task_id=composite.id, unit_task_id=unit.id, plan_id=item.id
            )
            for item, unit in zip(part, units, strict=True)
        ]
        await m.CompositeTaskNode.bulk_create(nodes)
        node_of.update((item.id, node.id) for item, node in zip(part, nodes, strict=True))
    metrics.task_created("composite_node", len(plan))
    edges = [(node_of[item.id], node_of[d]) for item in plan for d in item.depends_on]
    for start in range(0, len(edges), NODES_PER_STEP):
        await m.CompositeTaskNodeDependency.bulk_create(
            [
                m.CompositeTaskNodeDependency(node_id=node_id, depends_on_node_id=on)
                for node_id, on in edges[start : start + NODES_PER_STEP]
            ]
        )


NODES_PER_STEP = 100
"""Plan tasks turned into nodes (and nodes queued) per statement: other tasks run between
the statements of a plan of 1,000 tasks."""


# Progress ---------------------------------------------------------------------------


async def advance_composite(composite_task_id: UUID) -> None:
    """Queues every node whose dependencies are all done; all nodes done → composite done."""
    async with common.transaction():
        composite = await m.CompositeTask.filter(id=composite_task_id).select_for_update().first()
        if composite is None or composite.status != C.IN_PROGRESS:
            return
        # Read as plain values, not models: advanced at each node's end, a composite of
        # 1,000 nodes built 2,000 models each time.
        nodes = await m.CompositeTaskNode.filter(composite_task_id=composite.id).values_list(
            "id", "unit_task_id"
        )
        units: dict[UUID, tuple[m.UnitTaskStatus, UUID]] = {
            unit_id: (status, agent_id)
            for unit_id, status, agent_id in await m.UnitTask.filter(
                composite_task_id=composite.id
            ).values_list("id", "status", "agent_task_id")
        }
        deps = await m.CompositeTaskNodeDependency.filter(
            node__composite_task_id=composite.id
        ).values_list("node_id", "depends_on_node_id")
        depends: dict[UUID, list[UUID]] = {node_id: [] for node_id, _ in nodes}
        for node_id, dep_id in deps:
            depends[node_id].append(dep_id)
        done = {node_id for node_id, unit_id in nodes if units[unit_id][0] == S.DONE}
        if len(done) == len(nodes):
            await m.CompositeTask.filter(id=composite.id, status=C.IN_PROGRESS).update(
                **common.changed(status=C.DONE)
            )
            task_changed(composite)
            return
        started = set(
            await m.AgentSession.filter(
                agent_task__unit_task__composite_task_id=composite.id
            ).values_list("agent_task_id", flat=True)
        )
        ready = [
            (unit_id, units[unit_id][1])
            for node_id, unit_id in nodes
            if units[unit_id][1] not in started and all(d in done for d in depends[node_id])
        ]
        for start in range(0, len(ready), NODES_PER_STEP):
            part = ready[start : start + NODES_PER_STEP]
            agents = {
                agent_id: (agent_type, model)
                for agent_id, agent_type, model in await m.AgentTask.filter(
                    id__in=[agent_id for _, agent_id in part]
                ).values_list("id", "ai_agent_type", "ai_agent_model")
            }
            await m.AgentSession.bulk_create(
                [
                    m.AgentSession(
                        agent_task_id=agent_id,
                        ai_agent_type=agents[agent_id][0] or DEFAULT_AGENT,
                        ai_agent_model=agents[agent_id][1],
                        kind=m.JobKind.UNIT_TASK,
                        attempt=1,
                        status=SessionStatus.QUEUED,
                        traceparent=tracing.current_traceparent(),
                    )
                    for _, agent_id in part
                ]
            )
    if ready:
        workspace = str(composite.workspace_id)
        for unit_id, _ in ready:
            events.publish(events.TaskChanged(task_id=str(unit_id), workspace_id=workspace))
        events.publish(events.TaskChanged(task_id=str(composite.id), workspace_id=workspace))
        events.publish(events.JobQueued())


def _user_stop() -> dict[str, object]:
    """A user's stop (as ``sessions.stop_session`` asks it): the sweep finalises one that the
    worker does not confirm within the stop grace."""
    return {
        "stop_requested": True,
        "stop_reason": m.StopReason.USER.value,
        "stop_requested_at": common.now(),
    }


async def close_composite(composite: m.CompositeTask) -> m.CompositeTask:
    """in_progress → rejected, stopping the runs of its nodes.

    Raises: NotFound, FailedPrecondition.
    """
    async with common.transaction():
        closed = await move(composite, [C.IN_PROGRESS], C.REJECTED)
        nodes = await m.UnitTask.filter(composite_task_id=composite.id).values_list(
            "id", "agent_task_id"
        )
        active = await m.AgentSession.filter(
            agent_task_id__in=[agent_id for _, agent_id in nodes], status__in=list(ACTIVE)
        ).values_list("id", flat=True)
        # Queued runs stop at once; then every run that is running, also one claimed
        # meanwhile, is asked to stop (its worker confirms).
        dropped = await m.AgentSession.filter(
            id__in=list(active), status=SessionStatus.QUEUED
        ).update(
            **common.changed(
                status=SessionStatus.STOPPED, completed_at=common.now(), **_user_stop()
            )
        )
        metrics.session_finished(m.JobKind.UNIT_TASK.value, "stopped", dropped)
        # A stop already asked (for a time limit) keeps its reason and its grace.
        await m.AgentSession.filter(
            id__in=list(active), status=SessionStatus.RUNNING, stop_requested=False
        ).update(**common.changed(**_user_stop()))
        stopped = await m.AgentSession.filter(id__in=list(active)).values_list("id", "status")
        for session_id, status in stopped:
            events.publish(events.SessionChanged(session_id=str(session_id), status=status))
        for unit_id, _ in nodes:
            workspace_id = str(composite.workspace_id)
            events.publish(events.TaskChanged(task_id=str(unit_id), workspace_id=workspace_id))
    return closed
