"""A real server process against hostile clients: it answers and stays alive.

A deep JSON body used to kill the process (SIGSEGV in protobuf-py's parser), plain gRPC
wrote a traceback per request, a foreign ``Host`` reached a single-user server (DNS
rebinding) and connections that never finished their headers were held for ever.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.e2e.harness import Server, serving

DEEP = b"[" * 15_000 + b"]" * 15_000
HEADER_TIMEOUT_MS = 300
# Longer than the header tests' waits (three header deadlines) before they send a body.
BODY_TIMEOUT_MS = 2_000
# Generous: the server closes after HEADER_TIMEOUT_MS; this only bounds a broken run.
WAIT_S = 30.0


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """One server for the module (single-user, as the DNS-rebinding target is)."""
    async with serving(
        tmp_path_factory.mktemp("hardening"),
        DELIDEV_HEADER_TIMEOUT_MS=str(HEADER_TIMEOUT_MS),
        DELIDEV_BODY_TIMEOUT_MS=str(BODY_TIMEOUT_MS),
        DELIDEV_ALLOWED_HOSTS="delidev.example.test",
        DELIDEV_CORS_ORIGINS="http://localhost:5173",
    ) as server:
        yield server


async def _alive(server: Server) -> None:
    """The process still serves, and nothing so far wrote a traceback to its log."""
    assert server.proc.poll() is None, server.log()
    async with httpx.AsyncClient(base_url=server.base) as client:
        assert (await client.get("/healthz")).status_code == 200
    log = server.log()
    assert "Traceback" not in log, log
    assert "Exception in ASGI application" not in log, log


async def test_deep_json_is_refused_and_the_server_lives(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base, timeout=WAIT_S) as client:
        for body, content_type in (
            (DEEP, "application/json"),
            (b"[" * 1_000_000, "application/json"),
            (b'{"a":' * 15_000 + b"1" + b"}" * 15_000, "application/json"),
            (b"\x0b" * 15_000 + b"\x0c" * 15_000, "application/proto"),  # nested groups
        ):
            response = await client.post(
                "/delidev.v1.AuthService/GetCurrentUser",
                content=body,
                headers={"content-type": content_type},
            )
            assert response.status_code == 400, server.log()
            assert response.json()["code"] == "invalid_argument"
        envelope = b"\x00" + len(DEEP).to_bytes(4, "big") + DEEP
        response = await client.post(
            "/delidev.v1.SessionService/StreamLog",
            content=envelope,
            headers={"content-type": "application/connect+json"},
        )
        assert b'"code": "invalid_argument"' in response.content
    await _alive(server)


async def test_a_body_of_many_gzip_members_is_refused_at_once(server: Server) -> None:
    """Regression: 200,000 empty gzip members (4 MB) held the event loop for ~30 s, a
    health probe sent meanwhile included (with WAIT_S, this test failed then)."""
    async with httpx.AsyncClient(base_url=server.base, timeout=WAIT_S) as client:
        hostile = client.post(
            "/delidev.v1.WorkspaceService/List",
            content=gzip.compress(b"") * 200_000,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        response, probe = await asyncio.gather(hostile, client.get("/healthz"))
    assert response.status_code == 400
    assert "at most 16 members" in response.json()["message"]
    assert probe.status_code == 200
    await _alive(server)


async def test_plain_grpc_is_refused_without_a_traceback(server: Server) -> None:
    async with httpx.AsyncClient(base_url=server.base) as client:
        for _ in range(3):
            response = await client.post(
                "/delidev.v1.AuthService/GetCurrentUser",
                content=b"\x00\x00\x00\x00\x00",
                headers={"content-type": "application/grpc", "te": "trailers"},
            )
            assert response.status_code == 415
            assert response.headers["grpc-status"] == "12"
    await _alive(server)


def _exchange(port: int, request: bytes) -> bytes:
    """Sends raw bytes and reads until the server closes or a response head is in."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def _status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1", 200),
        ("localhost:54871", 200),
        ("[::1]:8080", 200),
        ("LOCALHOST", 200),
        ("delidev.example.test", 200),  # DELIDEV_ALLOWED_HOSTS
        ("rebound.attacker.test", 400),
        ("rebound.attacker.test:54871", 400),
        ("127.0.0.1.attacker.test", 400),
        ("", 400),
    ],
)
async def test_only_loopback_and_configured_hosts_are_served(
    server: Server, host: str, status: int
) -> None:
    for path, method, body in (
        ("/delidev.v1.AuthService/GetCurrentUser", "POST", b"{}"),
        ("/graphql", "POST", b'{"query": "{ __typename }"}'),
    ):
        request = (
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        ).encode() + body
        head = await asyncio.to_thread(_exchange, server.port, request)
        assert _status(head) == status, (path, head)
    await _alive(server)


def _websocket_handshake(port: int, host: str, origin: str | None = None) -> int:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /graphql HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: graphql-transport-ws\r\n"
        + (f"Origin: {origin}\r\n" if origin else "")
        + "\r\n"
    ).encode()
    return _status(_exchange(port, request))


