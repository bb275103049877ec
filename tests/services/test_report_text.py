"""What a worker reports at the end of a run is checked before anything is written.

Regressions (PostgreSQL cannot store a NUL): a commit holding one failed the report with
an internal error and left the run running under its lease, its report never recorded;
a plan holding one failed after the run had ended, leaving its composite planning for ever
with no reason shown. SQLite stored both as they were.
"""

from __future__ import annotations

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import InvalidArgument
from delidev.services import tasks, workers
from tests.factories import make_group, make_repository, make_workspace

Q = m.AgentSessionStatus
PLAN = "tasks:\n  - id: a\n    prompt: do a\n"

pytestmark = pytest.mark.usefixtures("database")


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _claimed() -> tuple[m.Worker, workers.Job]:
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:1")).worker
    job = await workers.claim_job(worker_id=worker.id)
    assert job is not None
    return worker, job


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("base_commit", "ab\x00cd"),
        ("end_commit", "\x00"),
        ("end_commit", "c" * 257),
    ],
)
async def test_a_commit_that_is_no_commit_is_refused_and_the_run_goes_on(
    field: str, value: str
) -> None:
    await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=(await _group()).id, prompt="go"
    )
    worker, job = await _claimed()
    with pytest.raises(InvalidArgument) as refused:
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.SUCCEEDED,
            **{field: value},  # type: ignore[arg-type]
        )
    assert refused.value.field == field
    session = await m.AgentSession.get(id=job.session.id)
    assert (session.status, session.lease_token) == (Q.RUNNING, job.lease_token)
    # The worker's next report, with a real commit, ends it.
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        **{field: "9f" * 20},  # type: ignore[arg-type]
    )
    assert ended.status == Q.SUCCEEDED
    unit = await m.UnitTask.get(agent_task_id=ended.agent_task_id)
    assert getattr(unit, field) == "9f" * 20


async def test_a_plan_with_a_nul_is_refused_before_the_run_ends() -> None:
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=(await _group()).id, prompt="Plan it"
    )
    worker, job = await _claimed()
    assert job.session.kind == m.JobKind.PLANNING
    with pytest.raises(InvalidArgument) as refused:
        await workers.report_status(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            status=Q.SUCCEEDED,
            plan_yaml=PLAN.replace("do a", "do a\x00"),
        )
    assert refused.value.field == "plan_yaml"
    session = await m.AgentSession.get(id=job.session.id)
    assert session.status == Q.RUNNING
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        plan_yaml=PLAN,
    )
    assert ended.status == Q.SUCCEEDED
    stored = await m.CompositeTask.get(id=composite.id)
    assert stored.plan_yaml == PLAN
