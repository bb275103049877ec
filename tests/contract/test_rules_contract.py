"""Rules that once lived in one transport only, now in the service layer: every transport
must answer the same (Connect JSON, Connect binary, GraphQL)."""

from __future__ import annotations

from typing import Any

import pytest

from delidev.services.todos import DEFAULT_TODO_SOURCE
from tests.clients import GraphQLApi

pytestmark = pytest.mark.usefixtures("database")


@pytest.mark.parametrize("source", [None, "AUTO", "MANUAL"])
async def test_a_todo_source_left_out_is_the_one_default(api: Any, source: str | None) -> None:
    ws = await api.create_workspace("w")
    repo = await api.add_repository(ws["id"], "https://github.com/a/b")
    item = await api.create_issue_todo(
        repo["id"], "https://github.com/a/b/issues/1", "Bug", source=source
    )
    assert item["source"] == (source or DEFAULT_TODO_SOURCE.name)
    assert (await api.get_todo(item["id"]))["source"] == item["source"]


async def test_a_null_todo_source_over_graphql_is_the_default(app: Any) -> None:
    api = GraphQLApi(app)
    try:
        ws = await api.create_workspace("w")
        repo = await api.add_repository(ws["id"], "https://github.com/a/b")
        data = await api.execute(
            "mutation($i: CreateTodoItemInput!) { createTodoItem(input: $i) { source } }",
            i={
                "repositoryId": repo["id"],
                "source": None,
                "issueTriage": {"issueUrl": "https://github.com/a/b/issues/1", "issueTitle": "t"},
            },
        )
    finally:
        await api.close()
    assert data["createTodoItem"]["source"] == DEFAULT_TODO_SOURCE.name
