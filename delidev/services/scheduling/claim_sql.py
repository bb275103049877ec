"""The claim statement: which queued job a worker gets, in one statement per database.

Written in SQL by hand because it must be one atomic statement (the ORM cannot express
``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` with the joins below),
and because the order and the filters must be the same as ``waits.py`` explains to users.

A queued session is claimable by worker W when: its backoff (``not_before``) is over; its
task's secrets have arrived if it expects them; W is healthy and not draining; W runs its agent
type (W declared none = every type); W has every label the task requires; and its workspace
runs fewer jobs than its cap (if it has one). Among those: higher priority first, then the
workspace served least recently (round-robin across workspaces, Hatchet's GROUP_ROUND_ROBIN),
then the oldest.

``workspaces.last_dispatch_at`` records when a workspace was last served. It is written only
when it is older than ``DISPATCH_STAMP_MS``: every claim of one workspace would otherwise
update (and lock) the same row and so queue behind each other's commits. Fairness is thus
exact whenever claims are further apart than that, which is the case it is for (workers are
the scarce resource and free up one by one), and approximate within a burst.

On PostgreSQL the cap's running count is read under READ COMMITTED, so two replicas claiming
for one workspace at the same instant could both see room for one more: ``claims`` checks
again under a lock on the workspace row when the claimed job's workspace has a cap.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

DISPATCH_STAMP_MS = 100


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a worker declared at Register: fixed for its id (a new registration is a new id)."""

    agent_types: list[str]
    labels: list[str]


# $1 worker, $2 lease, $3 now, $4 ready agent task ids (text[]), $5 agent types (text[]),
# $6 labels (json text), $7 default max run seconds, $8 excluded workspaces (uuid[]).
PG_CLAIM = f"""
WITH candidate AS (
    SELECT s.id, a.workspace_id, a.max_run_seconds
    FROM agent_sessions s
    JOIN agent_tasks a ON a.id = s.agent_task_id
    LEFT JOIN workspaces ws ON ws.id = a.workspace_id
    WHERE s.status = 'queued'
      AND (s.not_before IS NULL OR s.not_before <= $3)
      AND (NOT a.expects_secrets OR a.id::text = ANY($4::text[]))
      AND (cardinality($5::text[]) = 0 OR s.ai_agent_type = ANY($5::text[]))
      AND a.required_labels <@ $6::text::jsonb
      AND NOT COALESCE(a.workspace_id = ANY($8::uuid[]), false)
      AND (ws.max_concurrent_jobs IS NULL OR ws.max_concurrent_jobs > (
            SELECT count(*) FROM agent_sessions r JOIN agent_tasks ra ON ra.id = r.agent_task_id
            WHERE r.status = 'running' AND ra.workspace_id = a.workspace_id))
      AND EXISTS (SELECT 1 FROM workers w
                  WHERE w.id = $1 AND w.status <> 'unhealthy' AND NOT w.draining)
    ORDER BY a.priority DESC, ws.last_dispatch_at ASC NULLS FIRST, s.created_at, s.id
    LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
), claimed AS (
    UPDATE agent_sessions SET status = 'running', worker_id = $1, lease_token = $2,
           started_at = $3, updated_at = $3,
           deadline_at = $3 + make_interval(secs => COALESCE(candidate.max_run_seconds, $7)),
           wait_reason = NULL, wait_detail = NULL, waiting_since = NULL
    FROM candidate WHERE agent_sessions.id = candidate.id
    RETURNING agent_sessions.*
), busy AS (
    UPDATE workers SET status = 'busy', current_session_id = claimed.id, updated_at = $3,
           current_task_id = (SELECT u.id FROM unit_tasks u
                              WHERE u.agent_task_id = claimed.agent_task_id)
    FROM claimed WHERE workers.id = $1 AND workers.status <> 'unhealthy'
), served AS (
    UPDATE workspaces SET last_dispatch_at = $3
    FROM candidate WHERE workspaces.id = candidate.workspace_id
      AND (workspaces.last_dispatch_at IS NULL
           OR workspaces.last_dispatch_at < $3 - interval '{DISPATCH_STAMP_MS} milliseconds')
)
SELECT claimed.*, a.expects_secrets, a.workspace_id AS job_workspace_id,
       (SELECT ws.max_concurrent_jobs FROM workspaces ws WHERE ws.id = a.workspace_id)
           AS workspace_cap,
       u.id AS unit_id, u.prompt AS unit_prompt, u.title AS unit_title, u.branch_name,
       u.workspace_id AS unit_workspace_id, u.composite_task_id AS unit_composite_id,
       c.id AS composite_id, c.prompt AS composite_prompt, c.title AS composite_title,
       c.workspace_id AS composite_workspace_id,
       (SELECT json_agg(json_build_array(r.git_remote_dir_path, r.git_branch_name)
                        ORDER BY r.git_remote_dir_path)
        FROM agent_task_base_remotes r WHERE r.agent_task_id = claimed.agent_task_id) AS remotes
FROM claimed
JOIN agent_tasks a ON a.id = claimed.agent_task_id
LEFT JOIN unit_tasks u ON u.agent_task_id = claimed.agent_task_id
LEFT JOIN composite_tasks c ON c.planning_task_id = claimed.agent_task_id
"""


