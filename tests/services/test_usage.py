"""Usage reports: counted once, under the lease, totalled per run, task, composite task,
workspace and day, on both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import Conflict, InvalidArgument, NotFound
from delidev.services import tasks, usage, workers
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

PLAN = """
tasks:
  - id: a
    prompt: first
  - id: b
    prompt: second
    dependsOn: [a]
"""


def _report(report_id: str, **values: int) -> usage.UsageReport:
    return usage.UsageReport(report_id=report_id, model="claude-sonnet-4", **values)


async def _running(prompt: str = "job") -> tuple[m.UnitTask, workers.Job]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    unit = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
    )
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    return unit, job


def _worker_of(job: workers.Job) -> uuid.UUID:
    assert job.session.worker_id is not None
    return job.session.worker_id


async def _record(job: workers.Job, report: usage.UsageReport) -> tuple[bool, usage.Usage]:
    return await usage.record_usage(
        worker_id=_worker_of(job),
        session_id=job.session.id,
        lease_token=job.lease_token,
        report=report,
    )


async def test_reports_add_up_and_a_repeat_counts_once() -> None:
    unit, job = await _running()
    counted, so_far = await _record(job, _report("r1", input_tokens=100, cost_micros=1_500))
    assert counted
    assert so_far == usage.Usage(input_tokens=100, cost_micros=1_500, reports=1)
    counted, so_far = await _record(
        job, _report("r2", output_tokens=7, cache_read_tokens=3, cache_write_tokens=2)
    )
    assert counted
    # The first report again (a retry after a lost answer): not counted a second time.
    counted, again = await _record(job, _report("r1", input_tokens=100, cost_micros=1_500))
    assert not counted
    assert again == so_far == usage.Usage(100, 7, 3, 2, 1_500, 2)
    assert (await usage.unit_task_usage([unit.id]))[unit.id] == so_far
    assert (await usage.session_usage([job.session.id]))[job.session.id] == so_far


async def test_a_report_id_reused_for_other_usage_is_refused() -> None:
    _, job = await _running()
    await _record(job, _report("r1", input_tokens=1))
    with pytest.raises(InvalidArgument) as refused:
        await _record(job, _report("r1", input_tokens=2))
    assert refused.value.field == "report_id"
    assert (await usage.session_usage([job.session.id]))[job.session.id].input_tokens == 1


@pytest.mark.parametrize(
    ("report", "field"),
    [
        (usage.UsageReport(report_id="", model="m"), "report_id"),
        (usage.UsageReport(report_id="has space", model="m"), "report_id"),
        (usage.UsageReport(report_id="x" * 65, model="m"), "report_id"),
        (usage.UsageReport(report_id="ok", model=""), "model"),
        (usage.UsageReport(report_id="ok", model="m" * 256), "model"),
        (usage.UsageReport(report_id="ok", model="m", input_tokens=-1), "input_tokens"),
        (usage.UsageReport(report_id="ok", model="m", output_tokens=10**13), "output_tokens"),
        (usage.UsageReport(report_id="ok", model="m", cost_micros=-5), "cost_micros"),
        (usage.UsageReport(report_id="ok", model="m", cost_micros=10**14), "cost_micros"),
    ],
)
async def test_bad_reports_are_refused_and_nothing_is_stored(
    report: usage.UsageReport, field: str
) -> None:
    _, job = await _running()
    with pytest.raises(InvalidArgument) as refused:
        await _record(job, report)
    assert refused.value.field == field
    assert await m.UsageRecord.all().count() == 0


async def test_a_stale_lease_is_refused() -> None:
    _, job = await _running()
    with pytest.raises(Conflict):
        await usage.record_usage(
            worker_id=_worker_of(job),
            session_id=job.session.id,
            lease_token="not-the-lease",
            report=_report("r1", input_tokens=1),
        )
    await workers.report_status(
        worker_id=_worker_of(job),
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
    )
    with pytest.raises(Conflict):  # the run ended: its lease is no longer current
        await _record(job, _report("late", input_tokens=1))
    assert await m.UsageRecord.all().count() == 0


async def test_concurrent_repeats_count_once_and_distinct_reports_all_count() -> None:
    _, job = await _running()
    same = [_record(job, _report("same", input_tokens=10)) for _ in range(10)]
    distinct = [_record(job, _report(f"d{i}", output_tokens=1)) for i in range(10)]
    results = await asyncio.gather(*same, *distinct)
    assert sum(counted for counted, _ in results[:10]) == 1
    assert all(counted for counted, _ in results[10:])
    total = (await usage.session_usage([job.session.id]))[job.session.id]
    assert (total.input_tokens, total.output_tokens, total.reports) == (10, 10, 11)


async def test_a_composite_counts_its_planning_and_every_node() -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="plan it"
    )
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    planning = await workers.claim_job(worker_id=worker.id)
    assert planning is not None
    await _record(planning, _report("plan", input_tokens=50, cost_micros=100))
    await workers.report_status(
        worker_id=worker.id,
        session_id=planning.session.id,
        lease_token=planning.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
        plan_yaml=PLAN,
    )
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
    node_job = await workers.claim_job(worker_id=worker.id)
    assert node_job is not None
    await _record(node_job, _report("n1", output_tokens=5, cost_micros=40))
    node = await m.UnitTask.get(id=node_job.task_id)
    assert node.composite_task_id == composite.id
    assert (await usage.composite_task_usage([composite.id]))[composite.id] == usage.Usage(
        input_tokens=50, output_tokens=5, cost_micros=140, reports=2
    )
    assert (await usage.unit_task_usage([node.id]))[node.id].cost_micros == 40
    # In the read model both APIs show tasks with.
    bundle = await tasks.load_task_view(composite)
    assert bundle.usage_of(composite.id).cost_micros == 140
    assert bundle.usage_of(node.id).cost_micros == 40
    assert bundle.usage_of(planning.session.id).input_tokens == 50


async def test_auto_fix_runs_count_for_their_unit_task() -> None:
    unit, job = await _running()
    await _record(job, _report("main", cost_micros=10))
    await workers.report_status(
        worker_id=_worker_of(job),
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
    )
    fix = await m.AgentTask.create(ai_agent_type=m.AiAgentType.CLAUDE_CODE)
    await m.UnitTaskAutoFixTask.create(unit_task_id=unit.id, agent_task_id=fix.id)
    run = await m.AgentSession.create(
        agent_task_id=fix.id, ai_agent_type=m.AiAgentType.CLAUDE_CODE, kind=m.JobKind.AUTO_FIX
    )
    fixer = (await workers.register_worker(name="fixer", endpoint_url="http://w:2")).worker
    fix_job = await workers.claim_job(worker_id=fixer.id)
    assert fix_job is not None
    assert fix_job.session.id == run.id
    await _record(fix_job, _report("fix", cost_micros=5))
    assert (await usage.unit_task_usage([unit.id]))[unit.id].cost_micros == 15


async def test_workspace_usage_by_day_and_model() -> None:
    unit, job = await _running()
    await _record(job, _report("today", input_tokens=1, cost_micros=300))
    await usage.record_usage(
        worker_id=_worker_of(job),
        session_id=job.session.id,
        lease_token=job.lease_token,
        report=usage.UsageReport(report_id="other", model="gpt-5", cost_micros=900),
    )
    await _record(job, _report("old", input_tokens=2, cost_micros=50))
    await _record(job, _report("older", input_tokens=4, cost_micros=70))
    now = dt.datetime.now(dt.UTC)
    await m.UsageRecord.filter(report_id="old").update(created_at=now - dt.timedelta(days=2))
    await m.UsageRecord.filter(report_id="older").update(created_at=now - dt.timedelta(days=40))

    found = await usage.workspace_usage(actor=LOCAL_USER, workspace_id=unit.workspace_id)
    assert found.total == usage.Usage(input_tokens=3, cost_micros=1_250, reports=3)
    assert [d for d, _ in found.days] == [
        (now - dt.timedelta(days=2)).date(),
        now.date(),
    ]
    assert [u.cost_micros for _, u in found.days] == [50, 1_200]
    assert [(u.model, u.usage.cost_micros) for u in found.models] == [
        ("gpt-5", 900),
        ("claude-sonnet-4", 350),
    ]
    week = await usage.workspace_usage(actor=LOCAL_USER, workspace_id=unit.workspace_id, days=1)
    assert week.total.cost_micros == 1_200
    year = await usage.workspace_usage(actor=LOCAL_USER, workspace_id=unit.workspace_id, days=366)
    assert year.total.cost_micros == 1_320
    for days in (-1, 367):
        with pytest.raises(InvalidArgument):
            await usage.workspace_usage(actor=LOCAL_USER, workspace_id=unit.workspace_id, days=days)


async def test_another_users_workspace_usage_is_not_found() -> None:
    unit, _ = await _running()
    stranger = Principal(kind="user", user_id=uuid.uuid4())
    with pytest.raises(NotFound):
        await usage.workspace_usage(actor=stranger, workspace_id=unit.workspace_id)
