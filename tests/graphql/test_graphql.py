from __future__ import annotations

import logging
import uuid
from typing import Any

import httpx
import pytest
from httpx_ws import aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import tasks, todos, workspaces
from delidev.services.live import MAX_FROM_OFFSET
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_todo, make_workspace, start_latest

NESTED = """
{
  workspaces(limit: 100) {
    totalCount
    items {
      id name
      repositories { id name workspace { id } }
      repositoryGroups { id repositoryIds repositories { id name } }
    }
  }
  todoItems(limit: 100) { totalCount items { id repository { id name } } }
}
"""


def _deep(levels: int) -> str:
    inner = "id"
    for _ in range(levels):
        inner = f"repositories {{ workspace {{ {inner} }} }}"
    return f"{{ workspaces {{ items {{ {inner} }} }} }}"


DEEP = _deep(8)


async def _gql(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _populate(n: int) -> None:
    for _ in range(n):
        ws = await make_workspace()
        repos = [await make_repository(ws), await make_repository(ws)]
        await make_group(ws, repos)
        await make_todo(repos[0])


async def test_nested_query_statement_count_does_not_grow_with_rows(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    await _populate(2)
    sql_counter.reset()
    small = await _gql(http, NESTED)
    assert "errors" not in small
    few = len(sql_counter.statements)
    assert few > 0  # the counter sees this test's statements

    await _populate(18)
    sql_counter.reset()
    large = await _gql(http, NESTED)
    many = len(sql_counter.statements)

    assert len(large["data"]["workspaces"]["items"]) == 20
    groups = [g for w in large["data"]["workspaces"]["items"] for g in w["repositoryGroups"]]
    assert all(len(g["repositories"]) == 2 for g in groups)
    assert large["data"]["todoItems"]["totalCount"] == 20
    # Ten times the rows, the same statements: no query per row (that would add 18 or
    # more). A DataLoader batch may be split in two when the two root fields' resolvers
    # queue their loads in different ticks of the event loop, hence the small margin.
    assert many <= few + 2, sql_counter.statements
    assert many <= 12


async def test_graphiql_is_served_to_browsers(http: httpx.AsyncClient) -> None:
    response = await http.get("/graphql", headers={"Accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        (DEEP, "exceeds maximum operation depth"),
        (
            "{ " + " ".join(f"a{i}: workspaces {{ totalCount }}" for i in range(40)) + " }",
            "aliases",
        ),
        ("{ workspaces { totalCount " + "totalCount " * 6000 + "} }", "token"),
    ],
)
async def test_limits(http: httpx.AsyncClient, query: str, fragment: str) -> None:
    body = await _gql(http, query)
    assert body.get("data") is None
    assert fragment in body["errors"][0]["message"]


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize(
    ("query", "variables", "code", "field"),
    [
        ("query($id: ID!) { workspace(id: $id) { id } }", {"id": "nope"}, "INVALID_ARGUMENT", "id"),
        (
            "query($id: ID!) { workspace(id: $id) { id } }",
            {"id": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"},
            "NOT_FOUND",
            "workspaceId",
        ),
        ("{ todoItems(status: BOGUS) { totalCount } }", {}, "INVALID_ARGUMENT", "status"),
        (
            "mutation { createWorkspace(input: {name: 5}) { id } }",
            {},
            "INVALID_ARGUMENT",
            "input.name",
        ),
        ("mutation { createWorkspace(input: {}) { id } }", {}, "INVALID_ARGUMENT", "input"),
        ('mutation { createWorkspace(input: {name: ""}) { id } }', {}, "INVALID_ARGUMENT", "name"),
        ("{ workspaces { nope } }", {}, "INVALID_ARGUMENT", None),
        ("{ workspaces(limit: -1) { totalCount } }", {}, "INVALID_ARGUMENT", "limit"),
        (
            "mutation($i: CreateTodoItemInput!) { createTodoItem(input: $i) { id } }",
            {"i": {"repositoryId": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"}},
            "INVALID_ARGUMENT",
            "data",
        ),
    ],
)
async def test_bad_input(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any], code: str, field: str | None
) -> None:
    body = await _gql(http, query, **variables)
    error = body["errors"][0]
    assert error["extensions"]["code"] == code
    assert error["extensions"]["delidevCode"] in (-32602, -32003)
    if field:
        assert error["extensions"]["field"] == field
    assert await m.Workspace.all().count() == 0


CREATE_TODO = "mutation($i: CreateTodoItemInput!) { createTodoItem(input: $i) { id } }"
PR = {"prUrl": "https://github.com/a/b/pull/1", "prTitle": "t"}
ISSUE = {"issueUrl": "https://github.com/a/b/issues/1", "issueTitle": "t"}


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize(
    ("data", "field", "fragment"),
    [
        # The service checks ``pr_review.changed_files_count``.
        pytest.param(
            {"prReview": {**PR, "changedFilesCount": -1}},
            "prReview.changedFilesCount",
            "must not be negative",
            id="service-error",
        ),
        # The service's limit on ``issue_triage.suggested_labels``.
        pytest.param(
            {"issueTriage": {**ISSUE, "suggestedLabels": ["bug"] * (todos.MAX_LIST_ENTRIES + 1)}},
            "issueTriage.suggestedLabels",
            f"at most {todos.MAX_LIST_ENTRIES}",
            id="limit-error",
        ),
    ],
)
async def test_a_service_error_names_the_input_field_as_graphql_spells_it(
    http: httpx.AsyncClient, data: dict[str, Any], field: str, fragment: str
) -> None:
    body = await _gql(http, CREATE_TODO, i={"repositoryId": str(uuid.uuid4()), **data})
    (error,) = body["errors"]
    assert error["extensions"] == {
        "code": "INVALID_ARGUMENT",
        "delidevCode": -32602,
        "field": field,
    }
    assert fragment in error["message"]


async def test_a_log_offset_past_the_limit_names_the_argument_as_graphql_spells_it(
    app: Any,
) -> None:
    """The service's limit on ``from_offset``, over the WebSocket (fast path first)."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    query = (
        "subscription($id: ID!, $o: Float!) { sessionLog(sessionId: $id, fromOffset: $o) { data } }"
    )
    transport = ASGIWebSocketTransport(app)
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        aconnect_ws("/graphql", client, subprotocols=["graphql-transport-ws"]) as socket,
    ):
        await socket.send_json({"type": "connection_init", "payload": {}})
        assert (await socket.receive_json())["type"] == "connection_ack"
        payload = {"query": query, "variables": {"id": str(session.id), "o": 2.0**64}}
        await socket.send_json({"id": "1", "type": "subscribe", "payload": payload})
        message = await socket.receive_json()
    (error,) = message["payload"]["errors"]
    assert error["extensions"]["code"] == "INVALID_ARGUMENT"
    assert error["extensions"]["field"] == "fromOffset"
    assert str(MAX_FROM_OFFSET) in error["message"]


async def test_unexpected_errors_are_masked(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(**_: Any) -> None:
        raise RuntimeError("token sk-live-123")

    monkeypatch.setattr(workspaces, "list_workspaces", boom)
    with caplog.at_level(logging.ERROR, logger="delidev"):
        body = await _gql(http, "{ workspaces { totalCount } }")
    error = body["errors"][0]
    assert error["message"] == "internal error"
    assert error["extensions"] == {"code": "INTERNAL", "delidevCode": -32603}
    assert "sk-live" not in str(body)
    assert caplog.records


async def test_update_group_and_todo_mutations(http: httpx.AsyncClient) -> None:
    ws = await make_workspace()
    a, b = await make_repository(ws), await make_repository(ws)
    group = await make_group(ws, [a], name="g")
    body = await _gql(
        http,
        "mutation($i: UpdateRepositoryGroupInput!) { updateRepositoryGroup(input: $i) "
        "{ name repositories { id } } }",
        i={"id": str(group.id), "addRepositoryIds": [str(b.id)]},
    )
    result = body["data"]["updateRepositoryGroup"]
    assert result["name"] == "g"
    assert [r["id"] for r in result["repositories"]] == [str(a.id), str(b.id)]

    body = await _gql(
        http,
        "mutation($i: CreateTodoItemInput!) { createTodoItem(input: $i) { id type source "
        "data { ... on PrReviewData { prUrl changedFilesCount aiSummary } } } }",
        i={
            "repositoryId": str(a.id),
            "source": "MANUAL",
            "prReview": {
                "prUrl": "https://github.com/a/b/pull/1",
                "prTitle": "t",
                "changedFilesCount": 4,
                "aiSummary": "ok",
            },
        },
    )
    item = body["data"]["createTodoItem"]
    assert (item["type"], item["source"]) == ("PR_REVIEW", "MANUAL")
    assert item["data"] == {
        "prUrl": "https://github.com/a/b/pull/1",
        "changedFilesCount": 4,
        "aiSummary": "ok",
    }


async def test_oversized_body_is_refused_before_parsing(http: httpx.AsyncClient) -> None:
    query = "{ workspaces { totalCount } }" + " " * (2 * 1024 * 1024)
    response = await http.post("/graphql", json={"query": query})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"

    async def chunks() -> Any:
        for _ in range(3):
            yield b" " * 600_000

    streamed = await http.post(
        "/graphql", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
