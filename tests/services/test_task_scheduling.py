"""A task's scheduling attributes (priority, required labels, run time limit, workspace), the
group's default labels, the workspace's job cap, SetPriority, and the waits the task views
show (also for a list, in a fixed number of statements)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER as A
from delidev.errors import FailedPrecondition, InvalidArgument
from delidev.services import repositories, tasks, workers, workspaces
from delidev.services.scheduling import waits
from tests.conftest import SqlCounter
from tests.factories import finish_latest, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")
P = m.TaskPriority
S = m.UnitTaskStatus
WEEK = 7 * 24 * 3600
PLAN = """
tasks:
  - id: db
    prompt: schema
  - id: api
    prompt: api
    dependsOn: [db]
"""


async def _group(labels: list[str] | None = None) -> m.RepositoryGroup:
    ws = await make_workspace()
    repo = await make_repository(ws)
    return await repositories.create_repository_group(
        actor=A, workspace_id=ws.id, repository_ids=[repo.id], default_required_labels=labels or []
    )


async def _unit(group: m.RepositoryGroup, **kwargs: Any) -> m.UnitTask:
    return await tasks.create_unit_task(
        actor=A, repository_group_id=group.id, prompt="job", **kwargs
    )


async def _agent(task: m.UnitTask) -> m.AgentTask:
    return await m.AgentTask.get(id=task.agent_task_id)


# Creation ---------------------------------------------------------------------------------


async def test_a_unit_task_is_created_with_its_scheduling() -> None:
    group = await _group()
    task = await _unit(
        group, priority=P.URGENT, required_labels=["OS = linux", "gpu=true"], max_run_seconds=60
    )
    agent = await _agent(task)
    assert (agent.priority, agent.required_labels, agent.max_run_seconds) == (
        3,
        ["gpu=true", "os=linux"],
        60,
    )
    assert agent.workspace_id == group.workspace_id
    # Its queued run carries them too (the claim's queue index reads them from the run).
    run = await m.AgentSession.get(agent_task_id=task.agent_task_id)
    assert (run.priority, run.workspace_id) == (3, group.workspace_id)


async def test_defaults_normal_priority_no_limit_and_the_groups_labels() -> None:
    group = await _group(["region=eu"])
    agent = await _agent(await _unit(group))
    assert (agent.priority, agent.required_labels, agent.max_run_seconds) == (
        1,
        ["region=eu"],
        None,
    )
    # Labels given replace the group's default.
    given = await _agent(await _unit(group, required_labels=["os=mac"]))
    assert given.required_labels == ["os=mac"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"required_labels": ["no-equals-sign"]}, "required_labels"),
        ({"required_labels": ["a=1", "a=2"]}, "required_labels"),
        ({"max_run_seconds": 0}, "max_run_seconds"),
        ({"max_run_seconds": -5}, "max_run_seconds"),
        ({"max_run_seconds": WEEK + 1}, "max_run_seconds"),
    ],
)
async def test_bad_scheduling_is_refused_and_nothing_is_created(
    kwargs: dict[str, Any], field: str
) -> None:
    group = await _group()
    with pytest.raises(InvalidArgument) as refused:
        await _unit(group, **kwargs)
    assert refused.value.field == field
    with pytest.raises(InvalidArgument) as refused:
        await tasks.create_composite_task(
            actor=A, repository_group_id=group.id, prompt="p", **kwargs
        )
    assert refused.value.field == field
    assert await m.AgentTask.all().count() == 0


async def test_the_run_time_limit_bounds_are_allowed() -> None:
    group = await _group()
    assert (await _agent(await _unit(group, max_run_seconds=1))).max_run_seconds == 1
    assert (await _agent(await _unit(group, max_run_seconds=WEEK))).max_run_seconds == WEEK


async def _planned(group: m.RepositoryGroup, **kwargs: Any) -> m.CompositeTask:
    composite = await tasks.create_composite_task(
        actor=A, repository_group_id=group.id, prompt="Build it", **kwargs
    )
    await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
    await tasks.approve_task(actor=A, task_id=composite.id)
    return await m.CompositeTask.get(id=composite.id)


async def _nodes(composite: m.CompositeTask) -> dict[str, m.UnitTask]:
    views = (await tasks.composite_nodes([composite.id]))[composite.id]
    return {v.node.plan_id: v.unit_task for v in views}


async def test_composite_nodes_inherit_the_composites_scheduling() -> None:
    group = await _group(["region=eu"])
    composite = await _planned(group, priority=P.HIGH, max_run_seconds=600)
    planner = await m.AgentTask.get(id=composite.planning_task_id)
    assert (planner.priority, planner.required_labels, planner.max_run_seconds) == (
        2,
        ["region=eu"],
        600,
    )
    nodes = await _nodes(composite)
    for node in nodes.values():
        agent = await _agent(node)
        assert (agent.priority, agent.required_labels, agent.max_run_seconds) == (
            2,
            ["region=eu"],
            600,
        )
        assert agent.workspace_id == group.workspace_id


# SetPriority ------------------------------------------------------------------------------


async def test_set_priority_of_a_queued_task_announces_it() -> None:
    group = await _group()
    task = await _unit(group)
    bus = events.EventBus()
    seen: list[events.Event] = []
    bus.subscribe(seen.append)
    token = events.bind(bus)
    try:
        changed = await tasks.set_task_priority(actor=A, task_id=task.id, priority=P.LOW)
    finally:
        events.unbind(token)
    assert changed.id == task.id
    assert (await _agent(task)).priority == 0
    assert (await m.AgentSession.get(agent_task_id=task.agent_task_id)).priority == 0
    assert events.TaskChanged(task_id=str(task.id), workspace_id=str(group.workspace_id)) in seen


async def test_set_priority_of_a_composite_changes_its_planner_and_nodes() -> None:
    composite = await _planned(await _group())
    await tasks.set_task_priority(actor=A, task_id=composite.id, priority=P.URGENT)
    agent_ids = [composite.planning_task_id] + [
        n.agent_task_id for n in (await _nodes(composite)).values()
    ]
    assert set(await m.AgentTask.filter(id__in=agent_ids).values_list("priority", flat=True)) == {3}


async def test_set_priority_is_refused_once_the_task_ended() -> None:
    group = await _group()
    task = await _unit(group)
    await finish_latest(task.agent_task_id)
    await tasks.approve_task(actor=A, task_id=task.id)
    await tasks.update_task_status(actor=A, task_id=task.id, status=S.DONE)
    with pytest.raises(FailedPrecondition, match="done"):
        await tasks.set_task_priority(actor=A, task_id=task.id, priority=P.HIGH)
    assert (await _agent(task)).priority == 1

    rejected = await tasks.create_composite_task(actor=A, repository_group_id=group.id, prompt="p")
    await finish_latest(rejected.planning_task_id, plan_yaml=PLAN)
    await tasks.reject_task(actor=A, task_id=rejected.id)
    with pytest.raises(FailedPrecondition, match="rejected"):
        await tasks.set_task_priority(actor=A, task_id=rejected.id, priority=P.HIGH)


# Workspaces and groups --------------------------------------------------------------------


async def test_workspace_cap_on_create_and_update() -> None:
    ws = await workspaces.create_workspace(actor=A, name="capped", max_concurrent_jobs=2)
    assert ws.max_concurrent_jobs == 2
    assert (
        await workspaces.create_workspace(actor=A, name="n", max_concurrent_jobs=0)
    ).max_concurrent_jobs is None
    renamed = await workspaces.update_workspace(actor=A, workspace_id=ws.id, name="x")
    assert renamed.max_concurrent_jobs == 2  # unchanged when not given
    removed = await workspaces.update_workspace(actor=A, workspace_id=ws.id, max_concurrent_jobs=0)
    assert (await m.Workspace.get(id=removed.id)).max_concurrent_jobs is None
    for bad in (-1, 10_001):
        with pytest.raises(InvalidArgument) as refused:
            await workspaces.update_workspace(actor=A, workspace_id=ws.id, max_concurrent_jobs=bad)
        assert refused.value.field == "max_concurrent_jobs"
        with pytest.raises(InvalidArgument):
            await workspaces.create_workspace(actor=A, name="bad", max_concurrent_jobs=bad)
    assert await m.Workspace.filter(name="bad").count() == 0


async def test_group_default_labels_on_create_and_update() -> None:
    group = await _group(["b=2", "a=1"])
    assert group.default_required_labels == ["a=1", "b=2"]
    same = await repositories.update_repository_group(actor=A, group_id=group.id, name="n")
    assert same.default_required_labels == ["a=1", "b=2"]  # None: unchanged
    changed = await repositories.update_repository_group(
        actor=A, group_id=group.id, default_required_labels=["os=linux"]
    )
    assert (await m.RepositoryGroup.get(id=changed.id)).default_required_labels == ["os=linux"]
    cleared = await repositories.update_repository_group(
        actor=A, group_id=group.id, default_required_labels=[]
    )
    assert (await m.RepositoryGroup.get(id=cleared.id)).default_required_labels == []
    with pytest.raises(InvalidArgument) as refused:
        await repositories.update_repository_group(
            actor=A, group_id=group.id, default_required_labels=["bad label"]
        )
    assert refused.value.field == "default_required_labels"
    ws = await make_workspace()
    repo = await make_repository(ws)
    with pytest.raises(InvalidArgument):
        await repositories.create_repository_group(
            actor=A, workspace_id=ws.id, repository_ids=[repo.id], default_required_labels=["x"]
        )


# Views ------------------------------------------------------------------------------------


async def test_views_show_the_wait_of_a_queued_task_and_its_position() -> None:
    group = await _group()
    first, second = await _unit(group), await _unit(group, required_labels=["gpu=true"])
    await workers.register_worker(name="w", endpoint_url="http://w:1")
    await waits.reconcile_waits()
    bundle = await tasks.load_task_bundle([first, second])
    assert (bundle.waits[first.id].reason, bundle.waits[first.id].position) == (
        m.WaitReason.QUEUED,
        0,
    )
    assert bundle.waits[second.id].reason == m.WaitReason.NO_CAPABLE_WORKER
    assert "gpu=true" in bundle.waits[second.id].detail
    assert (await tasks.task_waits([first, second])) == bundle.waits
    await finish_latest(first.agent_task_id)
    assert first.id not in await tasks.task_waits([first])  # no longer queued


async def test_a_node_without_a_job_waits_for_its_dependencies() -> None:
    composite = await _planned(await _group())
    nodes = await _nodes(composite)
    bundle = await tasks.load_task_bundle([composite])
    db, api = bundle.waits[nodes["db"].id], bundle.waits[nodes["api"].id]
    assert db.reason == m.WaitReason.QUEUED  # its job is queued
    assert api.reason == m.WaitReason.DEPENDENCIES
    assert "db" in api.detail
    assert composite.id not in bundle.waits  # its planning run succeeded
    assert (await tasks.task_waits([nodes["api"]]))[nodes["api"].id] == api


async def test_a_list_of_tasks_is_shown_in_a_fixed_number_of_statements(
    sql_counter: SqlCounter,
) -> None:
    group = await _group()

    async def statements(count: int) -> int:
        for _ in range(count):
            await _unit(group, priority=P.HIGH)
        composite = await _planned(group)
        items = await tasks.list_tasks(actor=A, workspace_id=group.workspace_id)
        await waits.reconcile_waits()
        sql_counter.reset()
        bundle = await tasks.load_task_bundle(items.items)
        assert len(bundle.waits) >= count
        await tasks.task_waits(items.items)
        assert composite.id in {t.id for t in items.items}
        return len(sql_counter.statements)

    few = await statements(2)
    many = await statements(12)
    assert few == many, (few, many)


async def test_an_unknown_task_cannot_be_reprioritised() -> None:
    from delidev.errors import NotFound

    with pytest.raises(NotFound):
        await tasks.set_task_priority(actor=A, task_id=uuid.uuid4(), priority=P.HIGH)
