"""What one claim cycle (GetTask, then ReportStatus succeeded) costs in SQL statements.

The claim cycle is the fleet's hot path (bench/bench_workers.py); each statement is a round
trip and ~0.2 ms of ORM work. The counts are pinned so that a change that adds one to the
path is a conscious one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport
from tortoise import connections

from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import task_pb, worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import tasks
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
        assert len(report) <= 8, "\n".join(report)
