"""A session's output log: offsets in code points for any text and any chunking, the size cap
(head + latest output + an in-band marker), the sequence window and the chunk limit."""

from __future__ import annotations

import asyncio
import itertools
import random
import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import InvalidArgument
from delidev.services import live, sessions, tasks
from delidev.services.sessions import LogChunkIn, LogLimits, output_log
from delidev.settings import Settings
from tests.factories import make_group, make_repository, make_workspace, start_latest
from tests.loop_watchdog import Watchdog
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("database")
A = LOCAL_USER
Q = m.AgentSessionStatus
# Each example creates a session in the test's database: few examples, no deadline (the
# machine is shared), and the database fixture is meant to be shared by the examples.
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# What agents print: ASCII, emoji (astral, and joined with ZWJ), combining marks, CJK,
# right-to-left text, newlines; anything else a proto string can hold except NUL.
PIECES = ["a", "Z", " ", "\n", "😀", "👨‍👩‍👧", "e\u0301", "\u0301", "中文", "한", "שלום", "ß", "\t"]
TEXT = st.lists(
    st.sampled_from(PIECES) | st.characters(exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=60,
).map("".join)


async def _running() -> m.AgentSession:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=A, repository_group_id=group.id, prompt="p")
    return await start_latest(task.agent_task_id)


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points) if b > a]


async def _read_all(session_id: Any, *, offset: int = 0, limit: int = 0) -> tuple[str, int]:
    """Reads on from ``offset`` as a client should: always from the last ``next_offset``."""
    text = ""
    while True:
        read = await sessions.read_log(actor=A, session_id=session_id, offset=offset, limit=limit)
        assert read.offset == offset
        if not read.content:
            return text, offset
        text += read.content
        offset = read.next_offset


# Offsets count code points ---------------------------------------------------------------


async def test_offsets_count_code_points_not_bytes_or_utf16_units() -> None:
    session = await _running()
    text = "emoji 😀 café\ntail\n"  # 18 code points, 19 UTF-16 units, 21 bytes
    stored = await sessions.append_log(session_id=session.id, chunks=[LogChunkIn(0, text)])
    assert stored.log_size == 18
    part = await sessions.read_log(actor=A, session_id=session.id, offset=0, limit=8)
    assert (part.content, part.next_offset) == ("emoji 😀 ", 8)
    rest = await sessions.read_log(actor=A, session_id=session.id, offset=part.next_offset)
    assert part.content + rest.content == text
    assert rest.next_offset == 18


@EXAMPLES
@given(text=TEXT, cuts=st.lists(st.integers(0, 200), max_size=8), limit=st.integers(0, 7))
async def test_resuming_from_next_offset_gives_the_text_for_any_chunking(
    text: str, cuts: list[int], limit: int
) -> None:
    session = await _running()
    pieces = _split(text, cuts)
    chunks = [LogChunkIn(sequence=i, data=p) for i, p in enumerate(pieces)]
    random.Random(len(text)).shuffle(chunks)  # out of order, as retries deliver them
    for chunk in chunks:
        await sessions.append_log(session_id=session.id, chunks=[chunk])
    assert (await m.AgentSession.get(id=session.id)).log_size == len(text)
    assert await _read_all(session.id, limit=limit) == (text, len(text))
    middle = len(text) // 2
    assert await _read_all(session.id, offset=middle, limit=limit) == (text[middle:], len(text))


# The size cap ----------------------------------------------------------------------------

SMALL = LogLimits(max_chars=40, chunk_max_chars=8, sequence_window=64)
LINE = st.lists(st.sampled_from(PIECES[:9]), min_size=1, max_size=8).map(
    lambda parts: "".join(parts)[: SMALL.chunk_max_chars]
)


def _view(whole: str, head: int, kept_from: int) -> str:
    dropped = kept_from - head
    marker = sessions.cut_marker(dropped, newline=head > 0 and not whole[:head].endswith("\n"))
    return whole[:head] + marker + whole[kept_from:]


