"""The reference worker (``delidev-worker-sim``) against the app in this process.

Faults come from a client that runs a hook before a named call: the hook takes the job away
on the server (a real refusal follows) or fails the call as a dropped connection would.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev import worker_sim
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import secrets_pb
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import tasks, workers
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

Hook = Callable[[Any], Awaitable[None]]


class FaultyClient(WorkerServiceClient):
    """The generated client; ``hooks[method]`` run one by one before calls of that method."""

    def __init__(self, app: Any, hooks: dict[str, list[Hook]]) -> None:
        http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
        super().__init__("http://test", http_client=http)
        self.hooks = hooks

    async def _before(self, method: str, request: Any) -> None:
        waiting = self.hooks.get(method)
        if waiting:
            await waiting.pop(0)(request)

    async def get_task(self, request: Any, **kwargs: Any) -> Any:
        await self._before("get_task", request)
        return await super().get_task(request, **kwargs)

    async def get_secrets(self, request: Any, **kwargs: Any) -> Any:
        await self._before("get_secrets", request)
        return await super().get_secrets(request, **kwargs)

    async def append_log(self, request: Any, **kwargs: Any) -> Any:
        await self._before("append_log", request)
        return await super().append_log(request, **kwargs)

    async def report_status(self, request: Any, **kwargs: Any) -> Any:
        await self._before("report_status", request)
        return await super().report_status(request, **kwargs)


async def take_the_job_away(request: Any) -> None:
    """The job's task is deleted on the server: its lease dies with it."""
    session = await m.AgentSession.get(id=request.session_id)
    unit = await m.UnitTask.get(agent_task_id=session.agent_task_id)
    await tasks.delete_task(actor=LOCAL_USER, task_id=unit.id)


def fail_with(error: Exception) -> Hook:
    async def hook(_: Any) -> None:
        raise error

    return hook


def _options(**overrides: Any) -> worker_sim.Options:
    fast: dict[str, Any] = {
        "server": "http://test",
        "lines": 3,
        "lines_per_second": 0.0,
        "chunk_interval": 0.0,
        "wait_ms": 50,
        "retry_base": 0.001,
        "retry_max": 0.01,
        # Long polling only. In this process the Watch stream goes through the test
        # transport, which sometimes did not hand over a pushed job: the worker then sat on
        # its stream until the 300 s stream timeout before it polled (a 300 s stall on
        # PostgreSQL in CI). Push has its own tests (tests/services/test_push.py,
        # tests/connect/test_worker_service.py), and the reference workers of tests/e2e use
        # it against real server processes; these tests are about the worker's faults.
        "poll": True,
    }
    return worker_sim.Options(**{**fast, **overrides})


@pytest.fixture
async def group(database: Any) -> UUID:
    ws = await make_workspace()
    return (await make_group(ws, [await make_repository(ws)])).id


async def _unit(group: UUID, prompt: str, **kwargs: Any) -> m.UnitTask:
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group, prompt=prompt, **kwargs
    )


async def _run(app: Any, hooks: dict[str, list[Hook]], **options: Any) -> worker_sim.Stats:
    sim = worker_sim.SimWorker(_options(**options), FaultyClient(app, hooks))
    try:
        return await sim.run()
    finally:
        await sim.close()


async def test_a_refused_log_upload_ends_that_job_and_the_worker_goes_on(
    app: Any, group: UUID
) -> None:
    await _unit(group, "taken away")
    kept = await _unit(group, "kept")
    stats = await _run(app, {"append_log": [take_the_job_away]}, max_jobs=2)
    assert (len(stats.sessions), stats.refused, stats.succeeded) == (2, 1, 1)
    assert (await m.UnitTask.get(id=kept.id)).status == m.UnitTaskStatus.IN_REVIEW


async def test_a_refused_secrets_fetch_ends_that_job_and_the_worker_goes_on(
    app: Any, group: UUID
) -> None:
    secret = await _unit(group, "needs a key", expects_secrets=True)
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    sender = SecretsServiceClient("http://test", http_client=http)
    await sender.send(
        secrets_pb.SendSecretsRequest(task_id=str(secret.id), secrets={"KEY": "sk-sim-123456"})
    )
    await sender.close()
    kept = await _unit(group, "kept")
    stats = await _run(app, {"get_secrets": [take_the_job_away]}, max_jobs=2)
    assert (len(stats.sessions), stats.refused, stats.succeeded) == (2, 1, 1)
    assert (await m.UnitTask.get(id=kept.id)).status == m.UnitTaskStatus.IN_REVIEW
    assert not await m.UnitTask.exists(id=secret.id)


async def test_transient_errors_are_retried(app: Any, group: UUID) -> None:
    task = await _unit(group, "flaky network")
    hooks = {
        "get_task": [
            fail_with(ConnectError(Code.UNAVAILABLE, "the server restarts")),
            fail_with(ConnectionResetError("connection reset by peer")),
            fail_with(ConnectError(Code.INTERNAL, "oops")),
        ],
        "append_log": [fail_with(ConnectError(Code.UNAVAILABLE, "the server restarts"))],
        "report_status": [fail_with(OSError("network is unreachable"))],
    }
    stats = await _run(app, hooks, max_jobs=1)
    assert (stats.errors, stats.refused, stats.abandoned, stats.succeeded) == (5, 0, 0, 1)
    assert all(not waiting for waiting in hooks.values())
    session = await m.AgentSession.filter(agent_task_id=task.agent_task_id).get()
    assert session.status == m.AgentSessionStatus.SUCCEEDED
    assert session.output_log is not None
    assert session.output_log.count("\n") == 2 + 3  # two [sim] lines and three of work
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_REVIEW


