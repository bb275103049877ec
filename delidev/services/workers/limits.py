"""Run time limits and stop graces, enforced by the sweep.

A running job past its ``deadline_at`` (set at claim time) is asked to stop, for its time
limit (``stop_reason`` timeout); its worker hears it through Heartbeat's stop list and the
Watch stream. A stop, for the limit or asked by a user, that the worker does not confirm
within the stop grace is finalised by the server: a timeout ends FAILED (``failure_kind``
timeout), a user's stop ends STOPPED. The lease dies with it, so the worker's later calls
about the job are refused as stale. Every change is a compare-and-set on the session's
status and lease: a worker's own report at the same moment, or another replica's sweep,
wins or loses as a whole.
"""

from __future__ import annotations

import datetime as dt
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.errors import FailedPrecondition
from delidev.services import common
from delidev.services import sessions as session_service

SessionStatus = m.AgentSessionStatus
DEFAULT_STOP_GRACE = dt.timedelta(seconds=60)
TIMEOUT = "timeout"  # FailureKind.TIMEOUT (workers.jobs, which imports this module)


async def enforce_limits(*, now: dt.datetime, stop_grace: dt.timedelta) -> None:
    """One pass as of ``now``: overdue runs are asked to stop, unconfirmed stops finalised."""
    await ask_overdue_to_stop(now=now)
    await finalise_unconfirmed_stops(now=now, stop_grace=stop_grace)


async def ask_overdue_to_stop(*, now: dt.datetime) -> int:
    """Running sessions past their deadline with no stop asked yet → asked to stop for their
    time limit (as of ``now``, when their grace begins). Returns how many."""
    overdue = await m.AgentSession.filter(
        status=SessionStatus.RUNNING, deadline_at__lt=now, stop_requested=False
    ).values_list("id", flat=True)
    asked = 0
    for session_id in overdue:
        # Re-checked in the UPDATE: a user's stop or the run's end since the look above wins.
        if await m.AgentSession.filter(
            id=session_id, status=SessionStatus.RUNNING, stop_requested=False
        ).update(
            **common.changed(
                stop_requested=True,
                stop_reason=m.StopReason.TIMEOUT.value,
                stop_requested_at=now,
            )
        ):
            asked += 1
            await session_service.announce_session(
                await common.get_row(m.AgentSession, id=session_id)
            )
    return asked


async def finalise_unconfirmed_stops(*, now: dt.datetime, stop_grace: dt.timedelta) -> int:
    """Running sessions whose stop was asked more than ``stop_grace`` before ``now`` end:
    a timeout as failed (timeout), a user's stop as stopped; their worker's row is freed.
    Returns how many this call ended (a worker's report or another replica may come first)."""
    ended = 0
    after: UUID | None = None
    while True:
        # A page at a time, by id: 3,000 runs loaded at once held the event loop for ~0.5 s.
        page = m.AgentSession.filter(
            status=SessionStatus.RUNNING,
            stop_requested=True,
            stop_requested_at__lt=now - stop_grace,
        )
        if after is not None:
            page = page.filter(id__gt=after)
        unconfirmed = await page.order_by("id").limit(_FINALISED_PER_STEP)
        ended += await _finalise(unconfirmed)
        if len(unconfirmed) < _FINALISED_PER_STEP:
            return ended
        after = unconfirmed[-1].id


_FINALISED_PER_STEP = 100


async def _finalise(unconfirmed: list[m.AgentSession]) -> int:
    ended = 0
    for session in unconfirmed:
        timed_out = session.stop_reason == m.StopReason.TIMEOUT
        try:
            await session_service.complete_session(
                session_id=session.id,
                status=SessionStatus.FAILED if timed_out else SessionStatus.STOPPED,
                error=timeout_error(session, by_server=True)
                if timed_out
                else (BUDGET_ERROR if session.stop_reason == m.StopReason.BUDGET else None),
                failure_kind=TIMEOUT if timed_out else None,
                loaded=session,
                lease_token=session.lease_token,
            )
        except FailedPrecondition:
            continue  # it ended meanwhile: its worker's report or another sweep came first
        ended += 1
        if session.worker_id is not None:
            freed = await m.Worker.filter(
                id=session.worker_id, current_session_id=session.id
            ).update(
                **common.changed(
                    status=m.WorkerStatus.IDLE, current_session_id=None, current_task_id=None
                )
            )
            if freed:
                events.publish(events.WorkerChanged(worker_id=str(session.worker_id)))
    return ended


BUDGET_ERROR = "stopped: its task spent its budget (the workspace's task budget)"
"""The error of a run stopped because its task went over its budget."""


def timeout_error(session: m.AgentSession, *, by_server: bool) -> str:
    """The error of a run that ended for its time limit, naming the limit."""
    limit = (
        f" of {_duration(session.deadline_at - session.started_at)}"
        if session.deadline_at is not None and session.started_at is not None
        else ""
    )
    how = "stopped by the server" if by_server else "its worker stopped it"
    return f"ran longer than its limit{limit}; {how}"


def _duration(span: dt.timedelta) -> str:
    """``4 h 0 min``, ``30 min``, ``1 min 30 s``, ``45 s``."""
    seconds = max(0, round(span.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    return f"{seconds} s"
