"""What a log line says about the request it was written for, and one access line per request.

``RequestContext`` is pure ASGI middleware, the outermost of the app. For each HTTP request and
each WebSocket connection it

- takes the caller's ``X-Request-ID`` when it is a plausible id (1 to 64 characters of
  ``[A-Za-z0-9._:-]``) and makes one otherwise, and sends it back on the response (on a
  WebSocket, on its ``accept``);
- takes the trace id of a well-formed W3C ``traceparent`` header;
- puts a ``RequestInfo`` in a context variable, which every log record written while the
  request is handled reads (``delidev/logs.py``). The layers that learn more fill it in: the
  authenticator the principal, the Connect interceptor the method's error code, the GraphQL
  schema extension the operation. It is one mutable object, so that what a layer notes in a
  task of its own (the Connect runtime's call task, a GraphQL subscription) reaches the access
  line too;
- writes one access line (logger ``delidev.access``, INFO) when the response is done or the
  WebSocket closed: method, path without the query string (a query can carry a token),
  status, duration, request id, principal, Connect method or GraphQL operation, code.

Hand-written rather than ``asgi-correlation-id``'s middleware: that one reads and rewrites the
request's headers through Starlette's ``MutableHeaders`` on every call (an extra layer on the
hot RPC path, where ``app.py`` already counts microseconds), does not answer with the id on a
WebSocket's accept, and keeps only the id, while the access line needs the whole record that
inner layers fill in. What it does for the id is the dozen lines of ``_read_headers`` below.

``trace_id``: with tracing on (``delidev/tracing.py``) the OpenTelemetry middleware, just inside
this one, calls ``set_trace_id`` with the trace id of the span it starts for the request (the
client's trace when it sent a ``traceparent``, a new one otherwise), which replaces the one
read from the header. With tracing off, the header's trace id is the one logged.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from delidev.auth.principal import Principal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

access_log = logging.getLogger("delidev.access")

CONNECT_PREFIX = "/delidev.v1."
REQUEST_ID_HEADER = b"x-request-id"
# In the access log for a request whose client left before it could be answered (nginx's).
CLIENT_CLOSED = 499
REQUEST_ID_MAX_CHARS = 64
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,%d}" % REQUEST_ID_MAX_CHARS)
# W3C Trace Context, version 00 (and any later version read by its first four fields, as the
# specification asks); all-zero trace and parent ids are invalid.
_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?")
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


@dataclass(slots=True)
class RequestInfo:
    """The request being handled; every field a log line may show is bounded or ours."""

    request_id: str
    trace_id: str | None
    kind: str  # "http" or "websocket"
    method: str
    path: str
    started: float  # time.perf_counter()
    principal: str | None = None
    """A user id, ``worker:<id>`` or ``local``; never a token."""
    rpc: str | None = None
    """The Connect method, ``delidev.v1.Service/Method``."""
    graphql: str | None = None
    """The GraphQL operation, ``<type> <name>`` (``query -`` for an anonymous one)."""
    status: int | None = None
    code: str | None = None
    """The Connect code or GraphQL error code of the answer, where known."""
    rpc_timed: bool = False
    """Whether the Connect call was timed by its interceptor (it was not when the runtime
    refused it before our code ran: the request timing counts it then)."""

    def elapsed_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)


_current: ContextVar[RequestInfo | None] = ContextVar("delidev_request", default=None)


def current() -> RequestInfo | None:
    return _current.get()


@contextmanager
def handling(info: RequestInfo) -> Iterator[RequestInfo]:
    """``info`` is the current request's until the block ends."""
    token = _current.set(info)
    try:
        yield info
    finally:
        _current.reset(token)


def principal_label(principal: Principal) -> str:
    if principal.kind == "worker":
        return f"worker:{principal.worker_id}"
    if principal.kind == "user" and principal.user_id is not None:
        return str(principal.user_id)
    return "local"


def set_principal(principal: Principal) -> None:
    info = _current.get()
    if info is not None:
        info.principal = principal_label(principal)


def set_worker(worker_id: uuid.UUID) -> None:
    info = _current.get()
    if info is not None:
        info.principal = f"worker:{worker_id}"


