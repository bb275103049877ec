from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import cascade, plans, sessions, tasks
from delidev.services.common import transaction
from delidev.services.plans import InvalidPlan
from delidev.services.sessions import LogChunkIn
from delidev.services.tasks import units
from tests.factories import (
    finish_latest,
    latest_session,
    make_group,
    make_repository,
    make_workspace,
    start_latest,
)
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")

S = m.UnitTaskStatus
C = m.CompositeTaskStatus
A = LOCAL_USER


async def _group(template: str | None = None) -> m.RepositoryGroup:
    ws = await make_workspace()
    repo = await make_repository(ws)
    if template:
        repo.branch_name_template = template
        await repo.save()
    other = await make_repository(ws)
    return await make_group(ws, [repo, other])


async def _unit(**kwargs: object) -> m.UnitTask:
    group = await _group()
    return await tasks.create_unit_task(
        actor=A,
        repository_group_id=group.id,
        prompt="Fix the bug",
        **kwargs,  # type: ignore[arg-type]
    )


async def _in_review() -> m.UnitTask:
    task = await _unit()
    await finish_latest(task.agent_task_id)
    return await m.UnitTask.get(id=task.id)


async def test_create_unit_task_queues_a_session_with_base_remotes() -> None:
    group = await _group()
    task = await tasks.create_unit_task(
        actor=A,
        repository_group_id=group.id,
        prompt="  Add a button ",
        title="Button",
        ai_agent_type=m.AiAgentType.AIDER,
        ai_agent_model="gpt-x",
    )
    assert (task.status, task.prompt, task.title) == (S.IN_PROGRESS, "Add a button", "Button")
    assert task.workspace_id == group.workspace_id
    assert task.branch_name == f"delidev/{task.id}"
    session = await latest_session(task.agent_task_id)
    assert (session.status, session.attempt, session.kind) == (
        m.AgentSessionStatus.QUEUED,
        1,
        m.JobKind.UNIT_TASK,
    )
    assert (session.ai_agent_type, session.ai_agent_model) == (m.AiAgentType.AIDER, "gpt-x")
    remotes = await m.AgentTaskBaseRemote.filter(agent_task_id=task.agent_task_id)
    assert sorted(r.git_branch_name for r in remotes) == ["main", "main"]
    assert len(remotes) == 2


