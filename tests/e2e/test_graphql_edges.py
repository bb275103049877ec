"""GraphQL against a real server process: hostile documents do not stall the event loop,
and every malformed WebSocket message closes the socket with 4400 and a reason (a crash
used to drop it with 1006 and no close frame), on both protocols."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.e2e.harness import SESSION_LOG, GraphQLWs, Server, serving
from tests.graphql.test_document_limits import doubling

TRANSPORT_WS = "graphql-transport-ws"
LEGACY_WS = "graphql-ws"


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One server for the module (these tests create no data)."""
    async with serving(tmp_path_factory.mktemp("graphql-edges")) as server:
        yield server


async def test_hostile_fragments_are_refused_while_healthz_answers(server: Server) -> None:
    """Depth 40: 2^40 spreads once expanded (the old limiters ran for hours; the client's
    timeout is only a bound on a broken server, never a measurement)."""
    hostile = {"query": doubling(40)}
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:

        async def attack() -> dict[str, Any]:
            response = await client.post("/graphql", json=hostile)
            body: dict[str, Any] = response.json()
            return body

        async def health() -> int:
            return (await client.get("/healthz")).status_code

        attacks = [asyncio.create_task(attack()) for _ in range(20)]
        checks = [await health() for _ in range(20)]
        answers = await asyncio.gather(*attacks)
    assert checks == [200] * 20
    for body in answers:
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "INVALID_ARGUMENT"
        assert "fields selected" in error["message"]
    assert "Traceback" not in server.log()


async def _closed_with(server: Server, protocol: str, *messages: str | bytes) -> tuple[int, str]:
    """Sends ``connection_init`` (acknowledged), then ``messages``; the close code and
    reason the server ends the connection with."""
    client = GraphQLWs(server.base, protocol)
    await client.connect()
    try:
        for message in messages:
            await client.ws.send(message)
        with pytest.raises(ConnectionClosed) as closed:
            await _drain(client.ws)
    finally:
        await client.close()
    frame = closed.value.rcvd
    assert frame is not None, "no close frame"
    return frame.code, frame.reason


async def _drain(ws: Any) -> None:
    """Reads until the server closes the socket (30 s per message at most)."""
    while True:
        await asyncio.wait_for(ws.recv(), 30)


def _start(protocol: str, payload: object, op: object = "1") -> str:
    kind = "subscribe" if protocol == TRANSPORT_WS else "start"
    return json.dumps({"id": op, "type": kind, "payload": payload})


