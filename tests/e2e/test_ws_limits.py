"""A server process holds a bounded number of GraphQL WebSockets and subscriptions.

Regression (audit): there was no cap past Strawberry's 100 operations per connection, so
100 connections held 10,000 workspace subscriptions; one task change then took 11.8 s to
reach them and a health probe waited 7.8 s. Now the connections and subscriptions of a
process are capped (and a user's, in multi-user mode: ``tests/graphql/test_ws_limits.py``),
and what is past a cap is refused with a reason while the rest keeps working.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.harness import GraphQLWs, Server, serving

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"
WORKERS = "subscription { workerUpdated { workerId deleted } }"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with serving(
        tmp_path,
        DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS="3",
        DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS_PER_ADDRESS="2",
        DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS="4",
        DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS_PER_CONNECTION="3",
    ) as server:
        yield server


async def _answer(client: GraphQLWs, op: str) -> dict[str, object] | None:
    """The error message for ``op``, or None when nothing came for it (it runs)."""
    try:
        while True:
            message = await client.receive(within=0.5)
            if message.get("id") == op:
                return message
    except TimeoutError:
        return None


async def test_subscriptions_past_the_process_limit_are_refused_with_a_reason(
    server: Server,
) -> None:
    first, second = GraphQLWs(server.base, TRANSPORT_WS), GraphQLWs(server.base, LEGACY_WS)
    await first.connect()
    await second.connect()
    try:
        held = [await first.subscribe(WORKERS) for _ in range(3)]
        for op in held:
            assert await _answer(first, op) is None
        # Strawberry's own cap of one connection.
        over = await _answer(first, await first.subscribe(WORKERS))
        assert over is not None
        assert over["type"] == "error"
        assert "Subscription limit reached" in str(over["payload"])
        # The fourth of the process, on another connection (and the other protocol).
        fourth = await second.subscribe(WORKERS)
        assert await _answer(second, fourth) is None
        refused = await _answer(second, await second.subscribe(WORKERS))
        assert refused is not None
        assert refused["type"] == "error"
        payload = refused["payload"]
        assert isinstance(payload, dict)
        assert payload["extensions"]["code"] == "UNAVAILABLE"
        assert "limit of 4 subscriptions" in payload["message"]
        # Ending one makes room: the next one runs.
        await first.send({"id": held[0], "type": "complete"})
        await asyncio.sleep(0.3)
        again = await second.subscribe(WORKERS)
        assert await _answer(second, again) is None
    finally:
        await first.close()
        await second.close()
    async with httpx.AsyncClient(base_url=server.base) as http:
        assert (await http.get("/healthz")).status_code == 200
    assert "Traceback" not in server.log()


async def _refused(server: Server, address: str) -> websockets.InvalidStatus:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await GraphQLWs(server.base, TRANSPORT_WS).connect(local_addr=(address, 0))
    assert refused.value.response.status_code == 503
    return refused.value


async def test_connections_past_the_limits_are_refused_at_the_handshake(server: Server) -> None:
    """Two connections per address, three per process: one client (signed in or not)
    cannot take every connection of the process."""
    here = [GraphQLWs(server.base, TRANSPORT_WS) for _ in range(2)]
    for client in here:
        await client.connect(local_addr=("127.0.0.1", 0))
    there = GraphQLWs(server.base, TRANSPORT_WS)
    try:
        per_address = await _refused(server, "127.0.0.1")
        assert b"your address holds the limit of 2" in per_address.response.body
        await there.connect(local_addr=("127.0.0.2", 0))  # another address still gets in
        per_process = await _refused(server, "127.0.0.2")
        assert b"limit of 3 WebSocket connections" in per_process.response.body
        await here[0].close()
        for _ in range(50):  # the server sees the close: the place is free again
            try:
                late = GraphQLWs(server.base, TRANSPORT_WS)
                await late.connect(local_addr=("127.0.0.1", 0))
            except websockets.InvalidStatus:
                await asyncio.sleep(0.1)
                continue
            await late.close()
            break
        else:
            raise AssertionError("a closed connection's place was not freed")
    finally:
        for client in (*here[1:], there):
            await client.close()
