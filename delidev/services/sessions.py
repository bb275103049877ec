"""Agent sessions: the runs of an AgentTask, their output log and their TTY questions.

The output log is stored as numbered chunks (``agent_session_log_chunks``): appending costs
O(chunk) and reading from an offset touches only the chunks from that offset on. Offsets
count characters. Chunks may arrive twice or out of order: a chunk whose sequence number is
already stored is ignored, and one that arrives ahead of a gap waits (offset -1) until the
gap is filled.
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
    owner_filter,
    page_bounds,
    paginate,
    transaction,
)
from delidev.services.workspaces import get_workspace

SessionStatus = m.AgentSessionStatus
FINAL = frozenset(
    {SessionStatus.SUCCEEDED, SessionStatus.FAILED, SessionStatus.STOPPED, SessionStatus.LOST}
)
MAX_CHUNK_CHARS = 1_000_000
MAX_CHUNKS_PER_CALL = 1_000
MAX_READ_CHARS = 4_000_000
PENDING_OFFSET = -1


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


def _now() -> dt.datetime:
    """Also for ``updated_at``: a bulk ``.update()`` does not set auto_now fields."""
    return dt.datetime.now(dt.UTC)


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
            stopped = await m.AgentSession.get(id=session.id)
            await announce_session(stopped)
            return stopped
        session = await m.AgentSession.get(id=session.id)
    if session.status == SessionStatus.RUNNING:
        await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            stop_requested=True, updated_at=_now()
        )
        flagged = await m.AgentSession.get(id=session.id)
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
    await announce_session(await m.AgentSession.get(id=session_id))


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
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            status=status,
            error=error,
            failure_kind=failure_kind,
            completed_at=_now(),
            lease_token=None,
            updated_at=_now(),
        )
        if not changed:
            fresh = await m.AgentSession.get(id=session.id)
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
        composite = await m.CompositeTask.get(planning_task_id=session.agent_task_id)
        # An invalid plan is kept on the composite as plan_error; Retry re-plans.
        with contextlib.suppress(InvalidArgument):
            await task_service.submit_plan(
                composite_task_id=composite.id, plan_yaml=plan_yaml or ""
            )
    await _session_ended(session.id)
    ended = await m.AgentSession.get(id=session.id)
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
    fields: dict[str, object] = {"lease_token": None, "updated_at": _now()}
    if chunks:
        fields["output_log"] = "".join(str(c) for c in chunks)
    await m.AgentSession.filter(id=session_id).update(**fields)


# Logs -----------------------------------------------------------------------------------


async def append_log(
    *,
    session_id: UUID,
    chunks: Sequence[LogChunkIn],
    seam: Callable[[str, str], tuple[str, str]] | None = None,
) -> m.AgentSession:
    """Stores numbered chunks; returns the session with its new size and next sequence.

    ``seam`` sees each pair of neighbouring chunks as a chunk takes its place after the
    previous one, and may change both without changing their lengths (secret masking: a
    value split between two chunks).

    Raises: InvalidArgument, NotFound, FailedPrecondition (the session is not running).
    """
    if len(chunks) > MAX_CHUNKS_PER_CALL:
        raise InvalidArgument(f"at most {MAX_CHUNKS_PER_CALL} chunks per call", field="chunks")
    for chunk in chunks:
        if chunk.sequence < 0:
            raise InvalidArgument("chunk sequence numbers start at 0", field="chunks.sequence")
        if len(chunk.data) > MAX_CHUNK_CHARS:
            raise InvalidArgument(
                f"a chunk holds at most {MAX_CHUNK_CHARS} characters", field="chunks.data"
            )
        if "\x00" in chunk.data:
            raise InvalidArgument("chunk data must not contain NUL", field="chunks.data")
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
        # Give offsets to the run of chunks that now follows the stored log without a gap.
        pending = {
            c.sequence: c
            for c in await m.LogChunk.filter(
                session_id=session.id, start_offset=PENDING_OFFSET
            ).order_by("sequence")
        }
        size, next_seq = session.log_size, session.log_next_sequence
        previous = None
        if seam is not None and next_seq in pending and size:
            previous = (
                await m.LogChunk.filter(session_id=session.id, start_offset__gte=0)
                .order_by("-start_offset")
                .first()
            )
        while next_seq in pending:
            ready = pending[next_seq]
            placed: dict[str, object] = {"start_offset": size}
            if seam is not None and previous is not None:
                before, after = seam(previous.data, ready.data)
                if before != previous.data:
                    await m.LogChunk.filter(id=previous.id).update(data=before)
                if after != ready.data:
                    placed["data"] = ready.data = after
            await m.LogChunk.filter(id=ready.id).update(**placed)
            size += len(ready.data)
            next_seq += 1
            previous = ready
        if next_seq != session.log_next_sequence:
            await m.AgentSession.filter(id=session.id).update(
                log_size=size, log_next_sequence=next_seq, updated_at=_now()
            )
            events.publish(events.LogAppended(session_id=str(session.id), log_size=size))
        return await m.AgentSession.get(id=session.id)


async def read_log(
    *, actor: Principal, session_id: UUID, offset: int = 0, limit: int = 0
) -> LogRead:
    """The log from ``offset`` (characters), at most ``limit`` of them (0 = all, capped).

    Raises: InvalidArgument, NotFound.
    """
    if offset < 0:
        raise InvalidArgument("offset must not be negative", field="offset")
    if limit < 0:
        raise InvalidArgument("limit must not be negative", field="limit")
    session = await get_session(actor=actor, session_id=session_id)
    return await read_stored_log(session, offset=offset, limit=limit)


async def read_stored_log(session: m.AgentSession, *, offset: int, limit: int) -> LogRead:
    want = min(limit or MAX_READ_CHARS, MAX_READ_CHARS)
    size = session.log_size
    start = min(offset, size)
    first = (
        await m.LogChunk.filter(session_id=session.id, start_offset__gte=0, start_offset__lte=start)
        .order_by("-start_offset")
        .first()
    )
    pieces: list[str] = []
    got = 0
    if first is not None and start < size:
        cursor = first.start_offset
        # Only the chunks that overlap [start, start + want): a read never loads the whole log.
        query = m.LogChunk.filter(
            session_id=session.id, start_offset__gte=cursor, start_offset__lt=start + want
        ).order_by("start_offset")
        async for chunk in query:
            data = chunk.data
            if chunk.start_offset < start:
                data = data[start - chunk.start_offset :]
            data = data[: want - got]
            pieces.append(data)
            got += len(data)
            if got >= want:
                break
    content = "".join(pieces)
    next_offset = start + len(content)
    return LogRead(
        content=content,
        offset=start,
        next_offset=next_offset,
        complete=session.status in FINAL and next_offset >= size,
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
    fresh = await m.TtyInputRequest.get(id=request.id)
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