async def test_a_job_whose_calls_keep_failing_is_given_up(app: Any, group: UUID) -> None:
    given_up = await _unit(group, "down for good")
    kept = await _unit(group, "kept")
    outage = [fail_with(ConnectError(Code.UNAVAILABLE, "down")) for _ in range(3)]
    stats = await _run(app, {"append_log": outage}, max_jobs=2, job_call_attempts=3)
    assert (stats.abandoned, stats.errors, stats.succeeded) == (1, 3, 1)
    assert (await m.UnitTask.get(id=kept.id)).status == m.UnitTaskStatus.IN_REVIEW
    # It says so, when the server can be reached again: the failure shows on the task.
    session = await m.AgentSession.filter(agent_task_id=given_up.agent_task_id).get()
    assert (session.status, session.failure_kind) == (m.AgentSessionStatus.FAILED, "other")
    assert session.error is not None
    assert "gave up" in session.error


async def test_a_job_given_up_is_reported_once_the_server_answers_again(
    app: Any, group: UUID
) -> None:
    """Regression: the failure report of a job given up was tried once. When the database
    was down that long too, the job stayed running on the server, on a worker that had
    moved on, until its time limit (its Watch stream told it once)."""
    given_up = await _unit(group, "down for a while")
    down = fail_with(ConnectError(Code.UNAVAILABLE, "the database is unavailable"))
    hooks = {"append_log": [down] * 2, "report_status": [down] * 4}
    stats = await _run(app, hooks, max_jobs=1, job_call_attempts=2)
    assert (stats.abandoned, stats.errors) == (1, 2 + 4)
    session = await m.AgentSession.filter(agent_task_id=given_up.agent_task_id).get()
    assert session.status == m.AgentSessionStatus.FAILED
    assert session.error is not None
    assert "gave up" in session.error


async def test_a_worker_the_server_forgot_registers_again(app: Any, group: UUID) -> None:
    task = await _unit(group, "after a reset")

    async def forget(request: Any) -> None:
        await workers.unregister_worker(worker_id=UUID(request.worker_id))

    stats = await _run(app, {"get_task": [forget]}, max_jobs=1)
    assert (stats.errors, stats.succeeded) == (1, 1)
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_REVIEW


async def test_a_fleet_outlives_refusals_and_outages(app: Any, group: UUID) -> None:
    created = [await _unit(group, f"job {i}") for i in range(6)]
    taken: list[Any] = []

    async def take_away_once(request: Any) -> None:
        taken.append(request.session_id)
        await take_the_job_away(request)

    def client(_: worker_sim.Options) -> WorkerServiceClient:
        return FaultyClient(
            app,
            {
                "get_task": [fail_with(ConnectionResetError("reset"))],
                "append_log": [take_away_once],
            },
        )

    stats = await worker_sim.run_fleet(_options(idle_exit=0.3), 2, make_client=client)
    # Each worker loses the first job it appends to (usually both get one; on a loaded
    # machine one worker may run every job before the other's first claim comes back).
    assert 1 <= len(taken) <= 2
    assert sum(s.refused for s in stats) == len(taken)
    assert sum(s.succeeded for s in stats) == 6 - len(taken)
    left = await m.UnitTask.filter(id__in=[t.id for t in created]).values_list("status", flat=True)
    assert sorted(left) == [m.UnitTaskStatus.IN_REVIEW] * (6 - len(taken))


async def test_the_fail_directive_reports_a_failure(app: Any, group: UUID) -> None:
    task = await _unit(group, "break it [sim:fail]")
    stats = await _run(app, {}, max_jobs=1)
    assert (stats.failed, stats.succeeded) == (1, 0)
    session = await m.AgentSession.filter(agent_task_id=task.agent_task_id).get()
    assert session.status == m.AgentSessionStatus.FAILED
    assert session.error == "the simulated agent exited with status 1"
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_PROGRESS


async def test_a_fail_rate_of_one_fails_every_run_but_planning(app: Any, group: UUID) -> None:
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group, prompt="plan it"
    )
    unit = await _unit(group, "plain")
    stats = await _run(app, {}, max_jobs=2, fail_rate=1.0)
    assert (stats.failed, stats.succeeded) == (1, 1)
    planned = await m.CompositeTask.get(id=composite.id)
    assert planned.status == m.CompositeTaskStatus.PENDING_APPROVAL
    session = await m.AgentSession.filter(agent_task_id=unit.agent_task_id).get()
    assert session.status == m.AgentSessionStatus.FAILED


def test_the_fail_rate_option_is_checked() -> None:
    options, count, _ = worker_sim.parse_args(["--fail-rate", "0.25", "--workers", "3"])
    assert (options.fail_rate, count) == (0.25, 3)
    with pytest.raises(SystemExit):
        worker_sim.parse_args(["--fail-rate", "1.5"])
