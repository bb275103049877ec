"""TTY questions: an agent's run asks, a user answers once (or the question times out or is
cancelled when the run ends); a password answer is kept only for the worker of that run."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from tortoise.expressions import Q

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services import tasks as task_service
from delidev.services.common import (
    MAX_TEXT_LENGTH,
    Page,
    check_text,
    get_row,
    owner_filter,
    page_bounds,
    paginate,
)
from delidev.services.sessions.lookups import (
    SessionStatus,
    get_session,
    task_id_of_session,
    workspace_of_session,
)
from delidev.services.workspaces import get_workspace


async def close_pending_tty(status: m.TtyInputStatus, **filters: Any) -> int:
    """Pending questions matching ``filters`` → ``status`` (timeout or cancelled), announced,
    ``_CLOSE_BATCH`` at a time: other tasks run between the batches (5,000 questions read and
    announced at once held the event loop for ~0.15 s)."""
    changed = 0
    while True:
        rows = (
            await m.TtyInputRequest.filter(status=m.TtyInputStatus.PENDING, **filters)
            .order_by("id")
            .limit(_CLOSE_BATCH)
            .values_list("id", "session_id", "workspace_id")
        )
        if not rows:
            return changed
        # Compare-and-set: a question answered meanwhile keeps its answer (and leaves the
        # pending ones, so the next read moves on).
        changed += await m.TtyInputRequest.filter(
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
        if len(rows) < _CLOSE_BATCH:
            return changed


_CLOSE_BATCH = 500


async def end_questions(session_id: UUID) -> None:
    """A run ended: its pending questions are cancelled, and password answers are erased
    (they were kept only for the worker of that run to read). One read when there is
    nothing to do, the common case at the end of every run."""
    statuses = {
        str(status)
        async for status in m.TtyInputRequest.filter(session_id=session_id)
        .filter(
            Q(status=m.TtyInputStatus.PENDING)
            | Q(input_type=m.TtyInputType.PASSWORD, response__isnull=False)
        )
        .values_list("status", flat=True)
    }
    # A pending question has no answer yet: any other row is an answered password.
    if m.TtyInputStatus.PENDING.value in statuses:
        await close_pending_tty(m.TtyInputStatus.CANCELLED, session_id=session_id)
    if statuses - {m.TtyInputStatus.PENDING.value}:
        await m.TtyInputRequest.filter(
            session_id=session_id, input_type=m.TtyInputType.PASSWORD, response__isnull=False
        ).update(response=None)


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
    workspace_id = await workspace_of_session(session)
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
        expires_at=common.now() + expires_in,
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
    return await paginate(query, limit, offset, long_text=("prompt", "response", "options"))


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
        status=m.TtyInputStatus.RESPONDED, response=answer, responded_at=common.now()
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
    return await close_pending_tty(m.TtyInputStatus.TIMEOUT, expires_at__lte=now or common.now())