@EXAMPLES
@given(
    lines=st.lists(LINE, max_size=30),
    batch=st.integers(1, 5),
    limit=st.integers(0, 9),
)
async def test_a_log_over_the_cap_keeps_its_head_and_latest_output_with_a_marker(
    lines: list[str], batch: int, limit: int
) -> None:
    session = await _running()
    for i in range(0, len(lines), batch):
        await sessions.append_log(
            session_id=session.id,
            chunks=[LogChunkIn(sequence=s, data=lines[s]) for s in range(i, i + batch)
                    if s < len(lines)],
            limits=SMALL,
        )  # fmt: skip
    whole = "".join(lines)
    assert (await m.AgentSession.get(id=session.id)).log_size == len(whole)
    stored = [c for c in await m.LogChunk.filter(session_id=session.id) if c.sequence >= 0]
    assert sum(len(c.data) for c in stored) <= SMALL.max_chars
    text, end = await _read_all(session.id, limit=limit)
    assert end == len(whole)
    if len(whole) <= SMALL.max_chars:
        assert text == whole
        return
    # Whole chunks: the head within the first half of the cap, the latest within the other.
    marker = await m.LogChunk.get(session_id=session.id, sequence=sessions.CUT_SEQUENCE)
    head = marker.start_offset
    kept_from = min(c.start_offset for c in stored if c.start_offset > head)
    assert head <= SMALL.head_chars
    assert len(whole) - kept_from <= SMALL.tail_chars
    assert head > SMALL.head_chars - SMALL.chunk_max_chars
    assert len(whole) - kept_from > SMALL.tail_chars - SMALL.chunk_max_chars
    assert text == _view(whole, head, kept_from)
    # From any offset: the text from there, the marker for the dropped range, never a repeat.
    for offset in range(len(whole) + 1):
        got, _ = await _read_all(session.id, offset=offset)
        if offset < head:
            assert got == _view(whole, head, kept_from)[offset:]
        elif offset < kept_from:
            assert got == _view(whole, head, kept_from)[head:]
        else:
            assert got == whole[offset:]


async def test_a_long_log_is_cut_and_the_marker_tracks_what_was_dropped() -> None:
    session = await _running()
    limits = LogLimits(max_chars=100, chunk_max_chars=10, sequence_window=8)
    lines = [f"line {i:03}\n" for i in range(100)]  # 9 characters each
    for i, line in enumerate(lines):
        await sessions.append_log(
            session_id=session.id, chunks=[LogChunkIn(i, line)], limits=limits
        )
    read = await sessions.read_log(actor=A, session_id=session.id)
    head, tail = "".join(lines[:5]), "".join(lines[-5:])  # 45 of the 50 allowed, each side
    dropped = 900 - 90
    assert read.content == head + sessions.cut_marker(dropped, newline=False) + tail
    assert "[delidev: 810 characters of output dropped here" in read.content
    assert read.next_offset == 900
    ended = await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    assert ended.output_log == read.content


# Live followers of a log that is being cut ----------------------------------------------


def _consistent(pieces: list[live.LogPiece], whole: str) -> str:
    """Every piece starts where the previous one said to resume, holds the log's text there
    or the marker of a dropped range, and the last one reaches the end."""
    offset = 0
    for piece in pieces:
        assert piece.offset == offset
        if piece.next_offset - piece.offset == len(piece.data):
            assert piece.data == whole[piece.offset : piece.next_offset]
        else:
            assert "characters of output dropped here" in piece.data
        offset = piece.next_offset
    assert offset == len(whole)
    assert pieces[-1].final
    return "".join(p.data for p in pieces)


async def test_followers_stay_consistent_while_the_log_is_cut(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(live, "WINDOW_CHARS", 100)  # so that the sleeper falls out of it
    session = await _running()
    limits = LogLimits(max_chars=200, chunk_max_chars=20, sequence_window=8)
    feeds = live.LogFeeds(bus)
    live_one = asyncio.create_task(
        asyncio.wait_for(
            _collect(feeds.follow(actor=A, session_id=session.id)),
            30,
        )
    )
    asleep = feeds.follow(actor=A, session_id=session.id)  # reads one piece, then sleeps
    lines = [f"{i:03} 😀 é 中\n" for i in range(150)]  # 11 code points each
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(0, lines[0])], limits=limits
    )
    first = await anext(asleep)
    for i in range(1, 150):
        await sessions.append_log(
            session_id=session.id, chunks=[LogChunkIn(i, lines[i])], limits=limits
        )
        if i % 10 == 0:
            await asyncio.sleep(0)  # lets the live follower keep up (or not)
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    whole = "".join(lines)
    _consistent(await live_one, whole)
    late = [first, *await _collect(asleep)]
    text = _consistent(late, whole)
    assert "characters of output dropped here" in text  # it fell into the dropped range
    assert text.endswith("".join(lines[-5:]))


