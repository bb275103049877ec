"""The ``sessionLog`` fast path: a log subscription served without graphql-core.

``sessionLog`` is the hottest subscription (one message per log piece per follower). When
its document is plain enough (``log_plan``: one subscription selecting only plain fields
of ``sessionLog``, valid against the schema), ``serve_session_log`` runs it straight from
the log feed, skipping graphql-core's per-event execution, and each piece's ``next``
message is encoded (and compressed, see ``websocket_deflate``) once for all followers,
kept in the caches below. Anything else, and any error before the first message, takes
the ordinary path. ``ws_protocols.KeepAliveTransportWSHandler`` decides which.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from graphql import GraphQLError, GraphQLSchema, parse, validate
from graphql.execution.values import get_variable_values
from graphql.language import ast
from starlette.websockets import WebSocketDisconnect
from strawberry.http.exceptions import WebSocketDisconnected
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import (
    BaseGraphQLTransportWSHandler,
    Operation,
    _OperationStreamClosed,
)

from delidev import errors
from delidev.graphql.context import Context
from delidev.graphql.errors import format_error
from delidev.services import live
from delidev.services.common import parse_id
from delidev.websocket_deflate import FrameWriter, SharedPrefix, shared_prefix


@dataclass(frozen=True, slots=True)
class LogPlan:
    """A ``sessionLog`` subscription simple enough to serve without graphql-core."""

    root_key: str
    fields: tuple[tuple[str, str], ...]  # (response key, field name)
    session_arg: ast.ValueNode
    offset_arg: ast.ValueNode | None
    schema: GraphQLSchema
    variable_definitions: tuple[ast.VariableDefinitionNode, ...]


_PLAIN_FIELDS = {"offset", "data", "status", "final", "nextOffset", "__typename"}
_PLAN_MAX_CHARS = 2_000
"""Longer documents are not plain enough for the fast path (and are parsed by the ordinary
path, under the document limits)."""
_NAME_MAX_CHARS = 200


def log_plan(schema: GraphQLSchema, query: str, operation_name: str | None) -> LogPlan | None:
    """The plan for a document that holds exactly one subscription selecting only plain
    fields of ``sessionLog``, each once (no fragments, no directives), valid against the
    schema. Only short documents and names are looked at (and cached): a long one is
    neither, and takes the ordinary path and its limits."""
    if len(query) > _PLAN_MAX_CHARS:
        return None
    if operation_name is not None and len(operation_name) > _NAME_MAX_CHARS:
        return None
    return _log_plan(schema, query, operation_name)


@functools.lru_cache(maxsize=256)
def _log_plan(schema: GraphQLSchema, query: str, operation_name: str | None) -> LogPlan | None:
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
    # Each field once: a message then holds a piece's text at most once. (Asked for under
    # many aliases, it would go out as many times per piece, past the budget of an answer:
    # the ordinary path applies the document limits and that budget.)
    if len({name for _, name in fields}) != len(fields):
        return None
    if validate(schema, document):
        return None
    args = {a.name.value: a.value for a in root.arguments or ()}
    return LogPlan(
        root_key=(root.alias or root.name).value,
        fields=tuple(fields),
        session_arg=args["sessionId"],
        offset_arg=args.get("fromOffset"),
        schema=schema,
        variable_definitions=tuple(op.variable_definitions or ()),
    )


def _arguments(plan: LogPlan, variables: dict[str, Any] | None) -> tuple[Any, Any]:
    """The session id and the offset, with the variables coerced as graphql-core coerces
    them (defaults included). Raises: _Fallback when they do not coerce (the ordinary path
    reports it)."""
    coerced = get_variable_values(plan.schema, plan.variable_definitions, variables or {})
    if isinstance(coerced, list):
        raise _Fallback
    values = coerced.coerced
    return _argument(plan.session_arg, values), _argument(plan.offset_arg, values)


def _argument(node: ast.ValueNode | None, variables: Mapping[str, Any]) -> Any:
    if node is None:
        return None
    if isinstance(node, ast.VariableNode):
        return variables.get(node.name.value)
    if isinstance(node, ast.StringValueNode):
        return node.value
    if isinstance(node, ast.IntValueNode | ast.FloatValueNode):
        return float(node.value)
    return None


class _Fallback(Exception):
    pass


async def serve_session_log(
    handler: BaseGraphQLTransportWSHandler[Context, None],
    operation: Operation[Context, None],
    plan: LogPlan,
    *,
    ordinary: Callable[[Operation[Context, None]], Awaitable[None]],
) -> None:
    """Runs ``operation`` (planned as ``plan``) on ``handler``'s connection; ``ordinary``
    (Strawberry's ``run_operation``) runs it instead when the fast path cannot."""
    # Whether a message went out: until then an error takes the ordinary path (which
    # runs the subscription again, from its start), and afterwards it must not.
    sent = False
    try:
        session, offset = _arguments(plan, operation.variables)
        offset = 0 if offset is None else offset
        if not isinstance(session, str) or not isinstance(offset, int | float):
            raise _Fallback
        if not math.isfinite(offset):
            raise _Fallback  # the ordinary path reports it
        session_id = parse_id(session, "sessionId")
        suffix = ',"id":' + json.dumps(operation.id) + "}"
        closing = suffix.encode()
        writer = FrameWriter.of(handler.websocket.ws.scope)  # type: ignore[attr-defined]  # Starlette's WebSocket behind Strawberry's adapter

        def push(piece: live.LogPiece) -> Awaitable[None] | None:
            nonlocal sent
            if handler.operations.get(operation.id) is not operation:
                # The client completed it; its task is being cancelled.
                return _Raise(_OperationStreamClosed())
            text, prefix = _next_message(plan, session_id, piece)
            sent = True
            if writer is not None and writer.write_text(prefix, closing):
                return None
            return send_now(_send_text(handler, text + suffix), prefix)

        stream = handler.context.feeds.follow(
            actor=await handler.context.actor(),
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
                    await _send_text(handler, text + suffix)
        await operation.send_operation_message({"id": operation.id, "type": "complete"})
    except _OperationStreamClosed:
        return
    except _Fallback:
        await ordinary(operation)
    except errors.DeliDevError as error:
        if not sent:  # reported by the ordinary path, in the ordinary form
            await ordinary(operation)
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


async def _send_text(handler: BaseGraphQLTransportWSHandler[Context, None], text: str) -> None:
    """Sends an encoded message (what ``send_message`` does after encoding it)."""
    try:
        await handler.websocket.ws.send_text(text)  # type: ignore[attr-defined]
    except WebSocketDisconnect as exc:
        raise WebSocketDisconnected from exc


# --- Pushing one piece to many connections -------------------------------------------------


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


# --- Encoded messages, shared by the followers of a session --------------------------------

# The encoded ``next`` messages of recent log pieces, shared by the followers of a session:
# each piece is encoded (and compressed, see websocket_deflate) once, however many follow.
_MESSAGES: dict[tuple[Any, ...], tuple[str, SharedPrefix]] = {}
_MESSAGES_KEPT = 64
# And at most this many characters of them (a piece of a long log's backlog is large).
_MESSAGES_CHARS = 8 * 1024 * 1024
_messages_chars = 0
# The last answer, checked first: the feed pushes one piece to its followers in a row.
_LAST: tuple[object, object, tuple[str, SharedPrefix]] = (None, None, ("", SharedPrefix(b"")))


def _next_message(plan: LogPlan, session: UUID, piece: live.LogPiece) -> tuple[str, SharedPrefix]:
    """The ``next`` message of ``piece`` without its closing id: ``{"type":"next",
    "payload":...`` (the log is append-only, so text at an offset never changes)."""
    global _LAST, _messages_chars
    last_piece, last_plan, last_found = _LAST
    # A piece belongs to one session's feed: the same piece is the same session's.
    if piece is last_piece and plan is last_plan:
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
        while _MESSAGES and (
            len(_MESSAGES) >= _MESSAGES_KEPT or _messages_chars + len(text) > _MESSAGES_CHARS
        ):
            _messages_chars -= len(_MESSAGES.pop(next(iter(_MESSAGES)))[0])
        _MESSAGES[key] = found
        _messages_chars += len(text)
    _LAST = (piece, plan, found)
    return found


def _render(plan: LogPlan, piece: live.LogPiece) -> dict[str, Any]:
    values = {
        "offset": float(piece.offset),
        "data": piece.data,
        "status": piece.status.name,
        "final": piece.final,
        "nextOffset": float(piece.next_offset),
        "__typename": "LogChunk",
    }
    return {key: values[name] for key, name in plan.fields}
