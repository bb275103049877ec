"""Which worker gets which job: agent types, labels, priority, round-robin across workspaces,
concurrency caps, backoff, drain and the run deadline (issue 11), on both databases."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from typing import Any

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import InvalidArgument
from delidev.services import tasks, workers
from tests.conftest import BACKEND
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _unit(
    group: m.RepositoryGroup, prompt: str = "job", agent: str = "claude_code", **attrs: Any
) -> m.UnitTask:
    """A task whose AgentTask carries the scheduling attributes ``attrs`` (priority as a
    TaskPriority, required_labels, max_run_seconds)."""
    task = await tasks.create_unit_task(
        actor=LOCAL_USER,
        repository_group_id=group.id,
        prompt=prompt,
        ai_agent_type=m.AiAgentType(agent),
        priority=attrs.pop("priority", None),
    )
    await m.AgentTask.filter(id=task.agent_task_id).update(workspace_id=group.workspace_id, **attrs)
    return task


async def _worker(
    name: str = "w", agent_types: tuple[str, ...] = (), labels: tuple[str, ...] = ()
) -> m.Worker:
    registered = await workers.register_worker(
        name=name, endpoint_url="http://w:1", agent_types=agent_types, labels=labels
    )
    return registered.worker


async def _claim(worker: m.Worker, **kwargs: Any) -> workers.Job | None:
    return await workers.claim_job(worker_id=worker.id, **kwargs)


async def _finish(job: workers.Job, worker: m.Worker) -> None:
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=m.AgentSessionStatus.SUCCEEDED,
    )


async def test_register_stores_canonical_capabilities() -> None:
    worker = await _worker(agent_types=("codex_cli", "aider", "codex_cli"), labels=("OS=linux",))
    assert worker.agent_types == ["aider", "codex_cli"]
    assert worker.labels == ["os=linux"]
    with pytest.raises(InvalidArgument, match="not an agent type"):
        await _worker(agent_types=("vim",))
    with pytest.raises(InvalidArgument) as bad:
        await _worker(labels=("no-equals",))
    assert bad.value.field == "labels"


async def test_a_worker_gets_only_jobs_of_its_agent_types() -> None:
    group = await _group()
    claude = await _unit(group, agent="claude_code")
    codex_only = await _worker("codex", agent_types=("codex_cli",))
    assert await _claim(codex_only) is None
    codex_task = await _unit(group, agent="codex_cli")
    job = await _claim(codex_only)
    assert job is not None
    assert job.task_id == codex_task.id
    anything = await _worker("any")
    job = await _claim(anything)
    assert job is not None
    assert job.task_id == claude.id


async def test_required_labels_must_all_be_offered() -> None:
    group = await _group()
    gpu = await _unit(group, required_labels=["gpu=true", "os=linux"])
    plain = await _worker("plain", labels=("os=linux",))
    assert await _claim(plain) is None
    rich = await _worker("rich", labels=("gpu=true", "os=linux", "region=eu"))
    job = await _claim(rich)
    assert job is not None
    assert job.task_id == gpu.id


async def test_priority_first_then_fifo() -> None:
    group = await _group()
    first_normal = await _unit(group, "n1")
    await _unit(group, "n2")
    urgent = await _unit(group, "u", priority=m.TaskPriority.URGENT)
    low = await _unit(group, "l", priority=m.TaskPriority.LOW)
    order = []
    worker = await _worker()
    for _ in range(4):
        job = await _claim(worker)
        assert job is not None
        order.append(job.prompt)
        await _finish(job, worker)
    assert order == ["u", "n1", "n2", "l"]
    assert urgent.id != first_normal.id != low.id


async def _claim_order(worker: m.Worker, count: int) -> list[str]:
    """The first word of the prompts of the next ``count`` jobs, claimed and finished."""
    order = []
    for _ in range(count):
        job = await _claim(worker)
        assert job is not None
        order.append(job.prompt.split()[0])
        await _finish(job, worker)
    return order


async def test_round_robin_across_workspaces() -> None:
    """One workspace's backlog of 30 does not starve another's two jobs: equal priorities
    go one per workspace per round, also for claims in a burst."""
    busy, quiet = await _group(), await _group()
    for i in range(30):
        await _unit(busy, f"busy {i}")
    for i in range(2):
        await _unit(quiet, f"quiet {i}")
    worker = await _worker()
    assert await _claim_order(worker, 6) == ["busy", "quiet", "busy", "quiet", "busy", "busy"]


async def test_a_workspace_joins_the_current_round() -> None:
    """A workspace that queues later neither jumps ahead of rounds already served with a
    backlog of its own, nor waits behind the whole backlog of another."""
    busy, late = await _group(), await _group()
    for i in range(20):
        await _unit(busy, f"busy {i}")
    worker = await _worker()
    assert await _claim_order(worker, 10) == ["busy"] * 10
    # Ten rounds were handed out: the late workspace's ten jobs start at the current round,
    # so they alternate with the busy one's rather than all going first.
    first_late = await _unit(late, "late 0")
    for i in range(1, 10):
        await _unit(late, f"late {i}")
    session = await m.AgentSession.get(agent_task_id=first_late.agent_task_id)
    assert session.fair_round == 9  # the round of the tenth job handed out
    order = await _claim_order(worker, 8)
    assert order in (["busy", "late"] * 4, ["late", "busy"] * 4), order


async def test_rounds_are_per_priority() -> None:
    """A backlog at normal priority does not push another workspace's urgent job behind
    the first workspace's urgent ones."""
    busy, other = await _group(), await _group()
    for i in range(10):
        await _unit(busy, f"busy {i}")
    for i in range(3):
        await _unit(busy, f"urgent-busy {i}", priority=m.TaskPriority.URGENT)
    await _unit(other, "urgent-other", priority=m.TaskPriority.URGENT)
    worker = await _worker()
    order = await _claim_order(worker, 4)
    assert order[:2] == ["urgent-busy", "urgent-other"], order


