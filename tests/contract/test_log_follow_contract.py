"""Following a log through every transport with one client call (``follow_log``):
SessionService.StreamLog over Connect (JSON and binary) and the GraphQL ``sessionLog``
subscription over its WebSocket. The rules (where a stream may start, what a missing session
answers) live in one service function, so every transport must answer the same."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import sessions, tasks
from delidev.services.live import MAX_FROM_OFFSET
from delidev.services.sessions import LogChunkIn
from tests.clients import ApiError, ConnectTaskApi, GraphQLTaskApi, LogFollowed, connect_codecs
from tests.factories import make_group, make_repository, make_workspace, start_latest

pytestmark = pytest.mark.usefixtures("database")
TEXT = "start 😀 café\ne\u0301 中文 end\n"


@pytest.fixture(params=["connect-json", "connect-binary", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectTaskApi | GraphQLTaskApi
    if request.param == "graphql":
        client = GraphQLTaskApi(app)
    else:
        client = ConnectTaskApi(app, connect_codecs()[request.param.removeprefix("connect-")])
    try:
        yield client
    finally:
        await client.close()


async def _ended() -> m.AgentSession:
    """A session that wrote TEXT and succeeded: following it ends."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    await sessions.append_log(session_id=session.id, chunks=[LogChunkIn(0, TEXT)])
    return await sessions.complete_session(
        session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED
    )


def _snake(field: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in field)


@pytest.mark.parametrize("start", [0, 1, 7, len(TEXT)])
async def test_follow_from_an_offset_gives_the_rest_and_the_end_status(
    api: Any, start: int
) -> None:
    session = await _ended()
    assert await api.follow_log(str(session.id), start) == LogFollowed(
        TEXT[start:], len(TEXT), "SUCCEEDED"
    )


@pytest.mark.parametrize("start", [len(TEXT) + 1, 2**53])
async def test_follow_past_the_end_of_an_ended_log_ends_at_once(api: Any, start: int) -> None:
    session = await _ended()
    assert await api.follow_log(str(session.id), start) == LogFollowed("", start, "SUCCEEDED")


@pytest.mark.parametrize("start", [-1, -(2**53)])
async def test_a_negative_from_offset_is_invalid_argument(api: Any, start: int) -> None:
    session = await _ended()
    with pytest.raises(ApiError) as info:
        await api.follow_log(str(session.id), start)
    assert info.value.code == "INVALID_ARGUMENT"
    assert _snake(info.value.field) == "from_offset"
    assert "negative" in info.value.message


async def test_a_from_offset_beyond_int64_is_invalid_argument_over_graphql(app: Any) -> None:
    """Only GraphQL (a Float argument) can carry it; Connect's int64 cannot."""
    session = await _ended()
    api = GraphQLTaskApi(app)
    try:
        with pytest.raises(ApiError) as info:
            await api.follow_log(str(session.id), 2**64)
    finally:
        await api.close()
    assert info.value.code == "INVALID_ARGUMENT"
    assert str(MAX_FROM_OFFSET) in info.value.message


async def test_following_a_missing_session_is_not_found(api: Any) -> None:
    with pytest.raises(ApiError) as info:
        await api.follow_log(str(uuid.uuid4()), 0)
    assert info.value.code == "NOT_FOUND"
