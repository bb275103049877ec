"""The GraphQL view: Strawberry's ASGI view with DeliDev's rules at the edges.

- Request bodies, ``variables`` and WebSocket messages are decoded by ``wire.decode``
  (nesting, UTF-8, finite numbers, valid Unicode) and must be JSON objects; anything else
  is refused with 400 (a WebSocket: closed 4400), and a reason.
- Every refusal of the HTTP layer is a GraphQL error body with ``extensions.code``.
- ``Accept: application/graphql-response+json`` gets that media type and, as the
  GraphQL-over-HTTP specification says, 400 without ``data`` when the request did not
  parse, validate or coerce; ``application/json`` keeps answering 200.
- Subscriptions are served over WebSocket only; an answer larger than
  ``graphql_max_response_bytes`` is refused.
- A POSTed query plain enough for ``query_fast_path`` is answered by its compiled plan;
  everything else (and anything the plan cannot finish) by Strawberry's view.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from datetime import timedelta
from typing import Any

from cross_web import AsyncHTTPRequestAdapter, HTTPException
from opentelemetry.trace import TracerProvider
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState
from strawberry.asgi import ASGIWebSocketAdapter, GraphQL
from strawberry.exceptions import ConnectionRejectionError, MissingQueryError
from strawberry.http import GraphQLHTTPResponse, GraphQLRequestData
from strawberry.http.parse_content_type import parse_content_type
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types import ExecutionResult
from strawberry.types.graphql import OperationType
from strawberry.types.unset import UnsetType

from delidev import errors, tracing
from delidev.auth.authenticator import Authenticator
from delidev.errors import Unauthenticated
from delidev.events import EventBus
from delidev.graphql import query_fast_path, wire
from delidev.graphql.context import Context
from delidev.graphql.errors import Code, error_extensions, graphql_code
from delidev.graphql.schema import build_schema, document_checks
from delidev.graphql.ws_limits import WsLimits
from delidev.graphql.ws_protocols import SignedInGraphQLWSHandler, handler_with_ping_interval
from delidev.services.live import LogFeeds
from delidev.settings import Settings

GRAPHQL_RESPONSE = "application/graphql-response+json"
_MAX_NAME_CHARS = 200
"""Longer operation names are left to the ordinary path (the plans' cache keys stay small)."""

# The HTTP layer's refusals (Strawberry raises HTTPException) as GraphQL error codes.
_HTTP_ERRORS: dict[int, type[errors.DeliDevError]] = {
    400: errors.InvalidArgument,
    404: errors.NotFound,
    405: errors.Unimplemented,
}


def graphiql_enabled(settings: Settings) -> bool:
    """GraphiQL: on in single-user mode, off in multi-user mode, unless DELIDEV_GRAPHIQL
    says otherwise."""
    if settings.graphql_graphiql is None:
        return settings.single_user_mode
    return settings.graphql_graphiql


def wants_graphql_response(request: Request) -> bool:
    """Whether the client accepts ``application/graphql-response+json`` (preferred over
    ``application/json`` when both are accepted, as the specification recommends)."""
    return GRAPHQL_RESPONSE in request.headers.get("accept", "")


def error_body(message: str, error: type[errors.DeliDevError], **extra: Any) -> bytes:
    extensions = {**error_extensions(error), **extra}
    body = {"errors": [{"message": message, "extensions": extensions}]}
    return json.dumps(body, separators=(",", ":")).encode()


class DeliDevWebSocketAdapter(ASGIWebSocketAdapter):
    """Reads each message through ``wire.decode``: a message that is not text, is larger
    than the body limit or is not acceptable JSON closes the connection (4400, with the
    reason), on both protocols (the legacy one would silently skip bad JSON)."""

    async def iter_json(self, *, ignore_parsing_errors: bool = False) -> AsyncGenerator[object]:
        limit = self.view.max_message_bytes  # type: ignore[attr-defined]  # DeliDevGraphQL
        while self.ws.application_state != WebSocketState.DISCONNECTED:
            try:
                text = await self.ws.receive_text()
            except KeyError:
                await self.close(4400, "WebSocket messages must be text")
                return
            except WebSocketDisconnect:
                return
            if len(text) > limit:
                await self.close(4400, f"a message is larger than {limit} characters")
                return
            try:
                message = wire.decode(text)
            except wire.BadJSON as error:
                await self.close(4400, str(error))
                return
            yield message


async def _refuse_websocket(scope: Scope, receive: Receive, send: Send, text: str) -> None:
    """Answers a WebSocket handshake 503 (or, where the server cannot answer a handshake with
    a status, closes it with 1013 "try again later")."""
    await receive()  # websocket.connect
    if "websocket.http.response" in scope.get("extensions", {}):
        body = text.encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"5"),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1013, "reason": text[:120]})


