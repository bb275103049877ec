"""``services.prepared.get_one``: the same row as ``Model.get_or_none``, built once per shape."""

from __future__ import annotations

from typing import Any

import pytest
from tortoise.exceptions import MultipleObjectsReturned
from tortoise.models import Model

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import NotFound
from delidev.services import prepared, tasks, workers, workspaces
from delidev.services.common import transaction
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_user, make_workspace, unique

pytestmark = pytest.mark.usefixtures("database")


def _columns(row: Model | None) -> dict[str, Any] | None:
    """Every stored column of a loaded row, as the model holds it."""
    if row is None:
        return None
    return {name: getattr(row, name) for name in type(row)._meta.fields_db_projection}


async def _same(model: type[Model], **where: Any) -> Model | None:
    expected = await model.get_or_none(**where)
    got = await prepared.get_one(model, **where)
    assert _columns(got) == _columns(expected)
    if got is not None:
        assert got._saved_in_db  # a loaded row, savable like the ORM's
    return got


async def test_rows_of_every_kind_come_back_as_the_orm_builds_them() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    # UUIDs, text, nullable columns, enums, timestamps, foreign keys, JSON.
    assert await _same(m.Workspace, id=ws.id, user_id__isnull=True) is not None
    assert await _same(m.AgentSession, id=job.session.id) is not None
    assert await _same(m.Worker, id=worker.id) is not None
    assert await _same(m.UnitTask, id=task.id) is not None
    assert await _same(m.AgentTask, id=task.agent_task_id) is not None
    # Nothing found.
    assert await _same(m.Workspace, id=task.id) is None
    assert await _same(m.AgentSession, id=job.session.id, worker_id=ws.id) is None


async def test_a_row_read_is_one_statement_and_sees_its_own_transaction(
    sql_counter: SqlCounter,
) -> None:
    ws = await make_workspace()
    sql_counter.reset()
    await prepared.get_one(m.Workspace, id=ws.id, user_id__isnull=True)
    await prepared.get_one(m.Workspace, id=ws.id, user_id__isnull=True)
    assert len(sql_counter.statements) == 2
    assert sql_counter.statements[0] == sql_counter.statements[1]
    async with transaction():
        await m.Workspace.filter(id=ws.id).update(name="renamed inside")
        inside = await prepared.get_one(m.Workspace, id=ws.id)
        assert inside is not None
        assert inside.name == "renamed inside"


async def test_what_it_cannot_express_goes_to_the_orm(sql_counter: SqlCounter) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    # Through a relation, an operator, a None value: the ORM answers, the same way.
    assert await _same(m.UnitTask, id=task.id, workspace__user_id__isnull=True) is not None
    assert await _same(m.Workspace, id=ws.id, name__startswith=ws.name[:3]) is not None
    assert await _same(m.Workspace, id=ws.id, user_id=None) is not None
    assert await _same(m.Workspace, id=ws.id, user_id__isnull=False) is None


async def test_several_matching_rows_raise_as_the_orm_does() -> None:
    await make_workspace(name=unique("a"))
    await make_workspace(name=unique("b"))
    with pytest.raises(MultipleObjectsReturned):
        await m.Workspace.get_or_none(user_id__isnull=True)
    with pytest.raises(MultipleObjectsReturned):
        await prepared.get_one(m.Workspace, user_id__isnull=True)


async def test_a_tenant_reads_its_own_workspace_only() -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    mine = await make_workspace(actor=alice)
    assert await _same(m.Workspace, id=mine.id, user_id=alice.user_id) is not None
    assert await _same(m.Workspace, id=mine.id, user_id=bob.user_id) is None
    assert await _same(m.Workspace, id=mine.id, user_id__isnull=True) is None
    assert (await workspaces.get_workspace(actor=alice, workspace_id=mine.id)).id == mine.id
    with pytest.raises(NotFound):
        await workspaces.get_workspace(actor=bob, workspace_id=mine.id)