def pg_params(
    *,
    worker_id: UUID,
    lease: str,
    now: dt.datetime,
    ready: Sequence[UUID],
    capabilities: Capabilities,
    max_run_seconds: int,
    excluded: Sequence[UUID] = (),
) -> list[object]:
    return [
        worker_id,
        lease,
        now,
        [str(a) for a in ready],
        list(capabilities.agent_types),
        json.dumps(capabilities.labels),
        float(max_run_seconds),
        list(excluded),
    ]


# The cap, checked again under the workspace row's lock (see the module's docstring).
PG_CAP_RECHECK = """
SELECT ws.max_concurrent_jobs AS cap,
       (SELECT count(*) FROM agent_sessions r JOIN agent_tasks ra ON ra.id = r.agent_task_id
        WHERE r.status = 'running' AND ra.workspace_id = ws.id) AS running
FROM workspaces ws WHERE ws.id = $1
FOR UPDATE
"""

# SQLite serialises writers, so the statement's own count holds. Placeholders: worker,
# lease, now, now, now (not_before), worker, agent types (json) twice, labels (json), then
# the ready agent task ids.
SQLITE_CLAIM = """
UPDATE agent_sessions SET status = 'running', worker_id = ?, lease_token = ?,
       started_at = ?, updated_at = ?,
       wait_reason = NULL, wait_detail = NULL, waiting_since = NULL
WHERE id = (
    SELECT s.id FROM agent_sessions s
    JOIN agent_tasks a ON a.id = s.agent_task_id
    LEFT JOIN workspaces ws ON ws.id = a.workspace_id
    WHERE s.status = 'queued'
      AND (s.not_before IS NULL OR s.not_before <= ?)
      AND EXISTS (SELECT 1 FROM workers w
                  WHERE w.id = ? AND w.status <> 'unhealthy' AND NOT w.draining)
      AND (json_array_length(?) = 0 OR s.ai_agent_type IN (SELECT value FROM json_each(?)))
      AND NOT EXISTS (SELECT 1 FROM json_each(a.required_labels) j
                      WHERE j.value NOT IN (SELECT value FROM json_each(?)))
      AND (ws.max_concurrent_jobs IS NULL OR ws.max_concurrent_jobs > (
            SELECT count(*) FROM agent_sessions r JOIN agent_tasks ra ON ra.id = r.agent_task_id
            WHERE r.status = 'running' AND ra.workspace_id = a.workspace_id))
      AND (a.expects_secrets = 0 OR a.id IN ({ready}))
    ORDER BY a.priority DESC, ws.last_dispatch_at IS NOT NULL, ws.last_dispatch_at,
             s.created_at, s.id
    LIMIT 1
)
RETURNING id, agent_task_id
"""


def sqlite_statement(ready: Sequence[UUID]) -> str:
    return SQLITE_CLAIM.format(ready=", ".join("?" for _ in ready) or "NULL")


def sqlite_params(
    *,
    worker_id: UUID,
    lease: str,
    stamp: str,
    ready: Sequence[UUID],
    capabilities: Capabilities,
) -> list[object]:
    types = json.dumps(capabilities.agent_types)
    return [
        str(worker_id),
        lease,
        stamp,
        stamp,
        stamp,
        str(worker_id),
        types,
        types,
        json.dumps(capabilities.labels),
        *map(str, ready),
    ]
