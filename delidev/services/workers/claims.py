"""Claims: the oldest claimable queued session goes to one worker, with a fresh lease.

Claiming is one statement: ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING`` on PostgreSQL (safe with many server processes), the same without the locking
clause on SQLite (one process; SQLite serialises writers). Which session a worker may take,
and in which order, is decided by that statement alone (``_claim_pg``, ``_claim_sqlite``):
a rule about who may claim what, or what goes first, is a change there and in the inputs
``_claim_once`` passes it. ``claim_job`` around it returns a held job again, and waits.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError

from delidev import events
from delidev import models as m
from delidev.errors import FailedPrecondition
from delidev.services import common
from delidev.services import secrets as secret_service
from delidev.services import sessions as session_service
from delidev.services.common import get_row
from delidev.services.workers.registry import get_worker, unit_task_of
from delidev.services.workers.waiting import JobSignal, wait_deadline

SessionStatus = m.AgentSessionStatus
# Safety net for wake-ups this process cannot see (a job queued through another replica).
RECHECK_S = 1.0


@dataclass(frozen=True, slots=True)
class Job:
    """What a worker is told about the job it claimed (or holds)."""

    session: m.AgentSession
    lease_token: str
    task_id: UUID | None
    prompt: str
    title: str | None
    branch_name: str | None
    base_remotes: list[m.AgentTaskBaseRemote]
    expects_secrets: bool


# One statement claims the oldest claimable session, marks the worker busy and returns what
# the job description needs (everything but the base remotes). A worker marked unhealthy
# claims nothing until a heartbeat makes it healthy again: the sweep would only take the job
# back (and queue yet another run of it). The partial unique index
# ``agent_sessions_one_running_per_worker`` (see db.EXTRA_INDEXES) refuses a second running
# session for one worker, so two GetTask calls of one worker at once cannot both claim.
_CLAIM_PG = """
WITH claimed AS (
    UPDATE agent_sessions SET status = 'running', worker_id = $1, lease_token = $2,
           started_at = $3, updated_at = $3
    WHERE id = (
        SELECT s.id FROM agent_sessions s JOIN agent_tasks a ON a.id = s.agent_task_id
        WHERE s.status = 'queued' AND (NOT a.expects_secrets OR a.id::text = ANY($4::text[]))
          AND EXISTS (SELECT 1 FROM workers w WHERE w.id = $1 AND w.status <> 'unhealthy')
        ORDER BY s.created_at, s.id
        LIMIT 1
        FOR UPDATE OF s SKIP LOCKED
    )
    RETURNING *
), busy AS (
    UPDATE workers SET status = 'busy', current_session_id = claimed.id, updated_at = $3,
           current_task_id = (SELECT u.id FROM unit_tasks u
                              WHERE u.agent_task_id = claimed.agent_task_id)
    FROM claimed WHERE workers.id = $1 AND workers.status <> 'unhealthy'
)
SELECT claimed.*, a.expects_secrets,
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

_CLAIM_SQLITE = """
UPDATE agent_sessions SET status = 'running', worker_id = ?, lease_token = ?,
       started_at = ?, updated_at = ?
WHERE id = (
    SELECT s.id FROM agent_sessions s JOIN agent_tasks a ON a.id = s.agent_task_id
    WHERE s.status = 'queued'
      AND EXISTS (SELECT 1 FROM workers w WHERE w.id = ? AND w.status <> 'unhealthy')
      AND (a.expects_secrets = 0 OR a.id IN ({ready}))
    ORDER BY s.created_at, s.id
    LIMIT 1
)
RETURNING id
"""


async def _claim_once(worker_id: UUID, ready_agent_ids: Sequence[UUID]) -> Job | None:
    """Claims the oldest claimable session for this worker, or None.

    ``ready_agent_ids``: the agent tasks expecting secrets whose secrets have arrived.
    Raises: IntegrityError when the worker already runs a session.
    """
    conn = connections.get("default")
    lease = secrets.token_urlsafe(24)
    if conn.capabilities.dialect == "postgres":
        return await _claim_pg(conn, worker_id, lease, ready_agent_ids)
    return await _claim_sqlite(conn, worker_id, lease, ready_agent_ids)


async def _claim_pg(
    conn: BaseDBAsyncClient, worker_id: UUID, lease: str, ready_agent_ids: Sequence[UUID]
) -> Job | None:
    """The claim, the worker marked busy and the job's description in one round trip."""
    rows = await conn.execute_query_dict(
        _CLAIM_PG, [worker_id, lease, common.now(), [str(a) for a in ready_agent_ids]]
    )
    if not rows:
        return None
    row = rows[0]
    session = m.AgentSession._init_from_db(**row)  # takes its columns, ignores the rest
    unit = row["unit_id"] is not None
    workspace = str(row["unit_workspace_id"] if unit else row["composite_workspace_id"])
    events.publish(events.SessionChanged(session_id=str(session.id), status="running"))
    for task_id in (row["unit_id"], row["unit_composite_id"], row["composite_id"]):
        if task_id is not None:
            events.publish(events.TaskChanged(task_id=str(task_id), workspace_id=workspace))
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return Job(
        session=session,
        lease_token=lease,
        task_id=row["unit_id"] if unit else row["composite_id"],
        prompt=(row["unit_prompt"] if unit else row["composite_prompt"]) or "",
        title=row["unit_title"] if unit else row["composite_title"],
        branch_name=row["branch_name"] if unit else None,
        base_remotes=[
            m.AgentTaskBaseRemote(
                agent_task_id=session.agent_task_id, git_remote_dir_path=p, git_branch_name=b
            )
            for p, b in json.loads(row["remotes"] or "[]")
        ],
        expects_secrets=bool(row["expects_secrets"]),
    )


