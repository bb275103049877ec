"""A session's output log: numbered chunks appended in any order, read from any offset, cut
in the middle when it outgrows its cap.

The log is stored as numbered chunks (``agent_session_log_chunks``): appending costs
O(chunk) and reading from an offset touches only the chunks from that offset on. Offsets
count Unicode code points (Python's ``len``), the unit of both APIs; every read and stream
message carries the offset to read next, so no client counts. Chunks may arrive twice or
out of order: a chunk whose sequence number is already stored is ignored, and one that
arrives ahead of a gap waits (offset -1) until the gap is filled, within a window of
sequence numbers. Secret masking may hold back the end of the output (an unplaced row,
``HELD_SEQUENCE``) until the next chunk or the end of the run: placed text never changes.

A log larger than ``LogLimits.max_chars`` is cut as GitLab cuts job logs, but keeping both
ends: its head (whole chunks within the first half of the cap) stays, and so do its latest
chunks (within the other half); the chunks between are deleted and one marker chunk
(sequence ``CUT_SEQUENCE``) at the start of the dropped range says how much was dropped.
Offsets never move: the marker stands for the whole dropped range, a read from any offset
in it returns the marker and continues at the range's end, and ``log_size`` still counts
everything the worker sent.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from uuid import UUID

from tortoise import connections
from tortoise.expressions import Q

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services.common import transaction
from delidev.services.sessions.lookups import FINAL, SessionStatus, get_session
from delidev.settings import Settings

MAX_CHUNKS_PER_CALL = 1_000
MAX_READ_CHARS = 4_000_000
PENDING_OFFSET = -1
CUT_SEQUENCE = -1  # the marker chunk of a cut log (workers' sequence numbers start at 0)
# The unplaced row (offset -1, like a chunk ahead of a gap) that keeps the end of the output a
# ``hold`` function held back (see ``append_log``) until the next chunk or the end of the run.
HELD_SEQUENCE = -2


@dataclass(frozen=True, slots=True)
class LogLimits:
    """Bounds on a session's log (``Settings.log_*``; the defaults are Settings' defaults)."""

    max_chars: int = 16 * 1024 * 1024
    chunk_max_chars: int = 1024 * 1024
    sequence_window: int = 1024

    @classmethod
    def of(cls, settings: Settings) -> LogLimits:
        return cls(
            max_chars=settings.log_max_chars,
            chunk_max_chars=settings.log_chunk_max_chars,
            sequence_window=settings.log_sequence_window,
        )

    @property
    def head_chars(self) -> int:
        return self.max_chars // 2

    @property
    def tail_chars(self) -> int:
        return self.max_chars - self.head_chars


@dataclass(frozen=True, slots=True)
class LogChunkIn:
    sequence: int
    data: str


@dataclass(frozen=True, slots=True)
class LogRead:
    content: str
    offset: int
    next_offset: int
    complete: bool
    status: m.AgentSessionStatus


async def finish_output(session: m.AgentSession) -> tuple[str | None, int]:
    """The run ends: its whole output (for ``AgentSession.output_log``; None when it has
    none) and the log's final size. The end of the output that ``append_log`` held back (only
    the start of what could have been a secret value) takes its place at the end of the log,
    and the chunks still waiting for an earlier one, which will never be placed, are deleted.

    Run in the transaction that ends the run, on its row locked and loaded as ``session``,
    before its status changes: a follower that sees the run ended has the whole log (a lost
    run keeps it back). A read of the unplaced chunks (a few at most) and one of the placed
    ones' text; a write only for a held or waiting one (the end of a run is the fleet's hot
    path: see bench/bench_workers.py).
    """
    pending, output = await _chunks_at_end(session.id)
    waiting: list[UUID] = []
    held: tuple[UUID, str] | None = None
    for chunk_id, sequence, data in pending:
        if sequence == HELD_SEQUENCE:
            held = (chunk_id, data)
        else:
            waiting.append(chunk_id)
    size = session.log_size
    if held is not None:
        await m.LogChunk.filter(id=held[0]).update(start_offset=size)
        output = (output or "") + held[1]
        size += len(held[1])
        events.publish(events.LogAppended(str(session.id), size, held[1]))
    if waiting:
        await m.LogChunk.filter(id__in=waiting).delete()
    return output, size


async def collect_output(session_id: UUID) -> str | None:
    """The run ended: its placed output joined (for ``AgentSession.output_log``; None when it
    has none); the chunks still waiting for an earlier one will never be placed and are
    deleted."""
    pending, output = await _chunks_at_end(session_id)
    if pending:
        await m.LogChunk.filter(id__in=[chunk_id for chunk_id, _, _ in pending]).delete()
    return output


# Chunks read at a time on SQLite when a run ends.
OUTPUT_BATCH_ROWS = 5_000

_AT_END_PG = """
SELECT id, sequence, data, FALSE AS joined
FROM agent_session_log_chunks WHERE session_id = $1 AND start_offset = -1
UNION ALL
SELECT NULL, NULL, string_agg(data, '' ORDER BY start_offset, sequence), TRUE
FROM agent_session_log_chunks WHERE session_id = $1 AND start_offset >= 0
"""


async def _chunks_at_end(session_id: UUID) -> tuple[list[tuple[UUID, int, str]], str | None]:
    """The unplaced chunks (id, sequence, data: a few at most, bounded by the sequence
    window) and the placed ones' text in offset order (None when there is none).

    A worker may send a run's output as millions of one-character chunks (each is a row),
    so the rows are never all loaded: PostgreSQL joins them itself, in the statement that
    finds the unplaced ones; SQLite reads ``OUTPUT_BATCH_ROWS`` at a time by offset, then
    sequence (an empty chunk shares its offset with the next), the unplaced ones (offset -1)
    first. Memory then follows the output's size, not its number of rows; a run's end still
    takes one statement when its log is under a batch."""
    client = connections.get("default")
    if client.capabilities.dialect == "postgres":
        rows = await client.execute_query_dict(_AT_END_PG, [session_id])
        pending = [(r["id"], r["sequence"], str(r["data"])) for r in rows if not r["joined"]]
        output = next((r["data"] for r in rows if r["joined"]), None)
        return pending, output
    pending = []
    parts: list[str] = []
    found = False
    after: Q = Q(start_offset__gte=PENDING_OFFSET)
    while True:
        batch = (
            await m.LogChunk.filter(after, session_id=session_id)
            .order_by("start_offset", "sequence")
            .limit(OUTPUT_BATCH_ROWS)
            .values_list("id", "start_offset", "sequence", "data")
        )
        placed = []
        for chunk_id, offset, sequence, data in batch:
            if offset == PENDING_OFFSET:
                pending.append((chunk_id, sequence, str(data)))
            else:
                placed.append(str(data))
        found = found or bool(placed)
        parts.append("".join(placed))
        if len(batch) < OUTPUT_BATCH_ROWS:
            break
        _, offset, sequence, _ = batch[-1]
        after = Q(start_offset__gt=offset) | Q(start_offset=offset, sequence__gt=sequence)
    return pending, ("".join(parts) if found else None)


async def append_log(
    *,
    session_id: UUID,
    chunks: Sequence[LogChunkIn],
    hold: Callable[[str, str], tuple[str, str]] | None = None,
    limits: LogLimits = LogLimits(),  # frozen, so one shared default is safe
) -> m.AgentSession:
    """Stores numbered chunks; returns the session with its new size and next sequence.

    ``hold`` sees, in order, each chunk that takes its place after the text it held back
    before, and returns what to place now and what to hold back (secret masking: the end of
    the output may be the start of a value that the next chunk completes). What is held
    back is placed when the run ends. A log that outgrows ``limits.max_chars`` is cut (see
    the module docstring).

    Raises: InvalidArgument (a bad chunk, or one too far ahead of the log), NotFound,
    FailedPrecondition (the session is not running).
    """
    check_chunks(chunks, limits)
    async with transaction():
        session = await m.AgentSession.filter(id=session_id).select_for_update().first()
        if session is None:
            raise NotFound(f"session {session_id} not found", field="session_id")
        if session.status != SessionStatus.RUNNING:
            raise FailedPrecondition(
                f"session {session.id} is {session.status.value}: it takes no more output"
            )
        incoming = {c.sequence: c.data for c in chunks if c.sequence >= session.log_next_sequence}
        if not incoming:
            return session
        _check_window(incoming, session.log_next_sequence, limits)
        size, next_seq, placed = await _store(session, incoming, hold, limits)
        grew = next_seq != session.log_next_sequence
        text: str | None = placed
        if grew and size > limits.max_chars:
            await _cut(session.id, size, limits)
            text = None  # the followers read the cut log from storage
        # Also when the chunks only wait: ``updated_at`` tells AppendLog's quick path on
        # PostgreSQL (services/workers/quick_append.py) that the row changed under it.
        values = common.changed(log_size=size, log_next_sequence=next_seq)
        await m.AgentSession.filter(id=session.id).update(**values)
        common.mirror(session, values)
        if grew:
            events.publish(events.LogAppended(str(session.id), size, text))
    # Counted once committed: a call cut off mid-way (its worker killed) or refused after
    # the chunks were written is rolled back, and stored nothing (it once counted them).
    metrics.log_ingested(sum(len(data.encode()) for data in incoming.values()))
    return session


def check_chunks(chunks: Sequence[LogChunkIn], limits: LogLimits) -> None:
    """Raises InvalidArgument for chunks no log takes (too many, a negative sequence, too
    large, a NUL)."""
    if len(chunks) > MAX_CHUNKS_PER_CALL:
        raise InvalidArgument(f"at most {MAX_CHUNKS_PER_CALL} chunks per call", field="chunks")
    for chunk in chunks:
        if chunk.sequence < 0:
            raise InvalidArgument("chunk sequence numbers start at 0", field="chunks.sequence")
        if len(chunk.data) > limits.chunk_max_chars:
            raise InvalidArgument(
                f"a chunk holds at most {limits.chunk_max_chars} characters "
                f"(got {len(chunk.data)})",
                field="chunks.data",
            )
        if "\x00" in chunk.data:
            raise InvalidArgument("chunk data must not contain NUL", field="chunks.data")


def _check_window(incoming: dict[int, str], next_sequence: int, limits: LogLimits) -> None:
    """A chunk far ahead of the log would wait (and be kept) for chunks that never come."""
    bound = next_sequence + limits.sequence_window
    ahead = max(incoming)
    if ahead >= bound:
        raise InvalidArgument(
            f"chunk sequence {ahead} is too far ahead of the log: the next one expected is "
            f"{next_sequence}, and a chunk may be at most {limits.sequence_window} ahead of it",
            field="chunks.sequence",
        )


async def _store(
    session: m.AgentSession,
    incoming: dict[int, str],
    hold: Callable[[str, str], tuple[str, str]] | None,
    limits: LogLimits,
) -> tuple[int, int, str]:
    """Stores the chunks not stored yet and gives offsets to the run of chunks that now
    follows the stored log without a gap (after what ``hold`` held back before it, and
    without what it holds back now); returns the new size, the next sequence and the text
    placed.

    One read of the chunks waiting for their offset (all of them are unplaced: a chunk
    whose sequence is past the log's next one cannot have an offset yet), then one insert
    of the new chunks, placed where they follow the log and waiting where they do not. A
    chunk that waited is placed by an update of its row. So a worker that sends its chunks
    in order costs one read and one insert per call, whatever their number.
    """
    waiting_rows = {
        c.sequence: c
        for c in await m.LogChunk.filter(session_id=session.id, start_offset=PENDING_OFFSET)
    }
    held_row = waiting_rows.pop(HELD_SEQUENCE, None)
    new = {s: d for s, d in incoming.items() if s not in waiting_rows}
    held = held_row.data if held_row is not None else ""
    size, next_seq = session.log_size, session.log_next_sequence
    rows: list[m.LogChunk] = []
    placed_texts: list[str] = []
    while next_seq in new or next_seq in waiting_rows:
        row = waiting_rows.pop(next_seq, None)
        text = row.data if row is not None else new.pop(next_seq)
        data, held = hold(held, text) if hold is not None else (held + text, "")
        if row is None:
            rows.append(
                m.LogChunk(session_id=session.id, sequence=next_seq, start_offset=size, data=data)
            )
        else:
            placed: dict[str, object] = {"start_offset": size}
            if data != row.data:
                placed["data"] = data
            await m.LogChunk.filter(id=row.id).update(**placed)
        placed_texts.append(data)
        size += len(data)
        next_seq += 1
    # What still waits for an earlier chunk must stay within the log's cap.
    waiting = sum(len(c.data) for c in waiting_rows.values()) + sum(map(len, new.values()))
    if waiting > limits.max_chars:
        raise InvalidArgument(
            f"chunks waiting for sequence {next_seq} would hold {waiting} characters, "
            f"more than the {limits.max_chars} allowed: send sequence {next_seq} first",
            field="chunks.sequence",
        )
    rows.extend(
        m.LogChunk(session_id=session.id, sequence=s, start_offset=PENDING_OFFSET, data=d)
        for s, d in sorted(new.items())
    )
    if held_row is None and held:
        rows.append(
            m.LogChunk(
                session_id=session.id,
                sequence=HELD_SEQUENCE,
                start_offset=PENDING_OFFSET,
                data=held,
            )
        )
    elif held_row is not None and not held:
        await m.LogChunk.filter(id=held_row.id).delete()
    elif held_row is not None and held != held_row.data:
        await m.LogChunk.filter(id=held_row.id).update(data=held)
    if rows:
        await m.LogChunk.bulk_create(rows)
    return size, next_seq, "".join(placed_texts)


def cut_marker(dropped: int, *, newline: bool) -> str:
    """The line that stands in the log for ``dropped`` characters of output."""
    lead = "\n" if newline else ""
    return (
        f"{lead}[delidev: {dropped} characters of output dropped here; the log keeps its "
        "first and its latest output (DELIDEV_LOG_MAX_CHARS)]\n"
    )


async def _cut(session_id: UUID, size: int, limits: LogLimits) -> None:
    """Drops whole chunks from the middle of a log of ``size`` characters so that at most
    ``limits.head_chars`` of its start and ``limits.tail_chars`` of its end stay stored, and
    puts (or updates) the marker chunk where the dropped range starts."""
    marker = await m.LogChunk.get_or_none(session_id=session_id, sequence=CUT_SEQUENCE)
    # The first chunk that may stay: the tail holds at most tail_chars (a chunk is never
    # larger, see Settings.validate).
    keep = (
        await m.LogChunk.filter(session_id=session_id, start_offset__gte=size - limits.tail_chars)
        .order_by("start_offset")
        .first()
    )
    if keep is None:  # pragma: no cover  # the last chunk is at most tail_chars long
        return
    if marker is None:
        # The head ends where the chunk holding character head_chars starts.
        straddling = (
            await m.LogChunk.filter(
                session_id=session_id,
                start_offset__gte=0,
                start_offset__lte=limits.head_chars,
            )
            .order_by("-start_offset")
            .first()
        )
        head_end = 0 if straddling is None else straddling.start_offset
        before = (
            await m.LogChunk.filter(
                session_id=session_id, start_offset__gte=0, start_offset__lt=head_end
            )
            .order_by("-start_offset")
            .first()
        )
        newline = before is not None and not before.data.endswith("\n")
    else:
        head_end = marker.start_offset
        newline = marker.data.startswith("\n")
    await m.LogChunk.filter(
        session_id=session_id,
        sequence__gte=0,
        start_offset__gte=head_end,
        start_offset__lt=keep.start_offset,
    ).delete()
    text = cut_marker(keep.start_offset - head_end, newline=newline)
    if marker is None:
        await m.LogChunk.create(
            session_id=session_id, sequence=CUT_SEQUENCE, start_offset=head_end, data=text
        )
    elif marker.data != text:
        await m.LogChunk.filter(id=marker.id).update(data=text)


async def read_log(
    *, actor: Principal, session_id: UUID, offset: int = 0, limit: int = 0
) -> LogRead:
    """The log from ``offset`` (code points), about ``limit`` of them (0 = all, capped).

    Raises: InvalidArgument, NotFound.
    """
    if offset < 0:
        raise InvalidArgument("offset must not be negative", field="offset")
    if limit < 0:
        raise InvalidArgument("limit must not be negative", field="limit")
    session = await get_session(actor=actor, session_id=session_id)
    return await read_stored_log(session, offset=offset, limit=limit)


_CHUNKS_PER_READ = 1_000


async def read_stored_log(session: m.AgentSession, *, offset: int, limit: int) -> LogRead:
    """The stored log from ``offset``: at most ``limit`` characters of output (0: up to
    ``MAX_READ_CHARS``), plus the whole marker of a dropped range it meets. Only the chunks
    that overlap the range read are loaded."""
    want = min(limit or MAX_READ_CHARS, MAX_READ_CHARS)
    size = session.log_size
    start = pos = min(offset, size)
    pieces: list[str] = []
    got = stalled = 0
    while got < want and pos < size:
        first = (
            await m.LogChunk.filter(
                session_id=session.id, start_offset__gte=0, start_offset__lte=pos
            )
            .order_by("-start_offset")
            .first()
        )
        if first is None:
            break
        if first.sequence == CUT_SEQUENCE:
            # ``pos`` lies in the dropped range: its marker stands for all of it.
            after = (
                await m.LogChunk.filter(session_id=session.id, start_offset__gt=pos)
                .order_by("start_offset")
                .first()
            )
            pieces.append(first.data)
            got += len(first.data)
            pos = size if after is None else after.start_offset
            continue
        moved = pos
        # Only the chunks that overlap [pos, pos + want - got): never the whole log. Read
        # as plain values, ``_CHUNKS_PER_READ`` at a time: a log of many small chunks (40,000
        # of 100 characters) loaded at once held the event loop for ~0.13 s per read.
        from_offset = first.start_offset
        while got < want:
            rows = (
                await m.LogChunk.filter(
                    session_id=session.id,
                    start_offset__gte=from_offset,
                    start_offset__lt=pos + want - got,
                )
                .order_by("start_offset")
                .limit(_CHUNKS_PER_READ)
                .values_list("start_offset", "sequence", "data")
            )
            page_start = pos
            ended = False
            for chunk_start, sequence, data in rows:
                if sequence == CUT_SEQUENCE or chunk_start > pos:
                    ended = True  # the next round serves the marker
                    break
                piece = data[pos - chunk_start :][: want - got]
                pieces.append(piece)
                got += len(piece)
                pos += len(piece)
                if got >= want:
                    break
            if ended or len(rows) < _CHUNKS_PER_READ or pos == page_start:
                break
            from_offset = pos  # the next chunk starts where this one ended
        if pos == moved:
            # Only a cut committed between our two statements leaves a hole without its
            # marker: look again once (the cut's deletions and marker commit together).
            stalled += 1
            if stalled > 1:
                break
    content = "".join(pieces)
    return LogRead(
        content=content,
        offset=start,
        next_offset=pos,
        complete=session.status in FINAL and pos >= size,
        status=session.status,
    )