@pytest.mark.parametrize(
    ("explicit", "template", "expected"),
    [
        ("feat/my branch!", None, "feat/my-branch-"),
        (None, "feature/${taskId}-${slug}", "feature/{id}-fix-the-login-page"),
        (None, None, "delidev/{id}"),
    ],
)
async def test_branch_names(explicit: str | None, template: str | None, expected: str) -> None:
    group = await _group(template)
    task = await tasks.create_unit_task(
        actor=A,
        repository_group_id=group.id,
        prompt="p",
        title="Fix the login page!",
        branch_name=explicit,
    )
    assert task.branch_name == expected.format(id=task.id)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": " "}, "prompt"),
        ({"prompt": "p", "title": "t" * 256}, "title"),
        ({"prompt": "p", "branch_name": "x" * 300}, "branch_name"),
    ],
)
async def test_create_rejects_bad_input(kwargs: dict[str, str], field: str) -> None:
    group = await _group()
    with pytest.raises(InvalidArgument) as info:
        await tasks.create_unit_task(actor=A, repository_group_id=group.id, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field
    assert await m.UnitTask.all().count() == 0
    assert await m.AgentTask.all().count() == 0


async def test_another_users_group_is_not_found() -> None:
    group = await _group()
    stranger = Principal(kind="user", user_id=uuid.uuid4())
    with pytest.raises(NotFound):
        await tasks.create_unit_task(actor=stranger, repository_group_id=group.id, prompt="p")


async def test_review_workflow_to_done() -> None:
    task = await _in_review()
    assert task.status == S.IN_REVIEW
    approved = await tasks.approve_task(actor=A, task_id=task.id)
    assert approved.status == S.APPROVED
    pr = await tasks.update_task_status(
        actor=A, task_id=task.id, status=S.PR_OPEN, linked_pr_url="https://github.com/a/b/pull/1"
    )
    assert (pr.status, pr.linked_pr_url) == (S.PR_OPEN, "https://github.com/a/b/pull/1")
    done = await tasks.update_task_status(actor=A, task_id=task.id, status=S.DONE)
    assert done.status == S.DONE


async def test_reject_with_reason() -> None:
    task = await _in_review()
    rejected = await tasks.reject_task(actor=A, task_id=task.id, reason="wrong approach")
    assert isinstance(rejected, m.UnitTask)
    assert (rejected.status, rejected.rejection_reason) == (S.REJECTED, "wrong approach")


async def test_request_changes_appends_feedback_and_queues_a_new_run() -> None:
    task = await _in_review()
    changed = await tasks.request_changes(actor=A, task_id=task.id, feedback="Use tabs")
    assert changed.status == S.IN_PROGRESS
    assert changed.prompt.startswith("Fix the bug")
    assert changed.prompt.endswith("Use tabs")
    session = await latest_session(task.agent_task_id)
    assert (session.attempt, session.status) == (2, m.AgentSessionStatus.QUEUED)


ILLEGAL = [
    # (how far the task has gone, call, expected "from" state in the message)
    ("in_progress", "approve", "in_progress"),
    ("in_progress", "reject", "in_progress"),
    ("in_progress", "request_changes", "in_progress"),
    ("in_progress", "pr_open", "in_progress"),
    ("in_progress", "done", "in_progress"),
    ("in_review", "pr_open", "in_review"),
    ("in_review", "done", "in_review"),
    ("approved", "approve", "approved"),
    ("approved", "reject", "approved"),
    ("approved", "request_changes", "approved"),
    ("pr_open", "pr_open", "pr_open"),
    ("done", "approve", "done"),
    ("done", "done", "done"),
    ("rejected", "approve", "rejected"),
    ("rejected", "request_changes", "rejected"),
    ("in_review", "in_progress", "in_review"),
]


async def _reach(state: str) -> m.UnitTask:
    task = await _unit()
    if state == "in_progress":
        return task
    await finish_latest(task.agent_task_id)
    if state == "in_review":
        return task
    if state == "rejected":
        await tasks.reject_task(actor=A, task_id=task.id)
        return task
    await tasks.approve_task(actor=A, task_id=task.id)
    if state == "pr_open":
        await tasks.update_task_status(
            actor=A, task_id=task.id, status=S.PR_OPEN, linked_pr_url="https://x.io/pr/1"
        )
    if state == "done":
        await tasks.update_task_status(actor=A, task_id=task.id, status=S.DONE)
    return task


@pytest.mark.parametrize(("state", "call", "from_state"), ILLEGAL)
async def test_illegal_transitions(state: str, call: str, from_state: str) -> None:
    task = await _reach(state)
    before = (await m.UnitTask.get(id=task.id)).status
    if call == "approve":
        attempt = tasks.approve_task(actor=A, task_id=task.id)
    elif call == "reject":
        attempt = tasks.reject_task(actor=A, task_id=task.id)
    elif call == "request_changes":
        attempt = tasks.request_changes(actor=A, task_id=task.id, feedback="f")
    else:
        attempt = tasks.update_task_status(
            actor=A, task_id=task.id, status=S(call), linked_pr_url="https://x.io/pr/2"
        )
    with pytest.raises(FailedPrecondition) as info:
        await attempt
    assert from_state in info.value.message
    assert (await m.UnitTask.get(id=task.id)).status == before


async def test_pr_open_needs_a_url() -> None:
    task = await _reach("approved")
    with pytest.raises(InvalidArgument) as info:
        await tasks.update_task_status(actor=A, task_id=task.id, status=S.PR_OPEN)
    assert info.value.field == "linked_pr_url"


@pytest.mark.parametrize(
    "ending",
    [m.AgentSessionStatus.FAILED, m.AgentSessionStatus.STOPPED],
)
async def test_retry_after_a_failed_or_stopped_run(ending: m.AgentSessionStatus) -> None:
    task = await _unit()
    await finish_latest(task.agent_task_id, ending, error="boom")
    await tasks.retry_task(actor=A, task_id=task.id)
    session = await latest_session(task.agent_task_id)
    assert (session.attempt, session.status) == (2, m.AgentSessionStatus.QUEUED)


async def test_retry_after_a_lost_run() -> None:
    task = await _unit()
    session = await start_latest(task.agent_task_id)
    await m.AgentSession.filter(id=session.id).update(status=m.AgentSessionStatus.LOST)
    await tasks.retry_task(actor=A, task_id=task.id)
    assert (await latest_session(task.agent_task_id)).attempt == 2


@pytest.mark.parametrize("state", ["queued", "running", "in_review"])
async def test_retry_refused_otherwise(state: str) -> None:
    task = await _unit()
    if state == "running":
        await start_latest(task.agent_task_id)
    if state == "in_review":
        await finish_latest(task.agent_task_id)
    with pytest.raises(FailedPrecondition):
        await tasks.retry_task(actor=A, task_id=task.id)
    assert await m.AgentSession.filter(agent_task_id=task.agent_task_id).count() == 1


async def test_concurrent_retries_queue_one_run() -> None:
    task = await _unit()
    await finish_latest(task.agent_task_id, m.AgentSessionStatus.FAILED, error="x")
    results = await asyncio.gather(
        *(tasks.retry_task(actor=A, task_id=task.id) for _ in range(4)), return_exceptions=True
    )
    assert sum(not isinstance(r, BaseException) for r in results) == 1
    assert await m.AgentSession.filter(agent_task_id=task.agent_task_id).count() == 2


async def test_concurrent_approve_and_reject_have_one_winner() -> None:
    task = await _in_review()
    results = await asyncio.gather(
        tasks.approve_task(actor=A, task_id=task.id),
        tasks.approve_task(actor=A, task_id=task.id),
        tasks.reject_task(actor=A, task_id=task.id),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, m.UnitTask)]
    assert len(winners) == 1
    assert all(isinstance(r, FailedPrecondition) for r in results if r not in winners)
    assert (await m.UnitTask.get(id=task.id)).status == winners[0].status


