"""The estimate a plan waiting for approval shows, on a seeded history of comparable runs."""

from __future__ import annotations

import datetime as dt

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import estimates, plans, tasks, workers
from tests.factories import make_group, make_repository, make_workspace
from tests.loop_watchdog import Watchdog

pytestmark = pytest.mark.usefixtures("database")

PLAN = """
tasks:
  - id: a
    prompt: first
  - id: b
    prompt: second
    dependsOn: [a]
  - id: c
    prompt: on its own
"""
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


async def _history(
    group: m.RepositoryGroup, agent: m.AiAgentType, costs: list[int], seconds: list[int]
) -> None:
    """Finished runs of unit tasks in ``group``, each with its usage."""
    for i, (cost, took) in enumerate(zip(costs, seconds, strict=True)):
        unit = await tasks.create_unit_task(
            actor=LOCAL_USER,
            repository_group_id=group.id,
            prompt=f"past {i}",
            ai_agent_type=agent,
        )
        started = T0 + dt.timedelta(hours=i)
        await m.AgentSession.filter(agent_task_id=unit.agent_task_id).update(
            status=m.AgentSessionStatus.SUCCEEDED,
            started_at=started,
            completed_at=started + dt.timedelta(seconds=took),
        )
        session = await m.AgentSession.get(agent_task_id=unit.agent_task_id)
        await m.UsageRecord.create(
            session_id=session.id,
            report_id="r",
            workspace_id=unit.workspace_id,
            unit_task_id=unit.id,
            ai_agent_type=agent,
            model="m",
            cost_micros=cost,
        )


async def _pending(group: m.RepositoryGroup, agent: m.AiAgentType) -> m.CompositeTask:
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER,
        repository_group_id=group.id,
        prompt="plan it",
        execution_agent_type=agent,
        planning_agent_type=agent,
    )
    worker = (await workers.register_worker(name="planner", endpoint_url="http://w:1")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
        plan_yaml=PLAN,
    )
    pending = await m.CompositeTask.get(id=composite.id)
    assert pending.status == m.CompositeTaskStatus.PENDING_APPROVAL
    return pending


async def test_an_estimate_from_comparable_runs() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    other_group = await make_group(ws, [await make_repository(ws)])
    claude, codex = m.AiAgentType.CLAUDE_CODE, m.AiAgentType.CODEX_CLI
    await _history(group, claude, [100 * i for i in range(1, 11)], [60 * i for i in range(1, 11)])
    # Not comparable: another agent type, another repository group.
    await _history(group, codex, [10**9], [10**6])
    await _history(other_group, claude, [10**9], [10**6])
    composite = await _pending(group, claude)

    estimate = await estimates.estimate_plan(composite)
    assert estimate is not None
    assert (estimate.samples, estimate.nodes, estimate.chain) == (10, 3, 2)
    assert estimate.node_cost_micros == estimates.Spread(median=500, high=900)
    assert estimate.node_seconds == estimates.Spread(median=300, high=540)
    assert estimate.cost_micros == estimates.Spread(median=1_500, high=2_700)
    assert estimate.seconds == estimates.Spread(median=600, high=1_080)
    # Both APIs show it through the task read model while the plan waits.
    bundle = await tasks.load_task_view(composite)
    assert bundle.estimates[composite.id] == estimate


async def test_no_history_means_no_figures() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await _pending(group, m.AiAgentType.AMP)
    estimate = await estimates.estimate_plan(composite)
    assert estimate == estimates.PlanEstimate(
        samples=0,
        nodes=3,
        chain=2,
        node_cost_micros=None,
        node_seconds=None,
        cost_micros=None,
        seconds=None,
    )


async def test_a_plan_of_a_thousand_tasks_is_estimated_without_holding_the_event_loop(
    loop_watchdog: Watchdog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plan is parsed in a thread, once. Regression: each read of a pending composite
    (Get, a list page, ``estimate`` in GraphQL) parsed its plan on the event loop: 0.13-0.15
    s for one of 1,000 tasks."""
    count = plans.MAX_PLAN_TASKS
    plan = "tasks:\n" + "".join(
        f"  - id: t{i}\n    prompt: {'p' * 500}\n" + (f"    dependsOn: [t{i - 1}]\n" if i else "")
        for i in range(count)
    )
    monkeypatch.setattr("tests.services.test_estimates.PLAN", plan)
    ws = await make_workspace()
    composite = await _pending(await make_group(ws, [await make_repository(ws)]), m.AiAgentType.AMP)
    assert composite.plan_yaml == plan
    for _ in range(2):
        loop_watchdog.take()
        with loop_watchdog.armed():
            estimate = await estimates.estimate_plan(composite)
        assert loop_watchdog.take() == []
        assert estimate is not None
        assert (estimate.nodes, estimate.chain) == (count, count)
