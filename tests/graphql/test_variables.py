"""Bad input in GraphQL ``variables``: INVALID_ARGUMENT naming the variable, never INTERNAL.

graphql-core reports a variable that does not coerce as an error wrapping the coercion's
own GraphQLError; these tests pin that it reaches the client as a request error with
graphql-core's message, that no Python text or trace leaks, that nothing is stored, and
that real failures are still masked and logged.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLArgument,
    GraphQLField,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLSchema,
    GraphQLString,
    parse,
)
from graphql.error import GraphQLError
from graphql.execution import get_variable_values
from graphql.language import OperationDefinitionNode

from delidev import models as m
from delidev.graphql.errors import format_error
from delidev.services import workspaces
from delidev.services.common import Page
from tests.factories import make_group, make_repository, make_workspace

CREATE_WORKSPACE = "mutation($i: CreateWorkspaceInput!) { createWorkspace(input: $i) { id } }"
LIST_WORKSPACES = "query($l: Int) { workspaces(limit: $l) { totalCount } }"
TODO_ITEMS = "query($s: TodoItemStatus) { todoItems(status: $s) { totalCount } }"
CREATE_UNIT = "mutation($i: CreateUnitTaskInput!) { createUnitTask(input: $i) { id } }"
MISSING = object()  # the request carries no "variables" member at all

# Words that only a Python exception or a trace would put into a response.
LEAKS = ("Traceback", 'File "', "KeyError", "TypeError", "ValueError", "site-packages")


async def _post(http: httpx.AsyncClient, query: str, variables: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"query": query}
    if variables is not MISSING:
        payload["variables"] = variables
    response = await http.post("/graphql", json=payload)
    assert response.status_code == 200, response.text
    for leak in LEAKS:
        assert leak not in response.text
    body: dict[str, Any] = response.json()
    return body


def _only_error(body: dict[str, Any]) -> dict[str, Any]:
    assert body["data"] is None
    assert len(body["errors"]) == 1, body["errors"]
    error: dict[str, Any] = body["errors"][0]
    return error


def _assert_invalid_variable(
    error: dict[str, Any], variable: str, mentions: tuple[str, ...]
) -> None:
    assert error["extensions"] == {
        "code": "INVALID_ARGUMENT",
        "delidevCode": -32602,
        "field": variable,
    }
    assert f"${variable}" in error["message"]
    for word in mentions:
        assert word in error["message"]
    assert error["message"] != "internal error"


@pytest.mark.parametrize(
    ("query", "variables", "variable", "mentions"),
    [
        pytest.param(
            CREATE_WORKSPACE, {"i": {"name": 5}}, "i", ("name", "String"), id="wrong-type"
        ),
        pytest.param(CREATE_WORKSPACE, {"i": {}}, "i", ("required field 'name'",), id="no-name"),
        pytest.param(CREATE_WORKSPACE, {}, "i", ("CreateWorkspaceInput!",), id="no-i"),
        pytest.param(CREATE_WORKSPACE, MISSING, "i", ("CreateWorkspaceInput!",), id="no-variables"),
        pytest.param(CREATE_WORKSPACE, {"i": None}, "i", ("None",), id="null-i"),
        pytest.param(CREATE_WORKSPACE, {"i": "w"}, "i", ("object",), id="not-an-object"),
        pytest.param(
            CREATE_WORKSPACE,
            {"i": {"name": "w", "colour": "red"}},
            "i",
            ("unknown field 'colour'",),
            id="unknown-field",
        ),
        pytest.param(LIST_WORKSPACES, {"l": "many"}, "l", ("'many'", "Int"), id="int-as-text"),
        pytest.param(LIST_WORKSPACES, {"l": 2**40}, "l", ("32-bit",), id="int-out-of-range"),
        pytest.param(LIST_WORKSPACES, {"l": 1.5}, "l", ("1.5",), id="int-as-float"),
        pytest.param(TODO_ITEMS, {"s": "NOPE"}, "s", ("'NOPE'", "TodoItemStatus"), id="enum"),
        pytest.param(TODO_ITEMS, {"s": 3}, "s", ("TodoItemStatus",), id="enum-as-number"),
        pytest.param(
            "query($id: ID!) { workspace(id: $id) { id } }",
            {"id": {"nested": 1}},
            "id",
            ("ID cannot represent",),
            id="id-as-object",
        ),
        # Allowed by validation (the variable has a default), refused when the field runs.
        pytest.param(
            'query($id: ID = "x") { workspace(id: $id) { id } }',
            {"id": None},
            "id",
            ("non-null type 'ID!'",),
            id="default-overridden-by-null",
        ),
        pytest.param(
            'mutation($n: String = "w") { createWorkspace(input: {name: $n}) { id } }',
            {"n": None},
            "n",
            ("'String!'",),
            id="null-inside-an-input-literal",
        ),
    ],
)
async def test_bad_variables_are_invalid_argument(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    query: str,
    variables: Any,
    variable: str,
    mentions: tuple[str, ...],
) -> None:
    await make_workspace()
    with caplog.at_level(logging.WARNING, logger="delidev"):
        body = await _post(http, query, variables)
    _assert_invalid_variable(_only_error(body), variable, mentions)
    assert await m.Workspace.all().count() == 1
    assert not caplog.records, "a bad request is not an unexpected error"


async def test_unknown_agent_type_in_variables_creates_nothing(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    good = {"repositoryGroupId": str(group.id), "prompt": "p"}
    with caplog.at_level(logging.WARNING, logger="delidev"):
        body = await _post(http, CREATE_UNIT, {"i": {**good, "aiAgentType": "NOPE"}})
    _assert_invalid_variable(_only_error(body), "i", ("aiAgentType", "'NOPE'", "AiAgentType"))
    assert not caplog.records
    for model in (m.UnitTask, m.AgentTask, m.AgentSession):
        assert await model.all().count() == 0
    # The same input with a real agent type goes through: only the enum was at fault.
    created = await _post(http, CREATE_UNIT, {"i": {**good, "aiAgentType": "AIDER"}})
    assert "errors" not in created
    assert await m.UnitTask.all().count() == 1


async def test_several_bad_variables_are_each_reported(http: httpx.AsyncClient) -> None:
    body = await _post(
        http,
        "query($l: Int, $o: Int) { workspaces(limit: $l, offset: $o) { totalCount } }",
        {"l": "x", "o": "y"},
    )
    assert body["data"] is None
    assert sorted(e["extensions"]["field"] for e in body["errors"]) == ["l", "o"]
    assert {e["extensions"]["code"] for e in body["errors"]} == {"INVALID_ARGUMENT"}


# Real failures stay masked -----------------------------------------------------------------


async def test_a_crash_with_good_variables_is_still_masked_and_logged(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(**_: Any) -> None:
        raise RuntimeError("password=hunter2")

    monkeypatch.setattr(workspaces, "list_workspaces", boom)
    with caplog.at_level(logging.ERROR, logger="delidev"):
        body = await _post(http, LIST_WORKSPACES, {"l": 5})
    error = body["errors"][0]
    assert (error["message"], error["extensions"]) == (
        "internal error",
        {"code": "INTERNAL", "delidevCode": -32603},
    )
    assert "hunter2" not in str(body)
    assert caplog.records


async def test_an_unserializable_result_is_masked_not_blamed_on_the_request(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # graphql-core raises a GraphQLError (with a path) when a result does not fit its type:
    # the server's bug, though its shape resembles an argument error.
    async def lots(**_: Any) -> Page[m.Workspace]:
        return Page(items=[], total_count="lots")  # type: ignore[arg-type]  # the bug under test

    monkeypatch.setattr(workspaces, "list_workspaces", lots)
    with caplog.at_level(logging.ERROR, logger="delidev"):
        body = await _post(http, LIST_WORKSPACES, {"l": 5})
    error = body["errors"][0]
    assert (error["message"], error["extensions"]["code"]) == ("internal error", "INTERNAL")
    assert "lots" not in str(body)
    assert caplog.records


def test_a_crash_outside_the_resolvers_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    # What strawberry makes of an exception raised outside a resolver: no path, no nodes.
    crash = RuntimeError("dsn=postgres://u:secret@db")
    with caplog.at_level(logging.ERROR, logger="delidev"):
        formatted = format_error(GraphQLError(str(crash), original_error=crash))
    assert formatted.message == "internal error"
    assert formatted.extensions == {"code": "INTERNAL", "delidevCode": -32603}
    assert caplog.records


# A scalar whose own code raises -----------------------------------------------------------


def _scalar_schema() -> GraphQLSchema:
    def parse_stamp(value: Any) -> Any:
        raise ValueError(f"fromisoformat failed in /srv/app/stamp.py for {value!r}")

    stamp = GraphQLScalarType("Stamp", parse_value=parse_stamp)
    query = GraphQLObjectType(
        "Query", {"at": GraphQLField(GraphQLString, args={"s": GraphQLArgument(stamp)})}
    )
    return GraphQLSchema(query)


def test_a_scalars_exception_text_does_not_reach_the_client() -> None:
    document = parse("query($s: Stamp) { at(s: $s) }")
    operation = document.definitions[0]
    assert isinstance(operation, OperationDefinitionNode)
    definitions = operation.variable_definitions or ()
    errors = get_variable_values(_scalar_schema(), definitions, {"s": "x"})
    assert isinstance(errors, list)
    assert "/srv/app" in errors[0].message  # graphql-core quotes the exception
    formatted = format_error(errors[0])
    assert formatted.extensions == {
        "code": "INVALID_ARGUMENT",
        "delidevCode": -32602,
        "field": "s",
    }
    assert "$s" in formatted.message
    assert "Stamp" in formatted.message
    assert "/srv/app" not in formatted.message
    assert "fromisoformat" not in formatted.message
    assert formatted.original_error is None
