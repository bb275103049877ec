"""The run of an agent session: stopped by its user, started and completed as its worker
reports it; when it ends, its questions close and its output lands in ``output_log``.

A run that ends through an infrastructure failure (its worker lost, its container did not
start, it ran out of memory) is followed by an automatic retry in backoff, as the
``RetryPolicy`` allows (``retry_or_give_up``); once it allows no more, the run's error says
that it gave up and the task waits for a person's Retry.
"""

from __future__ import annotations

import contextlib
from uuid import UUID

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import common
from delidev.services import tasks as task_service
from delidev.services.common import check_text, get_row, transaction
from delidev.services.scheduling.policy import RetryPolicy, is_infrastructure_failure
from delidev.services.sessions.lookups import FINAL, SessionStatus, announce_session, get_session
from delidev.services.sessions.output_log import collect_output, finish_output
from delidev.services.sessions.tty import end_questions


async def stop_session(*, actor: Principal, session_id: UUID) -> m.AgentSession:
    """A queued session stops at once; a running one is flagged for its worker (the sweep
    ends it as stopped when its worker does not confirm within the stop grace).

    Raises: NotFound, FailedPrecondition (the session already ended).
    """
    session = await get_session(actor=actor, session_id=session_id)
    if session.status == SessionStatus.QUEUED:
        changed = await m.AgentSession.filter(id=session.id, status=SessionStatus.QUEUED).update(
            **common.changed(status=SessionStatus.STOPPED, completed_at=common.now(), **user_stop())
        )
        if changed:
            metrics.session_finished(session.kind.value, "stopped")
            await _session_ended(session.id)
            stopped = await get_row(m.AgentSession, id=session.id)
            await announce_session(stopped)
            return stopped
        session = await get_row(m.AgentSession, id=session.id)
    if session.status == SessionStatus.RUNNING:
        # A stop already asked (by the user, or for its time limit) keeps its reason and its
        # time: asking again must not turn a timeout into a stop, nor extend the grace.
        await m.AgentSession.filter(
            id=session.id, status=SessionStatus.RUNNING, stop_requested=False
        ).update(**common.changed(**user_stop()))
        flagged = await get_row(m.AgentSession, id=session.id)
        # Read after the update: a run that ended meanwhile (its worker's final report came
        # first) was not stopped, and the caller must not be told it was.
        if flagged.status == SessionStatus.RUNNING:
            await announce_session(flagged)
            return flagged
        session = flagged
    raise FailedPrecondition(f"session {session.id} already ended ({session.status.value})")