async def _claim_sqlite(
    conn: BaseDBAsyncClient, worker_id: UUID, lease: str, ready_agent_ids: Sequence[UUID]
) -> Job | None:
    """The claim, then the worker marked busy and the job described by ordinary queries."""
    ready = ", ".join("?" for _ in ready_agent_ids) or "NULL"
    stamp = common.now().isoformat(" ")  # as Tortoise writes it, so that comparisons hold
    rows = await conn.execute_query_dict(
        _CLAIM_SQLITE.format(ready=ready),
        [str(worker_id), lease, stamp, stamp, str(worker_id), *map(str, ready_agent_ids)],
    )
    if not rows:
        return None
    claimed = await get_row(m.AgentSession, id=UUID(str(rows[0]["id"])))
    # Marked unhealthy since the claim: it stays so (the sweep takes the job back).
    await m.Worker.filter(id=worker_id, status__not=m.WorkerStatus.UNHEALTHY).update(
        **common.changed(
            status=m.WorkerStatus.BUSY,
            current_session_id=claimed.id,
            current_task_id=await unit_task_of(claimed),
        )
    )
    await session_service.announce_session(claimed)
    events.publish(events.WorkerChanged(worker_id=str(worker_id)))
    return await describe_job(claimed)


async def _held_job(worker_id: UUID) -> Job | None:
    held = await m.AgentSession.filter(worker_id=worker_id, status=SessionStatus.RUNNING).first()
    return None if held is None else await describe_job(held)


async def claim_job(
    *,
    worker_id: UUID,
    wait: dt.timedelta = dt.timedelta(0),
    signal: JobSignal | None = None,
    store: secret_service.SecretStore | None = None,
) -> Job | None:
    """The worker's current job, or the oldest queued one claimed for it, or None.

    A worker holds at most one job: asking again returns the job it holds. A job whose task
    expects secrets is handed out only once they are in ``store``. Waits up to ``wait``
    (bounded by ``MAX_WAIT_MS``) for a job to appear, woken by ``signal``. A worker marked
    unhealthy claims nothing until a heartbeat makes it healthy again.
    Raises: InvalidArgument (a negative wait), NotFound, FailedPrecondition (the worker is
    unhealthy).
    """
    deadline = wait_deadline(wait)
    loop = asyncio.get_running_loop()
    checked = False
    while True:
        generation = signal.generation() if signal is not None else None
        ready = await secret_service.ready_agent_task_ids(store) if store is not None else []
        try:
            job = await _claim_once(worker_id, ready)
        except IntegrityError:  # it already runs one (or it does not exist)
            job = None
        if job is not None:
            return job
        if not checked:  # the slow path, once: an unknown worker, or the job it holds
            worker = await get_worker(worker_id=worker_id)
            held = await _held_job(worker_id)
            if held is not None:
                return held
            if worker.status == m.WorkerStatus.UNHEALTHY:
                raise FailedPrecondition(
                    f"worker {worker_id} is unhealthy (it missed its heartbeats): "
                    "send a Heartbeat before claiming jobs"
                )
            checked = True
        remaining = deadline - loop.time()
        if remaining <= 0 or generation is None:
            return None
        await JobSignal.wait(generation, min(remaining, RECHECK_S))


async def describe_job(session: m.AgentSession) -> Job:
    """What a worker is told about the job a session is (a held job is told again)."""
    agent = await get_row(m.AgentTask, id=session.agent_task_id)
    remotes = list(
        await m.AgentTaskBaseRemote.filter(agent_task_id=agent.id).order_by("git_remote_dir_path")
    )
    unit = await m.UnitTask.get_or_none(agent_task_id=agent.id)
    composite = None if unit else await m.CompositeTask.get_or_none(planning_task_id=agent.id)
    task_id = unit.id if unit else (composite.id if composite else None)
    prompt = unit.prompt if unit else (composite.prompt if composite else "")
    title = unit.title if unit else (composite.title if composite else None)
    return Job(
        session=session,
        lease_token=session.lease_token or "",
        task_id=task_id,
        prompt=prompt,
        title=title,
        branch_name=unit.branch_name if unit else None,
        base_remotes=remotes,
        expects_secrets=agent.expects_secrets,
    )
