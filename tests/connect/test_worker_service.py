"""WorkerService through the generated client: a worker's whole conversation with the server."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import secrets_pb, session_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsServiceClient
from delidev.connect.gen.delidev.v1.task_connect import TaskServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import sessions, tasks, workers
from delidev.services.scheduling.policy import RetryPolicy
from delidev.settings import Settings
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace
from tests.waiting import until

NO_BACKOFF = RetryPolicy(backoff_base=dt.timedelta(0))

S = task_pb.AgentSessionStatus


@pytest.fixture(params=["json", "binary"])
async def worker_client(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient(
        "http://test", http_client=http, codec=connect_codecs()[request.param]
    )
    yield client
    await client.close()


async def _unit() -> m.UnitTask:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="Do it", title="T"
    )


async def test_a_worker_runs_a_job(worker_client: Any, app: Any) -> None:
    task = await _unit()
    reg = await worker_client.register(
        worker_pb.RegisterWorkerRequest(name="w1", endpoint_url="http://127.0.0.1:54872")
    )
    assert reg.credential
    assert reg.heartbeat_interval_ms == 30_000
    wid = reg.worker_id
    claimed = await worker_client.get_task(worker_pb.ClaimJobRequest(worker_id=wid))
    job = claimed.job
    assert job is not None
    assert (job.task_id, job.prompt, job.title, job.attempt) == (str(task.id), "Do it", "T", 1)
    assert job.kind == task_pb.JobKind.UNIT_TASK
    assert len(job.base_remotes) == 1

    appended = await worker_client.append_log(
        worker_pb.AppendLogRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            chunks=[
                worker_pb.LogChunk(sequence=1, data="b"),
                worker_pb.LogChunk(sequence=0, data="a"),
            ],
        )
    )
    assert (appended.next_sequence, appended.log_size) == (2, 2)

    asked = await worker_client.request_tty_input(
        worker_pb.RequestTtyInputRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            prompt="Which?",
            input_type=session_pb.TtyInputType.SELECT,
            options=["x", "y"],
        )
    )
    question_id = asked.request.id

    async def answer() -> None:
        # Once WaitTtyInput watches for the answer (its bus is the app's), not after a guess.
        await until(lambda: app.state.events.watcher_count() > 0, what="WaitTtyInput waiting")
        await sessions.submit_tty_input(actor=LOCAL_USER, request_id=question_id, response="y")

    answering = asyncio.create_task(answer())
    waited = await worker_client.wait_tty_input(
        worker_pb.WaitTtyInputRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            request_id=question_id,
            wait_ms=5000,
        )
    )
    await answering
    assert waited.response == "y"
    assert waited.request.status == session_pb.TtyInputStatus.RESPONDED

    beat = await worker_client.heartbeat(worker_pb.HeartbeatRequest(worker_id=wid))
    assert beat.status == worker_pb.WorkerStatus.BUSY
    report = await worker_client.report_status(
        worker_pb.ReportStatusRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            status=S.SUCCEEDED,
            end_commit="abc123",
        )
    )
    assert report.session.status == S.SUCCEEDED
    fresh = await m.UnitTask.get(id=task.id)
    assert (fresh.status, fresh.end_commit) == (m.UnitTaskStatus.IN_REVIEW, "abc123")
    assert (await m.AgentSession.get(id=job.session_id)).output_log == "ab"

    with pytest.raises(ConnectError) as info:
        await worker_client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=wid,
                session_id=job.session_id,
                lease_token=job.lease_token,
                status=S.FAILED,
            )
        )
    assert info.value.code == Code.ABORTED
    assert "lease" in info.value.message
    empty = await worker_client.get_task(worker_pb.ClaimJobRequest(worker_id=wid, wait_ms=50))
    assert empty.job is None


async def test_planning_run_reports_its_plan(worker_client: Any) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="big"
    )
    reg = await worker_client.register(
        worker_pb.RegisterWorkerRequest(name="planner", endpoint_url="http://127.0.0.1:1")
    )
    job = (await worker_client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))).job
    assert job.kind == task_pb.JobKind.PLANNING
    assert job.task_id == str(composite.id)
    with pytest.raises(ConnectError) as info:
        await worker_client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=reg.worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                status=S.SUCCEEDED,
            )
        )
    assert info.value.code == Code.INVALID_ARGUMENT
    await worker_client.report_status(
        worker_pb.ReportStatusRequest(
            worker_id=reg.worker_id,
            session_id=job.session_id,
            lease_token=job.lease_token,
            status=S.SUCCEEDED,
            plan_yaml="tasks:\n  - id: a\n    prompt: go\n",
        )
    )
    assert (
        await m.CompositeTask.get(id=composite.id)
    ).status == m.CompositeTaskStatus.PENDING_APPROVAL


async def test_unknown_worker_and_bad_input(worker_client: Any) -> None:
    with pytest.raises(ConnectError) as info:
        await worker_client.heartbeat(
            worker_pb.HeartbeatRequest(worker_id="00000000-0000-0000-0000-000000000000")
        )
    assert info.value.code == Code.NOT_FOUND
    with pytest.raises(ConnectError) as info:
        await worker_client.register(worker_pb.RegisterWorkerRequest(name="", endpoint_url="x"))
    assert info.value.code == Code.INVALID_ARGUMENT


MULTI_USER = Settings(
    database_url="sqlite://unused",
    single_user_mode=False,
    jwt_secret="Xq7pL2vR9mK4sT8wN3bF6hJ1cD5gZ0yA",
    oidc_issuer_url="https://id",
    oidc_client_id="c",
    oidc_client_secret="s",
    worker_registration_token="reg-token",
)


async def test_multi_user_mode_needs_worker_credentials(database: Any) -> None:
    app = create_app(MULTI_USER)
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient("http://test", http_client=http)
    request = worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2")
    with pytest.raises(ConnectError) as info:
        await client.register(request)
    assert info.value.code == Code.UNAUTHENTICATED
    with pytest.raises(ConnectError) as info:
        await client.register(request, headers={"authorization": "Bearer wrong"})
    assert info.value.code == Code.UNAUTHENTICATED
    reg = await client.register(request, headers={"authorization": "Bearer reg-token"})
    beat = worker_pb.HeartbeatRequest(worker_id=reg.worker_id)
    with pytest.raises(ConnectError) as info:
        await client.heartbeat(beat)
    assert info.value.code == Code.UNAUTHENTICATED
    with pytest.raises(ConnectError) as info:
        await client.heartbeat(beat, headers={"authorization": "Bearer reg-token"})
    assert info.value.code == Code.UNAUTHENTICATED
    ok = await client.heartbeat(beat, headers={"authorization": f"Bearer {reg.credential}"})
    assert ok.status == worker_pb.WorkerStatus.IDLE
    await client.close()


# Headers the bearer parser (delidev.auth.authenticator.bearer_token) finds no token in.
# (Not a leading space: HTTP servers strip it before the header is read.)
MALFORMED = ["", "Bearer", "Bearer   ", "Basic {}", "Bearer{}", "Bearer\t{}"]


async def test_worker_headers_are_parsed_like_access_tokens(database: Any) -> None:
    """A malformed header carries no token: Register is refused as a wrong registration
    token, other calls as a missing credential. Any case of the scheme, and whitespace
    around the token, are accepted."""
    app = create_app(MULTI_USER)
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient("http://test", http_client=http)
    request = worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2")
    for header in MALFORMED:
        with pytest.raises(ConnectError) as info:
            await client.register(request, headers={"authorization": header.format("reg-token")})
        assert (info.value.code, info.value.message) == (
            Code.UNAUTHENTICATED,
            "registration token not accepted",
        ), header
    reg = await client.register(request, headers={"authorization": "bEaReR  reg-token "})
    beat = worker_pb.HeartbeatRequest(worker_id=reg.worker_id)
    for header in MALFORMED:
        with pytest.raises(ConnectError) as info:
            await client.heartbeat(beat, headers={"authorization": header.format(reg.credential)})
        assert (info.value.code, info.value.message) == (
            Code.UNAUTHENTICATED,
            "worker methods need the worker's credential",
        ), header
    ok = await client.heartbeat(beat, headers={"authorization": f"BEARER {reg.credential}\t"})
    assert ok.status == worker_pb.WorkerStatus.IDLE
    await client.close()


# Failures and stale leases over the wire ------------------------------------------------


@dataclass
class Wire:
    workers: WorkerServiceClient
    tasks: TaskServiceClient
    secrets: SecretsServiceClient


@pytest.fixture(params=["json", "binary"])
async def wire(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Wire]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    codec = connect_codecs()[request.param]
    clients = Wire(
        workers=WorkerServiceClient("http://test", http_client=http, codec=codec),
        tasks=TaskServiceClient("http://test", http_client=http, codec=codec),
        secrets=SecretsServiceClient("http://test", http_client=http, codec=codec),
    )
    yield clients
    for client in (clients.workers, clients.tasks, clients.secrets):
        await client.close()


async def _register(wire: Wire, name: str) -> str:
    reg = await wire.workers.register(
        worker_pb.RegisterWorkerRequest(name=name, endpoint_url="http://127.0.0.1:54872")
    )
    return reg.worker_id


async def _claim(wire: Wire, worker_id: str) -> worker_pb.Job:
    job = (await wire.workers.get_task(worker_pb.ClaimJobRequest(worker_id=worker_id))).job
    assert job is not None
    return job


async def _log(session_id: str) -> str:
    return (await sessions.read_log(actor=LOCAL_USER, session_id=session_id)).content


async def _refused(call: Any) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        await call
    return info.value


async def test_a_reported_failure_shows_on_the_task(wire: Wire) -> None:
    task = await _unit()
    wid = await _register(wire, "w1")
    job = await _claim(wire, wid)
    await wire.workers.report_status(
        worker_pb.ReportStatusRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            status=S.FAILED,
            error="agent exited with status 2",
            failure_kind=worker_pb.FailureKind.AGENT_CRASHED,
        )
    )
    got = (await wire.tasks.get(task_pb.GetTaskRequest(task_id=str(task.id)))).task
    assert got is not None
    assert got.task is not None
    assert got.task.field == "unit_task"
    unit = got.task.value
    assert isinstance(unit, task_pb.UnitTask)
    assert unit.status == task_pb.UnitTaskStatus.IN_PROGRESS  # the enum has no "failed"
    assert unit.latest_session is not None
    assert unit.latest_session.id == job.session_id
    assert unit.latest_session.status == S.FAILED
    assert unit.latest_session.error == "agent exited with status 2"
    stored = await m.AgentSession.get(id=job.session_id)
    assert stored.failure_kind == "agent_crashed"
    beat = await wire.workers.heartbeat(worker_pb.HeartbeatRequest(worker_id=wid))
    assert beat.status == worker_pb.WorkerStatus.IDLE


async def test_calls_under_a_lease_taken_away_are_refused_and_change_nothing(wire: Wire) -> None:
    task = await _unit()
    await wire.secrets.send(
        secrets_pb.SendSecretsRequest(task_id=str(task.id), secrets={"TOKEN": "sk-wire-12345"})
    )
    old = await _register(wire, "old")
    job = await _claim(wire, old)
    lease = {"worker_id": old, "session_id": job.session_id, "lease_token": job.lease_token}
    await wire.workers.append_log(
        worker_pb.AppendLogRequest(**lease, chunks=[worker_pb.LogChunk(sequence=0, data="one\n")])
    )
    asked = await wire.workers.request_tty_input(
        worker_pb.RequestTtyInputRequest(
            **lease, prompt="Go on?", input_type=session_pb.TtyInputType.CONFIRM
        )
    )
    assert asked.request is not None
    # The worker falls silent: the sweep hands its job to another worker.
    await m.Worker.filter(id=old).update(
        last_heartbeat=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    )
    # Retried at once: the retry's backoff has tests of its own (tests/services/test_limits.py).
    assert (
        await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1), policy=NO_BACKOFF)
        == 1
    )
    new = await _register(wire, "new")
    retry = await _claim(wire, new)
    assert retry.session_id != job.session_id
    await wire.workers.heartbeat(worker_pb.HeartbeatRequest(worker_id=old))  # back, lease dead

    refusals = [
        wire.workers.append_log(
            worker_pb.AppendLogRequest(
                **lease, chunks=[worker_pb.LogChunk(sequence=1, data="two\n")]
            )
        ),
        wire.workers.append_log(  # a retry of a chunk already stored is refused as well
            worker_pb.AppendLogRequest(
                **lease, chunks=[worker_pb.LogChunk(sequence=0, data="one\n")]
            )
        ),
        wire.workers.get_secrets(worker_pb.GetSecretsRequest(**lease)),
        wire.workers.request_tty_input(
            worker_pb.RequestTtyInputRequest(
                **lease, prompt="Still there?", input_type=session_pb.TtyInputType.TEXT
            )
        ),
        wire.workers.wait_tty_input(
            worker_pb.WaitTtyInputRequest(**lease, request_id=asked.request.id, wait_ms=50)
        ),
    ]
    for call in refusals:
        error = await _refused(call)
        assert error.code == Code.ABORTED, error
        assert "lease" in error.message
        assert "sk-wire" not in error.message
    lost = await m.AgentSession.get(id=job.session_id)
    assert (lost.status, lost.log_size, lost.log_next_sequence) == (m.AgentSessionStatus.LOST, 4, 1)
    assert await _log(job.session_id) == "one\n"
    assert await _log(retry.session_id) == ""
    questions = await m.TtyInputRequest.filter(session_id=job.session_id)
    assert [q.status for q in questions] == [m.TtyInputStatus.CANCELLED]
    # The worker holding the job now gets the secrets.
    fresh = await wire.workers.get_secrets(
        worker_pb.GetSecretsRequest(
            worker_id=new, session_id=retry.session_id, lease_token=retry.lease_token
        )
    )
    assert dict(fresh.secrets) == {"TOKEN": "sk-wire-12345"}


async def test_late_calls_after_a_stop_are_refused(wire: Wire) -> None:
    task = await _unit()
    wid = await _register(wire, "w1")
    job = await _claim(wire, wid)
    lease = {"worker_id": wid, "session_id": job.session_id, "lease_token": job.lease_token}
    await wire.workers.append_log(
        worker_pb.AppendLogRequest(**lease, chunks=[worker_pb.LogChunk(sequence=0, data="x\n")])
    )
    await sessions.stop_session(actor=LOCAL_USER, session_id=job.session_id)
    beat = await wire.workers.heartbeat(
        worker_pb.HeartbeatRequest(worker_id=wid, session_id=job.session_id)
    )
    assert list(beat.stop_session_ids) == [job.session_id]
    stopped = await wire.workers.report_status(
        worker_pb.ReportStatusRequest(**lease, status=S.STOPPED)
    )
    assert stopped.session.status == S.STOPPED

    late = [
        wire.workers.report_status(worker_pb.ReportStatusRequest(**lease, status=S.SUCCEEDED)),
        wire.workers.append_log(
            worker_pb.AppendLogRequest(
                **lease, chunks=[worker_pb.LogChunk(sequence=1, data="late\n")]
            )
        ),
        wire.workers.get_secrets(worker_pb.GetSecretsRequest(**lease)),
        wire.workers.request_tty_input(
            worker_pb.RequestTtyInputRequest(
                **lease, prompt="Hello?", input_type=session_pb.TtyInputType.TEXT
            )
        ),
    ]
    for call in late:
        assert (await _refused(call)).code == Code.ABORTED
    session = await m.AgentSession.get(id=job.session_id)
    assert (session.status, session.output_log) == (m.AgentSessionStatus.STOPPED, "x\n")
    assert await _log(job.session_id) == "x\n"
    assert (await m.UnitTask.get(id=task.id)).status == m.UnitTaskStatus.IN_PROGRESS
    assert not await m.TtyInputRequest.exists(session_id=job.session_id)
    beat = await wire.workers.heartbeat(worker_pb.HeartbeatRequest(worker_id=wid))
    assert beat.status == worker_pb.WorkerStatus.IDLE
