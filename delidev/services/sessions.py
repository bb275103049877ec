"""Agent sessions: the runs of an AgentTask, their output log and their TTY questions.

The output log is stored as numbered chunks (``agent_session_log_chunks``): appending costs
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

import contextlib
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import tasks as task_service
from delidev.services.common import (
    MAX_TEXT_LENGTH,
    Page,
    check_text,
    get_row,
    owner_filter,
    page_bounds,
    paginate,
    transaction,
)
from delidev.services.common import now as _now
from delidev.services.workspaces import get_workspace
from delidev.settings import Settings

SessionStatus = m.AgentSessionStatus
FINAL = frozenset(
    {SessionStatus.SUCCEEDED, SessionStatus.FAILED, SessionStatus.STOPPED, SessionStatus.LOST}
)
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


# Lookups ------------------------------------------------------------------------------


async def _workspace_of_session(session: m.AgentSession) -> UUID | None:
    agent_id = session.agent_task_id
    unit = await m.UnitTask.get_or_none(agent_task_id=agent_id).values("workspace_id")
    if unit:
        return unit["workspace_id"]  # type: ignore[no-any-return]  # a UUID column
    composite = await m.CompositeTask.get_or_none(planning_task_id=agent_id).values("workspace_id")
    if composite:
        return composite["workspace_id"]  # type: ignore[no-any-return]  # a UUID column
    fix = await m.UnitTaskAutoFixTask.get_or_none(agent_task_id=agent_id).values(
        "unit_task__workspace_id"
    )
    return fix["unit_task__workspace_id"] if fix else None


async def task_id_of_session(session: m.AgentSession) -> UUID | None:
    """The UnitTask or CompositeTask a session runs for."""
    unit = await m.UnitTask.get_or_none(agent_task_id=session.agent_task_id)
    if unit is not None:
        return unit.id
    composite = await m.CompositeTask.get_or_none(planning_task_id=session.agent_task_id)
    if composite is not None:
        return composite.id
    fix = await m.UnitTaskAutoFixTask.get_or_none(agent_task_id=session.agent_task_id)
    return fix.unit_task_id if fix else None


async def announce_session(session: m.AgentSession) -> None:
    """Publishes that a session changed, and so did its task (and its composite task)."""
    events.publish(events.SessionChanged(session_id=str(session.id), status=session.status.value))
    await announce_tasks_of([session.agent_task_id])


async def announce_tasks_of(agent_task_ids: Sequence[UUID]) -> None:
    """Publishes TaskChanged for the tasks these AgentTasks run for (and their composites)."""
    units = await m.UnitTask.filter(agent_task_id__in=list(agent_task_ids)).values_list(
        "id", "workspace_id", "composite_task_id"
    )
    for unit_id, workspace_id, composite_id in units:
        events.publish(events.TaskChanged(task_id=str(unit_id), workspace_id=str(workspace_id)))
        if composite_id is not None:
            events.publish(
                events.TaskChanged(task_id=str(composite_id), workspace_id=str(workspace_id))
            )
    if len(units) < len(agent_task_ids):
        planners = await m.CompositeTask.filter(
            planning_task_id__in=list(agent_task_ids)
        ).values_list("id", "workspace_id")
        for composite_id, workspace_id in planners:
            events.publish(
                events.TaskChanged(task_id=str(composite_id), workspace_id=str(workspace_id))
            )


async def close_pending_tty(status: m.TtyInputStatus, **filters: Any) -> int:
    """Pending questions matching ``filters`` → ``status`` (timeout or cancelled), announced."""
    rows = await m.TtyInputRequest.filter(status=m.TtyInputStatus.PENDING, **filters).values_list(
        "id", "session_id", "workspace_id"
    )
    if not rows:
        return 0
    changed = await m.TtyInputRequest.filter(
        id__in=[r[0] for r in rows], status=m.TtyInputStatus.PENDING
    ).update(status=status)
    for request_id, session_id, workspace_id in rows:
        events.publish(
            events.TtyChanged(
                request_id=str(request_id),
                session_id=str(session_id),
                workspace_id=str(workspace_id),
            )
        )
    return changed


async def get_session(*, actor: Principal, session_id: UUID) -> m.AgentSession:
    """Raises: NotFound (also for another user's session)."""
    session = await m.AgentSession.get_or_none(id=session_id)
    if session is not None:
        workspace_id = await _workspace_of_session(session)
        if workspace_id is not None and await m.Workspace.exists(
            id=workspace_id, **owner_filter(actor)
        ):
            return session
    raise NotFound(f"session {session_id} not found", field="session_id")


async def sessions_of(agent_task_ids: Sequence[UUID]) -> dict[UUID, list[m.AgentSession]]:
    """Sessions of each AgentTask, oldest first (one query)."""
    result: dict[UUID, list[m.AgentSession]] = {a: [] for a in agent_task_ids}
    if agent_task_ids:
        for session in await m.AgentSession.filter(agent_task_id__in=list(agent_task_ids)).order_by(
            "attempt"
        ):
            result[session.agent_task_id].append(session)
    return result


# Stop and completion -----------------------------------------------------------------


async def stop_session(*, actor: Principal, session_id: UUID) -> m.AgentSession:
    """A queued session stops at once; a running one is flagged for its worker.

    Raises: NotFound, FailedPrecondition (the session already ended).
    """
    session = await get_session(actor=actor, session_id=session_id)
    if session.status == SessionStatus.QUEUED:
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.QUEUED).update(
            status=SessionStatus.STOPPED,
            stop_requested=True,
            completed_at=_now(),
            updated_at=_now(),
        )
        if changed:
            await _session_ended(session.id)
            stopped = await get_row(m.AgentSession, id=session.id)
            await announce_session(stopped)
            return stopped
        session = await get_row(m.AgentSession, id=session.id)
    if session.status == SessionStatus.RUNNING:
        await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            stop_requested=True, updated_at=_now()
        )
        flagged = await get_row(m.AgentSession, id=session.id)
        await announce_session(flagged)
        return flagged
    raise FailedPrecondition(f"session {session.id} already ended ({session.status.value})")