async def test_a_draining_worker_gets_nothing_and_hears_it() -> None:
    group = await _group()
    await _unit(group)
    worker = await _worker()
    drained = await workers.set_draining(worker_id=worker.id, draining=True)
    assert drained.draining
    assert await _claim(worker) is None
    reply = await workers.heartbeat(worker_id=worker.id)
    assert reply.worker.draining
    await workers.set_draining(worker_id=worker.id, draining=False)
    assert await _claim(worker) is not None


async def test_backoff_holds_a_job_until_its_time() -> None:
    group = await _group()
    task = await _unit(group)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.4)
    await m.AgentSession.filter(agent_task_id=task.agent_task_id).update(not_before=later)
    worker = await _worker()
    assert await _claim(worker) is None
    job = await _claim(worker, wait=dt.timedelta(seconds=3), signal=workers.JobSignal())
    assert job is not None
    assert dt.datetime.now(dt.UTC) >= later


async def test_the_run_gets_its_deadline() -> None:
    group = await _group()
    await _unit(group, "default")
    own = await _unit(group, "own", max_run_seconds=90)
    worker = await _worker()
    first = await _claim(worker, max_run_seconds=600)
    assert first is not None
    stored = await m.AgentSession.get(id=first.session.id)
    assert stored.started_at is not None
    assert stored.deadline_at is not None
    assert stored.deadline_at - stored.started_at == dt.timedelta(seconds=600)
    assert stored.wait_reason is None
    await _finish(first, worker)
    second = await _claim(worker, max_run_seconds=600)
    assert second is not None
    assert second.task_id == own.id
    stored = await m.AgentSession.get(id=second.session.id)
    assert stored.deadline_at - stored.started_at == dt.timedelta(seconds=90)  # type: ignore[operator]


async def test_a_cap_of_one_with_twenty_workers() -> None:
    """Twenty workers claim at once for a workspace capped at one: exactly one runs; when it
    ends the next goes; a second workspace is not held back by the first one's cap."""
    capped, free = await _group(), await _group()
    await m.Workspace.filter(id=capped.workspace_id).update(max_concurrent_jobs=1)
    for i in range(5):
        await _unit(capped, f"capped {i}")
    for i in range(3):
        await _unit(free, f"free {i}")
    fleet = [await _worker(f"w{i}") for i in range(20)]
    jobs = await asyncio.gather(*(_claim(w) for w in fleet))
    got = [(w, j) for w, j in zip(fleet, jobs, strict=True) if j is not None]
    kinds = Counter(j.prompt.split()[0] for _, j in got)
    assert kinds == {"capped": 1, "free": 3}, kinds
    running = await m.AgentSession.filter(
        status=m.AgentSessionStatus.RUNNING, agent_task__workspace_id=capped.workspace_id
    ).count()
    assert running == 1
    worker, job = next((w, j) for w, j in got if j.prompt.startswith("capped"))
    await _finish(job, worker)
    idle = [w for w, j in zip(fleet, jobs, strict=True) if j is None]
    again = await asyncio.gather(*(_claim(w) for w in idle))
    assert sum(1 for j in again if j is not None) == 1


@pytest.mark.skipif(BACKEND != "postgres", reason="concurrent transactions need PostgreSQL")
async def test_two_replicas_claiming_with_labels_never_share_a_job() -> None:
    """Many claims at once through the connection pool (as two replicas would): every job goes
    to exactly one worker that has its labels, and none is claimed twice."""
    group = await _group()
    for i in range(20):
        await _unit(group, f"eu {i}", required_labels=["region=eu"])
        await _unit(group, f"us {i}", required_labels=["region=us"])
    eu = [await _worker(f"eu{i}", labels=("region=eu",)) for i in range(15)]
    us = [await _worker(f"us{i}", labels=("region=us",)) for i in range(15)]
    seen: list[tuple[str, str]] = []

    async def run(worker: m.Worker, region: str) -> None:
        while (job := await _claim(worker)) is not None:
            seen.append((region, job.prompt))
            await _finish(job, worker)

    await asyncio.gather(*(run(w, "eu") for w in eu), *(run(w, "us") for w in us))
    prompts = [p for _, p in seen]
    assert len(prompts) == len(set(prompts)) == 40
    assert all(p.startswith(region) for region, p in seen)
