"""Paging cursors have one meaning in both APIs (services/common.py): a cursor names an item
and the next page starts after it. Connect's next_page_token and GraphQL's endCursor are the
same value, so paging may go on through either API."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import sessions, tasks, todos, workspaces
from delidev.services.common import ITEM_CHARS, MAX_PAGE_SIZE, MAX_TEXT_LENGTH, PAGE_CHARS
from tests.clients import ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import (
    make_group,
    make_repository,
    make_workspace,
    start_latest,
)

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


# Long prompts in 4-byte characters: each task weighs 100,000 characters (400 KB of UTF-8).
LONG = "\U0001f600" * MAX_TEXT_LENGTH


async def test_pages_of_long_tasks_end_early_and_page_on_to_every_task(
    apis: dict[str, Any],
) -> None:
    """Regression: ``limit`` 500 answered every task whatever its prompts held (500 prompts
    of 100,000 characters: a ~50 MB answer, several times that in memory)."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    fits = PAGE_CHARS // (MAX_TEXT_LENGTH + ITEM_CHARS)  # long tasks one page holds
    ids: list[str] = []
    for i in range(fits + 6):
        make = tasks.create_composite_task if i % 5 == 0 else tasks.create_unit_task
        made = await make(actor=LOCAL_USER, repository_group_id=group.id, prompt=LONG)
        ids.append(str(made.id))
    for name, api in apis.items():
        seen: list[str] = []
        sizes: list[int] = []
        after: str | None = None
        while True:
            page, after = await api.list_tasks_page(str(ws.id), MAX_PAGE_SIZE, after)
            sizes.append(len(page))
            seen += page
            if after is None:
                break
        assert seen == ids, name  # every task once, in order
        assert sizes == [fits, 6], name


async def test_offset_pages_of_long_items_end_early_with_the_total() -> None:
    """Lists paged by offset end early too: the next page starts at offset + items got."""
    ws = await make_workspace()
    repo = await make_repository(ws)
    group = await make_group(ws, [repo])
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="q")
    session = await start_latest(unit.agent_task_id)
    fits = PAGE_CHARS // (MAX_TEXT_LENGTH + ITEM_CHARS)
    count = fits + 3
    for i in range(count):
        await workspaces.update_workspace(
            actor=LOCAL_USER, workspace_id=(await make_workspace()).id, description=LONG
        )
        await todos.create_todo_item(
            actor=LOCAL_USER,
            repository_id=repo.id,
            data=todos.PrReviewData(
                pr_url=f"https://github.com/o/r/pull/{i}", pr_title="t", ai_summary=LONG
            ),
        )
        await sessions.create_tty_request(
            session_id=session.id,
            prompt=LONG,
            input_type=m.TtyInputType.TEXT,
            expires_in=dt.timedelta(minutes=5),
        )

    async def walk(list_page: Any, weight: Any) -> None:
        seen: list[Any] = []
        pages = 0
        while True:
            page = await list_page(len(seen))
            pages += 1
            assert len(page.items) == 1 or (
                sum(ITEM_CHARS + weight(item) for item in page.items) <= PAGE_CHARS
            )
            seen += [item.id for item in page.items]
            if len(seen) >= page.total_count:
                break
        assert len(set(seen)) == len(seen) == page.total_count >= count
        assert pages >= 2

    await walk(
        lambda o: workspaces.list_workspaces(actor=LOCAL_USER, limit=MAX_PAGE_SIZE, offset=o),
        lambda w: len(w.description or ""),
    )
    await walk(
        lambda o: todos.list_todo_items(
            actor=LOCAL_USER, workspace_id=ws.id, limit=MAX_PAGE_SIZE, offset=o
        ),
        lambda t: len(json.dumps(t.data, ensure_ascii=False)),
    )
    await walk(
        lambda o: sessions.list_tty_requests(
            actor=LOCAL_USER, session_id=session.id, limit=MAX_PAGE_SIZE, offset=o
        ),
        lambda r: len(r.prompt) + len(r.response or ""),
    )