async def test_delete_removes_runs_logs_and_stops_running_sessions() -> None:
    task = await _unit()
    first = await finish_latest(task.agent_task_id, m.AgentSessionStatus.FAILED, error="x")
    await tasks.retry_task(actor=A, task_id=task.id)
    session = await start_latest(task.agent_task_id)
    await sessions.append_log(
        session_id=session.id,
        chunks=[LogChunkIn(sequence=0, data="hello "), LogChunkIn(sequence=2, data="later")],
    )
    question = await sessions.create_tty_request(
        session_id=session.id,
        prompt="Continue?",
        input_type=m.TtyInputType.CONFIRM,
        expires_in=dt.timedelta(minutes=5),
    )
    assert await m.LogChunk.filter(session_id=session.id).count() == 2
    await tasks.delete_task(actor=A, task_id=task.id)
    assert not await m.UnitTask.exists(id=task.id)
    assert not await m.AgentTask.exists(id=task.agent_task_id)
    assert not await m.AgentSession.filter(id__in=[first.id, session.id]).exists()
    assert not await m.LogChunk.filter(session_id=session.id).exists()
    assert not await m.TtyInputRequest.exists(id=question.id)
    with pytest.raises(NotFound):
        await tasks.get_task(actor=A, task_id=task.id)


async def test_list_filters_and_pages_oldest_first() -> None:
    group = await _group()
    other = await _group()
    created = [
        await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt=f"p{i}")
        for i in range(4)
    ]
    composite = await tasks.create_composite_task(
        actor=A, repository_group_id=group.id, prompt="big"
    )
    await tasks.create_unit_task(actor=A, repository_group_id=other.id, prompt="elsewhere")
    await finish_latest(created[0].agent_task_id)

    page = await tasks.list_tasks(actor=A, repository_group_id=group.id)
    assert [t.id for t in page.items] == [*[t.id for t in created], composite.id]
    assert page.total_count == 5
    units = await tasks.list_tasks(actor=A, workspace_id=group.workspace_id, kind="unit")
    assert units.total_count == 4
    review = await tasks.list_tasks(actor=A, unit_status=S.IN_REVIEW)
    assert [t.id for t in review.items] == [created[0].id]
    planning = await tasks.list_tasks(actor=A, composite_status=C.PLANNING)
    assert [t.id for t in planning.items] == [composite.id]
    second = await tasks.list_tasks(actor=A, repository_group_id=group.id, limit=2, offset=2)
    assert [t.id for t in second.items] == [created[2].id, created[3].id]
    with pytest.raises(InvalidArgument):
        await tasks.list_tasks(actor=A, kind="weird")


