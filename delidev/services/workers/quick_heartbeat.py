"""A steady heartbeat in one statement (PostgreSQL): the fleet's most frequent call.

Every worker beats once per interval, busy or idle: 2,000 workers at 1 s is 2,000 calls a
second on a server. The general path (``registry.heartbeat``) locks the worker's row, reads
the runs it holds, derives its status and its current job, and writes them: five round
trips. In the steady state nothing but the time changes, and one ``UPDATE … RETURNING``
with CTEs does the same. It is written by hand because no ORM expresses it, and it is tried
first only where it can be exact:

- checked here: PostgreSQL, and the worker names no task (a task named must be looked up);
- checked by the statement: the worker exists; the run it names, if any, is the one it
  holds; the job its row records (``current_session_id``) is the run it holds (or none and
  none), so its current task stands; and its row is the one the statement's snapshot read
  (``updated_at``): a claim, release or sweep that committed while the statement waited for
  the row's lock makes it match nothing.

When it matches nothing the caller takes the general path. The outcome is the same either
way: the heartbeat's time, the status derived from the run held (busy, else idle; an
unhealthy worker is healthy again), the runs it must stop (held ones a stop was asked for),
and ``WorkerChanged`` when its status changed. ``tests/services/test_workers.py`` runs the
same beats through both paths and compares.
"""

from __future__ import annotations

import json
from uuid import UUID

from tortoise import connections

from delidev import events
from delidev import models as m
from delidev.services import common

_BEAT_PG = """
WITH held AS (
    SELECT id, stop_requested FROM agent_sessions WHERE worker_id = $1 AND status = 'running'
), seen AS (
    SELECT status, updated_at FROM workers WHERE id = $1
), beat AS (
    UPDATE workers w
    SET last_heartbeat = $2, updated_at = $2,
        status = CASE WHEN EXISTS (SELECT 1 FROM held) THEN 'busy' ELSE 'idle' END
    WHERE w.id = $1
      AND w.updated_at = (SELECT updated_at FROM seen)
      AND w.current_session_id IS NOT DISTINCT FROM (SELECT id FROM held LIMIT 1)
      AND ($3::uuid IS NULL OR $3::uuid IN (SELECT id FROM held))
    RETURNING w.*
)
SELECT beat.*, (SELECT status FROM seen) AS status_before,
       (SELECT coalesce(json_agg(id), '[]'::json)::text FROM held WHERE stop_requested)
           AS stop_ids
FROM beat
"""


def applies(*, task_id: UUID | None) -> bool:
    return task_id is None and connections.get("default").capabilities.dialect == "postgres"


async def beat(*, worker_id: UUID, session_id: UUID | None) -> tuple[m.Worker, list[UUID]] | None:
    """The worker as it is after the beat and the runs it must stop; None when the beat is
    not a steady one (see the module)."""
    rows = await connections.get("default").execute_query_dict(
        _BEAT_PG, [worker_id, common.now(), session_id]
    )
    if not rows:
        return None
    row = rows[0]
    worker = m.Worker._init_from_db(**row)  # takes its columns, ignores the rest
    if row["status_before"] != worker.status.value:
        events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return worker, [UUID(str(i)) for i in json.loads(row["stop_ids"])]
