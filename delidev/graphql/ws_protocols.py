"""The WebSocket protocol handlers: Strawberry's graphql-transport-ws and legacy graphql-ws,
each with DeliDev's additions (keep-alives that re-check the access token, malformed
messages closed with 4400, an init deadline on the legacy protocol) and, for
graphql-transport-ws, the switch to the ``sessionLog`` fast path (``log_fast_path``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta
from typing import Any

from graphql import GraphQLError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage,
    ErrorMessage,
    OperationMessage,
)

from delidev import errors, metrics
from delidev.graphql.context import Context
from delidev.graphql.errors import error_extensions
from delidev.graphql.log_fast_path import log_plan, serve_session_log
from delidev.graphql.wire import message_problem
from delidev.graphql.ws_limits import WsLimits
from delidev.services import auth as auth_service


async def _limits_and_user(handler: Any) -> tuple[WsLimits | None, object]:
    """The view's caps (``ws_limits``; None for a view without them) and the key of the
    connection's user, whose subscriptions they count."""
    limits: WsLimits | None = getattr(handler.view, "ws_limits", None)
    if limits is None:
        return None, None
    try:
        actor = await handler.context.actor()
    except errors.Unauthenticated:
        return limits, None
    return limits, actor.user_id


class KeepAliveTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with two additions.

    - Server pings, so that proxies keep idle connections open (Strawberry answers the
      client's pings but sends none of its own); each also re-checks the connection's token,
      and a revoked or expired one closes the connection.
    - A fast path for ``sessionLog``, the hottest subscription (one message per log piece
      per follower): when the document is plain enough (see ``log_fast_path.log_plan``) it
      is served straight from the log feed, skipping graphql-core's per-event execution,
      and each piece's message is encoded (and compressed, see ``websocket_deflate``) once
      for all followers. Anything else, and any error, takes the ordinary path."""

    ping_interval = timedelta(seconds=15)

    async def handle(self) -> None:
        pinger = asyncio.create_task(self._ping_forever())
        try:
            await super().handle()
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pinger

    async def _ping_forever(self) -> None:
        """Pings, and at each ping checks that the connection's access token is still
        valid: after a logout or once it expires, the connection is closed (4403)."""
        while True:
            await asyncio.sleep(self.ping_interval.total_seconds())
            if not self.connection_acknowledged:
                continue
            try:
                await auth_service.ensure_still_signed_in(actor=await self.context.actor())
            except errors.Unauthenticated as error:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=4403, reason=f"Forbidden: {error.message}")
                return
            with contextlib.suppress(Exception):
                await self.send_message({"type": "ping"})

    async def handle_message(self, message: Message) -> None:
        """Strawberry's, after a check of the message's shape: a malformed message (not an
        object, a payload that is not one, no string query...) closes with 4400."""
        problem = message_problem(message, "graphql-transport-ws")
        if problem is not None:
            await self.websocket.close(code=4400, reason=problem)
            return
        await super().handle_message(message)

    async def run_operation(self, operation: Operation[Context, None]) -> None:
        limits, user = await _limits_and_user(self)
        refusal = limits.open(user) if limits is not None else None
        if refusal is not None:
            await operation.send_initial_errors(
                [GraphQLError(refusal, extensions=error_extensions(errors.Unavailable))]
            )
            return
        metrics.subscription_opened("graphql-transport-ws")
        try:
            await self._run_operation(operation)
        finally:
            metrics.subscription_closed("graphql-transport-ws")
            if limits is not None:
                limits.close(user)

    async def _run_operation(self, operation: Operation[Context, None]) -> None:
        plan = log_plan(
            self.schema._schema,  # type: ignore[attr-defined]  # the graphql-core schema
            operation.query,
            operation.operation_name,
        )
        if plan is None:
            await super().run_operation(operation)
            return
        await serve_session_log(self, operation, plan, ordinary=super().run_operation)


def handler_with_ping_interval(seconds: float) -> type[KeepAliveTransportWSHandler]:
    return type(
        "KeepAliveTransportWSHandler",
        (KeepAliveTransportWSHandler,),
        {"ping_interval": timedelta(seconds=seconds)},
    )


class SignedInGraphQLWSHandler(BaseGraphQLWSHandler[Context, None]):
    """The legacy graphql-ws protocol with two additions.

    - Its keep-alive messages also check that the connection's access token is still
      valid (closed with 4403 otherwise).
    - ``connection_init`` must come within the view's ``connection_init_wait_timeout``, as
      in graphql-transport-ws (the legacy protocol sets no limit): a connection that stays
      silent is closed with the same code, 4408."""

    _init_received = False

    async def handle(self) -> None:
        timer = asyncio.create_task(self._close_unless_initialised())
        try:
            await super().handle()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await timer

    async def _close_unless_initialised(self) -> None:
        await asyncio.sleep(self.view.connection_init_wait_timeout.total_seconds())
        if not self._init_received:
            with contextlib.suppress(Exception):
                await self.websocket.close(code=4408, reason="Connection initialisation timeout")

    async def handle_message(self, message: OperationMessage) -> None:
        """Strawberry's, after a check of the message's shape: a malformed message (or one
        of an unknown type, which Strawberry would skip) closes with 4400."""
        problem = message_problem(message, "graphql-ws")
        if problem is not None:
            await self.websocket.close(code=4400, reason=problem)
            return
        await super().handle_message(message)

    async def handle_async_results(
        self,
        operation_id: str,
        query: str,
        operation_name: str | None,
        variables: dict[str, object] | None,
    ) -> None:
        limits, user = await _limits_and_user(self)
        refusal = limits.open(user) if limits is not None else None
        if refusal is not None:
            try:
                await self.send_message(
                    ErrorMessage(
                        type="error",
                        id=operation_id,
                        payload=GraphQLError(
                            refusal, extensions=error_extensions(errors.Unavailable)
                        ).formatted,
                    )
                )
            finally:  # as Strawberry's own ending: the id is free again
                self.tasks.pop(operation_id, None)
            return
        metrics.subscription_opened("graphql-ws")
        try:
            await super().handle_async_results(operation_id, query, operation_name, variables)
        finally:
            metrics.subscription_closed("graphql-ws")
            if limits is not None:
                limits.close(user)

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        self._init_received = True
        await super().handle_connection_init(message)

    async def handle_keep_alive(self) -> None:
        assert self.keep_alive_interval
        while True:
            try:
                await auth_service.ensure_still_signed_in(actor=await self.context.actor())
            except errors.Unauthenticated as error:
                with contextlib.suppress(Exception):
                    await self.websocket.close(code=4403, reason=f"Forbidden: {error.message}")
                return
            await self.send_message({"type": "ka"})
            await asyncio.sleep(self.keep_alive_interval)