def user_stop() -> dict[str, object]:
    """The fields of a stop a user asks for (one the worker must confirm within the grace)."""
    return {
        "stop_requested": True,
        "stop_reason": m.StopReason.USER.value,
        "stop_requested_at": common.now(),
    }


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
    lease_token: str | None = None,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008  # frozen
) -> m.AgentSession:
    """Ends a running session as its worker reports it (the lease check is the caller's,
    which may pass the session it ``loaded``; with ``lease_token`` the session ends only
    while it still runs under that lease, as the sweep ends a run it finalises).

    Success of a unit-task run moves the UnitTask to in_review (an auto-fix run's leaves its
    status, and sets its end commit); success of a planning run
    stores its PLAN.yaml (an invalid plan is kept on the composite as its plan error). A
    failure of the machinery (``failure_kind`` container_start or out_of_memory) of a run
    not being stopped queues a retry in backoff, or says in the error that it gave up.

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
    lease = {} if lease_token is None else {"lease_token": lease_token}
    retried = False
    async with transaction():
        locked = await m.AgentSession.filter(id=session.id).select_for_update().first()
        if locked is None:
            raise NotFound(f"session {session_id} not found", field="session_id")
        output, log_size = await finish_output(locked)
        values = common.changed(
            status=status,
            error=error,
            failure_kind=failure_kind,
            completed_at=common.now(),
            lease_token=None,
            **({} if output is None else {"output_log": output}),
            **({} if log_size == locked.log_size else {"log_size": log_size}),
        )
        changed = await m.AgentSession.filter(
            id=session.id, status=SessionStatus.RUNNING, **lease
        ).update(**values)
        if not changed:  # rolls the output's placing back
            raise FailedPrecondition(
                f"session {session.id} cannot move from {locked.status.value} to {status.value}"
            )
        common.mirror(locked, values)
        metrics.session_finished(session.kind.value, status.value)
        if status == SessionStatus.FAILED and is_infrastructure_failure(failure_kind):
            # As read under the row's lock: a stop asked since it was loaded counts.
            retried = await retry_or_give_up(
                locked, error=error or f"the run failed ({failure_kind})", policy=policy
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
        if status == SessionStatus.SUCCEEDED and session.kind == m.JobKind.AUTO_FIX and end_commit:
            # An auto-fix run pushed onto the PR's branch: the task keeps its status (see
            # services/auto_fix.py), its end commit is the run's.
            fixed = await m.UnitTaskAutoFixTask.filter(
                agent_task_id=session.agent_task_id
            ).values_list("unit_task_id", flat=True)
            await m.UnitTask.filter(id__in=list(fixed)).update(
                **common.changed(end_commit=end_commit[:40])
            )
        await end_questions(session.id)
    if status == SessionStatus.SUCCEEDED and session.kind == m.JobKind.PLANNING:
        composite = await m.CompositeTask.get_or_none(planning_task_id=session.agent_task_id)
        # An invalid plan is kept on the composite as plan_error; Retry re-plans. A composite
        # deleted while its planning run ended has nothing to keep the plan on.
        if composite is not None:
            with contextlib.suppress(InvalidArgument, NotFound):
                await task_service.submit_plan(
                    composite_task_id=composite.id, plan_yaml=plan_yaml or ""
                )
    await announce_session(locked)
    if retried:
        events.publish(events.JobQueued())
    return locked


async def retry_or_give_up(
    ended: m.AgentSession,
    *,
    error: str,
    policy: RetryPolicy,
) -> bool:
    """After a run lost or failed through the machinery: a new run in backoff when the
    policy allows one and the run was not being stopped; else, when it was not being
    stopped, its ``error`` (stored on it) says that it gave up. Runs in the caller's
    transaction; True when a retry was queued (publish JobQueued after the commit).

    The backoff counts from the real time of the retry, also in a sweep run "as of" a
    later time: the claim that ends it compares with the real time.
    """
    if ended.stop_requested:
        return False
    if not policy.retries(auto_retries=ended.auto_retries):
        values = common.changed(error=gave_up(error, attempts=ended.auto_retries + 1))
        await m.AgentSession.filter(id=ended.id).update(**values)
        common.mirror(ended, values)  # the caller's row stays as stored
        return False
    await m.AgentSession.create(
        agent_task_id=ended.agent_task_id,
        ai_agent_type=ended.ai_agent_type,
        ai_agent_model=ended.ai_agent_model,
        kind=ended.kind,
        attempt=ended.attempt + 1,
        status=SessionStatus.QUEUED,
        auto_retries=ended.auto_retries + 1,
        traceparent=ended.traceparent,  # a retry continues the trace of the request
        not_before=common.now() + policy.backoff(auto_retries=ended.auto_retries),
    )
    return True


def gave_up(error: str, *, attempts: int) -> str:
    """The error of the last run of a job that is no longer retried on its own."""
    runs = "1 attempt" if attempts == 1 else f"{attempts} attempts"
    return f"{error}; gave up after {runs}: a person's Retry runs it again"


async def _session_ended(session_id: UUID) -> None:
    """Questions are closed, the lease ends and the output lands in ``output_log``."""
    await end_questions(session_id)
    fields: dict[str, object] = {"lease_token": None}
    output = await collect_output(session_id)
    if output is not None:
        fields["output_log"] = output
    await m.AgentSession.filter(id=session_id).update(**common.changed(**fields))
