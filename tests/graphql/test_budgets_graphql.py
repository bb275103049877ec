"""Budgets and plan estimates in GraphQL: workspace budget settings (exact micros as
Floats), the block and wait reason, the plan estimate of a composite waiting for approval,
and the ``budgetWarnings`` subscription fed by a report through the real Connect
WorkerService."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from httpx_ws import aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.services import tasks
from tests.clients import connect_codecs
from tests.factories import finish_latest, make_group, make_repository
from tests.graphql.test_usage_graphql import _next

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
async def worker_api(app: Any) -> AsyncIterator[WorkerServiceClient]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient("http://test", http_client=http, codec=connect_codecs()["json"])
    yield client
    await client.close()


BUDGETS = (
    "id monthlyBudgetMicros budgetPeriod taskBudgetMicros budgetWarningPercent"
    " budgetWarnedAt budgetBlockedUntil"
)
PLAN = "tasks:\n  - id: a\n    prompt: one\n  - id: b\n    prompt: two\n    dependsOn: [a]\n"


async def _post(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_budgets_are_set_and_read_exactly(http: httpx.AsyncClient) -> None:
    created = await _post(
        http,
        f'mutation {{ createWorkspace(input: {{ name: "b", monthlyBudgetMicros: 1000000000000000,'
        f" budgetPeriod: ROLLING_30_DAYS, taskBudgetMicros: 12345678,"
        f" budgetWarningPercent: 90 }}) {{ {BUDGETS} }} }}",
    )
    ws = created["data"]["createWorkspace"]
    assert ws["monthlyBudgetMicros"] == 10**15  # past 2^31, exact
    assert ws["budgetPeriod"] == "ROLLING_30_DAYS"
    assert ws["taskBudgetMicros"] == 12_345_678
    assert ws["budgetWarningPercent"] == 90
    assert ws["budgetBlockedUntil"] is None
    stored = await m.Workspace.get(id=ws["id"])
    assert stored.monthly_budget_micros == 10**15
    # Removed with 0; a fraction of a micro, or a value past 2^53, is refused.
    updated = await _post(
        http,
        f'mutation {{ updateWorkspace(input: {{ id: "{ws["id"]}", monthlyBudgetMicros: 0 }})'
        f" {{ {BUDGETS} }} }}",
    )
    assert updated["data"]["updateWorkspace"]["monthlyBudgetMicros"] is None
    for bad in ("1.5", "1e20"):
        refused = await _post(
            http,
            f'mutation {{ updateWorkspace(input: {{ id: "{ws["id"]}", taskBudgetMicros: {bad} }})'
            f" {{ id }} }}",
        )
        assert refused["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"
        assert refused["errors"][0]["extensions"]["field"] == "taskBudgetMicros"
    assert (await m.Workspace.get(id=ws["id"])).task_budget_micros == 12_345_678


async def test_a_pending_plan_shows_its_estimate(http: httpx.AsyncClient) -> None:
    ws = await m.Workspace.create(name="e")
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="plan it"
    )
    await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
    query = (
        "query($id: ID!) { task(id: $id) { ... on CompositeTask { status estimate {"
        " samples nodes chain costMicros { median high } seconds { median high } } } } }"
    )
    data = (await _post(http, query, id=str(composite.id)))["data"]["task"]
    assert data["status"] == "PENDING_APPROVAL"
    assert data["estimate"] == {
        "samples": 0,
        "nodes": 2,
        "chain": 2,
        "costMicros": None,
        "seconds": None,
    }
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
    data = (await _post(http, query, id=str(composite.id)))["data"]["task"]
    assert data["estimate"] is None  # only while the plan waits


async def test_a_budget_warning_reaches_its_subscription(
    app: Any, http: httpx.AsyncClient, worker_api: WorkerServiceClient
) -> None:
    ws = await m.Workspace.create(name="w", monthly_budget_micros=1_000, budget_warning_percent=50)
    group = await make_group(ws, [await make_repository(ws)])
    await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="u")
    registered = await worker_api.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:54872")
    )
    job = (await worker_api.get_task(worker_pb.ClaimJobRequest(worker_id=registered.worker_id))).job
    assert job is not None

    async def spend(report_id: str, micros: int) -> None:
        await worker_api.report_usage(
            worker_pb.ReportUsageRequest(
                worker_id=registered.worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                report_id=report_id,
                model="m",
                cost_micros=micros,
            )
        )

    transport = ASGIWebSocketTransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as socket,
    ):
        await socket.send_json({"type": "connection_init", "payload": {}})
        assert (await socket.receive_json())["type"] == "connection_ack"
        await socket.send_json(
            {
                "id": "1",
                "type": "subscribe",
                "payload": {
                    "query": "subscription($w: ID!) { budgetWarnings(workspaceId: $w) {"
                    " workspaceId spentMicros budgetMicros } }",
                    "variables": {"w": str(ws.id)},
                },
            }
        )
        await asyncio.sleep(0)  # the warning is raised once: wait until the subscription listens
        for _ in range(100):
            if app.state.events.watcher_count():
                break
            await asyncio.sleep(0.02)
        await spend("a", 300)  # under the threshold: nothing
        await spend("b", 400)  # 700 of 1000: past 50 %
        warning = (await _next(socket))["budgetWarnings"]
    assert warning == {"workspaceId": str(ws.id), "spentMicros": 700, "budgetMicros": 1_000}
    # Over the budget: the workspace starts no new run, in GraphQL too.
    await spend("c", 400)
    data = (await _post(http, f'{{ workspace(id: "{ws.id}") {{ {BUDGETS} }} }}'))["data"]
    assert data["workspace"]["budgetBlockedUntil"] is not None
    assert data["workspace"]["budgetWarnedAt"] is not None
