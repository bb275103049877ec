"""Usage in GraphQL: on runs, unit and composite tasks (a list of any length costs the same
number of statements), a workspace's usage per day and model, counts past GraphQL's 32-bit
Int, and the ``taskUpdated`` subscription carrying a usage report sent through the real
Connect WorkerService."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.graphql.usage_types import usd
from delidev.services import tasks
from tests.clients import connect_codecs
from tests.conftest import SqlCounter
from tests.factories import (
    finish_latest,
    latest_session,
    make_group,
    make_repository,
    make_workspace,
    unique,
)

pytestmark = pytest.mark.usefixtures("database")

PLAN = """
tasks:
  - id: a
    prompt: first
  - id: b
    prompt: second
    dependsOn: [a]
"""
USAGE = (
    "usage { inputTokens outputTokens cacheReadTokens cacheWriteTokens costMicros costUsd reports }"
)
BIG = 5_000_000_000  # past 2^31: GraphQL's Int could not carry it


async def _gql(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "errors" not in body, body
    data: dict[str, Any] = body["data"]
    return data


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _used(
    session: m.AgentSession,
    *,
    unit: UUID | None = None,
    composite: UUID | None = None,
    model: str = "claude-sonnet-4",
    day: dt.datetime | None = None,
    **values: int,
) -> m.UsageRecord:
    """A stored report, its owners resolved as ``usage.record_usage`` resolves them."""
    agent = await m.AgentTask.get(id=session.agent_task_id)
    workspace = (
        await m.UnitTask.get(id=unit) if unit else await m.CompositeTask.get(id=composite)
    ).workspace_id
    record = await m.UsageRecord.create(
        session_id=session.id,
        report_id=unique("r"),
        workspace_id=workspace,
        unit_task_id=unit,
        composite_task_id=composite,
        ai_agent_type=agent.ai_agent_type or m.AiAgentType.CLAUDE_CODE,
        model=model,
        **values,
    )
    if day is not None:  # created_at is set on insert: moved back to the day wanted
        await m.UsageRecord.filter(id=record.id).update(created_at=day)
    return record


def test_costs_in_dollars_are_exact() -> None:
    assert usd(0) == "0.000000"
    assert usd(1) == "0.000001"
    assert usd(12_345_678) == "12.345678"
    assert usd(2**63 - 1) == "9223372036854.775807"  # no float on the way


async def test_usage_of_a_run_a_unit_task_and_a_composite(http: httpx.AsyncClient) -> None:
    group = await _group()
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="u")
    first = await finish_latest(unit.agent_task_id, m.AgentSessionStatus.FAILED, error="x")
    await _used(first, unit=unit.id, input_tokens=BIG, cost_micros=1_500_000)
    await tasks.retry_task(actor=LOCAL_USER, task_id=unit.id)
    second = await latest_session(unit.agent_task_id)
    await _used(second, unit=unit.id, output_tokens=7, cache_read_tokens=3, cache_write_tokens=2)
    await _used(second, unit=unit.id, cost_micros=BIG)

    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="c"
    )
    planning = await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
    await _used(planning, composite=composite.id, input_tokens=10, cost_micros=20)
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)

    data = await _gql(
        http,
        f"query($u: ID!, $c: ID!) {{ unit: task(id: $u) {{ {USAGE} ... on UnitTask {{ "
        f"latestSession {{ {USAGE} }} agentTask {{ sessions {{ {USAGE} }} }} }} }} "
        f"composite: task(id: $c) {{ {USAGE} ... on CompositeTask {{ "
        f"nodes {{ unitTask {{ {USAGE} }} }} }} }} }}",
        u=str(unit.id),
        c=str(composite.id),
    )
    assert data["unit"]["usage"] == {
        "inputTokens": BIG,
        "outputTokens": 7,
        "cacheReadTokens": 3,
        "cacheWriteTokens": 2,
        "costMicros": BIG + 1_500_000,
        "costUsd": "5001.500000",
        "reports": 3,
    }
    assert [s["usage"]["reports"] for s in data["unit"]["agentTask"]["sessions"]] == [1, 2]
    assert data["unit"]["latestSession"]["usage"]["costMicros"] == BIG
    assert data["composite"]["usage"]["costUsd"] == "0.000020"
    # What nothing used yet shows zeros, not null.
    assert all(n["unitTask"]["usage"]["reports"] == 0 for n in data["composite"]["nodes"])


async def test_a_task_list_with_usage_costs_a_fixed_number_of_statements(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    group = await _group()
    query = (
        f"query($w: ID) {{ tasks(workspaceId: $w, first: 100) {{ edges {{ node {{ {USAGE} "
        f"... on UnitTask {{ latestSession {{ {USAGE} }} }} "
        f"... on CompositeTask {{ latestSession {{ {USAGE} }} nodes {{ unitTask {{ {USAGE} }} }} }}"
        " } } } }"
    )

    async def statements(count: int) -> int:
        for _ in range(count):
            unit = await tasks.create_unit_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt="u"
            )
            await _used(await latest_session(unit.agent_task_id), unit=unit.id, cost_micros=1)
            composite = await tasks.create_composite_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt="c"
            )
            planning = await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
            await _used(planning, composite=composite.id, cost_micros=2)
            await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
        sql_counter.reset()
        data = await _gql(http, query, w=str(group.workspace_id))
        nodes = [e["node"] for e in data["tasks"]["edges"]]
        assert sum(n["usage"]["costMicros"] for n in nodes) == 3 * len(nodes) / 2
        # One grouped sum each for the runs, the unit tasks and the composites; the nodes'
        # unit tasks resolve a level deeper, in a batch of their own.
        assert sum("usage_records" in s for s in sql_counter.statements) == 4
        return len(sql_counter.statements)

    few = await statements(3)
    assert await statements(27) == few  # 30 of each now


async def test_workspace_usage_per_day_and_model(http: httpx.AsyncClient) -> None:
    group = await _group()
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="u")
    run = await latest_session(unit.agent_task_id)
    now = dt.datetime.now(dt.UTC)
    await _used(run, unit=unit.id, cost_micros=BIG, input_tokens=BIG)
    await _used(run, unit=unit.id, model="gpt-5", cost_micros=3, day=now - dt.timedelta(days=2))
    await _used(run, unit=unit.id, cost_micros=100, day=now - dt.timedelta(days=40))  # too old
    other = await _group()  # another workspace's usage stays its own
    elsewhere = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=other.id, prompt="x"
    )
    await _used(await latest_session(elsewhere.agent_task_id), unit=elsewhere.id, cost_micros=9)

    query = (
        "query($w: ID!, $d: Int) { workspace(id: $w) { usage(days: $d) { "
        "total { costMicros costUsd reports inputTokens } days { date usage { costMicros } } "
        "models { aiAgentType model usage { costMicros } } } } }"
    )
    data = await _gql(http, query, w=str(group.workspace_id))
    found = data["workspace"]["usage"]
    assert found["total"] == {
        "costMicros": BIG + 3,
        "costUsd": "5000.000003",
        "reports": 2,
        "inputTokens": BIG,
    }
    today, two_days_ago = now.date(), (now - dt.timedelta(days=2)).date()
    assert found["days"] == [
        {"date": two_days_ago.isoformat(), "usage": {"costMicros": 3}},
        {"date": today.isoformat(), "usage": {"costMicros": BIG}},
    ]
    assert found["models"] == [
        {"aiAgentType": "CLAUDE_CODE", "model": "claude-sonnet-4", "usage": {"costMicros": BIG}},
        {"aiAgentType": "CLAUDE_CODE", "model": "gpt-5", "usage": {"costMicros": 3}},
    ]
    wider = await _gql(http, query, w=str(group.workspace_id), d=60)
    assert wider["workspace"]["usage"]["total"]["costMicros"] == BIG + 103

    refused = (
        await http.post(
            "/graphql", json={"query": query, "variables": {"w": str(group.workspace_id), "d": 367}}
        )
    ).json()
    assert refused["data"] is None
    assert refused["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"
    assert refused["errors"][0]["extensions"]["field"] == "days"


# -- the subscription ------------------------------------------------------------------------

TASK_UPDATED = (
    f"subscription($id: ID!) {{ taskUpdated(taskId: $id) {{ taskId task {{ {USAGE} }} }} }}"
)


@pytest.fixture
async def worker_api(app: Any) -> AsyncIterator[WorkerServiceClient]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = WorkerServiceClient("http://test", http_client=http, codec=connect_codecs()["json"])
    yield client
    await client.close()


async def _next(socket: AsyncWebSocketSession, within: float = 5) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(socket.receive_json(), timeout=within)
        if message["type"] == "ping":
            await socket.send_json({"type": "pong"})
            continue
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        data: dict[str, Any] = message["payload"]["data"]
        return data


async def test_a_usage_report_reaches_the_task_subscription(
    app: Any, worker_api: WorkerServiceClient
) -> None:
    group = await _group()
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="u")
    registered = await worker_api.register(
        worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:54872")
    )
    job = (await worker_api.get_task(worker_pb.ClaimJobRequest(worker_id=registered.worker_id))).job
    assert job is not None
    assert job.task_id == str(unit.id)
    reports = 0

    async def report(report_id: str, **values: int) -> worker_pb.ReportUsageResponse:
        return await worker_api.report_usage(
            worker_pb.ReportUsageRequest(
                worker_id=registered.worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                report_id=report_id,
                model="claude-sonnet-4",
                **values,
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
                "payload": {"query": TASK_UPDATED, "variables": {"id": str(unit.id)}},
            }
        )
        # The subscription listens some time after the subscribe message: small reports
        # are sent until it hears one (each a new report, so each is counted).
        heard = None
        for _ in range(20):
            reports += 1
            await report(f"probe-{reports}", output_tokens=1)
            try:
                heard = await _next(socket, within=0.5)
                break
            except TimeoutError:
                continue
        assert heard is not None, "the subscription heard no report"
        before = heard["taskUpdated"]["task"]["usage"]
        assert before["reports"] >= 1

        sent = await report("big", input_tokens=BIG, cost_micros=2_500_000)
        assert sent.counted
        while True:  # past late echoes of the probes
            update = (await _next(socket))["taskUpdated"]
            if update["task"]["usage"]["inputTokens"]:
                break
        # A report sent again is not counted again, and changes nothing to announce.
        assert not (await report("big", input_tokens=BIG, cost_micros=2_500_000)).counted

    assert update["taskId"] == str(unit.id)
    assert update["task"]["usage"] == {
        "inputTokens": BIG,
        "outputTokens": reports,
        "cacheReadTokens": 0,
        "cacheWriteTokens": 0,
        "costMicros": 2_500_000,
        "costUsd": "2.500000",
        "reports": reports + 1,
    }
    assert sent.session_usage.input_tokens == BIG


async def test_a_workspace_list_with_usage_costs_a_fixed_number_of_statements(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    async def statements() -> int:
        sql_counter.reset()
        data = await _gql(
            http,
            "{ workspaces(limit: 500) { items { id usage { total { costMicros } }"
            " week: usage(days: 7) { total { reports } } } } }",
        )
        assert all(w["usage"]["total"]["costMicros"] == 5 for w in data["workspaces"]["items"])
        return sum("usage_records" in s for s in sql_counter.statements)

    async def add(count: int) -> None:
        for _ in range(count):
            ws = await make_workspace()
            group = await make_group(ws, [await make_repository(ws)])
            unit = await tasks.create_unit_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt="u"
            )
            await _used(await latest_session(unit.agent_task_id), unit=unit.id, cost_micros=5)

    await add(2)
    few = await statements()
    assert few == 4  # two periods asked for, two statements each
    await add(10)
    assert await statements() == few
