"""The end of a plain run in one statement (PostgreSQL): the fleet's hot path.

Every job ends with its worker's ReportStatus. The general path (``jobs.report_status`` →
``sessions.complete_session``) reads the lease, locks the run, reads its output, ends it,
moves its task, closes its questions and frees the worker: ten round trips and as many ORM
queries, most of the claim cycle's cost (bench/bench_workers.py). Most runs end plainly,
and for them one ``UPDATE … RETURNING`` with data-modifying CTEs does the same work. It is
written by hand because no ORM expresses it; it is tried first and only when everything
that could make a run's end special is known to be absent:

- checked here, before: PostgreSQL; the run succeeded, or failed for a reason of its own (a
  failure of the machinery may be retried); no PLAN.yaml; no secret held by this process (so
  none to mask with, nor to drop);
- checked by the statement, on the run's row: it runs under this worker's lease, it is a
  unit task's own run, nobody asked it to stop, its task expects no secrets, no output is held
  back or waiting for an earlier chunk, and no question is pending or holds a password answer;
  and the row is the one the statement's snapshot read (``updated_at``): an AppendLog or a stop
  that committed while the statement waited for the row's lock makes it match nothing.

When it matches nothing the caller takes the general path, which then explains a refusal
(stale lease, wrong state) exactly as before. What the run ends as is the same either way:
its status, error, kind of failure and end time; its output joined in ``output_log``; a
successful run's unit task in review with its commits; the worker idle; the same events and
metrics. Change both paths together (``tests/connect/test_claim_cycle_cost.py`` runs one
scenario through each and compares).
"""

from __future__ import annotations

from uuid import UUID

from tortoise import connections

from delidev import events, metrics
from delidev import models as m
from delidev.services import common
from delidev.services import secrets as secret_service
from delidev.services.scheduling.policy import is_infrastructure_failure

SessionStatus = m.AgentSessionStatus

_END_PG = """
WITH seen AS (
    SELECT updated_at FROM agent_sessions WHERE id = $1
), ended AS (
    UPDATE agent_sessions s
    SET status = $4, error = $5, failure_kind = $6, completed_at = $7, lease_token = NULL,
        updated_at = $7,
        output_log = (SELECT string_agg(c.data, '' ORDER BY c.start_offset)
                      FROM agent_session_log_chunks c
                      WHERE c.session_id = s.id AND c.start_offset >= 0)
    WHERE s.id = $1 AND s.status = 'running' AND s.worker_id = $2 AND s.lease_token = $3
      AND s.kind = 'unit_task' AND NOT s.stop_requested AND s.stop_reason IS NULL
      AND s.updated_at = (SELECT updated_at FROM seen)
      AND NOT EXISTS (SELECT 1 FROM agent_tasks a
                      WHERE a.id = s.agent_task_id AND a.expects_secrets)
      AND NOT EXISTS (SELECT 1 FROM agent_session_log_chunks c
                      WHERE c.session_id = s.id AND c.start_offset = -1)
      AND NOT EXISTS (SELECT 1 FROM tty_input_requests q
                      WHERE q.session_id = s.id
                        AND (q.status = 'pending'
                             OR (q.input_type = 'password' AND q.response IS NOT NULL)))
    RETURNING s.*
), reviewed AS (
    UPDATE unit_tasks u
    SET status = 'in_review', updated_at = $7,
        base_commit = COALESCE($8, u.base_commit), end_commit = COALESCE($9, u.end_commit)
    FROM ended
    WHERE $4 = 'succeeded' AND u.agent_task_id = ended.agent_task_id
      AND u.status = 'in_progress'
), freed AS (
    UPDATE workers w
    SET status = 'idle', current_session_id = NULL, current_task_id = NULL, updated_at = $7
    FROM ended
    WHERE w.id = $2 AND w.current_session_id = ended.id
)
SELECT ended.*, u.id AS unit_id, u.workspace_id AS unit_workspace_id,
       u.composite_task_id AS unit_composite_id
FROM ended LEFT JOIN unit_tasks u ON u.agent_task_id = ended.agent_task_id
"""


def applies(
    *,
    status: m.AgentSessionStatus,
    failure_kind: str | None,
    plan_yaml: str | None,
    store: secret_service.SecretStore | None,
) -> bool:
    """Whether the quick end may be tried for this report (the rest is the statement's)."""
    if connections.get("default").capabilities.dialect != "postgres":
        return False
    if plan_yaml is not None or (store is not None and store.task_ids()):
        return False
    return status == SessionStatus.SUCCEEDED or (
        status == SessionStatus.FAILED and not is_infrastructure_failure(failure_kind)
    )


async def end_run(
    *,
    worker_id: UUID,
    session_id: UUID,
    lease_token: str,
    status: m.AgentSessionStatus,
    error: str | None,
    failure_kind: str | None,
    base_commit: str | None,
    end_commit: str | None,
) -> m.AgentSession | None:
    """Ends the run in one statement; None when it is not a plain one (see the module)."""
    if not lease_token:
        return None
    rows = await connections.get("default").execute_query_dict(
        _END_PG,
        [
            session_id,
            worker_id,
            lease_token,
            status.value,
            error,
            failure_kind,
            common.now(),
            base_commit[:40] if base_commit else None,
            end_commit[:40] if end_commit else None,
        ],
    )
    if not rows:
        return None
    row = rows[0]
    ended = m.AgentSession._init_from_db(**row)  # takes its columns, ignores the rest
    metrics.session_finished(ended.kind.value, status.value)
    events.publish(events.SessionChanged(session_id=str(ended.id), status=status.value))
    if row["unit_id"] is not None:
        workspace = str(row["unit_workspace_id"])
        events.publish(events.TaskChanged(task_id=str(row["unit_id"]), workspace_id=workspace))
        if row["unit_composite_id"] is not None:
            events.publish(
                events.TaskChanged(task_id=str(row["unit_composite_id"]), workspace_id=workspace)
            )
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return ended
