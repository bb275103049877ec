"""WorkerService edge cases on the wire (JSON and binary): what a worker may not do."""

from __future__ import annotations

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
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import session_pb, task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import tasks, workers
from delidev.services.workers import quick_report
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace

S = task_pb.AgentSessionStatus


@dataclass
class Wire:
    workers: WorkerServiceClient


@pytest.fixture(params=["json", "binary"])
async def wire(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Wire]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient(
        "http://test", http_client=http, codec=connect_codecs()[request.param]
    )
    yield Wire(workers=client)
    await client.close()


async def _unit(prompt: str = "Do it") -> m.UnitTask:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    return await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt=prompt
    )


async def _register(wire: Wire, name: str = "w") -> str:
    reg = await wire.workers.register(
        worker_pb.RegisterWorkerRequest(name=name, endpoint_url="http://127.0.0.1:54872")
    )
    return reg.worker_id


async def _claim(wire: Wire, worker_id: str) -> worker_pb.Job | None:
    return (await wire.workers.get_task(worker_pb.ClaimJobRequest(worker_id=worker_id))).job


async def _refused(call: Any) -> ConnectError:
    with pytest.raises(ConnectError) as info:
        await call
    return info.value


async def test_an_unknown_failure_kind_is_refused_and_the_run_goes_on(wire: Wire) -> None:
    await _unit()
    wid = await _register(wire)
    job = await _claim(wire, wid)
    assert job is not None
    error = await _refused(
        wire.workers.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=wid,
                session_id=job.session_id,
                lease_token=job.lease_token,
                status=S.FAILED,
                error="boom",
                failure_kind=worker_pb.FailureKind(9999),
            )
        )
    )
    assert error.code == Code.INVALID_ARGUMENT
    assert "failure_kind" in error.message
    assert "9999" in error.message
    session = await m.AgentSession.get(id=job.session_id)
    assert (session.status, session.failure_kind, session.error) == (
        m.AgentSessionStatus.RUNNING,
        None,
        None,
    )
    assert session.lease_token == job.lease_token


async def test_an_unhealthy_worker_claims_nothing_until_it_beats_again(wire: Wire) -> None:
    """Before, a silent worker that kept calling GetTask claimed the job each time and the
    sweep took it back each time: a lost run per round. Now it is told to beat first."""
    task = await _unit()
    wid = await _register(wire)
    an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    await m.Worker.filter(id=wid).update(last_heartbeat=an_hour_ago)
    interval = dt.timedelta(seconds=30)
    for _ in range(5):
        assert await workers.sweep_workers(heartbeat_interval=interval) == 0
        assert (await m.Worker.get(id=wid)).status == m.WorkerStatus.UNHEALTHY
        error = await _refused(
            wire.workers.get_task(worker_pb.ClaimJobRequest(worker_id=wid, wait_ms=0))
        )
        assert error.code == Code.FAILED_PRECONDITION
        assert "unhealthy" in error.message
        assert "Heartbeat" in error.message
    runs = await m.AgentSession.filter(agent_task_id=task.agent_task_id)
    assert [(s.attempt, s.status, s.worker_id) for s in runs] == [
        (1, m.AgentSessionStatus.QUEUED, None)
    ]
    beat = await wire.workers.heartbeat(worker_pb.HeartbeatRequest(worker_id=wid))
    assert beat.status == worker_pb.WorkerStatus.IDLE
    job = await _claim(wire, wid)
    assert job is not None
    assert job.task_id == str(task.id)
    assert (await m.Worker.get(id=wid)).status == m.WorkerStatus.BUSY


LEASE_CALLS = ["append_log", "report_status", "request_tty_input"]


def _lease_call(call: str, wid: str, job: worker_pb.Job) -> Any:
    if call == "append_log":
        return worker_pb.AppendLogRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            chunks=[worker_pb.LogChunk(sequence=0, data="out\n")],
        )
    if call == "report_status":
        return worker_pb.ReportStatusRequest(
            worker_id=wid,
            session_id=job.session_id,
            lease_token=job.lease_token,
            status=S.FAILED,
            error="boom",
        )
    return worker_pb.RequestTtyInputRequest(
        worker_id=wid,
        session_id=job.session_id,
        lease_token=job.lease_token,
        prompt="Branch?",
        input_type=session_pb.TtyInputType.TEXT,
    )


@pytest.mark.parametrize("taken_by", ["sweep", "delete"])
@pytest.mark.parametrize("call", LEASE_CALLS)
async def test_a_lease_taken_away_during_the_call_is_refused_with_aborted(
    wire: Wire, monkeypatch: pytest.MonkeyPatch, call: str, taken_by: str
) -> None:
    """The job is taken away (the sweep releases it, or its task is deleted) right after the
    call checked its lease and before it acts: the call is refused with aborted, as if it had
    come a moment later, never with failed_precondition or not_found."""
    task = await _unit()
    wid = await _register(wire)
    job = await _claim(wire, wid)
    assert job is not None
    check = workers.leased_session
    taken: list[int] = []

    async def then_take_it_away(**kwargs: Any) -> m.AgentSession:
        session = await check(**kwargs)
        if not taken:
            if taken_by == "sweep":
                an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
                await m.Worker.filter(id=wid).update(last_heartbeat=an_hour_ago)
                taken.append(
                    await workers.sweep_workers(heartbeat_interval=dt.timedelta(seconds=1))
                )
            else:
                await tasks.delete_task(actor=LOCAL_USER, task_id=task.id)
                taken.append(1)
        return session

    monkeypatch.setattr(workers.jobs, "leased_session", then_take_it_away)
    # A plain run's quick end (PostgreSQL) checks the lease and ends the run in one
    # statement: it has no such window. The window is the general path's.
    monkeypatch.setattr(quick_report, "applies", lambda **_: False)
    error = await _refused(getattr(wire.workers, call)(_lease_call(call, wid, job)))
    assert taken == [1]
    assert (error.code, error.message) == (
        Code.ABORTED,
        f"the lease on session {job.session_id} is no longer current "
        "(reassigned, stopped, finished or deleted)",
    )
    assert not await m.LogChunk.filter(session_id=job.session_id).exists()
    assert not await m.TtyInputRequest.filter(session_id=job.session_id).exists()
