"""What one claim cycle (GetTask, then ReportStatus) costs in SQL statements, and the quick
end of a plain run (``services/workers/quick_report.py``) against the general one.

The claim cycle is the fleet's hot path (bench/bench_workers.py); each statement is a round
trip and ~0.2 ms of ORM work. The counts are pinned so that a change that adds one to the
path is a conscious one. The quick end must leave exactly what the general path leaves.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport
from tortoise import connections

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import tasks
from delidev.services.workers import quick_report
from tests.clients import connect_codecs
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace


@pytest.fixture
async def worker_client(app: Any) -> AsyncIterator[Any]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient("http://test", http_client=http, codec=connect_codecs()["binary"])
    yield client
    await client.close()


async def test_statements_of_a_claim_cycle(worker_client: Any, sql_counter: SqlCounter) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    for i in range(3):
        await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt=f"{i}")
    reg = await worker_client.register(
        worker_pb.RegisterWorkerRequest(name="w1", endpoint_url="http://127.0.0.1:54872")
    )
    dialect = connections.get("default").capabilities.dialect
    for _ in range(2):
        sql_counter.reset()
        claimed = await worker_client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))
        claim = len(sql_counter.statements)
        sql_counter.reset()
        await worker_client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=reg.worker_id,
                session_id=claimed.job.session_id,
                lease_token=claimed.job.lease_token,
                status=task_pb.AgentSessionStatus.SUCCEEDED,
            )
        )
        report = sql_counter.statements
        # PostgreSQL claims in one statement (the worker's capabilities are read once per
        # process); SQLite in a handful. A report: the lease, the row locked, its output,
        # its end, the task's move, its questions, the task's event, the worker freed.
        assert claim <= (2 if dialect == "postgres" else 11), claim
        # PostgreSQL ends a plain run in one statement (quick_report).
        assert len(report) <= (1 if dialect == "postgres" else 8), "\n".join(report)


async def _run_and_end(
    client: Any, app: Any, status: Any, **report: Any
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A task's run claimed, given output, ended as ``status``: what is stored after, and
    the events published by the report (by kind and id, ids replaced by their role)."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    reg = await client.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:54872")
    )
    job = (await client.get_task(worker_pb.ClaimJobRequest(worker_id=reg.worker_id))).job
    await client.append_log(
        worker_pb.AppendLogRequest(
            worker_id=reg.worker_id,
            session_id=job.session_id,
            lease_token=job.lease_token,
            chunks=[worker_pb.LogChunk(sequence=i, data=f"line {i}\n") for i in range(3)],
        )
    )
    roles = {
        job.session_id: "session",
        str(task.id): "task",
        str(ws.id): "workspace",
        reg.worker_id: "worker",
    }
    heard: list[tuple[str, str]] = []

    def hear(event: events.Event) -> None:
        ids = [str(getattr(event, f.name)) for f in dataclasses.fields(event)]  # type: ignore[arg-type]
        heard.append((type(event).__name__, ",".join(roles.get(i, i) for i in ids)))

    unsubscribe = app.state.events.subscribe(hear)
    try:
        await client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=reg.worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                status=status,
                **report,
            )
        )
    finally:
        unsubscribe()
    session = await m.AgentSession.get(id=job.session_id)
    unit = await m.UnitTask.get(id=task.id)
    worker = await m.Worker.get(id=reg.worker_id)
    stored = {
        "status": session.status,
        "error": session.error,
        "failure_kind": session.failure_kind,
        "output_log": session.output_log,
        "lease_token": session.lease_token,
        "ended": session.completed_at is not None,
        "log_size": session.log_size,
        "unit": (unit.status, unit.base_commit, unit.end_commit),
        "worker": (worker.status, worker.current_session_id, worker.current_task_id),
    }
    return stored, sorted(heard)


@pytest.mark.parametrize(
    ("status", "report"),
    [
        (task_pb.AgentSessionStatus.SUCCEEDED, {"base_commit": "a" * 40, "end_commit": "b" * 50}),
        (
            task_pb.AgentSessionStatus.FAILED,
            {"error": "  tests failed  ", "failure_kind": worker_pb.FailureKind.AGENT_CRASHED},
        ),
    ],
)
async def test_the_quick_end_of_a_run_leaves_what_the_general_one_does(
    worker_client: Any,
    app: Any,
    sql_counter: SqlCounter,
    monkeypatch: pytest.MonkeyPatch,
    status: Any,
    report: dict[str, Any],
) -> None:
    sql_counter.reset()
    quick = await _run_and_end(worker_client, app, status, **report)
    if connections.get("default").capabilities.dialect == "postgres":
        assert any("WITH seen AS" in s for s in sql_counter.statements)  # it took the quick path
    monkeypatch.setattr(quick_report, "applies", lambda **_: False)
    general = await _run_and_end(worker_client, app, status, **report)
    assert quick == general
    assert quick[0]["output_log"] == "line 0\nline 1\nline 2\n"