async def test_a_feed_that_wakes_inside_the_dropped_range_starts_again_past_it(
    bus: Any,
) -> None:
    session = await _running()
    limits = LogLimits(max_chars=60, chunk_max_chars=10, sequence_window=8)
    lines = [f"{i:02} 😀 中\n" for i in range(40)]  # 7 code points each
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(0, lines[0])], limits=limits
    )
    feeds = live.LogFeeds(bus)
    follower = asyncio.create_task(_collect(feeds.follow(actor=A, session_id=session.id)))
    await until(
        lambda: (f := feeds._feeds.get(session.id)) is not None and f.followers >= 1 and f.end >= 7
    )
    feed = feeds._feeds[session.id]
    # The feed sleeps through the next 39 lines: its end falls into the dropped range.
    gate = asyncio.Event()
    wait = feed.watch.wait

    async def gated(seconds: float | None = None) -> bool:
        await gate.wait()
        return await wait(seconds)

    feed.watch.wait = gated  # type: ignore[method-assign]  # a test seam
    for i in range(1, 40):
        await sessions.append_log(
            session_id=session.id, chunks=[LogChunkIn(i, lines[i])], limits=limits
        )
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    gate.set()
    whole = "".join(lines)
    text = _consistent(await asyncio.wait_for(follower, 30), whole)
    assert text == lines[0] + text[len(lines[0]) :]
    assert "characters of output dropped here" in text
    assert text.endswith("".join(lines[-4:]))


async def _collect(stream: Any) -> list[live.LogPiece]:
    return [piece async for piece in stream]


# Refused chunks --------------------------------------------------------------------------


async def test_a_chunk_far_ahead_of_the_log_is_refused_and_nothing_is_kept() -> None:
    session = await _running()
    limits = LogLimits(sequence_window=16)
    for sequence in (16, 10**12, 2**63 - 1):
        with pytest.raises(InvalidArgument) as info:
            await sessions.append_log(
                session_id=session.id, chunks=[LogChunkIn(sequence, "x")], limits=limits
            )
        assert info.value.field == "chunks.sequence"
        assert "too far ahead" in info.value.message
        assert "next one expected is 0" in info.value.message
    assert await m.LogChunk.filter(session_id=session.id).count() == 0
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(15, "waits")], limits=limits
    )
    assert await m.LogChunk.filter(session_id=session.id).count() == 1


async def test_chunks_waiting_for_a_gap_are_bounded_and_dropped_when_the_run_ends() -> None:
    session = await _running()
    limits = LogLimits(max_chars=20, chunk_max_chars=10, sequence_window=100)
    await sessions.append_log(
        session_id=session.id,
        chunks=[LogChunkIn(1, "a" * 10), LogChunkIn(2, "b" * 10)],
        limits=limits,
    )
    with pytest.raises(InvalidArgument) as info:
        await sessions.append_log(session_id=session.id, chunks=[LogChunkIn(3, "c")], limits=limits)
    assert "send sequence 0 first" in info.value.message
    assert await m.LogChunk.filter(session_id=session.id).count() == 2
    await sessions.complete_session(session_id=session.id, status=Q.FAILED, error="gone")
    assert await m.LogChunk.filter(session_id=session.id).count() == 0


async def test_a_chunk_over_the_limit_is_refused() -> None:
    session = await _running()
    limits = LogLimits(max_chars=100, chunk_max_chars=5)
    with pytest.raises(InvalidArgument) as info:
        await sessions.append_log(
            session_id=session.id, chunks=[LogChunkIn(0, "😀" * 6)], limits=limits
        )
    assert info.value.field == "chunks.data"
    assert "at most 5 characters (got 6)" in info.value.message
    stored = await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(0, "😀" * 5)], limits=limits
    )
    assert stored.log_size == 5


def test_the_service_defaults_are_the_settings_defaults() -> None:
    assert LogLimits() == LogLimits.of(Settings())


async def test_the_ingested_bytes_metric_counts_only_what_was_stored() -> None:
    """A call refused after its chunks were written is rolled back: it counts nothing (the
    metric once counted before the commit, so a cut-off or refused call inflated it)."""
    from delidev import metrics

    session = await _running()
    limits = LogLimits(max_chars=10, chunk_max_chars=8, sequence_window=8)
    before = metrics.LOG_BYTES._value.get()
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(0, "abcdef")], limits=limits
    )
    assert metrics.LOG_BYTES._value.get() == before + 6
    # Waiting for sequence 1, chunks 2 and 3 would hold 16 characters: refused, rolled back.
    with pytest.raises(InvalidArgument):
        await sessions.append_log(
            session_id=session.id,
            chunks=[LogChunkIn(2, "12345678"), LogChunkIn(3, "12345678")],
            limits=limits,
        )
    assert metrics.LOG_BYTES._value.get() == before + 6


