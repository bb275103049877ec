"""Paging cursors have one meaning in both APIs (services/common.py): a cursor names an item
and the next page starts after it. Connect's next_page_token and GraphQL's endCursor are the
same value, so paging may go on through either API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from delidev.auth.principal import LOCAL_USER
from delidev.services import tasks
from tests.clients import ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")
TRANSPORTS = ["connect-json", "connect-binary", "graphql"]


def _client(app: Any, name: str) -> ConnectTaskApi | GraphQLTaskApi:
    if name == "graphql":
        return GraphQLTaskApi(app)
    return ConnectTaskApi(app, connect_codecs()[name.removeprefix("connect-")])


@pytest.fixture
async def apis(app: Any) -> AsyncIterator[dict[str, Any]]:
    clients = {name: _client(app, name) for name in TRANSPORTS}
    yield clients
    for client in clients.values():
        await client.close()


async def _tasks(count: int) -> tuple[str, list[str]]:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    ids = [
        str(
            (
                await tasks.create_unit_task(
                    actor=LOCAL_USER, repository_group_id=group.id, prompt=f"p{i}"
                )
            ).id
        )
        for i in range(count)
    ]
    return str(ws.id), ids


@pytest.mark.parametrize(
    "order",
    [
        ["connect-json"] * 4,
        ["graphql"] * 4,
        ["connect-json", "graphql", "connect-binary", "graphql"],
        ["graphql", "connect-binary", "graphql", "connect-json"],
    ],
)
async def test_cursors_from_either_api_page_on_in_the_other(
    apis: dict[str, Any], order: list[str]
) -> None:
    ws, ids = await _tasks(7)
    seen: list[str] = []
    after: str | None = None
    for name in order:
        page, after = await apis[name].list_tasks_page(ws, 2, after)
        seen += page
        if after is None:
            break
    assert after is None
    assert sorted(seen) == sorted(ids)
    assert len(seen) == len(ids)


async def test_both_apis_answer_the_same_cursor_for_the_same_page(apis: dict[str, Any]) -> None:
    ws, _ = await _tasks(5)
    pages = {name: await api.list_tasks_page(ws, 3) for name, api in apis.items()}
    assert len(set(map(str, pages.values()))) == 1, pages
    # The last page ends without a cursor in both.
    after = pages["graphql"][1]
    ends = {name: (await api.list_tasks_page(ws, 3, after))[1] for name, api in apis.items()}
    assert ends == dict.fromkeys(apis)
