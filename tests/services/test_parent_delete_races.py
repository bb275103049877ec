"""Deleting a parent while rows are added under it, in concurrent transactions (PostgreSQL:
SQLite runs one writer at a time). Regression (audit of user-operation races): a task created
while its workspace was deleted, or a composite's nodes added while it was deleted, went with
the parent's cascade and left their agent task and queued run behind, with no task, for a
worker to claim; the two also deadlocked (an internal error)."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import UUID

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import DeliDevError, FailedPrecondition, Internal
from delidev.services import auto_fix, repositories, tasks, workspaces
from delidev.services.tasks import units
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


# Interleavings found by review, forced with a pause at the point where they cross.


async def _node_in_review() -> tuple[m.Workspace, m.UnitTask]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="plan it"
    )
    await finish_latest(composite.planning_task_id, plan_yaml="tasks:\n" + PLAN)
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
    node = await m.UnitTask.filter(composite_task_id=composite.id).order_by("created_at").first()
    assert node is not None
    await finish_latest(node.agent_task_id)
    return ws, node


async def test_changes_asked_on_a_node_while_its_workspace_is_deleted_do_not_deadlock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RequestChanges locks the node's composite, then changes the node; the deletion
    deleted the nodes, then the composites: each waited for the other (aborted)."""
    ws, node = await _node_in_review()
    locked = asyncio.Event()
    check = units._check_node_may_run

    async def then_pause(task: m.UnitTask) -> None:
        await check(task)
        locked.set()
        await asyncio.sleep(0.5)  # the deletion starts while the composite is locked

    monkeypatch.setattr(units, "_check_node_may_run", then_pause)

    async def delete() -> None:
        await locked.wait()
        await workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id)

    before = await _orphans()
    results = await asyncio.wait_for(
        asyncio.gather(
            tasks.request_changes(actor=LOCAL_USER, task_id=node.id, feedback="more"),
            delete(),
            return_exceptions=True,
        ),
        30,
    )
    assert _refusals(results) == []
    assert not await m.UnitTask.exists(id=node.id)
    assert await _orphans() == before


async def test_an_auto_fix_run_queued_while_its_task_is_deleted_leaves_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    await finish_latest(unit.agent_task_id)
    await tasks.approve_task(actor=LOCAL_USER, task_id=unit.id)
    await tasks.update_task_status(
        actor=LOCAL_USER,
        task_id=unit.id,
        status=m.UnitTaskStatus.PR_OPEN,
        linked_pr_url="https://github.com/acme/widgets/pull/7",
    )
    checked = asyncio.Event()
    refusal = auto_fix._refusal

    async def then_pause(task: m.UnitTask, **kwargs: Any) -> str | None:
        why = await refusal(task, **kwargs)
        checked.set()
        await asyncio.sleep(0.5)  # the deletion starts while the run is being added
        return why

    monkeypatch.setattr(auto_fix, "_refusal", then_pause)

    async def delete() -> None:
        await checked.wait()
        await tasks.delete_task(actor=LOCAL_USER, task_id=unit.id)

    before = await _orphans()
    results = await asyncio.wait_for(
        asyncio.gather(
            auto_fix._queue_run(
                unit.id, trigger=m.AutoFixTrigger.CHECK_FAILED, prompt="fix it", max_runs=3
            ),
            delete(),
            return_exceptions=True,
        ),
        30,
    )
    assert _refusals(results) == []
    assert await _orphans() == before


async def test_a_repository_with_a_member_being_added_is_removed_only_with_its_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The removal read the repository's groups before the new membership committed, so it
    neither checked that group for tasks nor kept the repository (a task of the group then
    ran on a repository that was gone)."""
    ws = await make_workspace()
    staying, leaving = await make_repository(ws), await make_repository(ws)
    group = await make_group(ws, [staying])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="old")
    adding = asyncio.Event()
    save = m.RepositoryGroup.save

    async def then_pause(self: m.RepositoryGroup, *args: Any, **kwargs: Any) -> None:
        adding.set()
        await asyncio.sleep(0.5)  # the removal starts while the membership is uncommitted
        await save(self, *args, **kwargs)

    monkeypatch.setattr(m.RepositoryGroup, "save", then_pause)

    async def remove() -> None:
        await adding.wait()
        await repositories.remove_repository(actor=LOCAL_USER, repository_id=leaving.id)

    added, removed = await asyncio.wait_for(
        asyncio.gather(
            repositories.update_repository_group(
                actor=LOCAL_USER, group_id=group.id, add_repository_ids=[leaving.id]
            ),
            remove(),
            return_exceptions=True,
        ),
        30,
    )
    assert not isinstance(added, BaseException)
    assert isinstance(removed, FailedPrecondition)  # the group it joined has tasks
    assert await m.Repository.exists(id=leaving.id)


async def test_of_two_deletions_of_a_workspace_one_deletes_it_the_other_finds_it_gone() -> None:
    """Regression (audit): both answered ok, where two deletions of a task give ok and
    not_found."""
    outcomes: list[str] = []
    for _ in range(ROUNDS):
        ws = await make_workspace()
        await make_group(ws, [await make_repository(ws)])
        results = await asyncio.gather(
            workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id),
            workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id),
            return_exceptions=True,
        )
        outcomes.append(",".join(sorted(_refusals(results))))
    assert set(outcomes) == {"NotFound"}  # one ok, one not_found, every time
