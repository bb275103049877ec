"""WorkerService for a fleet through the generated client: capabilities at Register, Drain by
the worker or an operator, and the Watch push stream."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from protobuf import Oneof
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import common_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import sessions, tasks
from tests.connect.test_worker_service import MULTI_USER
from tests.factories import make_group, make_repository, make_workspace

A = common_pb.AiAgentType


def _client(app: Any) -> WorkerServiceClient:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    return WorkerServiceClient("http://test", http_client=http)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[WorkerServiceClient]:
    c = _client(app)
    yield c
    await c.close()


async def _register(client: WorkerServiceClient, **kwargs: Any) -> Any:
    return await client.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2", **kwargs)
    )


async def _task(prompt: str = "go") -> m.UnitTask:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
    )


async def test_register_declares_agent_types_and_labels(client: WorkerServiceClient) -> None:
    reg = await _register(
        client, agent_types=[A.CODEX_CLI, A.CLAUDE_CODE], labels=["region=eu", "OS=linux"]
    )
    assert list(reg.worker.agent_types) == [A.CLAUDE_CODE, A.CODEX_CLI]
    assert list(reg.worker.labels) == ["os=linux", "region=eu"]
    assert not reg.worker.draining
    # Only a Claude Code task exists: a Codex-only worker is not handed it.
    await _task()
    codex = await _register(client, agent_types=[A.CODEX_CLI])
    claimed = await client.get_task(worker_pb.ClaimJobRequest(worker_id=codex.worker_id))
    assert not claimed.has_field("job")
    claimed = await client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))
    assert claimed.has_field("job")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"labels": ["no-equals"]}, "labels"),
        ({"labels": ["a=1", "a=2"]}, "labels"),
        ({"labels": [f"k{i}=v" for i in range(33)]}, "labels"),
        ({"agent_types": [A.UNSPECIFIED]}, "agent_types"),
        ({"agent_types": [99]}, "agent_types"),
    ],
)
async def test_bad_capabilities_are_refused_by_name(
    client: WorkerServiceClient, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConnectError) as info:
        await _register(client, **kwargs)
    assert info.value.code == Code.INVALID_ARGUMENT
    assert field in info.value.message
    assert await m.Worker.all().count() == 0


async def test_a_worker_drains_itself_and_hears_it(client: WorkerServiceClient) -> None:
    reg = await _register(client)
    drained = await client.drain(
        worker_pb.DrainWorkerRequest(worker_id=reg.worker_id, draining=True)
    )
    assert drained.worker.draining
    beat = await client.heartbeat(worker_pb.HeartbeatRequest(worker_id=reg.worker_id))
    assert beat.draining
    await _task()
    claimed = await client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))
    assert not claimed.has_field("job")


OPERATOR = "op-" + "x" * 40


async def test_drain_in_multi_user_mode_needs_the_worker_or_the_operator(database: Any) -> None:
    app = create_app(dataclasses.replace(MULTI_USER, operator_token=OPERATOR))
    client = _client(app)
    reg = (
        await _register(client, labels=["os=linux"])
        if False
        else await client.register(
            worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:2"),
            headers={"authorization": "Bearer reg-token"},
        )
    )
    request = worker_pb.DrainWorkerRequest(worker_id=reg.worker_id, draining=True)
    for header in ({}, {"authorization": "Bearer reg-token"}, {"authorization": "Bearer nope"}):
        with pytest.raises(ConnectError) as info:
            await client.drain(request, headers=header)
        assert info.value.code == Code.UNAUTHENTICATED
    assert not (await m.Worker.get(id=reg.worker_id)).draining
    done = await client.drain(request, headers={"authorization": f"Bearer {OPERATOR}"})
    assert done.worker.draining
    undone = await client.drain(
        worker_pb.DrainWorkerRequest(worker_id=reg.worker_id, draining=False),
        headers={"authorization": f"Bearer {reg.credential}"},
    )
    assert not undone.worker.draining
    await client.close()


async def test_watch_pushes_a_job_then_its_stop(app: Any, client: WorkerServiceClient) -> None:
    reg = await _register(client)
    stream = client.watch(worker_pb.WatchRequest(worker_id=reg.worker_id)).__aiter__()
    opened = await asyncio.wait_for(anext(stream), 10)  # the stream says at once it is open
    assert opened.event is not None
    assert opened.event.field == "keep_alive"
    first = asyncio.ensure_future(anext(stream))
    task = await _task("pushed")
    message = await asyncio.wait_for(first, 10)
    match message.event:
        case Oneof(field="job_assigned", value=worker_pb.Job() as job):
            assert job.task_id == str(task.id)
            assert job.prompt == "pushed"
        case other:
            pytest.fail(f"expected a job, got {other}")
    # A user stops the run: the stream says so.
    await sessions.stop_session(actor=LOCAL_USER, session_id=UUID(job.session_id))
    message = await asyncio.wait_for(anext(stream), 10)
    match message.event:
        case Oneof(field="stop_session", value=worker_pb.StopSession() as stop):
            assert stop.session_id == job.session_id
        case other:
            pytest.fail(f"expected a stop, got {other}")
    await stream.aclose()  # type: ignore[attr-defined]


async def test_watch_of_an_unknown_worker_is_not_found(client: WorkerServiceClient) -> None:
    stream = client.watch(
        worker_pb.WatchRequest(worker_id="00000000-0000-0000-0000-000000000000")
    ).__aiter__()
    with pytest.raises(ConnectError) as info:
        await asyncio.wait_for(anext(stream), 10)
    assert info.value.code == Code.NOT_FOUND


async def test_a_non_ascii_lease_is_stale_not_internal(client: WorkerServiceClient) -> None:
    """Regression: the lease was compared with hmac.compare_digest on str, which raises
    TypeError for non-ASCII text (an internal error reached the worker)."""
    reg = await _register(client)
    await _task()
    claimed = await client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))
    assert claimed.job is not None
    with pytest.raises(ConnectError) as info:
        await client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=reg.worker_id,
                session_id=claimed.job.session_id,
                lease_token="l\u00e9ase-\U0001f600",
                status=task_pb.AgentSessionStatus.SUCCEEDED,
            )
        )
    assert info.value.code == Code.ABORTED
