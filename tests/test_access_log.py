"""Request ids, trace ids and the access line (``delidev/request_context.py``), in process; and
a real server process in multi-user mode, JSON logs at DEBUG, whose whole log holds none of
the secrets a scripted run carried."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from delidev.request_context import REQUEST_ID_MAX_CHARS, request_id_from, trace_id_from
from tests.conftest import fresh_database
from tests.e2e.harness import Connect, GraphQLWs, Server, Worker
from tests.e2e.sign_in import sign_in

GENERATED = re.compile(r"[0-9a-f]{32}")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def _access(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [r for r in caplog.records if r.name == "delidev.access"]


# --- Parsing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [b"abc", b"req-42.a:b_C", uuid.uuid4().hex.encode(), str(uuid.uuid4()).encode(), b"x" * 64],
)
def test_plausible_request_ids_are_taken(value: bytes) -> None:
    assert request_id_from(value) == value.decode()


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"x" * (REQUEST_ID_MAX_CHARS + 1),
        b"bad id",
        b"a\r\nb",
        b"<script>",
        b"\xc3\xa9",
        b"a/b",
    ],
)
def test_other_request_ids_are_refused(value: bytes) -> None:
    assert request_id_from(value) is None


@pytest.mark.parametrize(
    ("header", "trace"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f" 00-{TRACE}-00f067aa0ba902b7-00 ", TRACE),
        (f"01-{TRACE}-00f067aa0ba902b7-01-later-fields", TRACE),  # a later version: read on
        (f"00-{TRACE}-00f067aa0ba902b7-01-extra", None),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-00f067aa0ba902b7", None),
        ("garbage", None),
    ],
)
def test_traceparent(header: str, trace: str | None) -> None:
    assert trace_id_from(header.encode()) == trace


# --- In process -------------------------------------------------------------------------------


async def test_a_valid_request_id_is_echoed_and_logged_without_the_query(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="delidev.access")
    response = await http.get(
        "/healthz?access_token=query-secret-123",
        headers={"x-request-id": "req-42.a:b", "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )
    assert response.headers["x-request-id"] == "req-42.a:b"
    [line] = _access(caplog)
    assert (line.request_id, line.trace_id, line.status) == ("req-42.a:b", TRACE, 200)
    assert (line.method, line.path) == ("GET", "/healthz")
    assert "query-secret" not in line.getMessage()
    assert line.duration_ms >= 0


@pytest.mark.parametrize(
    "given", ["bad id", "x" * 5000, "a\r\nX-Injected: 1", "<script>alert(1)</script>"]
)
async def test_an_invalid_request_id_is_replaced_never_reflected(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, given: str
) -> None:
    caplog.set_level("INFO", logger="delidev.access")
    # httpx refuses to send CR/LF in a header: send the raw bytes the ASGI server would pass.
    response = await http.get("/healthz", headers=[(b"x-request-id", given.encode())])
    echoed = response.headers["x-request-id"]
    assert GENERATED.fullmatch(echoed)
    assert [r.request_id for r in _access(caplog)] == [echoed]
    assert given not in response.text
    assert all(given not in value for value in response.headers.values())


async def test_each_request_without_an_id_gets_its_own(http: httpx.AsyncClient) -> None:
    ids = {(await http.get("/healthz")).headers["x-request-id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(GENERATED.fullmatch(i) for i in ids)


async def test_the_access_line_names_the_connect_method_code_and_principal(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="delidev.access")
    response = await http.post(
        "/delidev.v1.TaskService/Get",
        json={"taskId": str(uuid.uuid4())},
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 404
    [line] = _access(caplog)
    assert (line.rpc, line.code, line.principal, line.status) == (
        "delidev.v1.TaskService/Get",
        "not_found",
        "local",
        404,
    )
    assert "rpc=delidev.v1.TaskService/Get" in line.getMessage()


async def test_the_access_line_names_the_graphql_operation_and_error_code(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="delidev.access")
    missing = str(uuid.uuid4())
    await http.post(
        "/graphql",
        json={"query": f'query Lookup {{ task(id: "{missing}") {{ id }} }}'},
    )
    await http.post("/graphql", json={"query": "mutation { nothing }"})
    first, second = _access(caplog)
    assert (first.graphql, first.principal, first.status) == ("query Lookup", "local", 200)
    # The code as GraphQL clients see it (``extensions.code``).
    assert first.code == "NOT_FOUND"
    assert (second.graphql, second.code) == ("mutation -", "INVALID_ARGUMENT")


# --- A real server: no secret in the log ------------------------------------------------------

JWT_SECRET = secrets.token_hex(32)
REGISTRATION = secrets.token_hex(24)
OPERATOR = secrets.token_hex(24)
OIDC_CLIENT_SECRET = secrets.token_hex(24)


@pytest.fixture
async def database_url_for_server(tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(tmp_path, "logs.db") as url:
        yield url


async def test_a_whole_run_logs_no_secret(database_url_for_server: str, tmp_path: Path) -> None:
    url = database_url_for_server
    server = Server(
        url,
        tmp_path / "server.log",
        DELIDEV_SINGLE_USER_MODE="false",
        DELIDEV_JWT_SECRET=JWT_SECRET,
        DELIDEV_WORKER_REGISTRATION_TOKEN=REGISTRATION,
        DELIDEV_OPERATOR_TOKEN=OPERATOR,
        DELIDEV_OIDC_ISSUER_URL="https://id.example",
        DELIDEV_OIDC_CLIENT_ID="c",
        DELIDEV_OIDC_CLIENT_SECRET=OIDC_CLIENT_SECRET,
        DELIDEV_LOG_FORMAT="json",
        DELIDEV_LOG_LEVEL="debug",
        DELIDEV_HEARTBEAT_INTERVAL_MS="600000",
    )
    carried: list[str] = [JWT_SECRET, REGISTRATION, OPERATOR, OIDC_CLIENT_SECRET]
    try:
        await server.ready()
        jwt = await sign_in(url, JWT_SECRET)
        carried.append(jwt)
        user = Connect(server.base, jwt)
        worker = Worker(server.base, REGISTRATION)
        try:
            group = await user.group()
            task = await user.unit(group, "log test")
            api_key = f"api-key-{uuid.uuid4().hex}"
            carried.append(api_key)
            await user("SecretsService/Send", {"taskId": task["id"], "secrets": {"KEY": api_key}})

            session = await worker.claim(task["id"])
            credential = worker.api.token
            assert credential
            assert credential != REGISTRATION
            carried.append(credential)
            got = await worker.api("WorkerService/GetSecrets", worker.lease)
            assert got["secrets"] == {"KEY": api_key}
            asked = await worker.api(
                "WorkerService/RequestTtyInput",
                {**worker.lease, "prompt": "Password?", "inputType": "TTY_INPUT_TYPE_PASSWORD"},
            )
            password = f"hunter2-{uuid.uuid4().hex}"
            carried.append(password)
            request_id = asked["request"]["id"]
            await user(
                "SessionService/SubmitTtyInput", {"requestId": request_id, "response": password}
            )
            answered = await worker.api(
                "WorkerService/WaitTtyInput",
                {**worker.lease, "requestId": request_id, "waitMs": 5000},
            )
            assert answered["response"] == password
            await worker.write("output\n")
            await worker.finish()
            assert session

            # GraphQL over HTTP (Authorization header) and over WebSocket (connection_init).
            graphql = await user.http.post(
                "/graphql",
                json={"query": "query Me { workspaces { totalCount } }"},
                headers={"authorization": f"Bearer {jwt}", "x-request-id": "gql-1"},
            )
            assert graphql.status_code == 200, graphql.text
            assert graphql.headers["x-request-id"] == "gql-1"
            ws = GraphQLWs(server.base)
            await ws.connect(
                {"authorization": f"Bearer {jwt}"},
                additional_headers={"x-request-id": "ws-connection-1"},
            )
            assert ws.ws.response.headers["x-request-id"] == "ws-connection-1"
            await ws.close()
            # A token on the upgrade request, and a short secret in a frame.
            ws = GraphQLWs(server.base)
            short = uuid.uuid4().hex[:12]
            carried.append(short)
            await ws.connect(
                {"note": short},
                additional_headers={"authorization": f"Bearer {jwt}", "cookie": f"s={short}"},
            )
            await ws.close()

            # Refused credentials, in a header and in a query string.
            bogus = f"bogus-token-{uuid.uuid4().hex}"
            carried.append(bogus)
            refused = await user.http.post(
                "/delidev.v1.WorkspaceService/List",
                json={},
                headers={"authorization": f"Bearer {bogus}"},
            )
            assert refused.status_code == 401
            await user.http.get(f"/healthz?access_token={bogus}")
        finally:
            await user.close()
            await worker.close()
    finally:
        server.stop()

    text = server.log()
    for secret in carried:
        assert secret not in text
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    access = [r for r in records if r["logger"] == "delidev.access"]
    assert all(r["request_id"] for r in access)
    # Records written while a request was handled carry its id (here: all the access lines
    # and what the services logged in between).
    by_path = {r["path"]: r for r in access}
    assert by_path["/delidev.v1.SecretsService/Send"]["principal"] not in (None, "local")
    assert by_path["/delidev.v1.WorkerService/GetSecrets"]["principal"].startswith("worker:")
    assert by_path["/delidev.v1.WorkspaceService/List"]["code"] == "unauthenticated"
    sockets = [r for r in access if r["method"] == "WEBSOCKET"]
    assert [r["status"] for r in sockets] == [101, 101]
    assert sockets[0]["request_id"] == "ws-connection-1"
    assert sockets[0]["principal"] not in (None, "local")
    assert any(r["graphql"] == "query Me" and r["request_id"] == "gql-1" for r in access)
    assert all("?" not in r["path"] for r in access)
