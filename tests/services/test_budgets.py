"""Budgets on both databases: a task over its budget has exactly its runs stopped; a
workspace over its period's budget starts no new run until raised or the period turns; a
warning once per period."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import InvalidArgument
from delidev.services import budgets, tasks, usage, workers, workspaces
from delidev.services.scheduling import waits
from delidev.services.workers.limits import BUDGET_ERROR
from tests.factories import make_group, make_repository

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def published() -> Iterator[list[events.Event]]:
    bus = events.EventBus()
    seen: list[events.Event] = []
    bus.subscribe(seen.append)
    token = events.bind(bus)
    yield seen
    events.unbind(token)


async def _workspace(**budget: object) -> tuple[m.Workspace, m.RepositoryGroup]:
    ws = await workspaces.create_workspace(actor=LOCAL_USER, name="ws", **budget)  # type: ignore[arg-type]
    return ws, await make_group(ws, [await make_repository(ws)])


async def _unit(group: m.RepositoryGroup, prompt: str = "job") -> m.UnitTask:
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
    )


async def _claim(name: str) -> workers.Job:
    worker = (await workers.register_worker(name=name, endpoint_url="http://w:1")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    return job


async def _spend(job: workers.Job, report_id: str, micros: int) -> None:
    assert job.session.worker_id is not None
    await usage.record_usage(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        report=usage.UsageReport(report_id=report_id, model="m", cost_micros=micros),
    )


async def _session(job: workers.Job) -> m.AgentSession:
    return await m.AgentSession.get(id=job.session.id)


async def test_a_task_over_its_budget_has_its_run_stopped_and_ended_stopped() -> None:
    _, group = await _workspace(task_budget_micros=100)
    await _unit(group)
    job = await _claim("w")
    await _spend(job, "a", 60)
    assert not (await _session(job)).stop_requested
    await _spend(job, "b", 50)
    run = await _session(job)
    assert run.stop_requested
    assert run.stop_reason == m.StopReason.BUDGET
    # The agent exits with a failure when stopped: still a stop, for its budget, not retried.
    assert job.session.worker_id is not None
    ended = await workers.report_status(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.FAILED,
        error="killed",
    )
    assert ended.status == m.AgentSessionStatus.STOPPED
    assert ended.error == BUDGET_ERROR
    assert await m.AgentSession.filter(agent_task_id=job.session.agent_task_id).count() == 1


async def test_concurrent_reports_stop_exactly_the_runs_over_budget() -> None:
    _, group = await _workspace(task_budget_micros=100)
    for i in range(4):
        await _unit(group, f"task {i}")
    jobs = [await _claim(f"w{i}") for i in range(4)]
    spend = {0: 60, 1: 60, 2: 40, 3: 40}  # per report, two reports each, all at once
    await asyncio.gather(
        *(_spend(job, f"r{k}", spend[i]) for i, job in enumerate(jobs) for k in range(2))
    )
    stopped = [(await _session(job)).stop_requested for job in jobs]
    assert stopped == [True, True, False, False]


async def test_a_workspace_over_budget_starts_no_new_run_until_raised(
    published: list[events.Event],
) -> None:
    ws, group = await _workspace(monthly_budget_micros=1_000, budget_warning_percent=50)
    await _unit(group, "first")
    job = await _claim("w1")
    await _spend(job, "a", 600)  # past the warning threshold, under the budget
    warnings = [e for e in published if isinstance(e, events.BudgetWarning)]
    assert warnings == [
        events.BudgetWarning(workspace_id=str(ws.id), spent_micros=600, budget_micros=1_000)
    ]
    await _spend(job, "b", 500)  # over: the next run of the workspace waits
    assert len([e for e in published if isinstance(e, events.BudgetWarning)]) == 1
    blocked = await m.Workspace.get(id=ws.id)
    now = dt.datetime.now(dt.UTC)
    assert blocked.budget_blocked_until == budgets.period_start(m.BudgetPeriod.MONTH, now).replace(
        month=now.month % 12 + 1, year=now.year + (now.month == 12)
    )
    second = await _unit(group, "second")
    idle = (await workers.register_worker(name="w2", endpoint_url="http://w:2")).worker
    assert await workers.claim_job(worker_id=idle.id) is None
    await waits.reconcile_waits()
    queued = await m.AgentSession.get(agent_task_id=second.agent_task_id)
    assert queued.wait_reason == m.WaitReason.BUDGET.value
    assert "budget" in (queued.wait_detail or "")
    # Raised: it starts.
    await workspaces.update_workspace(
        actor=LOCAL_USER, workspace_id=ws.id, monthly_budget_micros=5_000
    )
    assert (await m.Workspace.get(id=ws.id)).budget_blocked_until is None
    claimed = await workers.claim_job(worker_id=idle.id)
    assert claimed is not None
    assert claimed.session.agent_task_id == second.agent_task_id
    # Other workspaces were never held.
    _, other_group = await _workspace()
    await _unit(other_group, "elsewhere")
    assert await _claim("w3") is not None


async def test_a_rolling_budget_frees_when_old_spending_leaves_the_window() -> None:
    ws, group = await _workspace(
        monthly_budget_micros=100, budget_period=m.BudgetPeriod.ROLLING_30_DAYS
    )
    await _unit(group)
    job = await _claim("w")
    await _spend(job, "old", 80)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=29)
    await m.UsageRecord.filter(report_id="old").update(created_at=old)
    await _spend(job, "new", 50)
    blocked = (await m.Workspace.get(id=ws.id)).budget_blocked_until
    assert blocked is not None
    assert abs((blocked - (old + dt.timedelta(days=30))).total_seconds()) < 1
    # Once that time passes, the workspace is no longer blocked for the waits either.
    assert ws.id not in await budgets.blocked_workspaces(blocked + dt.timedelta(seconds=1))
    assert ws.id in await budgets.blocked_workspaces(blocked - dt.timedelta(seconds=1))


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"monthly_budget_micros": -1}, "monthly_budget_micros"),
        ({"task_budget_micros": 10**16}, "task_budget_micros"),
        ({"budget_warning_percent": 0}, "budget_warning_percent"),
        ({"budget_warning_percent": 101}, "budget_warning_percent"),
    ],
)
async def test_bad_budgets_are_refused(given: dict[str, int], field: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await workspaces.create_workspace(actor=LOCAL_USER, name="x", **given)  # type: ignore[arg-type]
    assert refused.value.field == field
    ws, _ = await _workspace(monthly_budget_micros=10)
    with pytest.raises(InvalidArgument):
        await workspaces.update_workspace(actor=LOCAL_USER, workspace_id=ws.id, **given)  # type: ignore[arg-type]
    assert (await m.Workspace.get(id=ws.id)).monthly_budget_micros == 10


def test_money_is_formatted_exactly() -> None:
    assert budgets.format_money(12_345_678) == "$12.345678"
    assert budgets.format_money(5) == "$0.000005"