# The end of a run ----------------------------------------------------------------------


@EXAMPLES
@given(
    pieces=st.lists(st.sampled_from(["", "a", "😀", "\n", "bc"]), max_size=40),
    batch=st.integers(1, 6),
    stranded=st.integers(0, 4),
)
async def test_the_output_of_a_run_is_its_placed_chunks_in_order_across_batches(
    pieces: list[str], batch: int, stranded: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read in batches of any size on SQLite (by offset, then sequence: an empty chunk
    shares its offset with the next), in one statement on PostgreSQL; chunks stranded
    behind a gap that never fills are not output, and are deleted."""
    monkeypatch.setattr(output_log, "OUTPUT_BATCH_ROWS", batch)
    session = await _running()
    chunks = [LogChunkIn(sequence=i, data=p) for i, p in enumerate(pieces)]
    for start in range(0, len(chunks), 7):
        await sessions.append_log(session_id=session.id, chunks=chunks[start : start + 7])
    ahead = [LogChunkIn(sequence=len(pieces) + 1 + i, data="z") for i in range(stranded)]
    if ahead:
        await sessions.append_log(session_id=session.id, chunks=ahead)
    await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
    assert not await m.LogChunk.filter(session_id=session.id, start_offset=-1).exists()
    ended = await m.AgentSession.get(id=session.id)
    assert ended.output_log == ("".join(pieces) if pieces else None)
    assert ended.log_size == len("".join(pieces))


async def test_a_run_of_many_tiny_chunks_ends_without_loading_every_row() -> None:
    """Regression (audit): every chunk is a row, and the end of a run loaded all of them as
    Python tuples: 2,000,000 one-character chunks took the server from 124 MB to 1 GB and
    held its event loop for seconds. Now the rows are joined by the database, or read in
    batches: the memory the end takes follows the output's size."""
    session = await _running()
    rows = 100_000
    for start in range(0, rows, 1_000):
        await sessions.append_log(
            session_id=session.id,
            chunks=[LogChunkIn(sequence=i, data="x") for i in range(start, start + 1_000)],
        )
    assert await m.LogChunk.filter(session_id=session.id).count() == rows
    tracemalloc.start()
    try:
        await sessions.complete_session(session_id=session.id, status=Q.SUCCEEDED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (await m.AgentSession.get(id=session.id)).output_log == "x" * rows
    # Before: ~300 bytes a row (a tuple of a UUID, two ints and a str) → over 30 MB.
    print(f"the end of the run allocated {peak / 1e6:.1f} MB at its peak")
    assert peak < 12 * 1024 * 1024, f"the end of the run allocated {peak / 1e6:.1f} MB"


async def test_a_log_of_many_small_chunks_is_read_without_holding_the_event_loop(
    loop_watchdog: Watchdog,
) -> None:
    """Its chunks are read a thousand at a time, as plain values, and join into the same
    text from any offset. Regression: every chunk of the range read was loaded as a model
    in one go (40,000 chunks of 100 characters held the event loop for ~0.13 s per read)."""
    count = 12_000
    session = await _running()
    pieces = [f"line {i:05} " + "é" * (i % 7) + "\n" for i in range(count)]
    chunks, offset = [], 0
    for sequence, piece in enumerate(pieces):
        chunks.append(
            m.LogChunk(session_id=session.id, sequence=sequence, start_offset=offset, data=piece)
        )
        offset += len(piece)
    await m.LogChunk.bulk_create(chunks, batch_size=2_000)
    await m.AgentSession.filter(id=session.id).update(log_size=offset, log_next_sequence=count)
    text = "".join(pieces)
    loop_watchdog.take()
    with loop_watchdog.armed():
        read = await sessions.read_log(actor=A, session_id=session.id, offset=0, limit=0)
    assert loop_watchdog.take() == []
    assert (read.content, read.next_offset) == (text, len(text))
    for start, limit in ((1, 0), (len(text) // 3, 5_000), (len(text) - 10, 0), (777, 1)):
        read = await sessions.read_log(actor=A, session_id=session.id, offset=start, limit=limit)
        expected = text[start:] if not limit else text[start : start + limit]
        assert read.content == expected
        assert read.next_offset == start + len(expected)
