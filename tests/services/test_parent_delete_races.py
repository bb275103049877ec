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
from delidev.services import repositories, tasks, workspaces
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


async def test_a_repository_leaves_its_group_only_before_a_task_reads_the_members() -> None:
    """A task's base remotes are the group's repositories when it is created; a repository
    may leave a group only while the group has no task. Regression: a task created while a
    repository was removed from its group ran on it afterwards (25 of 60 rounds)."""
    ws = await make_workspace()
    for i in range(ROUNDS):
        staying, leaving = await make_repository(ws), await make_repository(ws)
        group = await make_group(ws, [staying, leaving])
        change = (
            repositories.update_repository_group(
                actor=LOCAL_USER, group_id=group.id, remove_repository_ids=[leaving.id]
            )
            if i % 2
            else repositories.remove_repository(actor=LOCAL_USER, repository_id=leaving.id)
        )
        results = await asyncio.gather(
            change,
            *(
                tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
                for _ in range(3)
            ),
            return_exceptions=True,
        )
        refusals = _refusals(results)
        assert set(refusals) <= {"FailedPrecondition"}
        members = set(
            await m.RepositoryGroupMember.filter(group_id=group.id).values_list(
                "repository_id", flat=True
            )
        )
        ran_on = {
            path
            for unit in await m.UnitTask.filter(repository_group_id=group.id)
            for path in await m.AgentTaskBaseRemote.filter(
                agent_task_id=unit.agent_task_id
            ).values_list("git_remote_dir_path", flat=True)
        }
        remote = leaving.local_path or leaving.remote_url
        assert remote not in ran_on or leaving.id in members