@pytest.mark.parametrize(
    ("host", "origin", "status"),
    [
        ("127.0.0.1", None, 101),
        ("rebound.attacker.test", None, 400),
        # The page of a rebound name is on that name: refused for the host already.
        ("rebound.attacker.test", "http://rebound.attacker.test", 400),
        # Origins: the same setting as CORS (DELIDEV_CORS_ORIGINS).
        ("127.0.0.1", "http://localhost:5173", 101),
        ("127.0.0.1", "http://other.test:5173", 403),
    ],
)
async def test_websocket_handshakes_follow_host_and_origin(
    server: Server, host: str, origin: str | None, status: int
) -> None:
    assert await asyncio.to_thread(_websocket_handshake, server.port, host, origin) == status


async def test_the_header_timeout_leaves_an_upgraded_websocket_alone(server: Server) -> None:
    def handshake_then_wait() -> tuple[bytes, bool]:
        key = base64.b64encode(os.urandom(16)).decode()
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
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
            # Past the header deadline (the WebSocket's own init timeout is 10 s).
            return head, _closed_within(sock, HEADER_TIMEOUT_MS * 3 / 1000)

    head, closed = await asyncio.to_thread(handshake_then_wait)
    assert _status(head) == 101
    assert not closed


def _held_open(port: int, first: bytes, trickle: bytes = b"") -> bytes:
    """Opens a connection, sends ``first``, then ``trickle`` a byte every 50 ms, and returns
    what the server wrote until it closed the connection (a recv that times out after
    WAIT_S fails the test: the connection was held open)."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(first)
        received = b""
        for byte in trickle:
            sock.settimeout(0.05)
            try:
                chunk = sock.recv(4096)
            except TimeoutError:
                sock.sendall(bytes([byte]))
                continue
            if not chunk:
                return received
            received += chunk
        sock.settimeout(WAIT_S)
        while chunk := sock.recv(4096):
            received += chunk
        return received


async def test_connections_without_complete_headers_are_closed(server: Server) -> None:
    partial = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    many = [asyncio.to_thread(_held_open, server.port, partial) for _ in range(40)]
    silent = asyncio.to_thread(_held_open, server.port, b"")
    # Headers sent a byte at a time: each byte comes in time, the whole never does.
    trickle = b"ET /healthz HTTP/1.1\r\nx-pad: " + b"a" * 2_000
    slow = asyncio.to_thread(_held_open, server.port, b"G", trickle)
    results = await asyncio.gather(*many, silent, slow)
    for received in results:  # each was closed by the server (else recv would time out)
        assert received.startswith(b"HTTP/1.1 408 "), received
    # A kept-alive connection gets a new deadline for its next request.
    after_one = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\n"
    received = await asyncio.to_thread(_held_open, server.port, after_one)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert b"HTTP/1.1 408 " in received
    await _alive(server)


async def test_header_timeout_spares_slow_bodies_and_streams(server: Server) -> None:
    """Only the headers are timed: a request whose body is still coming is the app's."""
    body = b'{"query": "{ __typename }"}'
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )

    def slow_body() -> bytes:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(head)
            # Wait past the header deadline before the body (an event, not a sleep bound
            # on the test: the server has to close by then if it timed the body too).
            closed = _closed_within(sock, HEADER_TIMEOUT_MS * 3 / 1000)
            assert not closed
            sock.sendall(body)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data

    received = await asyncio.to_thread(slow_body)
    assert received.startswith(b"HTTP/1.1 200 "), received


