"""GraphQL's side of scheduling: the task subscription carries changes of why a job waits,
workers show their capabilities, and a list of tasks with their waits costs a fixed number
of statements however many tasks it holds."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import tasks, workers
from delidev.services.scheduling import waits
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

TASK_UPDATED = (
    "subscription($id: ID!) { taskUpdated(taskId: $id) { taskId task { "
    "... on UnitTask { priority wait { reason detail position } } } } }"
)
WORKER_UPDATED = "subscription { workerUpdated { worker { name agentTypes labels draining } } }"


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _subscribe(socket: AsyncWebSocketSession, query: str, **variables: Any) -> None:
    await socket.send_json({"type": "connection_init", "payload": {}})
    assert (await socket.receive_json())["type"] == "connection_ack"
    payload = {"query": query, "variables": variables}
    await socket.send_json({"id": "1", "type": "subscribe", "payload": payload})


async def _next(socket: AsyncWebSocketSession) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(socket.receive_json(), timeout=5)
        if message["type"] == "ping":
            await socket.send_json({"type": "pong"})
            continue
        assert message["type"] == "next", message
        assert not message["payload"].get("errors"), message
        data: dict[str, Any] = message["payload"]["data"]
        return data


async def _until_heard(
    socket: AsyncWebSocketSession, change: Callable[[], Awaitable[object]]
) -> dict[str, Any]:
    """Makes ``change`` until the subscription reports one: it may not listen yet at first."""
    for _ in range(20):
        await change()
        try:
            return await asyncio.wait_for(_next(socket), timeout=0.5)
        except TimeoutError:
            continue
    raise AssertionError("the subscription heard none of the changes")


async def test_task_updated_carries_the_wait_turning_from_no_worker_to_queued(app: Any) -> None:
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=(await _group()).id, prompt="p"
    )
    await waits.reconcile_waits()
    transport = ASGIWebSocketTransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as socket,
    ):
        await _subscribe(socket, TASK_UPDATED, id=str(task.id))
        # A change the subscription must see, so that we know it is listening.
        first = await _until_heard(
            socket,
            lambda: tasks.set_task_priority(
                actor=LOCAL_USER, task_id=task.id, priority=m.TaskPriority.HIGH
            ),
        )
        assert first["taskUpdated"]["task"]["priority"] == "HIGH"
        assert first["taskUpdated"]["task"]["wait"]["reason"] == "NO_CAPABLE_WORKER"

        await workers.register_worker(name="w", endpoint_url="http://w:1")
        assert await waits.reconcile_waits() == 1  # as the reconciler loop would, after it
        for _ in range(5):  # past a late echo of the priority changes above
            update = (await _next(socket))["taskUpdated"]
            if update["task"]["wait"]["reason"] != "NO_CAPABLE_WORKER":
                break
    assert update["taskId"] == str(task.id)
    assert update["task"]["wait"] == {
        "reason": "QUEUED",
        "detail": "waits for a free worker",
        "position": 0,
    }


async def test_worker_updates_show_agent_types_labels_and_draining(app: Any) -> None:
    transport = ASGIWebSocketTransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as socket,
    ):
        await _subscribe(socket, WORKER_UPDATED)
        heard = await _until_heard(
            socket,
            lambda: workers.register_worker(
                name="gpu",
                endpoint_url="http://w:1",
                agent_types=["codex_cli"],
                labels=["gpu=true", "os=linux"],
            ),
        )
    update = heard["workerUpdated"]
    assert update["worker"] == {
        "name": "gpu",
        "agentTypes": ["CODEX_CLI"],
        "labels": ["gpu=true", "os=linux"],
        "draining": False,
    }


LIST = (
    "query($w: ID) { tasks(workspaceId: $w) { edges { node { "
    "... on UnitTask { priority requiredLabels maxRunSeconds wait { reason position } "
    "latestSession { autoRetries failureKind deadlineAt } } "
    "... on CompositeTask { priority wait { reason } } } } } }"
)


async def test_a_list_with_waits_costs_a_fixed_number_of_statements(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    group = await _group()
    await workers.register_worker(name="w", endpoint_url="http://w:1")

    async def statements(count: int) -> int:
        for _ in range(count):
            await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
            await tasks.create_composite_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt="p"
            )
        await waits.reconcile_waits()
        sql_counter.reset()
        response = await http.post(
            "/graphql", json={"query": LIST, "variables": {"w": str(group.workspace_id)}}
        )
        body = response.json()
        assert "errors" not in body, body
        nodes = [e["node"] for e in body["data"]["tasks"]["edges"]]
        assert all(n["wait"]["reason"] == "QUEUED" for n in nodes)
        assert all(n["priority"] == "NORMAL" for n in nodes)
        return len(sql_counter.statements)

    assert await statements(2) == await statements(10)