def set_rpc_timed() -> None:
    info = _current.get()
    if info is not None:
        info.rpc_timed = True


def set_code(code: str) -> None:
    info = _current.get()
    if info is not None and info.code is None:  # the first error is the answer's
        info.code = code


def set_graphql(operation_type: str, name: str | None) -> None:
    info = _current.get()
    if info is not None:
        # The name comes from the client: a string, and no longer than a name needs.
        shown = name[:100] if isinstance(name, str) and name else "-"
        info.graphql = f"{operation_type} {shown}"


def set_trace_id(trace_id: str) -> None:
    """For a tracer: the request's trace id, 32 lowercase hex digits."""
    info = _current.get()
    if info is not None:
        info.trace_id = trace_id


def request_id_from(value: bytes | None) -> str | None:
    """``value`` when it may serve as a request id (bounded, a safe alphabet), else None."""
    if value is None or _REQUEST_ID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def trace_id_from(traceparent: bytes | None) -> str | None:
    """The trace id of a well-formed ``traceparent`` header, else None."""
    if traceparent is None:
        return None
    found = _TRACEPARENT.fullmatch(traceparent.strip())
    if found is None:
        return None
    version, trace, parent, rest = found.groups()
    if version == b"ff" or (version == b"00" and rest) or trace == _ZERO_TRACE:
        return None
    if parent == _ZERO_PARENT:
        return None
    return trace.decode("ascii")


def new_request_id() -> str:
    return uuid.uuid4().hex


def _read_headers(scope: Scope) -> tuple[str, str | None]:
    given = traceparent = None
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            given = value
        elif name == b"traceparent":
            traceparent = value
    return request_id_from(given) or new_request_id(), trace_id_from(traceparent)


class RequestContext:
    """See the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):  # lifespan
            await self.app(scope, receive, send)
            return
        request_id, trace_id = _read_headers(scope)
        info = RequestInfo(
            request_id=request_id,
            trace_id=trace_id,
            kind=kind,
            method=scope["method"] if kind == "http" else "WEBSOCKET",
            path=scope["path"],
            started=time.perf_counter(),
        )
        if kind == "http" and info.path.startswith(CONNECT_PREFIX):
            info.rpc = info.path[1:]  # bounded in the log like any value
        echoed = (REQUEST_ID_HEADER, request_id.encode("ascii"))
        close_code: int | None = None

        async def sender(message: Message) -> None:
            nonlocal close_code
            kind = message["type"]
            if kind == "http.response.start" or kind == "websocket.accept":
                info.status = message.get("status", 101)
                message["headers"] = [*message.get("headers", ()), echoed]
            elif kind == "websocket.close":
                if info.status is None:
                    info.status = 403  # refused before it was accepted
                if close_code is None:
                    close_code = message.get("code", 1000)
            elif kind == "websocket.http.response.start":
                info.status = message["status"]
            await send(message)

        async def receiver() -> Message:
            nonlocal close_code
            message = await receive()
            if message["type"] == "websocket.disconnect" and close_code is None:
                close_code = message.get("code", 1005)
            return message

        with handling(info):
            try:
                await self.app(scope, receiver if kind == "websocket" else receive, sender)
            except BaseException:
                if info.status is None:
                    info.status = 500
                raise
            finally:
                _log_access(info, close_code)


def _log_access(info: RequestInfo, close_code: int | None) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    duration_ms = info.elapsed_ms()
    template = "%s %s %s %.1f ms"
    args: list[object] = [info.method, info.path, info.status, duration_ms]
    for label, value in (
        ("principal", info.principal),
        ("rpc", info.rpc),
        ("graphql", info.graphql),
        ("code", info.code),
        ("close", close_code),
    ):
        if value is not None:
            template += f" {label}=%s"
            args.append(value)
    access_log.info(
        template,
        *args,
        extra={
            "access": True,
            "request_id": info.request_id,
            "trace_id": info.trace_id,
            "principal": info.principal,
            "rpc": info.rpc,
            "graphql": info.graphql,
            "status": info.status,
            "method": info.method,
            "path": info.path,
            "code": info.code,
            "close_code": close_code,
            "duration_ms": duration_ms,
        },
    )
