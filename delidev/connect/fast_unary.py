"""A lean path for the plain Connect unary call, the bulk of the API's traffic.

connectrpc serves every call through one general routine that also knows deadlines
(``Connect-Timeout-Ms``), metadata interceptors, GET requests, gRPC and streaming, and
that watches each unary call for a client disconnect with a task of its own. A plain POST
with the JSON or binary codec and no deadline needs none of that: here it is read, handed
to the same endpoint (our interceptors included) and answered with the runtime's own
pieces (body reading and limits, request decompression, response compression, error
encoding), so the bytes on the wire are the same. Anything else goes to the runtime.

Not taken for services whose calls may wait a long time (``WorkerService``: long polls),
where the disconnect watch matters. It leans on connectrpc internals; the version is
pinned (pyproject.toml), and ``tests/connect/test_fast_unary.py`` compares both paths'
answers byte for byte so that an upgrade that changes them fails there. ``missing_internals``
checks at app start that every internal used is there; when one is not (or
``DELIDEV_CONNECT_FAST_PATH`` is off), ``connect/routes.py`` logs one warning and every call
takes the runtime's ordinary path (slower, same answers).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

try:  # private modules: their absence means the fast path is off (see missing_internals)
    from connectrpc._compression import negotiate_compression
    from connectrpc._protocol import HTTPError
    from connectrpc._protocol_connect import ConnectServerProtocol
    from connectrpc._server_async import (
        _process_headers,
        _RequestReceiver,
        _ResponseSender,
        _UnaryResponse,
    )
    from connectrpc._server_shared import EndpointUnary

    _IMPORT_ERROR: str | None = None
except ImportError as error:
    _IMPORT_ERROR = str(error)
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.server import ConnectASGIApplication
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

_CODEC_NAMES = {b"application/json": "json", b"application/proto": "proto"}
# The private attributes used of a ConnectASGIApplication (see ``missing_internals``).
_APP_ATTRIBUTES = (
    "_resolved_endpoints",
    "_resolve_endpoints",
    "_service",
    "_metadata_interceptors",
    "_codecs",
    "_compressions",
    "_read_post_request",
    "_handle_error",
)


def missing_internals(app: ConnectASGIApplication[Any]) -> list[str]:
    """The connectrpc internals this module uses that are not there (none with the pinned
    version), for the Connect app ``app``."""
    if _IMPORT_ERROR is not None:
        return [_IMPORT_ERROR]
    missing = [f"ConnectASGIApplication.{a}" for a in _APP_ATTRIBUTES if not hasattr(app, a)]
    for owner, names in (
        (ConnectServerProtocol, ("create_request_context",)),
        (_UnaryResponse, ("send",)),
        (EndpointUnary, ("function", "method")),
    ):
        fields = getattr(owner, "__dataclass_fields__", {})
        missing += [
            f"{owner.__name__}.{n}" for n in names if not hasattr(owner, n) and n not in fields
        ]
    return missing


class UnaryFastPath:
    """Serves the plain unary calls of one Connect app (see the module docstring)."""

    def __init__(self, app: ConnectASGIApplication[Any]) -> None:
        self._app: Any = app  # its internals are used, see the module docstring
        self._endpoints: dict[str, EndpointUnary[Any, Any]] | None = None
        self._connect = ConnectServerProtocol()

    def _unary_endpoints(self) -> dict[str, EndpointUnary[Any, Any]]:
        if self._endpoints is None:
            app = self._app
            if app._resolved_endpoints is None:
                app._resolved_endpoints = app._resolve_endpoints(app._service)
            self._endpoints = {
                path: endpoint
                for path, endpoint in app._resolved_endpoints.items()
                if isinstance(endpoint, EndpointUnary)
            }
        return self._endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serves the call and returns True, or returns False at once (nothing read or
        sent) when it is not a plain unary call."""
        app = self._app
        if scope["method"] != "POST" or app._metadata_interceptors:
            return False
        endpoint = self._unary_endpoints().get(scope["path"])
        if endpoint is None:
            return False
        codec_name = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                codec_name = _CODEC_NAMES.get(value)
            elif name == b"connect-timeout-ms":
                return False
        codec = app._codecs.get(codec_name) if codec_name else None
        if codec is None:
            return False

        headers = _process_headers(scope["headers"])
        sender = _ResponseSender(send)
        ctx = None
        try:
            client = scope.get("client")
            ctx = self._connect.create_request_context(
                endpoint.method,
                "POST",
                scope.get("scheme", "http"),
                headers,
                f"{client[0]}:{client[1]}" if client else None,
            )
            receiver = _RequestReceiver(receive, asyncio.Event())
            request = await app._read_post_request(endpoint, receiver, codec, headers)
            response = await endpoint.function(request, ctx)
            compression = negotiate_compression(
                headers.get("accept-encoding", ""), app._compressions
            )
            await _UnaryResponse(codec, compression).send(sender, response, ctx)
        except Exception as error:  # answered in Connect's form, as the runtime does
            if not isinstance(error, ConnectError | HTTPError):
                # Past our interceptor (encoding the response, say): logged, never shown.
                log.error("unexpected error answering %s", scope["path"], exc_info=error)
                error = ConnectError(Code.INTERNAL, "internal error")
            if not await app._handle_error(error, ctx, self._connect, sender):
                log.warning("could not finish the response to %s", scope["path"])
        return True
