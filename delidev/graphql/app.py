from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.types.unset import UnsetType

from delidev.auth.authenticator import Authenticator
from delidev.errors import Unauthenticated
from delidev.events import EventBus
from delidev.graphql.context import Context
from delidev.graphql.schema import build_schema
from delidev.graphql.subscriptions import SignedInGraphQLWSHandler, handler_with_ping_interval
from delidev.services.live import LogFeeds
from delidev.settings import Settings


class DeliDevGraphQL(GraphQL[Context, None]):
    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        *,
        bus: EventBus,
        feeds: LogFeeds,
    ) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.graphql_graphiql else None,
            allowed_origins=settings.cors_origins,
            # legacy graphql-ws: its own keep-alive ("ka") messages
            keep_alive=True,
            keep_alive_interval=settings.graphql_ws_ping_interval_ms / 1000,
            connection_init_wait_timeout=timedelta(
                milliseconds=settings.graphql_ws_init_timeout_ms
            ),
        )
        self.graphql_transport_ws_handler_class = handler_with_ping_interval(
            settings.graphql_ws_ping_interval_ms / 1000
        )
        self.graphql_ws_handler_class = SignedInGraphQLWSHandler
        self._authenticator = authenticator
        self._bus = bus
        self._feeds = feeds

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
                {"code": "UNAUTHENTICATED", "message": error.message}
            ) from None
        return None
