"""SIGTERM, seen by the clients of a real server process (issue 12, "Shutdown"): a waiting
long poll answers at once without a job, live log followers (Connect ``StreamLog`` and
GraphQL ``sessionLog``) end with ``unavailable`` naming the offset to resume from, a unary
call in flight still gets its answer, and the process exits 0 well within the grace."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.e2e.harness import (
    SESSION_LOG,
    Connect,
    ConnectFailure,
    GraphQLWs,
    Server,
    Worker,
    connect_stream,
)
from tests.waiting import GUARD_S, until

LONG_POLL_MS = 25_000  # far longer than the shutdown may take


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_SHUTDOWN_GRACE_S="20")
    try:
        yield await srv.ready()
    finally:
        srv.stop()


async def test_sigterm_ends_waits_and_streams_and_exits_zero(server: Server) -> None:
    api = Connect(server.base)
    worker = Worker(server.base)
    poller = Connect(server.base)
    socket = GraphQLWs(server.base)
    try:
        group = await api.group()
        task = await api.unit(group, "runs")
        session_id = await worker.claim(task["id"])
        await worker.write("0123456789\n")
        idle = await poller(
            "WorkerService/Register", {"name": "idle", "endpointUrl": "http://127.0.0.1:9"}
        )
        heard: list[dict[str, Any]] = []

        async def stream() -> ConnectFailure | None:
            try:
                async for message in connect_stream(
                    server.base, "SessionService/StreamLog", {"sessionId": session_id}
                ):
                    heard.append(message)
            except ConnectFailure as failure:
                return failure
            return None

        streaming = asyncio.create_task(stream())
        await socket.connect()
        op = await socket.subscribe(SESSION_LOG, {"id": session_id, "from": 0})
        first = await socket.receive(GUARD_S)
        assert (first["id"], first["type"]) == (op, "next"), first
        await until(lambda: heard, what="the Connect follower's first piece")

        started = time.monotonic()
        polling = asyncio.create_task(
            poller("WorkerService/GetTask", {"workerId": idle["workerId"], "waitMs": LONG_POLL_MS})
        )
        await asyncio.sleep(0.3)  # the long poll is waiting (the behaviour under test)
        assert not polling.done()
        server.proc.send_signal(signal.SIGTERM)

        answer = await asyncio.wait_for(polling, GUARD_S)
        assert "job" not in answer or answer["job"] is None, answer
        assert time.monotonic() - started < LONG_POLL_MS / 1000 / 2
        failure = await asyncio.wait_for(streaming, GUARD_S)
        assert failure is not None
        assert failure.code == "unavailable", failure
        assert "resume from offset 11" in failure.message
        # The GraphQL follower hears UNAVAILABLE with its offset, or (when uvicorn closes the
        # socket first) the close code 1012, "service restart": either way, reconnect.
        how, ending = await _graphql_end(socket)
        if how == "closed":
            assert ending == 1012, ending
        else:
            assert ending["type"] == "next", ending
            error = ending["payload"]["errors"][0]
            assert error["extensions"]["code"] == "UNAVAILABLE", error
            assert "resume from offset" in error["message"]
        code = await asyncio.to_thread(server.proc.wait, GUARD_S)
        assert code == 0, server.log()[-2000:]
        assert "Traceback" not in server.log()
    finally:
        await socket.close()
        await worker.close()
        await poller.close()
        await api.close()


async def _graphql_end(socket: GraphQLWs) -> tuple[str, Any]:
    """How the GraphQL follower's stream ended: ("message", the first message that is not
    output) or ("closed", the close code it received)."""
    try:
        while True:
            message = await socket.receive(GUARD_S)
            if message["type"] == "ping":
                continue
            if message["type"] == "next" and "errors" not in message["payload"]:
                continue  # output pieces before the end
            return "message", message
    except websockets.ConnectionClosed as closed:
        return "closed", None if closed.rcvd is None else closed.rcvd.code