# Composite tasks --------------------------------------------------------------------------

DIAMOND = """
tasks:
  - id: db
    prompt: schema
  - id: api
    prompt: api
    dependsOn: [db]
  - id: ui
    prompt: ui
    dependsOn: [db]
  - id: e2e
    prompt: tests
    dependsOn: [api, ui]
"""


async def _planned(plan: str = DIAMOND) -> m.CompositeTask:
    group = await _group()
    composite = await tasks.create_composite_task(
        actor=A,
        repository_group_id=group.id,
        prompt="Build it",
        execution_agent_type=m.AiAgentType.CODEX_CLI,
    )
    assert composite.status == C.PLANNING
    planning = await latest_session(composite.planning_task_id)
    assert planning.kind == m.JobKind.PLANNING
    await finish_latest(composite.planning_task_id, plan_yaml=plan)
    return await m.CompositeTask.get(id=composite.id)


async def _finish_node(unit: m.UnitTask) -> None:
    await finish_latest(unit.agent_task_id)
    await tasks.approve_task(actor=A, task_id=unit.id)
    await tasks.update_task_status(actor=A, task_id=unit.id, status=S.DONE)


async def _states(composite_id: uuid.UUID) -> dict[str, tasks.NodeState]:
    views = (await tasks.composite_nodes([composite_id]))[composite_id]
    return {v.node.plan_id: v.state for v in views}


async def test_diamond_runs_in_dependency_order() -> None:
    composite = await _planned()
    assert composite.status == C.PENDING_APPROVAL
    assert composite.plan_yaml == DIAMOND
    approved = await tasks.approve_task(actor=A, task_id=composite.id)
    assert approved.status == C.IN_PROGRESS
    w, q, d = tasks.NodeState.WAITING, tasks.NodeState.QUEUED, tasks.NodeState.DONE
    assert await _states(composite.id) == {"db": q, "api": w, "ui": w, "e2e": w}
    views = {v.node.plan_id: v for v in (await tasks.composite_nodes([composite.id]))[composite.id]}
    assert views["e2e"].depends_on == [views["api"].node.id, views["ui"].node.id] or set(
        views["e2e"].depends_on
    ) == {views["api"].node.id, views["ui"].node.id}
    assert views["db"].unit_task.composite_task_id == composite.id
    assert (await latest_session(views["db"].unit_task.agent_task_id)).ai_agent_type == (
        m.AiAgentType.CODEX_CLI
    )

    await _finish_node(views["db"].unit_task)
    assert await _states(composite.id) == {"db": d, "api": q, "ui": q, "e2e": w}
    await _finish_node(views["api"].unit_task)
    assert (await _states(composite.id))["e2e"] == w
    await _finish_node(views["ui"].unit_task)
    assert (await _states(composite.id))["e2e"] == q
    await _finish_node(views["e2e"].unit_task)
    assert (await m.CompositeTask.get(id=composite.id)).status == C.DONE


@pytest.mark.parametrize("size", [1, 10, 200])
async def test_plans_of_many_sizes(size: int) -> None:
    lines = ["tasks:"]
    for i in range(size):
        lines.append(f"  - id: n{i}\n    prompt: step {i}")
        if i >= 2:
            lines.append(f"    dependsOn: [n{i - 1}, n{i - 2}]")
    composite = await _planned("\n".join(lines))
    await tasks.approve_task(actor=A, task_id=composite.id)
    states = await _states(composite.id)
    assert len(states) == size
    roots = {"n0", "n1"} if size > 1 else {"n0"}
    assert {k for k, v in states.items() if v == tasks.NodeState.QUEUED} == roots
    assert await m.UnitTask.filter(composite_task_id=composite.id).count() == size
    # Node tasks are not listed as top-level tasks.
    listed = await tasks.list_tasks(actor=A)
    assert [t.id for t in listed.items] == [composite.id]


