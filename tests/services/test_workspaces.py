from __future__ import annotations

import uuid

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import InvalidArgument, NotFound, PermissionDenied
from delidev.services import tasks, workspaces
from tests.factories import (
    make_group,
    make_repository,
    make_todo,
    make_unit_task,
    make_user,
    make_workspace,
)
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")


async def test_create_get_update_delete() -> None:
    ws = await workspaces.create_workspace(actor=LOCAL_USER, name="  Main  ", description="d")
    assert ws.name == "Main"
    assert ws.user_id is None
    got = await workspaces.get_workspace(actor=LOCAL_USER, workspace_id=ws.id)
    assert (got.name, got.description) == ("Main", "d")

    updated = await workspaces.update_workspace(actor=LOCAL_USER, workspace_id=ws.id, name="New")
    assert (updated.name, updated.description) == ("New", "d")
    cleared = await workspaces.update_workspace(
        actor=LOCAL_USER, workspace_id=ws.id, description=""
    )
    assert cleared.description is None
    assert cleared.updated_at >= ws.updated_at

    await workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id)
    with pytest.raises(NotFound):
        await workspaces.get_workspace(actor=LOCAL_USER, workspace_id=ws.id)


@pytest.mark.parametrize(
    ("name", "field"),
    [("", "name"), ("   ", "name"), ("x" * 256, "name"), ("a\x00b", "name")],
)
async def test_create_rejects_bad_names(name: str, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await workspaces.create_workspace(actor=LOCAL_USER, name=name)
    assert info.value.field == field
    assert field in info.value.message
    assert await m.Workspace.all().count() == 0


async def test_update_with_bad_name_changes_nothing() -> None:
    ws = await make_workspace(name="keep")
    with pytest.raises(InvalidArgument):
        await workspaces.update_workspace(actor=LOCAL_USER, workspace_id=ws.id, name="")
    assert (await m.Workspace.get(id=ws.id)).name == "keep"


async def test_list_pages_in_creation_order_with_total() -> None:
    created = [await make_workspace(name=f"w{i}") for i in range(7)]
    first = await workspaces.list_workspaces(actor=LOCAL_USER, limit=3)
    second = await workspaces.list_workspaces(actor=LOCAL_USER, limit=3, offset=3)
    last = await workspaces.list_workspaces(actor=LOCAL_USER, limit=3, offset=6)
    assert first.total_count == second.total_count == last.total_count == 7
    listed = [w.id for w in [*first.items, *second.items, *last.items]]
    assert listed == [w.id for w in created]


@pytest.mark.parametrize(
    ("limit", "offset", "field"),
    [(-1, 0, "limit"), (501, 0, "limit"), (10, -1, "offset"), (10, 2**31, "offset")],
)
async def test_list_rejects_bad_paging(limit: int, offset: int, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        await workspaces.list_workspaces(actor=LOCAL_USER, limit=limit, offset=offset)
    assert info.value.field == field


async def test_users_see_only_their_own_workspaces() -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    mine = await make_workspace(actor=alice)
    await make_workspace(actor=bob)
    await make_workspace(actor=LOCAL_USER)
    page = await workspaces.list_workspaces(actor=alice)
    assert [w.id for w in page.items] == [mine.id]
    with pytest.raises(NotFound):
        await workspaces.get_workspace(actor=bob, workspace_id=mine.id)
    with pytest.raises(NotFound):
        await workspaces.delete_workspace(actor=bob, workspace_id=mine.id)
    assert await m.Workspace.exists(id=mine.id)


async def test_worker_credentials_are_refused() -> None:
    worker = Principal(kind="worker", worker_id=uuid.uuid4())
    with pytest.raises(PermissionDenied):
        await workspaces.list_workspaces(actor=worker)


async def test_delete_cascades_to_everything_under_the_workspace() -> None:
    ws = await make_workspace()
    other = await make_workspace()
    repo = await make_repository(ws)
    other_repo = await make_repository(other)
    group = await make_group(ws, [repo])
    await make_todo(repo)
    await make_todo(other_repo)
    task = await make_unit_task(group)
    await m.AgentSession.create(
        agent_task_id=task.agent_task_id, ai_agent_type=m.AiAgentType.CLAUDE_CODE
    )

    await workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id)

    assert not await m.Repository.exists(workspace_id=ws.id)
    assert not await m.RepositoryGroup.exists(workspace_id=ws.id)
    assert not await m.UnitTask.exists(id=task.id)
    assert not await m.AgentTask.exists(id=task.agent_task_id)
    assert not await m.AgentSession.exists(agent_task_id=task.agent_task_id)
    assert await m.TodoItem.all().count() == 1  # the other workspace's item
    assert await m.Repository.exists(id=other_repo.id)


async def test_unknown_workspace_is_not_found() -> None:
    with pytest.raises(NotFound) as info:
        await workspaces.get_workspace(actor=LOCAL_USER, workspace_id=uuid.uuid4())
    assert info.value.field == "workspace_id"


async def test_workspaces_by_id_for_loaders() -> None:
    a, b = await make_workspace(), await make_workspace()
    missing = uuid.uuid4()
    found = await workspaces.workspaces_by_id([b.id, missing, a.id])
    assert {k: v.name for k, v in found.items()} == {a.id: a.name, b.id: b.name}
    assert await workspaces.workspaces_by_id([]) == {}


async def test_a_workspace_of_a_thousand_tasks_is_deleted_without_holding_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """Its tasks go a few at a time, other tasks running between the steps, and every one is
    announced. Regression: they were loaded, removed and announced all at once, holding the
    event loop for ~0.12 s per 1,000 tasks twice (every call to the server waited)."""
    count = 1_000
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    for i in range(count):
        await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt=f"{i}")
    bus = events.EventBus()
    heard: list[events.Event] = []
    bus.subscribe(heard.append)
    token = events.bind(bus)
    try:
        loop_watchdog.take()
        with loop_watchdog.armed():
            await workspaces.delete_workspace(actor=LOCAL_USER, workspace_id=ws.id)
        assert loop_watchdog.take() == []
    finally:
        events.unbind(token)
    changed = {e.task_id for e in heard if isinstance(e, events.TaskChanged)}
    assert len(changed) == count
    assert heard[-1] == events.WorkspaceDeleted(workspace_id=str(ws.id))
    assert await m.UnitTask.filter(workspace_id=ws.id).count() == 0
    assert await m.AgentTask.all().count() == 0
    assert not await m.Workspace.exists(id=ws.id)