def _log(protocol: str, offset: float) -> str:
    """A sessionLog subscription (the fast path's shape) from ``offset``, as Python's json
    writes it (NaN, -Infinity: not JSON)."""
    variables = {"id": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11", "from": offset}
    return _start(protocol, {"query": SESSION_LOG, "variables": variables})


MALFORMED: list[tuple[str, Any]] = [
    ("an array", lambda p: "[]"),
    ("a number", lambda p: "1"),
    ("a string", lambda p: '"connection_init"'),
    ("null", lambda p: "null"),
    ("not JSON", lambda p: "{nope"),
    ("binary", lambda p: b'{"type": "ping"}'),
    ("deep nesting", lambda p: '{"type": "ping", "x": ' + "[" * 20_000 + "]" * 20_000 + "}"),
    ("NaN", lambda p: '{"type": "ping", "x": NaN}'),
    ("a lone surrogate", lambda p: '{"type": "ping", "x": "\\ud800"}'),
    ("no type", lambda p: '{"id": "1"}'),
    ("an unknown type", lambda p: json.dumps({"type": "x" * 10_000})),
    ("a string payload", lambda p: _start(p, "{ workspaces { totalCount } }")),
    ("a null payload", lambda p: _start(p, None)),
    ("no query", lambda p: _start(p, {"variables": {}})),
    ("a numeric query", lambda p: _start(p, {"query": 5})),
    ("array variables", lambda p: _start(p, {"query": "{ __typename }", "variables": []})),
    ("no id", lambda p: _start(p, {"query": "{ __typename }"}, op=None)),
    ("a huge id", lambda p: _start(p, {"query": "{ __typename }"}, op="i" * 10_000)),
    ("a NaN offset", lambda p: _log(p, float("nan"))),
    ("an Infinity offset", lambda p: _log(p, float("-inf"))),
    ("a 1e400 offset", lambda p: _log(p, 7.0).replace("7.0", "1e400")),
]


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(("what", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
async def test_a_malformed_message_closes_with_4400_and_a_reason(
    server: Server, protocol: str, what: str, message: Any
) -> None:
    code, reason = await _closed_with(server, protocol, message(protocol))
    assert code == 4400, (what, code, reason)
    assert reason
    # Never an unbounded value of the request echoed back.
    assert "x" * 100 not in reason
    assert "i" * 100 not in reason


async def test_malformed_messages_leave_no_traceback(server: Server) -> None:
    for protocol in (TRANSPORT_WS, LEGACY_WS):
        await _closed_with(server, protocol, "[]")
        await _closed_with(server, protocol, _start(protocol, "query"))
    assert "Traceback" not in server.log()


SESSION_LOG_LITERAL = """
subscription { sessionLog(sessionId: "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11",
  fromOffset: %s) { offset data } }
"""


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize("offset", ["1e400", "-1e400"])
async def test_a_non_finite_log_offset_is_a_clear_error(
    server: Server, protocol: str, offset: str
) -> None:
    """The sessionLog fast path used to hang silently on offsets that are not finite."""
    client = GraphQLWs(server.base, protocol)
    await client.connect()
    try:
        await client.subscribe(SESSION_LOG_LITERAL % offset)
        message = await client.receive()
    finally:
        await client.close()
    # Refused by validation ("error") or by the resolver ("next" with errors).
    assert message["type"] in ("error", "next", "data"), message
    payload = message["payload"]
    error = payload[0] if isinstance(payload, list) else payload.get("errors", [payload])[0]
    assert error["extensions"]["code"] == "INVALID_ARGUMENT", message
    assert "fromOffset" in error["message"] or "Float" in error["message"]


async def test_well_formed_messages_still_work(server: Server) -> None:
    client = GraphQLWs(server.base, TRANSPORT_WS)
    await client.connect()
    try:
        await client.subscribe("query { __typename }")
        results = [payload async for payload in client.results()]
    finally:
        await client.close()
    assert results == [{"data": {"__typename": "Query"}}]


async def test_a_query_over_legacy_graphql_ws_is_a_request_error(server: Server) -> None:
    """The legacy protocol runs subscriptions only: a query is the caller's mistake, not
    an internal error."""
    client = GraphQLWs(server.base, LEGACY_WS)
    await client.connect()
    try:
        await client.subscribe("query { __typename }")
        message = await client.receive()
    finally:
        await client.close()
    assert message["type"] == "error"
    assert message["payload"]["extensions"]["code"] == "INVALID_ARGUMENT"
    assert message["payload"]["message"] == "queries are not allowed"


@pytest.mark.parametrize("protocol", [TRANSPORT_WS, LEGACY_WS])
@pytest.mark.parametrize(
    "size", [1_100_000, 64 * 1024 * 1024], ids=["just-too-large", "a-deflate-bomb"]
)
async def test_a_message_past_the_body_limit_closes_with_1009(
    server: Server, protocol: str, size: int
) -> None:
    """Regression: messages were inflated up to uvicorn's 16 MiB before the app's 1 MiB
    check (64 small frames of 16 MiB each pinned ~175 MB per connection and held the event
    loop). The client compresses: 64 MiB of spaces travel as ~64 KB."""
    message = '{"type": "ping", "x": "' + " " * size + '"}'
    code, reason = await _closed_with(server, protocol, message)
    assert code == 1009, (code, reason)
    assert " " * 100 not in reason
    async with httpx.AsyncClient(base_url=server.base) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert "Traceback" not in server.log()


async def test_a_subscription_as_large_as_the_largest_request_is_read(server: Server) -> None:
    """The message envelope around a body at the HTTP limit still fits (it is refused by
    the app's own limit of characters, with 4400, not cut off by the transport)."""
    query = "{ __typename }" + " " * (1_048_576 - 40)
    message = json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}})
    assert len(message) > 1_048_576
    code, _ = await _closed_with(server, TRANSPORT_WS, message)
    assert code == 4400


def _flood_pings(port: int, limit: int) -> int:
    """A graphql-transport-ws client that sends pings and never reads: the bytes it sent
    before the server dropped it (or ``limit``, if it never did)."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            (
                f"GET /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: graphql-transport-ws"
                "\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert b" 101 " in head, head
        ping = Frame(Opcode.PING, b"p" * 125).serialize(mask=True, extensions=[])
        burst = ping * 512
        sent = 0
        try:
            while sent < limit:
                sock.sendall(burst)
                sent += len(burst)
        except OSError:  # reset or broken pipe: dropped by the server
            return sent
        return sent


async def test_a_client_that_pings_and_never_reads_is_dropped(server: Server) -> None:
    """Regression: every ping's pong was kept unsent, without bound (400 MB of pings sent
    by a client that never read: 400 MB kept by the server)."""
    limit = 400 * 1024 * 1024
    sent = await asyncio.to_thread(_flood_pings, server.port, limit)
    assert sent < limit
    async with httpx.AsyncClient(base_url=server.base) as client:
        assert (await client.get("/healthz")).status_code == 200
    assert "Traceback" not in server.log()