async def test_invalid_plan_stays_planning_and_retry_replans() -> None:
    composite = await _planned("tasks:\n  - id: a\n    prompt: x\n    dependsOn: [a]")
    assert composite.status == C.PLANNING
    assert composite.plan_error is not None
    assert composite.plan_error.startswith("CyclicDependency")
    await tasks.retry_task(actor=A, task_id=composite.id)
    session = await latest_session(composite.planning_task_id)
    assert (session.attempt, session.status) == (2, m.AgentSessionStatus.QUEUED)
    await finish_latest(composite.planning_task_id, plan_yaml=DIAMOND)
    fresh = await m.CompositeTask.get(id=composite.id)
    assert (fresh.status, fresh.plan_error) == (C.PENDING_APPROVAL, None)


async def test_submit_plan_raises_the_named_error() -> None:
    group = await _group()
    composite = await tasks.create_composite_task(actor=A, repository_group_id=group.id, prompt="p")
    with pytest.raises(InvalidPlan) as info:
        await tasks.submit_plan(composite_task_id=composite.id, plan_yaml="tasks: []")
    assert info.value.kind == "EmptyPlan"


async def test_an_oversized_plan_is_refused_and_not_kept() -> None:
    group = await _group()
    composite = await tasks.create_composite_task(actor=A, repository_group_id=group.id, prompt="p")
    huge = "tasks:\n" + "  - id: a\n    prompt: " + "x" * (plans.MAX_PLAN_BYTES + 1) + "\n"
    with pytest.raises(InvalidPlan) as info:
        await tasks.submit_plan(composite_task_id=composite.id, plan_yaml=huge)
    assert info.value.kind == "Malformed"
    fresh = await m.CompositeTask.get(id=composite.id)
    assert fresh.status == C.PLANNING
    assert fresh.plan_yaml is None
    assert fresh.plan_error is not None
    assert "larger than" in fresh.plan_error


async def test_reject_plan_and_illegal_composite_moves() -> None:
    composite = await _planned()
    rejected = await tasks.reject_task(actor=A, task_id=composite.id)
    assert rejected.status == C.REJECTED
    with pytest.raises(FailedPrecondition) as info:
        await tasks.approve_task(actor=A, task_id=composite.id)
    assert "rejected" in info.value.message
    assert "in_progress" in info.value.message
    with pytest.raises(FailedPrecondition):
        await tasks.request_changes(actor=A, task_id=composite.id, feedback="x")


async def test_concurrent_plan_approvals_create_nodes_once() -> None:
    composite = await _planned()
    results = await asyncio.gather(
        tasks.approve_task(actor=A, task_id=composite.id),
        tasks.approve_task(actor=A, task_id=composite.id),
        return_exceptions=True,
    )
    assert sum(isinstance(r, m.CompositeTask) for r in results) == 1
    assert await m.CompositeTaskNode.filter(composite_task_id=composite.id).count() == 4


async def test_delete_composite_removes_nodes_and_their_tasks() -> None:
    composite = await _planned()
    await tasks.approve_task(actor=A, task_id=composite.id)
    node_task = await m.UnitTask.filter(composite_task_id=composite.id).first()
    assert node_task is not None
    with pytest.raises(FailedPrecondition):
        await tasks.delete_task(actor=A, task_id=node_task.id)
    await tasks.delete_task(actor=A, task_id=composite.id)
    assert await m.UnitTask.all().count() == 0
    assert await m.CompositeTaskNode.all().count() == 0
    assert await m.AgentTask.all().count() == 0


# updated_at ------------------------------------------------------------------------------

LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("state", "call"),
    [
        ("in_review", "approve"),
        ("in_review", "reject"),
        ("in_review", "request_changes"),
        ("approved", "pr_open"),
        ("approved", "done"),
    ],
)
async def test_unit_status_changes_advance_updated_at(state: str, call: str) -> None:
    task = await _reach(state)
    await m.UnitTask.filter(id=task.id).update(updated_at=LONG_AGO)
    if call == "approve":
        await tasks.approve_task(actor=A, task_id=task.id)
    elif call == "reject":
        await tasks.reject_task(actor=A, task_id=task.id)
    elif call == "request_changes":
        await tasks.request_changes(actor=A, task_id=task.id, feedback="f")
    else:
        await tasks.update_task_status(
            actor=A, task_id=task.id, status=S(call), linked_pr_url="https://x.io/pr/3"
        )
    assert (await m.UnitTask.get(id=task.id)).updated_at > LONG_AGO


@pytest.mark.parametrize("call", ["approve", "reject"])
async def test_composite_status_changes_advance_updated_at(call: str) -> None:
    composite = await _planned()
    assert composite.updated_at > LONG_AGO  # the plan was stored
    await m.CompositeTask.filter(id=composite.id).update(updated_at=LONG_AGO)
    if call == "approve":
        await tasks.approve_task(actor=A, task_id=composite.id)
    else:
        await tasks.reject_task(actor=A, task_id=composite.id)
    assert (await m.CompositeTask.get(id=composite.id)).updated_at > LONG_AGO


# Deleted while being moved ------------------------------------------------------------------


@pytest.fixture
def deleted_after_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every task is deleted right after a service function has read it: the interleaving
    of a Delete that lands between the read and the compare-and-set of a move. The moves
    (``tasks.units``) read tasks through the ``get_task`` bound in their module."""
    read = tasks.get_task

    async def read_then_delete(*, actor: Principal, task_id: uuid.UUID) -> tasks.Task:
        task = await read(actor=actor, task_id=task_id)
        await type(task).filter(id=task_id).delete()
        return task

    monkeypatch.setattr(units, "get_task", read_then_delete)


@pytest.mark.parametrize(
    ("state", "call"),
    [
        ("in_review", "approve"),
        ("in_review", "reject"),
        ("in_review", "request_changes"),
        ("approved", "pr_open"),
        ("approved", "done"),
    ],
)
async def test_a_unit_task_deleted_during_a_move_is_not_found(
    state: str, call: str, request: pytest.FixtureRequest
) -> None:
    task = await _reach(state)
    request.getfixturevalue("deleted_after_read")
    if call == "approve":
        attempt = tasks.approve_task(actor=A, task_id=task.id)
    elif call == "reject":
        attempt = tasks.reject_task(actor=A, task_id=task.id)
    elif call == "request_changes":
        attempt = tasks.request_changes(actor=A, task_id=task.id, feedback="f")
    else:
        attempt = tasks.update_task_status(
            actor=A, task_id=task.id, status=S(call), linked_pr_url="https://x.io/pr/4"
        )
    with pytest.raises(NotFound) as info:
        await attempt
    assert info.value.field == "task_id"


@pytest.mark.parametrize("call", ["approve", "reject"])
async def test_a_composite_deleted_during_a_move_is_not_found(
    call: str, request: pytest.FixtureRequest
) -> None:
    composite = await _planned()
    request.getfixturevalue("deleted_after_read")
    move = tasks.approve_task if call == "approve" else tasks.reject_task
    with pytest.raises(NotFound):
        await move(actor=A, task_id=composite.id)
    assert await m.CompositeTaskNode.all().count() == 0


# Plan branch names ---------------------------------------------------------------------------


@pytest.mark.parametrize("branch", ["/", "//", "'  /  '"])
async def test_a_plan_branch_name_without_usable_characters_is_an_invalid_plan(
    branch: str,
) -> None:
    plan = f"tasks:\n  - id: api\n    prompt: x\n    branchName: {branch}\n"
    composite = await _planned(plan)
    assert composite.status == C.PLANNING
    assert composite.plan_error is not None
    assert composite.plan_error.startswith("InvalidBranchName")
    assert "'api'" in composite.plan_error
    group = await _group()
    other = await tasks.create_composite_task(actor=A, repository_group_id=group.id, prompt="p")
    with pytest.raises(InvalidPlan) as info:
        await tasks.submit_plan(composite_task_id=other.id, plan_yaml=plan)
    assert (info.value.kind, info.value.field) == ("InvalidBranchName", "plan_yaml")


async def test_plan_branch_names_are_sanitized() -> None:
    composite = await _planned("tasks:\n  - id: api\n    prompt: x\n    branchName: feat/a b\n")
    await tasks.approve_task(actor=A, task_id=composite.id)
    node = await m.UnitTask.get(composite_task_id=composite.id)
    assert node.branch_name == "feat/a-b"


# Closing a composite in progress -------------------------------------------------------------

FOUR_NODES = """
tasks:
  - id: a
    prompt: a
  - id: b
    prompt: b
  - id: d
    prompt: d
  - id: c
    prompt: c
    dependsOn: [a]
