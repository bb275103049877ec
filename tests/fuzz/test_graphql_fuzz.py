"""GraphQL, both modes: queries and mutations generated from the schema by hypothesis-graphql
(valid ones and ones with one schema violation) over HTTP, subscriptions over the WebSocket
(graphql-transport-ws), malformed HTTP bodies and malformed WebSocket messages. Same checks
as the Connect fuzz, plus: every error carries ``extensions.code``; a WebSocket is never
dropped without a close frame (1006) or closed as an internal error (1011)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import graphql
import httpx
import pytest
from httpx_ws import AsyncWebSocketSession, WebSocketDisconnect, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries
from wsproto.utilities import LocalProtocolError

from delidev.graphql.schema import build_schema
from tests.fuzz import bounds
from tests.fuzz import harness as h
from tests.fuzz.conftest import World
from tests.fuzz.proto_strategies import any_json, deep_nesting, hostile_text

HANG_S = 60.0
"""A safety net for a request or WebSocket message that never comes (not a timing check)."""
WS_PROTOCOL = "graphql-transport-ws"
BAD_CLOSE_CODES = {1006, 1011}


def _schema(world: World) -> graphql.GraphQLSchema:
    return build_schema(world.settings)._schema


def _scalars(world: World) -> dict[str, st.SearchStrategy[graphql.ValueNode]]:
    ids = st.one_of(
        st.sampled_from(world.ids()), st.uuids().map(str), hostile_text.map(_no_surrogates)
    )
    return {
        "ID": ids.map(lambda v: graphql.StringValueNode(value=v)),
        # Lone surrogates cannot be written in a GraphQL document (a syntax error, found
        # at once); they go in variables instead (test_graphql_malformed_bodies).
        "String": hostile_text.map(_no_surrogates).map(lambda v: graphql.StringValueNode(value=v)),
        "DateTime": st.one_of(
            st.datetimes().map(lambda d: d.isoformat()), hostile_text.map(_no_surrogates)
        ).map(lambda v: graphql.StringValueNode(value=v)),
        "Float": st.sampled_from(
            ["0", "1.5", "-1", "1e400", "-1e400", "1e308", "123456789012345678901234567890"]
        ).map(lambda v: graphql.FloatValueNode(value=v)),
    }


def _no_surrogates(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def _as_subscription(document: graphql.DocumentNode) -> str:
    printed = graphql.print_ast(document)
    if printed.startswith("query"):
        return "subscription" + printed.removeprefix("query")
    return f"subscription {printed}"


def _subscription_schema(schema: graphql.GraphQLSchema) -> graphql.GraphQLSchema:
    """The schema with its Subscription type as the query root, so hypothesis-graphql
    (which generates queries and mutations) generates subscription selections."""
    assert schema.subscription_type is not None
    return graphql.GraphQLSchema(
        query=schema.subscription_type, types=list(schema.type_map.values())
    )


def _check_graphql_errors(what: str, body: bytes) -> None:
    try:
        payload = json.loads(body)
    except ValueError:
        return
    errors = payload.get("errors") if isinstance(payload, dict) else None
    for error in errors or []:
        code = (error.get("extensions") or {}).get("code") if isinstance(error, dict) else None
        if not isinstance(code, str):
            message = str(error.get("message", "")) if isinstance(error, dict) else ""
            raise h.finding(
                f"no-code-{' '.join(message.split()[:2])}",
                f"{what}: an error without extensions.code: {h.show(error, 300)}",
            )


async def _post(world: World, what: str, content: bytes, headers: dict[str, str]) -> None:
    h.count("graphql-http")
    world.checker.begin()
    with world.checker.watchdog.armed(what):
        try:
            async with asyncio.timeout(HANG_S):
                response = await world.http.post("/graphql", content=content, headers=headers)
        except TimeoutError:
            raise h.finding("hang", f"{what}: no answer in {HANG_S:.0f} s") from None
        except Exception as exc:  # raised through the in-process transport: a 500
            raise h.raised(what, exc) from None
    world.checker.answer(what, response.status_code, response.content)
    _check_graphql_errors(what, response.content)


def _root_fields(schema: graphql.GraphQLSchema, kind: str) -> list[tuple[str, bool]]:
    """(name, whether it takes arguments) of each root field of ``kind``: one without
    arguments has no schema violation to make (hypothesis-graphql's negative mode)."""
    root = {
        "query": schema.query_type,
        "mutation": schema.mutation_type,
        "subscription": schema.subscription_type,
    }[kind]
    assert root is not None
    return sorted((name, bool(field.args)) for name, field in root.fields.items())


async def _fuzz_operations(world: World, kind: str, field: str, mode: Mode) -> str | None:
    make = queries if kind == "query" else mutations
    operations = make(_schema(world), fields=[field], custom_scalars=_scalars(world), mode=mode)
    strategy = st.tuples(operations, st.sampled_from(world.auth_headers()))

    async def send(example: tuple[str, dict[str, str]]) -> None:
        document, auth = example
        what = f"graphql {kind} [{world.mode}-user] {h.show(document, 400)}"
        body = json.dumps({"query": document}).encode()
        await _post(world, what, body, {"content-type": "application/json", **auth})

    return await h.run_examples(
        f"graphql {kind} {field} ({mode.name.lower()})",
        strategy,
        send,
        h.budget(h.EXAMPLES_PER_TARGET // 2),
    )


@pytest.mark.parametrize("kind", ["query", "mutation"])
async def test_graphql_operations(world: World, kind: str) -> None:
    """Every root field on its own: valid operations, then ones with one schema violation."""
    failures = [
        failure
        for field, has_args in _root_fields(_schema(world), kind)
        for mode in (Mode.POSITIVE, Mode.NEGATIVE)
        if mode == Mode.POSITIVE or has_args
        if (failure := await _fuzz_operations(world, kind, field, mode))
    ]
    await world.alive()
    await world.unchanged()
    assert not failures, "\n\n".join(failures)


def fragment_bomb(depth: int) -> str:
    """A small document whose fragments each spread the previous one twice: 2**depth
    selections once expanded (issue 9 item 2)."""
    lines = ["fragment F0 on Query { workspaces { totalCount } }"]
    lines += [f"fragment F{i} on Query {{ ...F{i - 1} ...F{i - 1} }}" for i in range(1, depth + 1)]
    return "\n".join([f"query {{ ...F{depth} }}", *lines])


def _bodies(world: World) -> st.SearchStrategy[tuple[bytes, str]]:
    """Whole request bodies that are not what a GraphQL client sends."""
    query = st.sampled_from(
        [
            "{ workspaces { totalCount } }",
            "query($id: ID!) { workspace(id: $id) { id name } }",
            "query($s: String) { tasks(after: $s) { totalCount } }",
            "subscription { workerUpdated { __typename } }",
            "mutation($s: String!) { createWorkspace(input: {name: $s}) { id } }",
            "{",
            "",
        ]
    )
    variables = st.one_of(
        st.dictionaries(st.sampled_from(["id", "s", "x"]), any_json(4), max_size=3),
        st.sampled_from([{"s": "\ud800"}, {"id": "\x00"}, {"s": 1e308}]),
        hostile_text.map(lambda v: {"s": v, "id": v}),
        deep_nesting(bounds.MAX_PARSED_NESTING).map(lambda n: {"s": json.loads(n)}),
    )
    request = st.fixed_dictionaries(
        {"query": query},
        optional={"variables": st.one_of(variables, any_json(2)), "operationName": any_json(1)},
    ).map(lambda r: json.dumps(r).encode())
    json_type = st.sampled_from(["application/json", "application/json; charset=utf-8"])
    deepest = bounds.MAX_FRAGMENT_DEPTH
    bombs = st.one_of(st.just(deepest), st.integers(2, deepest)).map(
        lambda n: json.dumps({"query": fragment_bomb(n)}).encode()
    )
    return st.one_of(
        st.tuples(bombs, json_type),
        st.tuples(request, json_type),
        st.tuples(any_json(6).map(lambda v: json.dumps(v).encode()), json_type),
        st.tuples(deep_nesting().map(str.encode), json_type),
        st.tuples(st.binary(max_size=64), json_type),
        st.tuples(
            st.sampled_from([b"null", b"1", b"[]", b'"x"', b"\xff\xfe", b'{"query": null}']),
            json_type,
        ),
        st.tuples(
            query.map(str.encode),
            st.sampled_from(
                ["application/graphql", "text/plain", "application/x-www-form-urlencoded", ""]
            ),
        ),
    )


async def test_graphql_malformed_bodies(world: World) -> None:
    strategy = st.tuples(
        _bodies(world),
        st.sampled_from(world.auth_headers()),
        st.sampled_from(["application/json", "application/graphql-response+json", "*/*"]),
    )

    async def send(example: tuple[tuple[bytes, str], dict[str, str], str]) -> None:
        (body, content_type), auth, accept = example
        what = f"graphql body [{world.mode}-user] {content_type!r} {h.show(body)}"
        headers = {"content-type": content_type, "accept": accept, **auth}
        await _post(world, what, body, headers)

    failure = await h.run_examples(
        "graphql bodies",
        strategy,
        send,
        h.budget(h.EXAMPLES_PER_TARGET * h.GRAPHQL_SCALE),
    )
    await world.alive()
    await world.unchanged()
    assert failure is None, failure


# WebSocket -------------------------------------------------------------------------------


@asynccontextmanager
async def _socket(world: World) -> AsyncIterator[AsyncWebSocketSession]:
    transport = ASGIWebSocketTransport(world.app, initial_receive_timeout=HANG_S)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        ws: AsyncWebSocketSession
        async with aconnect_ws("/graphql", client, subprotocols=[WS_PROTOCOL]) as ws:
            yield ws


async def _until_pong(world: World, what: str, ws: AsyncWebSocketSession) -> list[Any]:
    """Sends a ping and reads every message up to its pong: the server has handled all that
    was sent before (messages are handled in order). Raises ``WebSocketDisconnect`` if the
    server closed the socket."""
    try:
        await ws.send_json({"type": "ping"})
    except LocalProtocolError:  # the server is closing: its close frame tells why
        await ws.receive_text(timeout=HANG_S)
    seen: list[Any] = []
    while True:
        raw = await ws.receive_text(timeout=HANG_S)
        world.checker.answer(what, 200, raw.encode())
        message = json.loads(raw)
        if isinstance(message, dict) and message.get("type") == "pong":
            return seen
        if isinstance(message, dict) and message.get("type") == "ping":
            await ws.send_json({"type": "pong"})
            continue
        seen.append(message)


async def _ws_round(world: World, what: str, auth: dict[str, str], messages: list[str]) -> None:
    """Connects, sends ``messages`` after the handshake, and checks what comes back; a
    close with a 44xx code is a fine answer to a bad message, 1006 and 1011 are not."""
    h.count("graphql-ws")
    world.checker.begin()
    with world.checker.watchdog.armed(what):
        try:
            async with asyncio.timeout(HANG_S), _socket(world) as ws:
                await ws.send_json({"type": "connection_init", "payload": auth})
                ack = json.loads(await ws.receive_text(timeout=HANG_S))
                world.checker.answer(what, 200, json.dumps(ack).encode())
                if ack.get("type") != "connection_ack":
                    return
                for message in messages:
                    await ws.send_text(message)
                for seen in await _until_pong(world, what, ws):
                    _check_graphql_errors(what, json.dumps(seen.get("payload")).encode())
                    if seen.get("type") == "next":
                        await ws.send_json({"id": seen.get("id"), "type": "complete"})
                await _until_pong(world, what, ws)
        except* WebSocketDisconnect as group:
            for exc in _leaves(group):
                assert isinstance(exc, WebSocketDisconnect)
                if exc.code in BAD_CLOSE_CODES or exc.code < 1000:
                    raise h.finding(
                        f"ws-close-{exc.code}-{' '.join(str(exc.reason).split()[:3])}",
                        f"{what}: socket closed with {exc.code} {h.show(exc.reason)}",
                    ) from None
        except* TimeoutError:
            raise h.finding("hang", f"{what}: no answer in {HANG_S:.0f} s") from None
    world.checker.server_side(what)


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    leaves: list[BaseException] = []
    for exc in group.exceptions:
        leaves.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return leaves


def _ws_auth(world: World) -> st.SearchStrategy[dict[str, Any]]:
    own = world.attacker.headers.get("authorization")
    given = [{"authorization": own}] * 3 if own else [{}] * 3
    return st.sampled_from([*given, {}, {"authorization": 1}, {"authorization": "Bearer x"}])


async def _fuzz_subscription(world: World, field: str, has_args: bool) -> str | None:
    schema = _subscription_schema(_schema(world))
    scalars = _scalars(world)
    documents = queries(
        schema,
        fields=[field],
        custom_scalars=scalars,
        print_ast=_as_subscription,
        mode=Mode.POSITIVE,
    )
    negative = queries(
        schema,
        fields=[field],
        custom_scalars=scalars,
        print_ast=_as_subscription,
        mode=Mode.NEGATIVE,
    )
    documents = st.one_of(documents, documents, negative) if has_args else documents
    strategy = st.tuples(documents, _ws_auth(world))

    async def send(example: tuple[str, dict[str, Any]]) -> None:
        document, auth = example
        what = f"graphql subscription [{world.mode}-user] {h.show(document, 400)}"
        subscribe = {"id": "1", "type": "subscribe", "payload": {"query": document}}
        await _ws_round(world, what, auth, [json.dumps(subscribe)])

    return await h.run_examples(
        f"graphql subscription {field}", strategy, send, h.budget(h.EXAMPLES_PER_TARGET // 2)
    )


async def test_graphql_subscriptions(world: World) -> None:
    """Every subscription field on its own, over graphql-transport-ws."""
    failures = [
        failure
        for field, has_args in _root_fields(_schema(world), "subscription")
        if (failure := await _fuzz_subscription(world, field, has_args))
    ]
    await world.alive()
    await world.unchanged()
    assert not failures, "\n\n".join(failures)


def _ws_messages() -> st.SearchStrategy[str]:
    """Messages a graphql-transport-ws server must refuse cleanly (4400 and a reason)."""
    kinds = st.sampled_from(["subscribe", "complete", "connection_init", "ping", "pong", "x", 1])
    message = st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(kinds, any_json(1)),
            "id": st.one_of(st.text(max_size=5), any_json(1)),
            "payload": st.one_of(
                any_json(3),
                st.fixed_dictionaries(
                    {
                        "query": st.one_of(
                            st.just("subscription { workerUpdated { __typename } }"),
                            hostile_text,
                            any_json(1),
                        )
                    },
                    optional={"variables": any_json(3), "operationName": any_json(1)},
                ),
            ),
        },
    )
    return st.one_of(
        message.map(json.dumps),
        any_json(4).map(json.dumps),
        deep_nesting(),
        st.text(st.characters(codec=None), max_size=20),
    )


async def test_graphql_websocket_messages(world: World) -> None:
    strategy = st.tuples(st.lists(_ws_messages(), min_size=1, max_size=3), _ws_auth(world))

    async def send(example: tuple[list[str], dict[str, Any]]) -> None:
        messages, auth = example
        what = f"graphql ws [{world.mode}-user] {h.show(messages, 400)}"
        await _ws_round(world, what, auth, messages)

    failure = await h.run_examples(
        "graphql ws messages",
        strategy,
        send,
        h.budget(h.EXAMPLES_PER_TARGET * 2),
    )
    await world.alive()
    await world.unchanged()
    assert failure is None, failure