async def start_session(*, session_id: UUID, worker_id: UUID | None, lease_token: str) -> None:
    """queued → running (the claim itself belongs to the worker issue)."""
    changed = await m.AgentSession.filter(id=session_id, status=SessionStatus.QUEUED).update(
        status=SessionStatus.RUNNING,
        worker_id=worker_id,
        lease_token=lease_token,
        started_at=_now(),
        updated_at=_now(),
    )
    if not changed:
        raise FailedPrecondition(f"session {session_id} is not queued")
    await announce_session(await get_row(m.AgentSession, id=session_id))


async def complete_session(
    *,
    session_id: UUID,
    status: m.AgentSessionStatus,
    error: str | None = None,
    failure_kind: str | None = None,
    plan_yaml: str | None = None,
    base_commit: str | None = None,
    end_commit: str | None = None,
    loaded: m.AgentSession | None = None,
) -> m.AgentSession:
    """Ends a running session as its worker reports it (the lease check is the caller's,
    which may pass the session it ``loaded``).

    Success of a unit-task run moves the UnitTask to in_review; success of a planning run
    stores its PLAN.yaml (an invalid plan is kept on the composite as its plan error).

    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    if status not in FINAL - {SessionStatus.LOST}:
        raise InvalidArgument("status must be succeeded, failed or stopped", field="status")
    if error is not None:
        error = check_text(error, "error", max_length=10_000, required=False) or None
    session = loaded if loaded is not None else await m.AgentSession.get_or_none(id=session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found", field="session_id")
    if session.kind == m.JobKind.PLANNING and status == SessionStatus.SUCCEEDED and not plan_yaml:
        raise InvalidArgument("a successful planning run must carry plan_yaml", field="plan_yaml")
    async with transaction():
        await _place_held_output(session.id)
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            status=status,
            error=error,
            failure_kind=failure_kind,
            completed_at=_now(),
            lease_token=None,
            updated_at=_now(),
        )
        if not changed:
            fresh = await get_row(m.AgentSession, id=session.id)
            raise FailedPrecondition(
                f"session {session.id} cannot move from {fresh.status.value} to {status.value}"
            )
        if status == SessionStatus.SUCCEEDED and session.kind == m.JobKind.UNIT_TASK:
            fields: dict[str, object] = {"status": m.UnitTaskStatus.IN_REVIEW, "updated_at": _now()}
            if base_commit:
                fields["base_commit"] = base_commit[:40]
            if end_commit:
                fields["end_commit"] = end_commit[:40]
            await m.UnitTask.filter(
                agent_task_id=session.agent_task_id, status=m.UnitTaskStatus.IN_PROGRESS
            ).update(**fields)
    if status == SessionStatus.SUCCEEDED and session.kind == m.JobKind.PLANNING:
        composite = await m.CompositeTask.get_or_none(planning_task_id=session.agent_task_id)
        # An invalid plan is kept on the composite as plan_error; Retry re-plans. A composite
        # deleted while its planning run ended has nothing to keep the plan on.
        if composite is not None:
            with contextlib.suppress(InvalidArgument, NotFound):
                await task_service.submit_plan(
                    composite_task_id=composite.id, plan_yaml=plan_yaml or ""
                )
    await _session_ended(session.id)
    ended = await get_row(m.AgentSession, id=session.id)
    await announce_session(ended)
    return ended


async def end_questions(session_id: UUID) -> None:
    """A run ended: its pending questions are cancelled, and password answers are erased
    (they were kept only for the worker of that run to read)."""
    await close_pending_tty(m.TtyInputStatus.CANCELLED, session_id=session_id)
    await m.TtyInputRequest.filter(
        session_id=session_id, input_type=m.TtyInputType.PASSWORD, response__isnull=False
    ).update(response=None)


async def _session_ended(session_id: UUID) -> None:
    """Questions are closed, the lease ends and the output lands in ``output_log``."""
    await end_questions(session_id)
    chunks = (
        await m.LogChunk.filter(session_id=session_id, start_offset__gte=0)
        .order_by("start_offset")
        .values_list("data", flat=True)
    )
    # Chunks still waiting for an earlier one will never be placed.
    await m.LogChunk.filter(session_id=session_id, start_offset=PENDING_OFFSET).delete()
    fields: dict[str, object] = {"lease_token": None, "updated_at": _now()}
    if chunks:
        fields["output_log"] = "".join(str(c) for c in chunks)
    await m.AgentSession.filter(id=session_id).update(**fields)


async def _place_held_output(session_id: UUID) -> None:
    """The run ends: the end of its output that ``append_log`` held back (only the start of
    what could have been a secret value) takes its place at the end of the log. Run in the
    transaction that ends the run, before its status changes: a follower that sees the run
    ended has the whole log (a lost run keeps it back)."""
    session = await m.AgentSession.filter(id=session_id).select_for_update().first()
    held = await m.LogChunk.get_or_none(
        session_id=session_id, sequence=HELD_SEQUENCE, start_offset=PENDING_OFFSET
    )
    if session is None or held is None:
        return
    size = session.log_size + len(held.data)
    await m.LogChunk.filter(id=held.id).update(start_offset=session.log_size)
    await m.AgentSession.filter(id=session_id).update(log_size=size, updated_at=_now())
    events.publish(events.LogAppended(session_id=str(session_id), log_size=size))


# Logs -----------------------------------------------------------------------------------


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
    _check_chunks(chunks, limits)
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
        pending = await _store_pending(session, incoming)
        size, next_seq = await _place_pending(session, pending, hold)
        _check_waiting(pending, next_seq, limits)
        if next_seq != session.log_next_sequence:
            if size > limits.max_chars:
                await _cut(session.id, size, limits)
            await m.AgentSession.filter(id=session.id).update(
                log_size=size, log_next_sequence=next_seq, updated_at=_now()
            )
            events.publish(events.LogAppended(session_id=str(session.id), log_size=size))
        return await get_row(m.AgentSession, id=session.id)


def _check_chunks(chunks: Sequence[LogChunkIn], limits: LogLimits) -> None:
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


def _check_waiting(pending: dict[int, m.LogChunk], next_sequence: int, limits: LogLimits) -> None:
    waiting = sum(len(c.data) for s, c in pending.items() if s >= next_sequence)
    if waiting > limits.max_chars:
        raise InvalidArgument(
            f"chunks waiting for sequence {next_sequence} would hold {waiting} characters, "
            f"more than the {limits.max_chars} allowed: send sequence {next_sequence} first",
            field="chunks.sequence",
        )


async def _store_pending(
    session: m.AgentSession, incoming: dict[int, str]
) -> dict[int, m.LogChunk]:
    """Stores the chunks not stored yet (without an offset); returns every chunk waiting
    for its offset, by sequence."""
    stored = await m.LogChunk.filter(
        session_id=session.id, sequence__in=list(incoming)
    ).values_list("sequence", flat=True)
    waiting = set(cast(list[int], stored))
    new = {s: d for s, d in incoming.items() if s not in waiting}
    await m.LogChunk.bulk_create(
        [
            m.LogChunk(session_id=session.id, sequence=s, start_offset=PENDING_OFFSET, data=d)
            for s, d in sorted(new.items())
        ]
    )
    return {
        c.sequence: c
        for c in await m.LogChunk.filter(
            session_id=session.id, start_offset=PENDING_OFFSET
        ).order_by("sequence")
    }


async def _place_pending(
    session: m.AgentSession,
    pending: dict[int, m.LogChunk],
    hold: Callable[[str, str], tuple[str, str]] | None,
) -> tuple[int, int]:
    """Gives offsets to the run of chunks that now follows the stored log without a gap
    (after what ``hold`` held back before it, and without what it holds back now); returns
    the new size and next sequence."""
    held_row = pending.pop(HELD_SEQUENCE, None)
    held = held_row.data if held_row is not None else ""
    size, next_seq = session.log_size, session.log_next_sequence
    while next_seq in pending:
        ready = pending[next_seq]
        data, held = hold(held, ready.data) if hold is not None else (held + ready.data, "")
        placed: dict[str, object] = {"start_offset": size}
        if data != ready.data:
            placed["data"] = ready.data = data
        await m.LogChunk.filter(id=ready.id).update(**placed)
        size += len(data)
        next_seq += 1
    if held_row is not None and not held:
        await m.LogChunk.filter(id=held_row.id).delete()
    elif held_row is not None and held != held_row.data:
        await m.LogChunk.filter(id=held_row.id).update(data=held)
    elif held_row is None and held:
        await m.LogChunk.create(
            session_id=session.id, sequence=HELD_SEQUENCE, start_offset=PENDING_OFFSET, data=held
        )
    return size, next_seq


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
        # Only the chunks that overlap [pos, pos + want - got): never the whole log.
        query = m.LogChunk.filter(
            session_id=session.id,
            start_offset__gte=first.start_offset,
            start_offset__lt=pos + want - got,
        ).order_by("start_offset")
        async for chunk in query:
            if chunk.sequence == CUT_SEQUENCE or chunk.start_offset > pos:
                break  # the next round serves the marker
            data = chunk.data[pos - chunk.start_offset :][: want - got]
            pieces.append(data)
            got += len(data)
            pos += len(data)
            if got >= want:
                break
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


# TTY input -------------------------------------------------------------------------------


async def create_tty_request(
    *,
    session_id: UUID,
    prompt: str,
    input_type: m.TtyInputType,
    options: Sequence[str] = (),
    expires_in: dt.timedelta,
) -> m.TtyInputRequest:
    """A question of a running session. Raises: InvalidArgument, NotFound, FailedPrecondition."""
    prompt = check_text(prompt, "prompt", max_length=MAX_TEXT_LENGTH)
    cleaned = [check_text(o, "options", max_length=1000) for o in options]
    if len(cleaned) > 100:
        raise InvalidArgument("at most 100 options", field="options")
    if input_type == m.TtyInputType.SELECT and not cleaned:
        raise InvalidArgument("a select question needs options", field="options")
    if input_type != m.TtyInputType.SELECT and cleaned:
        raise InvalidArgument(f"a {input_type.value} question takes no options", field="options")
    if expires_in <= dt.timedelta(0):
        raise InvalidArgument("timeout must be positive", field="timeout_ms")
    session = await m.AgentSession.get_or_none(id=session_id)
    if session is None:
        raise NotFound(f"session {session_id} not found", field="session_id")
    if session.status != SessionStatus.RUNNING:
        raise FailedPrecondition(f"session {session.id} is {session.status.value}, not running")
    task_id = await task_id_of_session(session)
    workspace_id = await _workspace_of_session(session)
    if task_id is None or workspace_id is None:
        raise NotFound(f"session {session_id} has no task", field="session_id")
    created = await m.TtyInputRequest.create(
        task_id=task_id,
        workspace_id=workspace_id,
        session_id=session.id,
        prompt=prompt,
        input_type=input_type,
        options=cleaned or None,
        status=m.TtyInputStatus.PENDING,
        expires_at=_now() + expires_in,
    )
    events.publish(
        events.TtyChanged(
            request_id=str(created.id), session_id=str(session.id), workspace_id=str(workspace_id)
        )
    )
    return created


async def list_tty_requests(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    task_id: UUID | None = None,
    session_id: UUID | None = None,
    status: m.TtyInputStatus | None = None,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[m.TtyInputRequest]:
    """Raises: InvalidArgument, NotFound."""
    page_bounds(limit, offset)
    await expire_tty_requests()
    query = m.TtyInputRequest.filter(**owner_filter(actor, "workspace__"))
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        query = query.filter(workspace_id=workspace_id)
    if task_id is not None:
        await task_service.get_task(actor=actor, task_id=task_id)
        query = query.filter(task_id=task_id)
    if session_id is not None:
        await get_session(actor=actor, session_id=session_id)
        query = query.filter(session_id=session_id)
    if status is not None:
        query = query.filter(status=status)
    return await paginate(query, limit, offset)


async def get_tty_request(*, actor: Principal, request_id: UUID) -> m.TtyInputRequest:
    """Raises: NotFound."""
    request = await m.TtyInputRequest.get_or_none(
        id=request_id, **owner_filter(actor, "workspace__")
    )
    if request is None:
        raise NotFound(f"TTY input request {request_id} not found", field="request_id")
    return request


async def submit_tty_input(
    *, actor: Principal, request_id: UUID, response: str
) -> m.TtyInputRequest:
    """Answers a pending question once.

    A select answer must be one of the options; a confirm answer yes or no.
    Raises: InvalidArgument, NotFound, FailedPrecondition.
    """
    await expire_tty_requests()
    request = await get_tty_request(actor=actor, request_id=request_id)
    answer = check_text(
        response,
        "response",
        max_length=MAX_TEXT_LENGTH,
        required=False,
        strip=request.input_type != m.TtyInputType.PASSWORD,
    )
    if request.input_type == m.TtyInputType.SELECT and answer not in (request.options or []):
        raise InvalidArgument("response must be one of the request's options", field="response")
    if request.input_type == m.TtyInputType.CONFIRM:
        lowered = answer.lower()
        if lowered not in ("y", "yes", "true", "n", "no", "false"):
            raise InvalidArgument("response to a confirm question is yes or no", field="response")
        answer = "yes" if lowered in ("y", "yes", "true") else "no"
    changed = await m.TtyInputRequest.filter(id=request.id, status=m.TtyInputStatus.PENDING).update(
        status=m.TtyInputStatus.RESPONDED, response=answer, responded_at=_now()
    )
    fresh = await get_row(m.TtyInputRequest, id=request.id)
    if not changed:
        raise FailedPrecondition(
            f"TTY input request {request.id} is {fresh.status.value}: it takes no answer"
        )
    events.publish(
        events.TtyChanged(
            request_id=str(fresh.id),
            session_id=str(fresh.session_id),
            workspace_id=str(fresh.workspace_id),
        )
    )
    return fresh


def visible_response(request: m.TtyInputRequest) -> str | None:
    """What clients may see of the answer: never a password."""
    if request.input_type == m.TtyInputType.PASSWORD:
        return None
    return request.response


async def expire_tty_requests(now: dt.datetime | None = None) -> int:
    """Pending questions past their expiry → timeout. Safe to run from every replica."""
    return await close_pending_tty(m.TtyInputStatus.TIMEOUT, expires_at__lte=now or _now())
