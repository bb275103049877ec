"""Every unit-task move from every state, and the composite approve / reject moves.

The rules (DESIGN.md §5): in_progress → in_review when a run succeeds (a worker's report);
in_review → approved (Approve), → rejected (Reject), → in_progress (RequestChanges, a new run
queued); approved → pr_open (UpdateStatus, with the PR URL); approved | pr_open → done
(UpdateStatus); Retry only while in progress after a failed, stopped or lost run. Anything
else is FailedPrecondition naming the current state and the target, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import FailedPrecondition
from delidev.services import tasks
from tests.factories import (
    finish_latest,
    latest_session,
    make_group,
    make_repository,
    make_workspace,
)

pytestmark = pytest.mark.usefixtures("database")

S = m.UnitTaskStatus
C = m.CompositeTaskStatus
A = LOCAL_USER
PR_URL = "https://github.com/acme/app/pull/7"

# Where a unit task can stand. "in_progress" has its first run queued; "in_progress_failed"
# is the same status after a failed run, the one state from which Retry is legal.
STATES = [
    "in_progress",
    "in_progress_failed",
    "in_review",
    "approved",
    "pr_open",
    "done",
    "rejected",
]

# Every operation the service offers on a unit task, with the state it aims at.
OPERATIONS: dict[str, str] = {
    "approve": "approved",
    "reject": "rejected",
    "request_changes": "in_progress",
    "retry": "retried",
    **{f"update_status:{s.value}": s.value for s in S},
}

# (state, operation) → the status the task lands in. Everything else is illegal.
LEGAL: dict[tuple[str, str], m.UnitTaskStatus] = {
    ("in_review", "approve"): S.APPROVED,
    ("in_review", "reject"): S.REJECTED,
    ("in_review", "request_changes"): S.IN_PROGRESS,
    ("approved", "update_status:pr_open"): S.PR_OPEN,
    ("approved", "update_status:done"): S.DONE,
    ("pr_open", "update_status:done"): S.DONE,
    ("in_progress_failed", "retry"): S.IN_PROGRESS,
}

CASES = [(state, operation) for state in STATES for operation in OPERATIONS]


async def _reach(state: str) -> m.UnitTask:
    """A fresh unit task in ``state``, reached the way clients and workers get it there."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="Fix it")
    if state == "in_progress":
        return task
    if state == "in_progress_failed":
        await finish_latest(task.agent_task_id, m.AgentSessionStatus.FAILED, error="exit 1")
        return await m.UnitTask.get(id=task.id)
    await finish_latest(task.agent_task_id)  # the worker reports success: in_review
    if state == "rejected":
        await tasks.reject_task(actor=A, task_id=task.id)
    elif state != "in_review":
        await tasks.approve_task(actor=A, task_id=task.id)
    if state in ("pr_open", "done"):
        await tasks.update_task_status(
            actor=A, task_id=task.id, status=S.PR_OPEN, linked_pr_url=PR_URL
        )
    if state == "done":
        await tasks.update_task_status(actor=A, task_id=task.id, status=S.DONE)
    fresh = await m.UnitTask.get(id=task.id)
    assert fresh.status == S(state)
    return fresh


def _call(operation: str, task_id: UUID) -> Awaitable[Any]:
    if operation == "approve":
        return tasks.approve_task(actor=A, task_id=task_id)
    if operation == "reject":
        return tasks.reject_task(actor=A, task_id=task_id, reason="wrong approach")
    if operation == "request_changes":
        return tasks.request_changes(actor=A, task_id=task_id, feedback="Use tabs")
    if operation == "retry":
        return tasks.retry_task(actor=A, task_id=task_id)
    status = S(operation.removeprefix("update_status:"))
    # Always a valid URL, so that only the state can make PR_OPEN fail.
    return tasks.update_task_status(actor=A, task_id=task_id, status=status, linked_pr_url=PR_URL)


async def _snapshot(task_id: UUID) -> tuple[Any, ...]:
    task = await m.UnitTask.get(id=task_id)
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).order_by("attempt")
    return (
        task.status,
        task.prompt,
        task.linked_pr_url,
        task.rejection_reason,
        task.updated_at,
        [(r.attempt, r.status) for r in runs],
    )


def _current_state_words(state: str, operation: str) -> list[str]:
    """What an illegal move's message must name as the current state."""
    if operation == "retry" and state == "in_progress":
        # The task is in progress; what forbids the retry is its run, still queued.
        return ["queued"]
    return [S(state.removesuffix("_failed")).value]


def _target_words(operation: str) -> list[str]:
    if operation == "retry":
        return ["retried"]  # a retry keeps the status: the target is a new run
    return [OPERATIONS[operation]]


@pytest.mark.parametrize(("state", "operation"), [c for c in CASES if c not in LEGAL])
async def test_illegal_moves_are_refused_and_change_nothing(state: str, operation: str) -> None:
    task = await _reach(state)
    before = await _snapshot(task.id)
    with pytest.raises(FailedPrecondition) as info:
        await _call(operation, task.id)
    message = info.value.message
    for word in [*_current_state_words(state, operation), *_target_words(operation)]:
        assert word in message, f"{word!r} not named in {message!r}"
    assert str(task.id) in message
    assert await _snapshot(task.id) == before


