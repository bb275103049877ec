"""Reading a log through every transport (Connect JSON, Connect binary, GraphQL): offsets in
code points, the next offset in every answer, the marker of a log cut by its size cap."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import sessions, tasks
from delidev.services.sessions import LogChunkIn, LogLimits
from tests.clients import ConnectTaskApi, GraphQLTaskApi, connect_codecs
from tests.factories import make_group, make_repository, make_workspace, start_latest

pytestmark = pytest.mark.usefixtures("database")
# Emoji (astral, and a ZWJ sequence), combining marks, CJK, Hangul, right-to-left text.
TEXT = "emoji 😀 café\ntail\ne\u0301\u0301 中文字 한국어 👨\u200d👩\u200d👧 שלום\nend\n"


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


async def _running() -> m.AgentSession:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    return await start_latest(task.agent_task_id)


async def _pages(api: Any, session_id: str, *, offset: int = 0, limit: int) -> list[str]:
    pages = []
    while True:
        content, offset = await api.get_log(session_id, offset=offset, limit=limit)
        if not content:
            return pages
        pages.append(content)


@pytest.mark.parametrize("limit", [1, 3, 7])
async def test_paging_with_next_offset_gives_non_ascii_text_exactly(api: Any, limit: int) -> None:
    session = await _running()
    pieces = [TEXT[i : i + 5] for i in range(0, len(TEXT), 5)]
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(i, p) for i, p in enumerate(pieces)]
    )
    pages = await _pages(api, str(session.id), limit=limit)
    assert "".join(pages) == TEXT
    assert all(len(p) <= limit for p in pages)
    # 8 is the position after "emoji 😀 " in code points (9 in UTF-16 units, 11 in bytes).
    assert await api.get_log(str(session.id), offset=8) == (TEXT[8:], len(TEXT))


async def test_a_cut_log_reads_as_head_marker_and_latest_output(api: Any) -> None:
    session = await _running()
    limits = LogLimits(max_chars=40, chunk_max_chars=10, sequence_window=16)
    lines = [f"{i:02} 😀 中\n" for i in range(20)]  # 7 code points each
    for i, line in enumerate(lines):
        await sessions.append_log(
            session_id=session.id, chunks=[LogChunkIn(i, line)], limits=limits
        )
    marker = sessions.cut_marker(140 - 14 - 14, newline=False)
    expected = "".join(lines[:2]) + marker + "".join(lines[-2:])
    content, end = await api.get_log(str(session.id))
    assert (content, end) == (expected, 140)
    # An offset inside the dropped range answers the marker and skips past the range.
    assert await api.get_log(str(session.id), offset=50) == (
        marker + "".join(lines[-2:]),
        140,
    )
    assert "".join(await _pages(api, str(session.id), limit=4)) == expected
