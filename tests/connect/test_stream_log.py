"""SessionService.StreamLog through the generated client: replay, follow, resume."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import session_pb, task_pb
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceClient
from delidev.services import sessions, tasks
from tests.clients import connect_codecs
from tests.factories import make_group, make_repository, make_workspace, start_latest
from tests.waiting import until


@pytest.fixture(params=["json", "binary"])
async def client(request: pytest.FixtureRequest, app: Any) -> Any:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    c = SessionServiceClient("http://test", http_client=http, codec=connect_codecs()[request.param])
    yield c
    await c.close()


async def _running() -> m.AgentSession:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    return await start_latest(task.agent_task_id)


async def test_follow_then_end(client: Any) -> None:
    session = await _running()
    await sessions.append_log(
        session_id=session.id, chunks=[sessions.LogChunkIn(sequence=0, data="one\n")]
    )
    received: list[tuple[int, str]] = []

    async def read() -> None:
        stream = client.stream_log(session_pb.StreamLogRequest(session_id=str(session.id)))
        async for message in stream:
            received.append((message.offset, message.data))

    def text() -> str:
        return "".join(d for _, d in received)

    reader = asyncio.create_task(read())
    # A reader that fails stops the waits at once; awaiting it below raises its error.
    await until(lambda: reader.done() or text() == "one\n", what="the replayed output")
    await sessions.append_log(
        session_id=session.id, chunks=[sessions.LogChunkIn(sequence=1, data="two\n")]
    )
    await until(lambda: reader.done() or text() == "one\ntwo\n", what="the followed output")
    await sessions.complete_session(session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED)
    await asyncio.wait_for(reader, 5)
    assert text() == "one\ntwo\n"
    assert received[0][0] == 0
    offsets = [o for o, _ in received]
    assert offsets == sorted(offsets)


async def test_resume_from_an_offset_gives_each_byte_once(client: Any) -> None:
    session = await _running()
    await sessions.append_log(
        session_id=session.id,
        chunks=[sessions.LogChunkIn(sequence=i, data=f"line {i}\n") for i in range(5)],
    )
    await sessions.complete_session(session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED)
    whole = "".join(f"line {i}\n" for i in range(5))
    first = [
        m
        async for m in client.stream_log(
            session_pb.StreamLogRequest(session_id=str(session.id), from_offset=0)
        )
    ]
    resumed = [
        m
        async for m in client.stream_log(
            session_pb.StreamLogRequest(session_id=str(session.id), from_offset=9)
        )
    ]
    assert "".join(x.data for x in first) == whole
    assert "".join(x.data for x in resumed) == whole[9:]
    assert resumed[0].offset == 9


# Emoji (astral, and a ZWJ sequence), combining marks, CJK, Hangul, right-to-left text.
NON_ASCII = [
    f"{i} emoji 😀 café e\u0301\u0301 中文字 한국어 👨\u200d👩\u200d👧 שלום\n" for i in range(6)
]


async def test_resuming_from_next_offset_after_a_drop_gives_non_ascii_text_exactly(
    client: Any,
) -> None:
    session = await _running()
    await sessions.append_log(
        session_id=session.id,
        chunks=[sessions.LogChunkIn(sequence=i, data=d) for i, d in enumerate(NON_ASCII[:3])],
    )
    text, offset = "", 0
    stream = client.stream_log(session_pb.StreamLogRequest(session_id=str(session.id)))
    async for message in stream:  # the client drops off after the first message
        assert message.offset == offset
        text += message.data
        offset = message.next_offset
        break
    await stream.aclose()
    await sessions.append_log(
        session_id=session.id,
        chunks=[sessions.LogChunkIn(sequence=i, data=NON_ASCII[i]) for i in range(3, 6)],
    )
    await sessions.complete_session(session_id=session.id, status=m.AgentSessionStatus.SUCCEEDED)
    last = None
    async for message in client.stream_log(
        session_pb.StreamLogRequest(session_id=str(session.id), from_offset=offset)
    ):
        assert message.offset == offset, "a gap or a repeat"
        text += message.data
        offset = message.next_offset
        last = message
    assert text == "".join(NON_ASCII)
    assert last is not None
    assert (last.data, last.next_offset) == ("", len(text))  # code points, not UTF-16 units
    assert last.status == task_pb.AgentSessionStatus.SUCCEEDED