def _stalled_body(port: int, head: bytes, sent: bytes) -> tuple[bytes, float]:
    """Sends a request's head and part of its body, then nothing; returns what the server
    wrote until it closed the connection, and how long after the last byte that was."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        sock.sendall(head + sent)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received, time.monotonic() - started


_CONNECT_HEAD = (
    b"POST /delidev.v1.WorkspaceService/List HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"content-type: application/json\r\ncontent-length: 100\r\n\r\n"
)
_GRAPHQL_CHUNKED_HEAD = (
    b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


async def test_bodies_that_stop_arriving_are_answered_and_closed(server: Server) -> None:
    """A request that announces a body and stops sending it held its connection and its
    handler for ever; now 408 once the body has been idle for the body timeout."""
    stalled = [
        asyncio.to_thread(_stalled_body, server.port, _CONNECT_HEAD, b'{"pageSize": 1'),
        asyncio.to_thread(_stalled_body, server.port, _CONNECT_HEAD, b""),
        asyncio.to_thread(_stalled_body, server.port, _GRAPHQL_CHUNKED_HEAD, b'5\r\n{"que'),
    ] * 10
    for received, after in await asyncio.gather(*stalled):
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert b"the request body stopped arriving" in received
        assert after >= BODY_TIMEOUT_MS / 1000 * 0.9
    await _alive(server)


async def test_a_client_leaving_mid_body_leaves_no_traceback(server: Server) -> None:
    """Regression: a GraphQL request whose client closed the connection before its body was
    whole was logged as a 500 with a traceback (Starlette's ClientDisconnect)."""

    def leave(head: bytes, part: bytes) -> None:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            sock.sendall(head + part)
            assert not _closed_within(sock, 0.2)  # the server waits for the rest

    before = server.log().count(" 499 ")
    await asyncio.gather(
        asyncio.to_thread(leave, _GRAPHQL_CHUNKED_HEAD, b'5\r\n{"que'),
        asyncio.to_thread(leave, _CONNECT_HEAD, b'{"pageSize"'),
    )
    for _ in range(100):  # the server notices the closed connections
        if server.log().count(" 499 ") >= before + 2:
            break
        await asyncio.sleep(0.05)
    assert server.log().count(" 499 ") == before + 2, server.log()
    await _alive(server)


async def test_slow_bodies_that_keep_coming_are_not_cut(server: Server) -> None:
    """Idle time, not total time: a body sent a piece at a time, each within the body
    timeout, arrives whole however long it takes in all."""
    body = b'{"query": "{ __typename }"}'
    head = (
        b"POST /graphql HTTP/1.1\r\nHost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body)
    )
    pieces = [body[i : i + 3] for i in range(0, len(body), 3)]
    gap = BODY_TIMEOUT_MS / 1000 / 3

    def trickle() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT_S) as sock:
            started = time.monotonic()
            sock.sendall(head)
            for piece in pieces:
                # Waits for the server to close (it must not), at most a third of the
                # body timeout, then sends the next piece.
                assert not _closed_within(sock, gap)
                sock.sendall(piece)
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            return data, time.monotonic() - started

    received, took = await asyncio.to_thread(trickle)
    assert received.startswith(b"HTTP/1.1 200 "), received
    assert b"__typename" in received
    assert took > 2 * BODY_TIMEOUT_MS / 1000  # the whole took longer than the timeout


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    finally:
        sock.settimeout(WAIT_S)


def _sent_until_closed(port: int, head: bytes, pieces: int = 1, piece: bytes = b"") -> bytes:
    """Sends ``head``, then ``pieces`` times ``piece`` (a line that never ends, say) while
    the server lets it, and returns all the server wrote until it closed the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as sock:
        try:
            sock.sendall(head)
            for _ in range(pieces):
                sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server while we sent: what it wrote is still to read
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except ConnectionResetError:
            pass
        return received


@pytest.mark.parametrize(
    ("head", "status", "says"),
    [
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"x-h%d: v\r\n" % i for i in range(300))
            + b"\r\n",
            431,
            b"more than 256 headers",
            id="too-many-headers",
        ),
        pytest.param(
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 1000) for i in range(80))
            + b"\r\n",
            431,
            b"larger than 65536 bytes",
            id="large-headers",
        ),
        pytest.param(
            b"GET /healthz?" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            414,
            b"longer than 32768 bytes",
            id="long-url",
        ),
    ],
)
async def test_request_heads_past_the_limits_are_refused(
    server: Server, head: bytes, status: int, says: bytes
) -> None:
    """Regression: uvicorn kept every header a client sent (GBs of memory) and copied the
    URL for each piece of it (seconds of event loop)."""
    received = await asyncio.to_thread(_sent_until_closed, server.port, head)
    assert _status(received) == status, received[:200]
    assert says in received
    await _alive(server)


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nx-long: ", b"v" * 8192,
                     id="a-header-that-never-ends"),
        pytest.param(b"GET /healthz?message=", b"A" * 8192, id="a-url-that-never-ends"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n", b"x-h: v\r\n" * 1000,
                     id="headers-that-never-end"),
    ],
)  # fmt: skip
async def test_endless_request_heads_are_cut_off(server: Server, head: bytes, piece: bytes) -> None:
    """Sent in pieces, 80 MB at most: the server answers and closes long before."""
    received = await asyncio.to_thread(_sent_until_closed, server.port, head, 10_000, piece)
    assert _status(received) in (414, 431), received[:200]
    await _alive(server)


async def test_heads_within_the_limits_and_large_bodies_still_pass(server: Server) -> None:
    headers = {f"x-h{i}": "v" * 100 for i in range(200)}  # 200 headers, ~22 KB
    async with httpx.AsyncClient(base_url=server.base, timeout=WAIT_S) as client:
        response = await client.get("/healthz", headers=headers)
        assert response.status_code == 200
        response = await client.get("/healthz?" + "a" * 30_000)
        assert response.status_code == 200
        # A body of 3 MB right behind the headers (parts of it in the head's reads).
        response = await client.post(
            "/delidev.v1.WorkspaceService/Create",
            content=b'{"name": "big", "description": "' + b"d" * 3_000_000 + b'"}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text  # a description that long
        assert response.json()["code"] == "invalid_argument"
    # Kept alive: a second request on the same connection is measured afresh.
    pair = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"x-a: " + b"v" * 50_000 + b"\r\n\r\n"
    received = await asyncio.to_thread(_sent_until_closed, server.port, pair + pair[:-2] +
                                       b"connection: close\r\n\r\n")  # fmt: skip
    assert received.count(b"HTTP/1.1 200 ") == 2, received[:300]
    await _alive(server)
