"""Live streams end to end: real server processes, real WebSocket and Connect streaming
clients, the reference worker writing the log. On PostgreSQL the subscribers sit on one
server process and the worker writes through another."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from tests.conftest import BACKEND
from tests.e2e.harness import (
    SESSION_LOG,
    Connect,
    GraphQLWs,
    Server,
    Sim,
    connect_stream,
    eventually,
    server_pair,
)
from tests.e2e.sign_in import sign_in
from tests.waiting import until

STREAM = ("--lines-per-second", "400", "--chunk-interval", "0.02", "--wait-ms", "300")


@pytest.fixture
async def servers(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[tuple[Server, Server]]:
    """(where clients subscribe, where the worker writes): two processes on PostgreSQL."""
    env = {"DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS": "300"}
    two = BACKEND == "postgres"
    async with server_pair(e2e_database_url, tmp_path, two=two, **env) as pair:
        yield pair


async def _running_session(api: Connect, prompt: str) -> tuple[str, str]:
    group = await api.group()
    task = await api.unit(group, prompt)
    runs = await eventually(
        lambda: api.task(task["id"]),
        lambda t: t.get("latestSession", {}).get("status") == "AGENT_SESSION_STATUS_RUNNING",
    )
    return task["id"], runs["latestSession"]["id"]


async def _gql_log(
    base: str, session_id: str, *, protocol: str, start: int = 0, seen: list[str] | None = None
) -> str:
    """The text followed from ``start``; each piece is also appended to ``seen`` as it comes."""
    client = GraphQLWs(base, protocol)
    await client.connect()
    try:
        text, offset = "", start
        await client.subscribe(SESSION_LOG, {"id": session_id, "from": start})
        async for payload in client.results():
            assert not payload.get("errors"), payload
            piece = payload["data"]["sessionLog"]
            assert int(piece["offset"]) == offset, "a gap or a repeat"
            text += piece["data"]
            if seen is not None:
                seen.append(piece["data"])
            offset = int(piece["nextOffset"])  # never a count of our own
            if piece["final"]:
                assert piece["status"] == "SUCCEEDED"
        return text
    finally:
        await client.close()


async def _connect_log(
    base: str, session_id: str, start: int = 0, stop_after: int = 0, seen: list[str] | None = None
) -> tuple[str, int]:
    """The text streamed from ``start``, and the offset to resume from; each piece is also
    appended to ``seen`` as it comes."""
    text, offset, count = "", start, 0
    async for message in connect_stream(
        base, "SessionService/StreamLog", {"sessionId": session_id, "fromOffset": start}
    ):
        # int64 fields are JSON strings, and left out when zero.
        assert int(message.get("offset", 0)) == offset, "a gap or a repeat"
        text += message.get("data", "")
        if seen is not None:
            seen.append(message.get("data", ""))
        offset = int(message.get("nextOffset", 0))
        count += 1
        if stop_after and count >= stop_after:
            break
    return text, offset


async def _stored_log(api: Connect, session_id: str) -> str:
    got = await api("SessionService/GetLog", {"sessionId": session_id})
    assert got["complete"] is True
    return str(got["content"])


@pytest.mark.parametrize("protocol", ["graphql-transport-ws", "graphql-ws"])
async def test_subscribers_on_one_process_see_what_a_worker_writes_through_another(
    servers: tuple[Server, Server], tmp_path: Path, protocol: str
) -> None:
    a, b = servers
    api = Connect(a.base)
    sim = Sim(b.base, tmp_path, "writer", "--idle-exit", "1", *STREAM)
    try:
        # Emoji, combining marks, CJK: lengths differ in code points, UTF-16 units, bytes.
        _, session_id = await _running_session(api, "stream [sim:lines=400] [sim:unicode]")
        gql = asyncio.create_task(_gql_log(a.base, session_id, protocol=protocol))
        rpc = asyncio.create_task(_connect_log(a.base, session_id))
        # A client that drops out mid-stream and comes back with the next offset it was given.
        first, resume_at = await _connect_log(a.base, session_id, stop_after=2)
        resumed, _ = await _connect_log(a.base, session_id, start=resume_at)
        await asyncio.to_thread(sim.wait, 60)
        whole = await _stored_log(api, session_id)
        assert whole.count("\n") >= 400
        assert whole.count("\U0001f600 caf\u00e9 e\u0301\u0301 \u4e2d\u6587") >= 400
        assert await asyncio.wait_for(gql, 60) == whole
        assert (await asyncio.wait_for(rpc, 60))[0] == whole
        assert first + resumed == whole
    finally:
        sim.kill()
        await api.close()


@pytest.mark.postgres_only
async def test_streams_recover_when_the_listen_connection_is_killed(
    servers: tuple[Server, Server], tmp_path: Path, e2e_database_url: str
) -> None:
    a, b = servers
    api = Connect(a.base)
    sim = Sim(b.base, tmp_path, "writer", "--idle-exit", "1", "--lines-per-second", "100",
              "--chunk-interval", "0.02", "--wait-ms", "300")  # fmt: skip
    try:
        _, session_id = await _running_session(api, "stream [sim:lines=300]")
        gql_seen: list[str] = []
        rpc_seen: list[str] = []
        gql = asyncio.create_task(
            _gql_log(a.base, session_id, protocol="graphql-transport-ws", seen=gql_seen)
        )
        rpc = asyncio.create_task(_connect_log(a.base, session_id, seen=rpc_seen))
        # Both streams are following (each has output) before their events' connection dies.
        await until(lambda: gql_seen and rpc_seen, what="both streams following")
        conn = await asyncpg.connect(e2e_database_url)
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'delidev-events-listener' "
                "AND datname = current_database()"
            )
        finally:
            await conn.close()
        assert killed >= 1
        await asyncio.to_thread(sim.wait, 60)
        whole = await _stored_log(api, session_id)
        assert await asyncio.wait_for(gql, 60) == whole
        assert (await asyncio.wait_for(rpc, 60))[0] == whole
        assert "event listener reconnected" in a.log()
    finally:
        sim.kill()
        await api.close()


async def test_two_hundred_subscribers_and_one_that_never_reads(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    a, b = servers
    api = Connect(a.base)
    sim = Sim(b.base, tmp_path, "writer", "--idle-exit", "1", *STREAM)
    stalled = GraphQLWs(a.base)
    try:
        group = await api.group()
        task = await api.unit(group, "stream [sim:lines=300] [sim:sleep=1]")
        session_id = (
            await eventually(lambda: api.task(task["id"]), lambda t: "latestSession" in t)
        )["latestSession"]["id"]
        await stalled.connect()
        await stalled.subscribe(SESSION_LOG, {"id": session_id, "from": 0})  # never read
        logs = [
            asyncio.create_task(_gql_log(a.base, session_id, protocol="graphql-transport-ws"))
            for _ in range(200)
        ]
        await asyncio.to_thread(sim.wait, 120)
        whole = await _stored_log(api, session_id)
        results = await asyncio.wait_for(asyncio.gather(*logs), 120)
        assert all(r == whole for r in results)
    finally:
        sim.kill()
        await stalled.close()
        await api.close()


async def test_task_updates_tty_questions_and_workers_are_pushed(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    a, b = servers
    api = Connect(a.base)
    client = GraphQLWs(a.base)
    await client.connect()
    sim: Sim | None = None
    try:
        group = await api.group()
        workspace = (await api("RepositoryGroupService/List", {}))["groups"][0]["workspaceId"]
        task = await api.unit(group, "ask [sim:tty] [sim:lines=2]")
        await client.subscribe(
            "subscription($t: ID!) { taskUpdated(taskId: $t) { taskId deleted task { "
            "... on UnitTask { status latestSession { status } } } } }",
            {"t": task["id"]},
        )
        await client.subscribe(
            "subscription($w: ID!) { ttyInputRequested(workspaceId: $w) { id prompt status } }",
            {"w": workspace},
        )
        await client.subscribe(
            "subscription { workerUpdated { workerId deleted worker { status } } }"
        )
        # The subscriptions are in place once one hears of a probe worker, registered after
        # all three were sent (the worker that the test is about starts only then).
        probe = (
            await api(
                "WorkerService/Register", {"name": "probe", "endpointUrl": "http://127.0.0.1:9"}
            )
        )["workerId"]
        heard = await client.receive(30)
        while heard["type"] == "ping":
            await client.send({"type": "pong"})
            heard = await client.receive(30)
        assert heard["id"] == "3", heard
        assert heard["payload"]["data"]["workerUpdated"]["workerId"] == probe, heard
        sim = Sim(b.base, tmp_path, "asker", "--idle-exit", "1", *STREAM)
        seen: dict[str, list[Any]] = {"1": [], "2": [], "3": []}
        answered = False
        while True:
            message = await client.receive(30)
            if message["type"] == "ping":
                await client.send({"type": "pong"})
                seen.setdefault("ping", []).append(1)
                continue
            assert message["type"] == "next", message
            data = message["payload"]["data"]
            seen[message["id"]].append(data)
            if message["id"] == "2" and not answered:
                question = data["ttyInputRequested"]
                assert (question["prompt"], question["status"]) == (
                    "Which branch should I use?",
                    "PENDING",
                )
                await api(
                    "SessionService/SubmitTtyInput",
                    {"requestId": question["id"], "response": "main"},
                )
                answered = True
            if message["id"] == "1":
                unit = data["taskUpdated"]["task"]
                if unit and unit["status"] == "IN_REVIEW":
                    break
        statuses = [d["taskUpdated"]["task"]["latestSession"]["status"] for d in seen["1"]]
        assert "RUNNING" in statuses
        assert answered
        assert any(
            d["workerUpdated"]["worker"]
            for d in seen["3"]
            if d["workerUpdated"]["worker"] and d["workerUpdated"]["workerId"] != probe
        )
        await asyncio.to_thread(sim.wait, 30)
    finally:
        if sim is not None:
            sim.kill()
        await client.close()
        await api.close()


async def test_websocket_keep_alive_and_init_timeout(e2e_database_url: str, tmp_path: Path) -> None:
    srv = Server(
        e2e_database_url,
        tmp_path / "ws.log",
        DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS="200",
        DELIDEV_GRAPHQL_WS_INIT_TIMEOUT_MS="300",
    )
    try:
        await srv.ready()
        idle = GraphQLWs(srv.base)
        await idle.connect()
        assert (await idle.receive(5))["type"] == "ping"  # the server pings idle clients
        await idle.close()
        silent = GraphQLWs(srv.base)
        await silent.connect(init=False)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await silent.receive(5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4408
    finally:
        srv.stop()


async def test_the_session_log_fast_path_answers_like_graphql_itself(
    servers: tuple[Server, Server], tmp_path: Path
) -> None:
    """Plain sessionLog documents skip graphql-core per event; one with a fragment (or an
    error) goes the ordinary way. Both must send the same messages."""
    a, b = servers
    api = Connect(a.base)
    sim = Sim(b.base, tmp_path, "writer", "--idle-exit", "1", *STREAM)
    plain = (
        "subscription S($id: ID!) { log: sessionLog(sessionId: $id, fromOffset: 3) "
        "{ __typename at: offset data status final next: nextOffset } }"
    )
    ordinary = (
        "subscription S($id: ID!) { log: sessionLog(sessionId: $id, fromOffset: 3) "
        "{ __typename ... on LogChunk { at: offset data status final next: nextOffset } } }"
    )

    async def messages(query: str, session_id: str, **variables: Any) -> list[dict[str, Any]] | str:
        """The payloads, or the subscription's ``error`` message as text."""
        client = GraphQLWs(a.base)
        await client.connect()
        try:
            await client.subscribe(query, {"id": session_id, **variables})
            return [payload async for payload in client.results()]
        except AssertionError as error:
            return str(error)
        finally:
            await client.close()

    try:
        _, session_id = await _running_session(api, "stream [sim:lines=50] [sim:unicode]")
        await asyncio.to_thread(sim.wait, 60)
        fast, slow = await messages(plain, session_id), await messages(ordinary, session_id)
        assert fast == slow
        assert fast[0]["data"]["log"]["__typename"] == "LogChunk"
        assert fast[-1]["data"]["log"]["final"] is True
        unknown = "00000000-0000-0000-0000-000000000001"
        fast_err = await messages(plain, unknown)
        slow_err = await messages(ordinary, unknown)
        assert fast_err == slow_err
        assert fast_err[0]["errors"][0]["extensions"]["code"] == "NOT_FOUND", fast_err  # type: ignore[index]
        # Regressions: the fast path read a variable without coercing it (its default was
        # ignored, ``true`` read as 1) ...
        defaulted = (
            "subscription S($id: ID!, $o: Float = 3) { log: sessionLog(sessionId: $id, "
            "fromOffset: $o) { __typename at: offset data status final next: nextOffset } }"
        )
        assert await messages(defaulted, session_id) == fast
        wrong = await messages(defaulted, session_id, o=True)
        assert "Float cannot represent non numeric value: True" in str(wrong), wrong
        # ... and served any number of aliases of the log's text, each piece as many times,
        # past the document limits (40 aliases: 40 copies of a log in every message).
        many = (
            "subscription S($id: ID!) { sessionLog(sessionId: $id) { "
            + " ".join(f"d{i}: data" for i in range(40))
            + " } }"
        )
        refused = await messages(many, session_id)
        assert "40 aliases found. Allowed: 30" in str(refused), refused
        twice = (
            "subscription S($id: ID!) { log: sessionLog(sessionId: $id, fromOffset: 3) "
            "{ __typename at: offset data status final next: nextOffset again: data } }"
        )
        doubled = await messages(twice, session_id)
        assert [m["data"]["log"]["again"] for m in doubled] == [  # type: ignore[index]
            m["data"]["log"]["data"]
            for m in fast  # type: ignore[union-attr]
        ]
    finally:
        sim.kill()
        await api.close()