"""


async def test_rejecting_a_composite_in_progress_closes_it_and_stops_its_runs() -> None:
    composite = await _planned(FOUR_NODES)
    await tasks.approve_task(actor=A, task_id=composite.id)
    views = {v.node.plan_id: v for v in (await tasks.composite_nodes([composite.id]))[composite.id]}
    node_a, node_b, node_d = (views[k].unit_task for k in "abd")
    await finish_latest(node_a.agent_task_id)
    await tasks.reject_task(actor=A, task_id=node_a.id, reason="wrong")
    running = await start_latest(node_b.agent_task_id)
    # Node a is rejected: c can never start, and the composite would wait for ever.
    assert (await m.CompositeTask.get(id=composite.id)).status == C.IN_PROGRESS

    closed = await tasks.reject_task(actor=A, task_id=composite.id)
    assert isinstance(closed, m.CompositeTask)
    assert closed.status == C.REJECTED
    queued = await latest_session(node_d.agent_task_id)
    assert (queued.status, queued.stop_requested) == (m.AgentSessionStatus.STOPPED, True)
    flagged = await m.AgentSession.get(id=running.id)
    assert (flagged.status, flagged.stop_requested) == (m.AgentSessionStatus.RUNNING, True)

    # The running node's worker confirms the stop; nothing else starts.
    await sessions.complete_session(session_id=running.id, status=m.AgentSessionStatus.STOPPED)
    await tasks.advance_composite(composite.id)
    assert not await m.AgentSession.exists(agent_task_id=views["c"].unit_task.agent_task_id)
    assert (await m.CompositeTask.get(id=composite.id)).status == C.REJECTED
    with pytest.raises(FailedPrecondition) as info:
        await tasks.reject_task(actor=A, task_id=composite.id)
    assert "rejected" in info.value.message


async def test_no_node_of_a_closed_composite_runs_again() -> None:
    """Regression (audit of user-operation races): Retry of a node's stopped run and
    RequestChanges on a node in review still queued runs under a rejected composite, and a
    worker took them."""
    composite = await _planned(FOUR_NODES)
    await tasks.approve_task(actor=A, task_id=composite.id)
    views = {v.node.plan_id: v for v in (await tasks.composite_nodes([composite.id]))[composite.id]}
    in_review, stopped = views["a"].unit_task, views["b"].unit_task
    await finish_latest(in_review.agent_task_id)
    await tasks.reject_task(actor=A, task_id=composite.id)
    assert (await latest_session(stopped.agent_task_id)).status == m.AgentSessionStatus.STOPPED
    with pytest.raises(FailedPrecondition, match="which is rejected: its nodes run no more"):
        await tasks.retry_task(actor=A, task_id=stopped.id)
    with pytest.raises(FailedPrecondition, match="which is rejected: its nodes run no more"):
        await tasks.request_changes(actor=A, task_id=in_review.id, feedback="more")
    live = await m.AgentSession.filter(
        agent_task_id__in=[v.unit_task.agent_task_id for v in views.values()],
        status__in=[m.AgentSessionStatus.QUEUED, m.AgentSessionStatus.RUNNING],
    ).count()
    assert live == 0


async def test_agent_tasks_and_base_remotes_for_loaders() -> None:
    task = await _unit()
    missing = uuid.uuid4()
    agents = await tasks.agent_tasks_by_id([task.agent_task_id, missing])
    assert list(agents) == [task.agent_task_id]
    remotes = await tasks.base_remotes_of([task.agent_task_id, missing])
    assert len(remotes[task.agent_task_id]) == 2
    assert remotes[missing] == []


# Races with a delete, made deterministic ----------------------------------------------------


async def test_a_task_deleted_after_it_was_read_is_not_found_when_shown() -> None:
    group = await _group()
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="p")
    kept = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="q")
    page = await tasks.list_tasks(actor=A, workspace_id=group.workspace_id)
    await tasks.delete_task(actor=A, task_id=task.id)  # between the read and the showing
    bundle = await tasks.load_task_bundle(page.items)
    assert bundle.gone == {task.id}
    assert [t.id for t in bundle.shown(page.items)] == [kept.id]
    with pytest.raises(NotFound) as info:
        await tasks.load_task_view(task)
    assert info.value.field == "task_id"
    assert (await tasks.load_task_view(kept)).agents.keys() == {kept.agent_task_id}


async def test_a_composite_whose_nodes_went_away_is_not_shown() -> None:
    group = await _group()
    composite = await tasks.create_composite_task(actor=A, repository_group_id=group.id, prompt="c")
    await finish_latest(composite.planning_task_id, plan_yaml="tasks:\n  - id: a\n    prompt: x\n")
    approved = await tasks.approve_task(actor=A, task_id=composite.id)
    await tasks.delete_task(actor=A, task_id=composite.id)
    assert (await tasks.load_task_bundle([approved])).gone == {composite.id}


async def test_removing_a_task_a_concurrent_delete_removed_deletes_nothing() -> None:
    """What makes the second of two racing deletes NotFound (delete_task checks the count)."""
    group = await _group()
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="p")
    read = await tasks.get_task(actor=A, task_id=task.id)
    assert isinstance(read, m.UnitTask)
    await tasks.delete_task(actor=A, task_id=task.id)
    async with transaction():
        assert await cascade.remove_tasks(units=[read], composites=[]) == 0
    with pytest.raises(NotFound):
        await tasks.delete_task(actor=A, task_id=task.id)


async def test_a_plan_of_a_thousand_tasks_is_approved_and_deleted_without_holding_the_loop(
    loop_watchdog: Watchdog,
) -> None:
    """A plan at its task limit: its nodes are created, queued and later removed a slice at
    a time, other tasks running between the slices. Regression: approving it held the event
    loop six times for 56-238 ms (the YAML parse, 5,000 models built and inserted at once,
    2,000 read back), and deleting it twice for ~0.12 s."""
    count = plans.MAX_PLAN_TASKS
    plan = "tasks:\n" + "".join(
        f"  - id: t{i}\n    prompt: p{i}\n" + ("    dependsOn: [t0]\n" if i % 2 else "")
        for i in range(count)
    )
    composite = await _planned(plan)
    bus = events.EventBus()
    heard: list[events.Event] = []
    bus.subscribe(heard.append)
    token = events.bind(bus)
    try:
        loop_watchdog.take()
        with loop_watchdog.armed():
            await tasks.approve_task(actor=A, task_id=composite.id)
        assert loop_watchdog.take() == []
        nodes = await m.UnitTask.filter(composite_task_id=composite.id)
        assert len(nodes) == count
        # The nodes without a dependency are queued, the others wait for t0.
        queued = await m.AgentSession.filter(
            agent_task_id__in=[n.agent_task_id for n in nodes], status=m.AgentSessionStatus.QUEUED
        ).count()
        assert queued == count // 2
        assert (
            await m.CompositeTaskNodeDependency.filter(node__composite_task_id=composite.id).count()
            == count // 2
        )
        changed = {e.task_id for e in heard if isinstance(e, events.TaskChanged)}
        assert len(changed & {str(n.id) for n in nodes}) == count // 2
        with loop_watchdog.armed():
            await tasks.delete_task(actor=A, task_id=composite.id)
        assert loop_watchdog.take() == []
    finally:
        events.unbind(token)
    assert await m.UnitTask.filter(composite_task_id=composite.id).count() == 0
    assert not await m.CompositeTask.exists(id=composite.id)
    assert (
        await m.AgentSession.filter(agent_task_id__in=[n.agent_task_id for n in nodes]).count() == 0
    )
