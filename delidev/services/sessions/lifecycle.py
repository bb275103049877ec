"""The run of an agent session: stopped by its user, started and completed as its worker
reports it; when it ends, its questions close and its output lands in ``output_log``."""

from __future__ import annotations

import contextlib
from uuid import UUID

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services import tasks as task_service
from delidev.services.common import check_text, get_row, transaction
from delidev.services.sessions.lookups import FINAL, SessionStatus, announce_session, get_session
from delidev.services.sessions.output_log import collect_output, place_held_output
from delidev.services.sessions.tty import end_questions


async def stop_session(*, actor: Principal, session_id: UUID) -> m.AgentSession:
    """A queued session stops at once; a running one is flagged for its worker.

    Raises: NotFound, FailedPrecondition (the session already ended).
    """
    session = await get_session(actor=actor, session_id=session_id)
    if session.status == SessionStatus.QUEUED:
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.QUEUED).update(
            **common.changed(
                status=SessionStatus.STOPPED, stop_requested=True, completed_at=common.now()
            )
        )
        if changed:
            await _session_ended(session.id)
            stopped = await get_row(m.AgentSession, id=session.id)
            await announce_session(stopped)
            return stopped
        session = await get_row(m.AgentSession, id=session.id)
    if session.status == SessionStatus.RUNNING:
        await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            **common.changed(stop_requested=True)
        )
        flagged = await get_row(m.AgentSession, id=session.id)
        await announce_session(flagged)
        return flagged
    raise FailedPrecondition(f"session {session.id} already ended ({session.status.value})")


async def start_session(*, session_id: UUID, worker_id: UUID | None, lease_token: str) -> None:
    """queued → running (the claim itself belongs to the worker issue)."""
    changed = await m.AgentSession.filter(id=session_id, status=SessionStatus.QUEUED).update(
        **common.changed(
            status=SessionStatus.RUNNING,
            worker_id=worker_id,
            lease_token=lease_token,
            started_at=common.now(),
        )
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
        await place_held_output(session.id)
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.RUNNING).update(
            **common.changed(
                status=status,
                error=error,
                failure_kind=failure_kind,
                completed_at=common.now(),
                lease_token=None,
            )
        )
        if not changed:
            fresh = await get_row(m.AgentSession, id=session.id)
            raise FailedPrecondition(
                f"session {session.id} cannot move from {fresh.status.value} to {status.value}"
            )
        if status == SessionStatus.SUCCEEDED and session.kind == m.JobKind.UNIT_TASK:
            fields: dict[str, object] = {"status": m.UnitTaskStatus.IN_REVIEW}
            if base_commit:
                fields["base_commit"] = base_commit[:40]
            if end_commit:
                fields["end_commit"] = end_commit[:40]
            await m.UnitTask.filter(
                agent_task_id=session.agent_task_id, status=m.UnitTaskStatus.IN_PROGRESS
            ).update(**common.changed(**fields))
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


async def _session_ended(session_id: UUID) -> None:
    """Questions are closed, the lease ends and the output lands in ``output_log``."""
    await end_questions(session_id)
    fields: dict[str, object] = {"lease_token": None}
    output = await collect_output(session_id)
    if output is not None:
        fields["output_log"] = output
    await m.AgentSession.filter(id=session_id).update(**common.changed(**fields))
