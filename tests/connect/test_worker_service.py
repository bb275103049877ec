"""WorkerService through the generated client: a worker's whole conversation with the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import session_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import sessions, tasks
from delidev.settings import Settings
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace

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


async def test_a_worker_runs_a_job(worker_client: Any) -> None:
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
        await asyncio.sleep(0.3)
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


async def test_multi_user_mode_needs_worker_credentials(database: Any) -> None:
    settings = Settings(
        database_url="sqlite://unused",
        single_user_mode=False,
        jwt_secret="0123456789abcdef0123456789abcdef-x",
        oidc_issuer_url="https://id",
        oidc_client_id="c",
        oidc_client_secret="s",
        worker_registration_token="reg-token",
    )
    app = create_app(settings)
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
