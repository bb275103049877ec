"""The header and body deadlines do not count while the server itself is not reading.

Regression (review): pipelined behind a slow request (one whose app does not read further)
and a queued one, a next request's head was timed although uvicorn had paused reading the
connection: the deadline closed it, and all three requests were lost. Real uvicorn with
the server's protocol class and a small app, over a real socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from delidev.header_timeout import with_header_timeout
from tests.e2e.harness import free_port

DEADLINE_S = 0.3


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":  # answers late, and never reads on
        await asyncio.sleep(DEADLINE_S * 4)
    answer = b"ok"
    if scope["path"] == "/late-read":  # reads its body only after four deadlines
        await asyncio.sleep(DEADLINE_S * 4)
        size = 0
        while True:
            message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = b"%d" % size
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", b"%d" % len(answer))],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    chosen = free_port()
    config = uvicorn.Config(
        _app, host="127.0.0.1", port=chosen, http=with_header_timeout(DEADLINE_S, DEADLINE_S),
        log_level="warning", lifespan="off",
    )  # fmt: skip
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    for _ in range(1000):  # ten seconds at most
        if server.started:
            break
        await asyncio.sleep(0.01)
    assert server.started
    yield chosen
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await serving


async def test_a_head_is_not_timed_while_the_server_does_not_read(port: int) -> None:
    last = b"GET /c HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n"

    def pipelined() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
            sock.sendall(last[:12])
            sock.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                sock.recv(1, socket.MSG_PEEK)  # the rest of the head a moment later
            sock.settimeout(30)
            sock.sendall(last[12:])
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    received = await asyncio.to_thread(pipelined)
    assert received.count(b"HTTP/1.1 200 ") == 3, received


async def test_a_head_that_stalls_while_the_server_reads_is_still_cut_off(port: int) -> None:
    def stalled() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /b HTTP/1.1\r\nHo")
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    assert (await asyncio.to_thread(stalled)).startswith(b"HTTP/1.1 408 ")


async def test_trailers_have_a_budget_of_their_own(port: int) -> None:
    """A chunked request's trailers (the parser hands them over as headers) are not added
    to its head's count: 200 headers and 100 trailers pass, as uvicorn alone passes them."""
    head = b"POST /b HTTP/1.1\r\nHost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
    head += b"".join(b"x-h%d: v\r\n" % i for i in range(200)) + b"\r\n"
    body = b"2\r\nok\r\n0\r\n" + b"".join(b"x-t%d: v\r\n" % i for i in range(100)) + b"\r\n"

    def send() -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(head + body)
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            return received

    assert (await asyncio.to_thread(send)).startswith(b"HTTP/1.1 200 ")


def _exchange(port: int, request: bytes, then: bytes = b"") -> bytes:
    """Sends ``request``; once the server has written something (a 100 Continue), or at
    once when there is nothing to wait for, ``then``; returns all the server wrote."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        received = b""
        if then:
            received = sock.recv(65536)
            sock.sendall(then)
        while chunk := sock.recv(65536):
            received += chunk
        return received


async def test_a_body_is_not_timed_while_the_app_does_not_read_it(port: int) -> None:
    """300 KiB sent at once: uvicorn stops reading past 64 KiB until the app takes it, and
    the app takes it only after four body deadlines. Nothing is cut."""
    body = b"x" * (300 * 1024)
    request = (
        b"POST /late-read HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n" % len(body)
    ) + body
    received = await asyncio.to_thread(_exchange, port, request)
    assert received.startswith(b"HTTP/1.1 200 "), received[:200]
    assert received.endswith(b"\r\n\r\n%d" % len(body))


async def test_a_client_waiting_for_100_continue_is_not_timed(port: int) -> None:
    """The client sends its body only once told to continue, which uvicorn does when the app
    first reads: four deadlines later here."""
    body = b"y" * 1000
    head = (
        b"POST /late-read HTTP/1.1\r\nHost: x\r\nconnection: close\r\n"
        b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(body)
    )
    received = await asyncio.to_thread(_exchange, port, head, body)
    assert received.startswith(b"HTTP/1.1 100 "), received[:200]
    assert b"HTTP/1.1 200 " in received
    assert received.endswith(b"\r\n\r\n1000")


async def test_a_body_that_stalls_while_the_app_reads_is_cut_off(port: int) -> None:
    head = b"POST /late-read HTTP/1.1\r\nHost: x\r\ncontent-length: 10\r\n\r\n"
    received = await asyncio.to_thread(_exchange, port, head + b"12345")
    assert received.startswith(b"HTTP/1.1 408 "), received
