"""Serves every Connect service, each behind the error interceptor and strict codecs."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from connectrpc.server import ConnectASGIApplication
from opentelemetry.trace import TracerProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delidev.auth.authenticator import Authenticator
from delidev.connect import fast_unary, handlers
from delidev.connect.codecs import server_codecs
from delidev.connect.compression import BoundedGzip
from delidev.connect.fast_unary import UnaryFastPath
from delidev.connect.gen.delidev.v1 import (
    auth_pb,
    repository_pb,
    secrets_pb,
    session_pb,
    task_pb,
    todo_pb,
    worker_pb,
    workspace_pb,
)
from delidev.connect.gen.delidev.v1.auth_connect import AuthServiceASGIApplication
from delidev.connect.gen.delidev.v1.repository_connect import (
    RepositoryGroupServiceASGIApplication,
    RepositoryServiceASGIApplication,
)
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsServiceASGIApplication
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceASGIApplication
from delidev.connect.gen.delidev.v1.task_connect import TaskServiceASGIApplication
from delidev.connect.gen.delidev.v1.todo_connect import TodoServiceASGIApplication
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceASGIApplication
from delidev.connect.gen.delidev.v1.workspace_connect import WorkspaceServiceASGIApplication
from delidev.connect.interceptors import ErrorInterceptor, MetricsInterceptor, TracingInterceptor
from delidev.connect.refusals import send_error
from delidev.connect.worker_handler import WorkerHandler
from delidev.services.live import LogFeeds
from delidev.services.secrets import SecretStore
from delidev.services.workers import JobSignal
from delidev.settings import Settings

log = logging.getLogger(__name__)

# Requests above this size are refused by the Connect runtime (resource_exhausted); every
# service has the same limit (the runtime's default too, written here so it is one number).
READ_MAX_BYTES = 4 * 1024 * 1024
# Services whose calls may wait long (long polls): their calls keep the runtime's watch for
# a client that goes away (see ``fast_unary``).
WAITING_SERVICES = frozenset({"/delidev.v1.WorkerService"})
# What a plain gRPC call (HTTP/2 with trailers, which uvicorn cannot send) gets instead of
# the runtime's RuntimeError and a traceback in the log: 415 for HTTP, and the status a
# gRPC client reads (12 = unimplemented) with a message it shows.
_GRPC_UNSUPPORTED = b"gRPC is not served here: use the Connect protocol or gRPC-Web"
_GRPC_UNSUPPORTED_HEADERS = [
    (b"content-type", b"text/plain; charset=utf-8"),
    (b"content-length", str(len(_GRPC_UNSUPPORTED)).encode()),
    (b"accept-post", b"application/json, application/proto"),
    (b"grpc-status", b"12"),
    (b"grpc-message", b"gRPC%20is%20not%20served%20here%3A%20use%20Connect%20or%20gRPC-Web"),
]


class ConnectDispatch:
    """Pure ASGI middleware: hands ``/delidev.v1.<Service>/...`` straight to its Connect app.

    Saves Starlette's route matching and exception middleware on the hot RPC path; the
    Connect apps map their own errors. Everything else goes on to the router.
    """

    def __init__(
        self,
        app: ASGIApp,
        authenticator: Authenticator,
        settings: Settings,
        signal: JobSignal,
        store: SecretStore,
        feeds: LogFeeds,
        closing: asyncio.Event | None = None,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self.app = app
        self._services = {
            a.path: a
            for a in connect_apps(
                authenticator, settings, signal, store, feeds, closing, tracer_provider
            )
        }
        self._fast = _fast_paths(self._services, settings.connect_fast_path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith("/delidev.v1."):
                prefix = path[: path.find("/", 1)]
                service = self._services.get(prefix)
                if service is not None:
                    if _is_plain_grpc(scope):
                        await _refuse_grpc(send)
                        return
                    undecodable = _undecodable_header(scope)
                    if undecodable is not None:
                        await _refuse_header(send, undecodable)
                        return
                    if _is_unary(scope):
                        send = _with_content_length(send)
                        fast = self._fast.get(prefix)
                        if fast is not None and await fast(scope, receive, send):
                            return
                    await service(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def _fast_paths(
    services: dict[str, ConnectASGIApplication[Any]], enabled: bool
) -> dict[str, UnaryFastPath]:
    """The lean unary path of each service that may take it: none when it is turned off, or
    (with one warning) when this connectrpc lacks an internal it uses."""
    if not enabled:
        return {}
    missing = sorted({m for a in services.values() for m in fast_unary.missing_internals(a)})
    if missing:
        log.warning(
            "Connect fast path off: this connectrpc lacks %s; every call takes the "
            "runtime's ordinary path (works, slower)",
            ", ".join(missing),
        )
        return {}
    return {path: UnaryFastPath(a) for path, a in services.items() if path not in WAITING_SERVICES}


def _is_unary(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bool(value.startswith((b"application/json", b"application/proto")))
    return False


def _is_plain_grpc(scope: Scope) -> bool:
    if "http.response.trailers" in scope.get("extensions", {}):
        return False  # a server that can send trailers: the runtime serves gRPC
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.startswith(b"application/grpc") and not value.startswith(
                b"application/grpc-web"
            )
    return False


def _undecodable_header(scope: Scope) -> bytes | None:
    """The name of a header whose value is not UTF-8 (the Connect runtime decodes every
    value strictly, and answered such a request with a 500 and a traceback), or None."""
    for name, value in scope["headers"]:
        if not value.isascii():
            try:
                value.decode()
            except UnicodeDecodeError:
                return bytes(name)
    return None


async def _refuse_header(send: Send, name: bytes) -> None:
    shown = name[:100].decode("ascii", "replace")
    await send_error(send, 400, "invalid_argument", f"header {shown} is not valid UTF-8")


async def _refuse_grpc(send: Send) -> None:
    await send({"type": "http.response.start", "status": 415, "headers": _GRPC_UNSUPPORTED_HEADERS})
    await send({"type": "http.response.body", "body": _GRPC_UNSUPPORTED})


def _with_content_length(send: Send) -> Send:
    """Holds a unary response's headers until its one body message, to add content-length.

    The Connect runtime does not set it, so uvicorn would fall back to chunked encoding:
    more bytes and more writes for every call, and less friendly to proxies.
    """
    pending: Message | None = None

    async def sender(message: Message) -> None:
        nonlocal pending
        if message["type"] == "http.response.start":
            pending = message
            return
        if pending is not None:
            start, pending = pending, None
            if message["type"] == "http.response.body" and not message.get("more_body"):
                headers = list(start.get("headers", []))
                if not any(k.lower() == b"content-length" for k, _ in headers):
                    headers.append((b"content-length", str(len(message.get("body", b""))).encode()))
                start = {**start, "headers": headers}
            await send(start)
        await send(message)

    return sender


# The path of every Connect service served (``connect_apps`` serves exactly these; a test
# checks): the HTTP request metrics name routes by them.
SERVICE_PATHS = tuple(
    f"/delidev.v1.{name}Service"
    for name in (
        "Workspace", "Repository", "RepositoryGroup", "Todo", "Task", "Session", "Worker",
        "Secrets", "Auth",
    )
)  # fmt: skip
# ``/<service>/<method>`` of every method served, from the services' descriptors.
_METHOD_PATHS = frozenset(
    f"/{service.type_name}/{method.name}"
    for module in (
        auth_pb,
        repository_pb,
        secrets_pb,
        session_pb,
        task_pb,
        todo_pb,
        worker_pb,
        workspace_pb,
    )
    for service in module.desc().services
    for method in service.methods
)


def rpc_method(path: str) -> tuple[str, str] | None:
    """The (service, method) a request path names, when it is a method served here; else
    None (a made-up path never becomes a label)."""
    if path not in _METHOD_PATHS:
        return None
    service, _, method = path[1:].partition("/")
    return service, method


def connect_route(path: str) -> str | None:
    """``<service path>/{method}`` for a path under a served Connect service, else None: a
    route name from a closed set (request metrics and request spans), never the raw path."""
    if path.startswith("/delidev.v1."):
        service = path[: path.find("/", 1)]
        if service in SERVICE_PATHS:
            return f"{service}/{{method}}"
    return None


def connect_apps(
    authenticator: Authenticator,
    settings: Settings,
    signal: JobSignal,
    store: SecretStore,
    feeds: LogFeeds,
    closing: asyncio.Event | None = None,
    tracer_provider: TracerProvider | None = None,
) -> list[ConnectASGIApplication[Any]]:
    """The Connect apps; with ``tracer_provider`` (tracing on), each call is a span."""
    tracing = [] if tracer_provider is None else [TracingInterceptor(tracer_provider)]
    interceptors = [*tracing, MetricsInterceptor(), ErrorInterceptor()]
    codecs = server_codecs(max_json_depth=settings.max_json_depth)

    def serve(
        application: Callable[..., ConnectASGIApplication[Any]], handler: object
    ) -> ConnectASGIApplication[Any]:
        return application(
            handler,
            interceptors=interceptors,
            read_max_bytes=READ_MAX_BYTES,
            codecs=codecs,
            compressions=[BoundedGzip()],
        )

    return [
        serve(WorkspaceServiceASGIApplication, handlers.WorkspaceHandler(authenticator)),
        serve(RepositoryServiceASGIApplication, handlers.RepositoryHandler(authenticator)),
        serve(
            RepositoryGroupServiceASGIApplication, handlers.RepositoryGroupHandler(authenticator)
        ),
        serve(TodoServiceASGIApplication, handlers.TodoHandler(authenticator)),
        serve(TaskServiceASGIApplication, handlers.TaskHandler(authenticator)),
        serve(SessionServiceASGIApplication, handlers.SessionHandler(authenticator, feeds)),
        serve(WorkerServiceASGIApplication, WorkerHandler(settings, signal, store, closing)),
        serve(SecretsServiceASGIApplication, handlers.SecretsHandler(authenticator, store)),
        serve(AuthServiceASGIApplication, handlers.AuthHandler(authenticator, settings)),
    ]
