"""Deleting a parent while rows are added under it, in concurrent transactions (PostgreSQL:
SQLite runs one writer at a time). Regression (audit of user-operation races): a task created
while its workspace was deleted, or a composite's nodes added while it was deleted, went with
the parent's cascade and left their agent task and queued run behind, with no task, for a
worker to claim; the two also deadlocked (an internal error)."""

from __future__ import annotations

import asyncio
from uuid import UUID

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import DeliDevError, Internal
from delidev.services import tasks, workspaces
from tests.conftest import BACKEND
from tests.factories import finish_latest, make_group, make_repository, make_workspace

pytestmark = [
    pytest.mark.usefixtures("database"),
    pytest.mark.skipif(BACKEND != "postgres", reason="concurrent transactions need PostgreSQL"),
]
PLAN = "".join(f"  - id: n{i}\n    prompt: node {i}\n" for i in range(6))
ROUNDS = 25


async def _orphans() -> tuple[int, int]:
    """Agent tasks that no task owns, and their runs still queued or running."""
    owned: set[UUID] = set(await m.UnitTask.all().values_list("agent_task_id", flat=True))
    owned |= set(await m.CompositeTask.all().values_list("planning_task_id", flat=True))
    owned |= set(await m.UnitTaskAutoFixTask.all().values_list("agent_task_id", flat=True))
    orphans = [a for a in await m.AgentTask.all().values_list("id", flat=True) if a not in owned]
    live = await m.AgentSession.filter(
        agent_task_id__in=orphans,
        status__in=[m.AgentSessionStatus.QUEUED, m.AgentSessionStatus.RUNNING],
    ).count()
    return len(orphans), live


def _refusals(results: list[object]) -> list[str]:
    """The errors among ``results``: domain errors only, never an internal one."""
    seen = []
    for result in results:
        if isinstance(result, BaseException):
            assert isinstance(result, DeliDevError), repr(result)
            assert not isinstance(result, Internal), repr(result)
            seen.append(type(result).__name__)
    return seen


async def test_tasks_created_while_their_workspace_is_deleted_leave_nothing_behind() -> None:
    before = await _orphans()
    refused: list[str] = []
    for _ in range(ROUNDS):
        ws = await make_workspace()
        group = await make_group(ws, [await make_repository(ws)])
        results = await asyncio.gather(
            *(
                tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
                for _ in range(3)
            ),
            tasks.create_composite_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="c"),
            workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id),
            return_exceptions=True,
        )
        refused += _refusals(results)
        assert not isinstance(results[-1], BaseException)  # the deletion always goes through
    assert set(refused) <= {"NotFound"}
    assert await _orphans() == before


async def test_nodes_added_while_their_composite_is_deleted_leave_nothing_behind() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    before = await _orphans()
    refused: list[str] = []
    for _ in range(ROUNDS):
        composite = await tasks.create_composite_task(
            actor=LOCAL_USER, repository_group_id=group.id, prompt="plan it"
        )
        await finish_latest(composite.planning_task_id, plan_yaml="tasks:\n" + PLAN)
        results = await asyncio.gather(
            tasks.approve_task(actor=LOCAL_USER, task_id=composite.id),
            tasks.delete_task(actor=LOCAL_USER, task_id=composite.id),
            return_exceptions=True,
        )
        refused += _refusals(results)
    assert set(refused) <= {"NotFound", "FailedPrecondition"}
    assert await _orphans() == before
