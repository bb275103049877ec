"""The WebSocket compression bypass (``delidev/websocket_deflate.py``) on a real server: on,
turned off (``DELIDEV_WS_DEFLATE_BYPASS=false``), and off because uvicorn lacks an internal
it uses (simulated). Followers read the same log in every case; only the negotiated
compression shows which protocol served them, and the fallback says so once in the log.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from tests.e2e.harness import SESSION_LOG, Connect, GraphQLWs, Server, Worker

# Clients never wait for a server ping here.
QUIET = {"DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS": "600000"}
MISSING = (
    "from delidev import websocket_deflate\n"
    "websocket_deflate.missing_internals = lambda: ['WebSocketsSansIOProtocol.writable']"
)
WARNING = "WebSocket compression bypass off"


async def _follow(client: GraphQLWs, session_id: str) -> str:
    await client.subscribe(SESSION_LOG, {"id": session_id, "from": 0})
    text = ""
    async for payload in client.results():
        assert not payload.get("errors"), payload
        piece = payload["data"]["sessionLog"]
        assert int(piece["offset"]) == len(text), "a gap or a repeat"
        text += str(piece["data"])
        if piece["final"]:
            return text
    raise AssertionError("the log ended without its final piece")


@pytest.mark.parametrize(
    ("mode", "env", "prelude"),
    [
        ("on", {}, ""),
        ("off", {"DELIDEV_WS_DEFLATE_BYPASS": "false"}, ""),
        ("missing", {}, MISSING),
    ],
)
async def test_followers_read_the_same_log_with_the_bypass_on_or_off(
    e2e_database_url: str, tmp_path: Path, mode: str, env: dict[str, str], prelude: str
) -> None:
    server = Server(e2e_database_url, tmp_path / "server.log", prelude=prelude, **QUIET, **env)
    try:
        await server.ready()
        api = Connect(server.base)
        worker = Worker(server.base)
        clients = [GraphQLWs(server.base) for _ in range(2)]
        try:
            task = await api.unit(await api.group(), "follow me")
            session_id = await worker.claim(task["id"])
            for client in clients:
                await client.connect()  # offers permessage-deflate, as browsers do
            following = [asyncio.create_task(_follow(c, session_id)) for c in clients]
            lines = [f"line {i:04} {uuid.uuid4().hex}\n" for i in range(200)]
            for i in range(0, len(lines), 10):
                await worker.write("".join(lines[i : i + 10]))
            await worker.finish()
            texts = await asyncio.wait_for(asyncio.gather(*following), 60)
            assert texts == ["".join(lines)] * 2
            # Both protocols compress; only the bypass's sends each message on its own.
            negotiated = clients[0].ws.response.headers["Sec-WebSocket-Extensions"]
            assert "permessage-deflate" in negotiated
            assert ("server_no_context_takeover" in negotiated) == (mode == "on")
        finally:
            for client in clients:
                if client.ws is not None:
                    await client.close()
            await worker.close()
            await api.close()
    finally:
        server.stop()
    assert server.log().count(WARNING) == (1 if mode == "missing" else 0)
