"""Subscriptions (graphql-transport-ws, legacy graphql-ws too): thin over services/live.py.

Loaders are rebuilt for every event: a WebSocket's context lives as long as the connection,
and a cached task would go stale between events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
from collections.abc import AsyncGenerator, Awaitable, Coroutine, Generator
from contextlib import aclosing
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

import strawberry
from graphql import GraphQLError, parse, validate
from graphql.language import ast
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)
from strawberry.subscriptions.protocols.graphql_transport_ws.types import Message
from strawberry.subscriptions.protocols.graphql_ws.handlers import BaseGraphQLWSHandler
from strawberry.subscriptions.protocols.graphql_ws.types import (
    ConnectionInitMessage,
    OperationMessage,
)

from delidev import errors
from delidev import models as m
from delidev.graphql.context import Context, Loaders
from delidev.graphql.errors import format_error
from delidev.graphql.task_types import (
    AgentSessionStatus,
    Task,
    TtyInputRequest,
    task_from_model,
)
from delidev.graphql.types import GqlInfo
from delidev.graphql.wire import message_problem
from delidev.services import auth as auth_service
from delidev.services import live
from delidev.services.common import parse_id, parse_optional_id
from delidev.websocket_deflate import FrameWriter, SharedPrefix, shared_prefix

WorkerStatus = strawberry.enum(m.WorkerStatus, name="WorkerStatus")


@strawberry.type(
    description="A piece of a session's log. Offsets count Unicode code points (not UTF-16 "
    "units: an emoji is 1); resume with `nextOffset`, never with a count of your own. The "
    "last event of a finished session has `final` set, empty `data` and the status the "
    "session ended with."
)
class LogChunk:
    # Float: a log's offsets may outgrow GraphQL's 32-bit Int.
    offset: float = strawberry.field(description="Offset of `data` in the log (code points).")
    data: str = strawberry.field(
        description="Output, or the marker line of a dropped range (see `nextOffset`)."
    )
    status: AgentSessionStatus  # type: ignore[valid-type]  # strawberry.enum result
    final: bool
    next_offset: float = strawberry.field(
        description="Offset to resume from (`fromOffset`) after this piece: `offset` plus the "
        "code points of `data`, or the end of a dropped range whose marker `data` holds."
    )


@strawberry.type
class TaskUpdate:
    task_id: strawberry.ID
    deleted: bool
    task: Task | None


@strawberry.type
class Worker:
    id: strawberry.ID
    name: str
    endpoint_url: str
    status: WorkerStatus  # type: ignore[valid-type]  # strawberry.enum result
    last_heartbeat: datetime
    current_task_id: strawberry.ID | None
    registered_at: datetime


@strawberry.type
class WorkerUpdate:
    worker_id: strawberry.ID
    deleted: bool
    worker: Worker | None


def _fresh(info: GqlInfo) -> None:
    info.context.loaders = Loaders()


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def session_log(
        self,
        info: GqlInfo,
        session_id: strawberry.ID,
        from_offset: Annotated[
            float,
            strawberry.argument(
                description="Offset (code points) to start from: 0, or the `nextOffset` of "
                "the last piece received."
            ),
        ] = 0,
    ) -> AsyncGenerator[LogChunk, None]:
        """The log from ``fromOffset`` (stored output first), then live, until it ends."""
        ctx = info.context
        if not math.isfinite(from_offset):
            raise errors.InvalidArgument("fromOffset must be a finite number", field="fromOffset")
        async for piece in ctx.feeds.follow(
            actor=await ctx.actor(),
            session_id=parse_id(session_id, "sessionId"),
            from_offset=int(from_offset),
        ):
            yield LogChunk(
                offset=piece.offset,
                data=piece.data,
                status=piece.status,
                final=piece.final,
                next_offset=piece.next_offset,
            )

    @strawberry.subscription
    async def task_updated(
        self,
        info: GqlInfo,
        task_id: strawberry.ID | None = None,
        workspace_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[TaskUpdate, None]:
        """Changes of one task, or of every task of a workspace (status, sessions, nodes)."""
        ctx = info.context
        async for update in live.task_updates(
            actor=await ctx.actor(),
            bus=ctx.bus,
            task_id=parse_optional_id(task_id, "taskId"),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
        ):
            _fresh(info)
            yield TaskUpdate(
                task_id=strawberry.ID(str(update.task_id)),
                deleted=update.task is None,
                task=None if update.task is None else task_from_model(update.task),
            )

    @strawberry.subscription
    async def tty_input_requested(
        self, info: GqlInfo, workspace_id: strawberry.ID
    ) -> AsyncGenerator[TtyInputRequest, None]:
        """Questions agents ask in the workspace, as they are asked."""
        ctx = info.context
        async for request in live.tty_requests(
            actor=await ctx.actor(),
            bus=ctx.bus,
            workspace_id=parse_id(workspace_id, "workspaceId"),
        ):
            _fresh(info)
            yield TtyInputRequest.from_model(request)

    @strawberry.subscription
    async def worker_updated(self, info: GqlInfo) -> AsyncGenerator[WorkerUpdate, None]:
        """Workers registering, changing status (idle, busy, unhealthy) and leaving."""
        ctx = info.context
        async for update in live.worker_updates(actor=await ctx.actor(), bus=ctx.bus):
            w = update.worker
            yield WorkerUpdate(
                worker_id=strawberry.ID(str(update.worker_id)),
                deleted=w is None,
                worker=None
                if w is None
                else Worker(
                    id=strawberry.ID(str(w.id)),
                    name=w.name,
                    endpoint_url=w.endpoint_url,
                    status=w.status,
                    last_heartbeat=w.last_heartbeat,
                    current_task_id=None
                    if update.current_task_id is None
                    else strawberry.ID(str(update.current_task_id)),
                    registered_at=w.registered_at,
                ),
            )


@dataclass(frozen=True, slots=True)
class _LogPlan:
    """A ``sessionLog`` subscription simple enough to serve without graphql-core."""

    root_key: str
    fields: tuple[tuple[str, str], ...]  # (response key, field name)
    session_arg: ast.ValueNode
    offset_arg: ast.ValueNode | None


_PLAIN_FIELDS = {"offset", "data", "status", "final", "nextOffset", "__typename"}
_PLAN_MAX_CHARS = 2_000
"""Longer documents are not plain enough for the fast path (and are parsed by the ordinary
path, under the token limit)."""


@functools.lru_cache(maxsize=256)
def _log_plan(schema: Any, query: str, operation_name: str | None) -> _LogPlan | None:
    """The plan for a document that holds exactly one subscription selecting only plain
    fields of ``sessionLog`` (no fragments, no directives), valid against the schema."""
    if len(query) > _PLAN_MAX_CHARS:
        return None
    try:
        document = parse(query)
    except GraphQLError:
        return None
    operations = [d for d in document.definitions if isinstance(d, ast.OperationDefinitionNode)]
    if len(document.definitions) != 1 or len(operations) != 1:
        return None
    op = operations[0]
    if op.operation != ast.OperationType.SUBSCRIPTION or op.directives:
        return None
    if operation_name is not None and (op.name is None or op.name.value != operation_name):
        return None
    (root, *rest) = op.selection_set.selections
    if rest or not isinstance(root, ast.FieldNode) or root.name.value != "sessionLog":
        return None
    if root.directives or root.selection_set is None:
        return None
    fields: list[tuple[str, str]] = []
    for node in root.selection_set.selections:
        if not isinstance(node, ast.FieldNode) or node.name.value not in _PLAIN_FIELDS:
            return None
        if node.directives or node.arguments or node.selection_set:
            return None
        fields.append(((node.alias or node.name).value, node.name.value))
    if validate(schema, document):
        return None
    args = {a.name.value: a.value for a in root.arguments or ()}
    return _LogPlan(
        root_key=(root.alias or root.name).value,
        fields=tuple(fields),
        session_arg=args["sessionId"],
        offset_arg=args.get("fromOffset"),
    )


def _argument(node: ast.ValueNode | None, variables: dict[str, Any] | None) -> Any:
    if node is None:
        return None
    if isinstance(node, ast.VariableNode):
        return (variables or {}).get(node.name.value)
    if isinstance(node, ast.StringValueNode):
        return node.value
    if isinstance(node, ast.IntValueNode | ast.FloatValueNode):
        return float(node.value)
    return None


class KeepAliveTransportWSHandler(BaseGraphQLTransportWSHandler[Context, None]):
    """graphql-transport-ws with two additions.

    - Server pings, so that proxies keep idle connections open (Strawberry answers the
      client's pings but sends none of its own); each also re-checks the connection's token,
      and a revoked or expired one closes the connection.
    - A fast path for ``sessionLog``, the hottest subscription (one message per log piece
      per follower): when the document is plain enough (see ``_log_plan``) it is served
      straight from the log feed, skipping graphql-core's per-event execution, and each
      piece's message is encoded (and compressed, see ``websocket_deflate``) once for all
      followers. Anything else, and any error, takes the ordinary path."""

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
        plan = _log_plan(
            self.schema._schema,  # type: ignore[attr-defined]  # the graphql-core schema
            operation.query,
            operation.operation_name,
        )
        if plan is None:
            await super().run_operation(operation)
            return
        session = _argument(plan.session_arg, operation.variables)
        offset = _argument(plan.offset_arg, operation.variables) or 0
        # Whether a message went out: until then an error takes the ordinary path (which
        # runs the subscription again, from its start), and afterwards it must not.
        sent = False
        try:
            if not isinstance(session, str) or not isinstance(offset, int | float):
                raise _Fallback
            if not math.isfinite(offset):
                raise _Fallback  # the ordinary path reports it
            session_id = parse_id(session, "sessionId")
            suffix = ',"id":' + json.dumps(operation.id) + "}"
            closing = suffix.encode()
            writer = FrameWriter.of(self.websocket.ws.scope)  # type: ignore[attr-defined]  # Starlette's WebSocket behind Strawberry's adapter

            def push(piece: live.LogPiece) -> Awaitable[None] | None:
                nonlocal sent
                if self.operations.get(operation.id) is not operation:
                    # The client completed it; its task is being cancelled.
                    return _Raise(_OperationStreamClosed())
                text, prefix = _next_message(plan, session_id, piece)
                sent = True
                if writer is not None and writer.write_text(prefix, closing):
                    return None
                return send_now(self._send_text(text + suffix), prefix)

            stream = self.context.feeds.follow(
                actor=await self.context.actor(),
                session_id=session_id,
                from_offset=int(offset),
                push=push,
            )
            async with aclosing(stream):
                async for piece in stream:
                    if operation.completed:
                        return
                    text, prefix = _next_message(plan, session_id, piece)
                    sent = True
                    with shared_prefix(prefix):
                        await self._send_text(text + suffix)
            await operation.send_operation_message({"id": operation.id, "type": "complete"})
        except _OperationStreamClosed:
            return
        except _Fallback:
            await super().run_operation(operation)
        except errors.DeliDevError as error:
            if not sent:  # reported by the ordinary path, in the ordinary form
                await super().run_operation(operation)
                return
            # E.g. access was lost or the session deleted while it was followed.
            formatted = format_error(
                GraphQLError(error.message, path=[plan.root_key], original_error=error)
            )
            await operation.send_operation_message(
                {
                    "id": operation.id,
                    "type": "next",
                    "payload": {"data": None, "errors": [formatted.formatted]},
                }
            )
            await operation.send_operation_message({"id": operation.id, "type": "complete"})

    async def _send_text(self, text: str) -> None:
        """Sends an encoded message (what ``send_message`` does after encoding it)."""
        try:
            await self.websocket.ws.send_text(text)  # type: ignore[attr-defined]
        except WebSocketDisconnect as exc:
            raise WebSocketDisconnected from exc


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


class _Fallback(Exception):
    pass


class _Raise:
    """An awaitable that raises ``error`` (and nothing, if nobody awaits it)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __await__(self) -> Generator[Any, None, None]:
        raise self.error
        yield  # pragma: no cover  # makes this a generator


def send_now(send: Coroutine[Any, Any, None], prefix: SharedPrefix) -> Awaitable[None] | None:
    """Runs ``send`` as far as it goes without waiting, in the caller's task: None when it
    finished (the usual case: the socket took the bytes), else a task that finishes it (the
    connection's buffer is full: its reader is slow). An error comes back as an awaitable
    that raises it. So one task can push a piece to many connections without waking a task
    per connection, and a slow one holds up nobody."""
    with shared_prefix(prefix):
        try:
            waiting = send.send(None)
        except StopIteration:
            return None
        except BaseException as exc:  # handed to the follower, raised there
            return _Raise(exc)
    task = asyncio.ensure_future(_finish(send, waiting))
    # Retrieved here too: the follower may be gone before it awaits the outcome.
    task.add_done_callback(lambda t: t.cancelled() or t.exception())
    return task


async def _finish(send: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Drives a coroutine that ``send_now`` started to its end, as a task would: it waits
    for what the coroutine waits for, then resumes it (which sees that outcome)."""
    try:
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                await asyncio.wait([waiting])
            waiting = send.send(None)
    except StopIteration:
        return
    finally:
        send.close()


# The encoded ``next`` messages of recent log pieces, shared by the followers of a session:
# each piece is encoded (and compressed, see websocket_deflate) once, however many follow.
_MESSAGES: dict[tuple[Any, ...], tuple[str, SharedPrefix]] = {}
_MESSAGES_KEPT = 64
# The last answer, checked first: the feed pushes one piece to its followers in a row.
_LAST: tuple[object, object, object, tuple[str, SharedPrefix]] = (
    None,
    None,
    None,
    ("", SharedPrefix(b"")),
)


def _next_message(plan: _LogPlan, session: UUID, piece: live.LogPiece) -> tuple[str, SharedPrefix]:
    """The ``next`` message of ``piece`` without its closing id: ``{"type":"next",
    "payload":...`` (the log is append-only, so text at an offset never changes)."""
    global _LAST
    last_piece, last_plan, last_session, last_found = _LAST
    if piece is last_piece and plan is last_plan and session == last_session:
        return last_found
    # The text at an offset never changes, except a dropped range's marker, which moves
    # next_offset whenever it changes.
    key = (session, piece.offset, len(piece.data), piece.next_offset, piece.status, piece.final,
           plan.root_key, plan.fields)  # fmt: skip
    found = _MESSAGES.get(key)
    if found is None:
        payload = json.dumps({"data": {plan.root_key: _render(plan, piece)}})
        text = '{"type":"next","payload":' + payload
        found = (text, SharedPrefix(text.encode()))
        if len(_MESSAGES) >= _MESSAGES_KEPT:
            del _MESSAGES[next(iter(_MESSAGES))]
        _MESSAGES[key] = found
    _LAST = (piece, plan, session, found)
    return found


def _render(plan: _LogPlan, piece: live.LogPiece) -> dict[str, Any]:
    values = {
        "offset": float(piece.offset),
        "data": piece.data,
        "status": piece.status.name,
        "final": piece.final,
        "nextOffset": float(piece.next_offset),
        "__typename": "LogChunk",
    }
    return {key: values[name] for key, name in plan.fields}


def handler_with_ping_interval(seconds: float) -> type[KeepAliveTransportWSHandler]:
    return type(
        "KeepAliveTransportWSHandler",
        (KeepAliveTransportWSHandler,),
        {"ping_interval": timedelta(seconds=seconds)},
    )