@pytest.mark.parametrize(("state", "operation"), list(LEGAL))
async def test_legal_moves_land_in_their_state(state: str, operation: str) -> None:
    task = await _reach(state)
    runs_before = await m.AgentSession.filter(agent_task_id=task.agent_task_id).count()
    returned = await _call(operation, task.id)
    expected = LEGAL[(state, operation)]
    stored = await m.UnitTask.get(id=task.id)
    assert isinstance(returned, m.UnitTask)
    assert returned.status == stored.status == expected
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id).count()
    queues_a_run = operation in ("request_changes", "retry")
    assert runs == runs_before + (1 if queues_a_run else 0)
    if queues_a_run:
        newest = await latest_session(task.agent_task_id)
        assert (newest.attempt, newest.status) == (runs, m.AgentSessionStatus.QUEUED)
    if operation == "request_changes":
        assert stored.prompt.startswith("Fix it")
        assert stored.prompt.endswith("Use tabs")
    if operation == "reject":
        assert stored.rejection_reason == "wrong approach"
    if operation == "update_status:pr_open":
        assert stored.linked_pr_url == PR_URL


def test_the_table_covers_every_status_and_every_legal_move_is_reachable() -> None:
    assert {s.removesuffix("_failed") for s in STATES} == {s.value for s in S}
    assert set(LEGAL) <= set(CASES)
    assert len(CASES) == len(STATES) * (4 + len(S))


# Composite tasks ---------------------------------------------------------------------------

ONE_NODE_PLAN = "tasks:\n  - id: only\n    prompt: do it\n"


async def _composite(state: m.CompositeTaskStatus) -> m.CompositeTask:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=A, repository_group_id=group.id, prompt="Build it"
    )
    if state != C.PLANNING:
        await finish_latest(composite.planning_task_id, plan_yaml=ONE_NODE_PLAN)
    if state == C.REJECTED:
        await tasks.reject_task(actor=A, task_id=composite.id)
    if state in (C.IN_PROGRESS, C.DONE):
        await tasks.approve_task(actor=A, task_id=composite.id)
    if state == C.DONE:
        node = await m.UnitTask.get(composite_task_id=composite.id)
        await finish_latest(node.agent_task_id)
        await tasks.approve_task(actor=A, task_id=node.id)
        await tasks.update_task_status(actor=A, task_id=node.id, status=S.DONE)
    fresh = await m.CompositeTask.get(id=composite.id)
    assert fresh.status == state
    return fresh


async def _composite_snapshot(composite_id: UUID) -> tuple[Any, ...]:
    composite = await m.CompositeTask.get(id=composite_id)
    nodes = await m.CompositeTaskNode.filter(composite_task_id=composite_id).count()
    units = await m.UnitTask.filter(composite_task_id=composite_id).values_list("status", flat=True)
    return (composite.status, composite.plan_yaml, composite.updated_at, nodes, sorted(units))


COMPOSITE_MOVES: dict[str, tuple[Callable[[UUID], Awaitable[Any]], m.CompositeTaskStatus]] = {
    "approve": (lambda task_id: tasks.approve_task(actor=A, task_id=task_id), C.IN_PROGRESS),
    "reject": (lambda task_id: tasks.reject_task(actor=A, task_id=task_id), C.REJECTED),
}


@pytest.mark.parametrize(
    ("state", "move"),
    [
        (state, move)
        for state in [C.PLANNING, C.IN_PROGRESS, C.DONE, C.REJECTED]
        for move in COMPOSITE_MOVES
        # Rejecting a composite in progress closes it (test_tasks.py).
        if (state, move) != (C.IN_PROGRESS, "reject")
    ],
)
async def test_composite_approve_and_reject_are_refused_outside_their_states(
    state: m.CompositeTaskStatus, move: str
) -> None:
    composite = await _composite(state)
    call, target = COMPOSITE_MOVES[move]
    before = await _composite_snapshot(composite.id)
    with pytest.raises(FailedPrecondition) as info:
        await call(composite.id)
    assert state.value in info.value.message
    assert target.value in info.value.message
    assert await _composite_snapshot(composite.id) == before


@pytest.mark.parametrize("move", list(COMPOSITE_MOVES))
async def test_composite_approve_and_reject_from_pending_approval(move: str) -> None:
    composite = await _composite(C.PENDING_APPROVAL)
    call, target = COMPOSITE_MOVES[move]
    returned = await call(composite.id)
    assert isinstance(returned, m.CompositeTask)
    assert returned.status == target
    assert (await m.CompositeTask.get(id=composite.id)).status == target
    nodes = await m.CompositeTaskNode.filter(composite_task_id=composite.id).count()
    assert nodes == (1 if target == C.IN_PROGRESS else 0)


@pytest.mark.parametrize("state", list(C))
async def test_unit_only_moves_are_refused_on_a_composite(state: m.CompositeTaskStatus) -> None:
    composite = await _composite(state)
    before = await _composite_snapshot(composite.id)
    with pytest.raises(FailedPrecondition) as info:
        await tasks.request_changes(actor=A, task_id=composite.id, feedback="x")
    message = info.value.message
    assert f"composite task {composite.id} cannot move from {state.value} to in_progress" in message
    assert "RequestChanges applies to unit tasks only" in message
    with pytest.raises(FailedPrecondition) as info:
        await tasks.update_task_status(actor=A, task_id=composite.id, status=S.DONE)
    message = info.value.message
    assert f"composite task {composite.id} cannot move from {state.value} to done" in message
    assert "UpdateStatus applies to unit tasks only" in message
    assert await _composite_snapshot(composite.id) == before