async def test_multi_user_websockets_authenticate_in_connection_init(
    e2e_database_url: str, tmp_path: Path
) -> None:
    secret = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
    srv = Server(
        e2e_database_url,
        tmp_path / "mu.log",
        DELIDEV_SINGLE_USER_MODE="false",
        DELIDEV_JWT_SECRET=secret,
        DELIDEV_OIDC_ISSUER_URL="https://id.example",
        DELIDEV_OIDC_CLIENT_ID="c",
        DELIDEV_OIDC_CLIENT_SECRET="s",
    )
    try:
        await srv.ready()
        user_id = uuid.uuid4()
        now = "2026-01-01 00:00:00+00:00"
        if e2e_database_url.startswith("sqlite://"):
            import sqlite3

            with sqlite3.connect(e2e_database_url.removeprefix("sqlite://")) as db:
                db.execute(
                    "INSERT INTO users (id, email, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (str(user_id), "ws@example.com", now, now),
                )
        else:
            conn = await asyncpg.connect(e2e_database_url)
            try:
                await conn.execute(
                    "INSERT INTO users (id, email, created_at, updated_at) "
                    "VALUES ($1, $2, now(), now())",
                    user_id,
                    "ws@example.com",
                )
            finally:
                await conn.close()
        token = await sign_in(e2e_database_url, secret, user_id)
        for payload in (None, {"authorization": "Bearer nope"}):
            refused = GraphQLWs(srv.base)
            await refused.connect(init=False)
            await refused.send({"type": "connection_init", "payload": payload or {}})
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await refused.receive(5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4403
        welcome = GraphQLWs(srv.base)
        await welcome.connect({"authorization": f"Bearer {token}"})  # asserts the ack
        await welcome.subscribe("subscription { workerUpdated { workerId } }")
        await welcome.close()
    finally:
        srv.stop()
