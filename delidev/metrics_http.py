"""The transport side of ``metrics.py``: the ``GET /metrics`` endpoint and the timing of
every HTTP request (``http_server_request_duration_seconds``).

``/metrics`` is open in single-user mode (the server listens on loopback). In multi-user
mode it carries workspace and worker names, so it answers only with
``Authorization: Bearer <DELIDEV_METRICS_TOKEN>``, and is refused while that is unset. With
``DELIDEV_METRICS=false`` there is no endpoint and nothing is timed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable

from connectrpc.code import Code
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from delidev import metrics, request_context
from delidev import models as m
from delidev.auth.authenticator import bearer_token
from delidev.connect.routes import connect_route, rpc_method
from delidev.request_context import CLIENT_CLOSED
from delidev.services.common import same_secret
from delidev.settings import Settings


def metrics_endpoint(settings: Settings) -> Callable[[Request], Awaitable[Response]]:
    gauges = metrics.DatabaseGauges()
    reasons = [reason.value for reason in m.WaitReason]

    async def endpoint(request: Request) -> Response:
        token = settings.metrics_token
        if token is not None:
            given = bearer_token(request.headers.get("authorization"))
            if given is None or not same_secret(given, token):
                return JSONResponse(
                    {"error": "metrics need Authorization: Bearer <DELIDEV_METRICS_TOKEN>"},
                    status_code=401,
                    headers={"www-authenticate": 'Bearer realm="metrics"'},
                )
        elif not settings.single_user_mode:
            return JSONResponse(
                {"error": "metrics are off in multi-user mode until DELIDEV_METRICS_TOKEN is set"},
                status_code=403,
            )
        body = await metrics.exposition(gauges, reasons)
        return Response(body, media_type=metrics.CONTENT_TYPE_LATEST)

    return endpoint


class RequestTiming:
    """Times each HTTP request by method, route and status. The route is a known path,
    ``<prefix>{path}`` for a path under one of ``prefixes`` (the console's ``/assets/``), or
    ``<Connect service>/{method}``; anything else is ``other``, so a client cannot grow the
    series by asking for made-up paths."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], prefixes: Iterable[str] = ()) -> None:
        self.app = app
        self._paths = frozenset(paths)
        self._prefixes = tuple(prefixes)

    def _route(self, path: str) -> str:
        if path in self._paths:
            return path
        for prefix in self._prefixes:
            if path.startswith(prefix):
                return prefix + "{path}"
        return connect_route(path) or "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # unless a response starts
        # Connect calls are POSTs (a CORS preflight or a GET is no call of a method).
        rpc = rpc_method(scope["path"]) if scope["method"] == "POST" else None
        error_body = b""  # the start of a Connect call's error answer

        async def timed_send(message: Message) -> None:
            nonlocal status, error_body
            if message["type"] == "http.response.start":
                status = message["status"]
            elif rpc is not None and status != 200 and not error_body:
                error_body = bytes(message.get("body", b"")[:_ERROR_BODY_BYTES])
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        except ClientDisconnect:
            status = CLIENT_CLOSED  # gone before its body was whole: not a server error
            raise
        finally:
            seconds = time.perf_counter() - started
            metrics.http_request(scope["method"], self._route(scope["path"]), status, seconds)
            info = request_context.current()
            if rpc is not None and status != 200 and info is not None and not info.rpc_timed:
                # Refused by the Connect runtime before the interceptors ran (a body that
                # does not decode, too large, a wrong content type...): counted all the same.
                code = _connect_code(status, error_body)
                request_context.set_code(code)
                metrics.rpc_call(rpc[0], rpc[1], code, seconds)


# Connect error answers are small JSON objects; a longer one is not parsed.
_ERROR_BODY_BYTES = 4096
_CONNECT_CODES = frozenset(code.value for code in Code)
# What a Connect client makes of an HTTP status without a code in the body (the Connect
# protocol's table; any other status is unknown).
_HTTP_CODES = {
    400: "internal", 401: "unauthenticated", 403: "permission_denied", 404: "unimplemented",
    429: "unavailable", 502: "unavailable", 503: "unavailable", 504: "unavailable",
}  # fmt: skip


def _connect_code(status: int, body: bytes) -> str:
    """The Connect code of an answer the runtime gave: the one its JSON error names, else
    what its HTTP status means to a Connect client."""
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        code = None
    if isinstance(code, str) and code in _CONNECT_CODES:
        return code
    return _HTTP_CODES.get(status, "unknown")