class DeliDevGraphQL(GraphQL[Context, None]):
    websocket_adapter_class = DeliDevWebSocketAdapter

    async def render_graphql_ide(self, request: Request) -> Response:
        """GraphiQL's page, never inside another site's frame (it fills its editor from the
        URL: a framed page is one tricked click from running a mutation)."""
        response = await super().render_graphql_ide(request)
        response.headers["x-frame-options"] = "DENY"
        response.headers["content-security-policy"] = "frame-ancestors 'none'"
        response.headers["x-content-type-options"] = "nosniff"
        response.headers["referrer-policy"] = "no-referrer"
        return response

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        *,
        bus: EventBus,
        feeds: LogFeeds,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        schema = build_schema(settings, tracer_provider)
        super().__init__(
            schema,
            graphql_ide="graphiql" if graphiql_enabled(settings) else None,
            allowed_origins=settings.cors_origins,
            # legacy graphql-ws: its own keep-alive ("ka") messages
            keep_alive=True,
            keep_alive_interval=settings.graphql_ws_ping_interval_ms / 1000,
            connection_init_wait_timeout=timedelta(
                milliseconds=settings.graphql_ws_init_timeout_ms
            ),
        )
        self.max_subscriptions_per_connection = settings.graphql_max_subscriptions_per_connection
        self.ws_limits = WsLimits(
            max_connections=settings.graphql_ws_max_connections,
            max_subscriptions=settings.graphql_max_subscriptions,
            max_per_user=(
                None if settings.single_user_mode else settings.graphql_max_subscriptions_per_user
            ),
            max_per_address=settings.graphql_ws_max_connections_per_address,
        )
        self.graphql_transport_ws_handler_class = handler_with_ping_interval(
            settings.graphql_ws_ping_interval_ms / 1000
        )
        self.graphql_ws_handler_class = SignedInGraphQLWSHandler
        self.max_message_bytes = settings.graphql_max_body_bytes
        self.max_response_bytes = settings.graphql_max_response_bytes
        self._authenticator = authenticator
        self._bus = bus
        self._feeds = feeds
        self._checks = document_checks(settings)
        self._core_schema = schema._schema  # graphql-core's, for query_fast_path
        self._traced = tracer_provider is not None
        self._plans = settings.graphql_query_plans

    async def get_context(
        self, request: Request | WebSocket, response: Response | WebSocket
    ) -> Context:
        return Context(
            authenticator=self._authenticator,
            bus=self._bus,
            feeds=self._feeds,
            authorization=request.headers.get("authorization"),
            request=request,
            response=response,
        )

    async def get_root_value(self, request: Request | WebSocket) -> Any:
        return None

    # --- HTTP -----------------------------------------------------------------------

    def decode_json(self, data: str | bytes) -> object:
        return wire.decode(data)

    def parse_json(self, data: str | bytes) -> Any:
        """A request body (or its ``variables`` / ``extensions`` given in the URL): a JSON
        object, or a list (refused: batching is off)."""
        try:
            value = wire.decode(data)
        except wire.BadJSON as error:
            raise HTTPException(400, f"the request is not acceptable JSON: {error}") from None
        if not isinstance(value, dict | list):
            raise HTTPException(400, "a GraphQL request must be a JSON object")
        return value

    async def execute_single(  # Strawberry's signature
        self,
        request: Request,
        request_adapter: AsyncHTTPRequestAdapter,
        sub_response: Response,
        context: Context,
        root_value: Any,
        request_data: GraphQLRequestData,
    ) -> ExecutionResult:
        """As Strawberry's, except that subscriptions are refused: they are served over
        WebSocket (over HTTP they would run as a query and fail inside)."""
        allowed = OperationType.from_http(request_adapter.method) - {OperationType.SUBSCRIPTION}
        if not isinstance(request_data.operation_name, str | None):  # as over WebSocket
            raise HTTPException(400, "`operationName` must be a string or null")
        try:
            return await self.schema.execute(
                request_data.query,
                root_value=root_value,
                variable_values=request_data.variables,
                context_value=context,
                operation_name=request_data.operation_name,
                allowed_operation_types=allowed,
                operation_extensions=request_data.extensions,
            )
        except CannotGetOperationTypeError as error:
            raise HTTPException(400, error.as_http_error_reason()) from None
        except InvalidOperationTypeError as error:
            if error.operation_type is OperationType.SUBSCRIPTION:
                raise HTTPException(
                    400, "subscriptions are served over WebSocket only (ws://.../graphql)"
                ) from None
            raise HTTPException(400, error.as_http_error_reason(request_adapter.method)) from None
        except MissingQueryError:
            raise HTTPException(400, "no GraphQL query found in the request") from None

    async def process_result(
        self, request: Request, result: ExecutionResult
    ) -> GraphQLHTTPResponse:
        response = await super().process_result(request, result)
        if wants_graphql_response(request) and _is_request_error(result):
            # GraphQL-over-HTTP: the request was not well-formed, nothing ran.
            response.pop("data", None)
            request.state.graphql_status = 400
        return response

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            client = scope.get("client")
            address = str(client[0]) if client else ""
            refused = self.ws_limits.connect(address)
            if refused is not None:
                await _refuse_websocket(scope, receive, send, refused)
                return
            try:
                await super().__call__(scope, receive, send)
            finally:
                self.ws_limits.disconnect(address)
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await self._fast_query(request) or await self.run(request)
        except HTTPException as error:
            refusal = _HTTP_ERRORS.get(error.status_code, errors.InvalidArgument)
            response = Response(error_body(error.reason, refusal), status_code=error.status_code)
        if response.media_type != "text/html":  # GraphiQL's page
            response = self._finish(request, response)
        await response(scope, receive, send)

    async def _fast_query(self, request: Request) -> Response | None:
        """The answer of ``query_fast_path`` when the request is a plain JSON POST of a
        document it has a plan for (and is not traced: spans come from the ordinary path);
        else None. The body read here is kept for the ordinary path."""
        if not self._plans or request.method != "POST":
            return None
        # As Strawberry decides (on the media type, not on the whole header: a simple
        # cross-site request may carry "text/plain; x=application/json").
        media_type, _ = parse_content_type(request.headers.get("content-type", ""))
        if "application/json" not in media_type:
            return None
        if self._traced and not tracing.unsampled():
            return None
        try:
            data = wire.decode(await request.body())
        except wire.BadJSON:
            return None  # refused, with its reason, by the ordinary path
        if not isinstance(data, dict) or data.get("extensions") is not None:
            return None
        query, variables, name = data.get("query"), data.get("variables"), data.get("operationName")
        if not isinstance(query, str) or len(query) > query_fast_path.PLAN_MAX_CHARS:
            return None
        if not isinstance(variables, dict | None):
            return None
        if not (name is None or (isinstance(name, str) and len(name) <= _MAX_NAME_CHARS)):
            return None
        plan = query_fast_path.query_plan(self._core_schema, self._checks, query, name)
        if plan is None:
            return None
        context = await self.get_context(request, response=None)  # type: ignore[arg-type]
        body = await query_fast_path.serve(self._core_schema, plan, variables, context)
        return None if body is None else Response(body)

    def _finish(self, request: Request, response: Response) -> Response:
        """The answer's size, status and media type, as the rules above say."""
        if len(response.body) > self.max_response_bytes:
            response = Response(
                error_body(
                    f"the answer is larger than {self.max_response_bytes} bytes "
                    "(DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES): select less, or read logs in "
                    "pages with offset and limit",
                    errors.InvalidArgument,
                )
            )
        status = getattr(request.state, "graphql_status", None)
        if status is not None:
            response.status_code = status
        media = GRAPHQL_RESPONSE if wants_graphql_response(request) else "application/json"
        response.headers["content-type"] = media
        return response

    # --- WebSocket ------------------------------------------------------------------

    async def on_ws_connect(self, context: Context) -> UnsetType | dict[str, object] | None:
        """A WebSocket authenticates once, in its ``connection_init`` payload
        (``{"authorization": "Bearer <token>"}``; browsers cannot set headers), or with the
        upgrade request's Authorization header. Refused: closed with 4403."""
        params = context.connection_params or {}
        given = params.get("authorization") or params.get("Authorization")
        if isinstance(given, str) and given:
            context.authorization = given
        try:
            await context.actor()
        except Unauthenticated as error:
            raise ConnectionRejectionError(
                {"code": graphql_code(Unauthenticated), "message": error.message}
            ) from None
        return None


def _is_request_error(result: ExecutionResult) -> bool:
    """Whether ``result`` says the request itself was bad (did not parse, validate or
    coerce its variables): nothing ran, and every error is the caller's."""
    if result.data is not None or not result.errors:
        return False
    return all(
        e.path is None and (e.extensions or {}).get("code") == Code.INVALID_ARGUMENT
        for e in result.errors
    )
