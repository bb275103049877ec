"""Claims: a queued session goes to one worker, with a fresh lease.

Claiming is one statement: ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)
RETURNING`` on PostgreSQL (safe with many server processes), the same without the locking
clause on SQLite (one process; SQLite serialises writers). Which session a worker may take,
and in which order, is decided by that statement alone (``_CLAIM_PG``, ``_CLAIM_SQLITE``),
and ``services/scheduling/waits.py`` explains the same rules to users: change both together.

A queued session is claimable by worker W when its backoff (``not_before``) is over, its
task's secrets have arrived if it expects them, W is healthy and not draining, W runs its agent
type (W declared none = every type), W has every label the task requires, and its workspace
runs fewer jobs than its cap (if it has one). Among those: higher priority first, then the
lowest round (``fair_round``), then the oldest.

The round is given when a run is queued (a trigger, see ``db.EXTRA_SQL``): one past its
workspace's latest queued run of that priority, and never below the latest round handed out
at that priority. So equal priorities go round-robin across workspaces (Hatchet's
GROUP_ROUND_ROBIN) and the claim is one ordered index scan that stops at the first claimable
run: nothing is stamped on claim and no sort of the queue is needed, whatever its length.
On claim the run gets its deadline (the task's ``max_run_seconds`` or the server's).

On PostgreSQL a cap's running count is read under READ COMMITTED, so two replicas claiming
for one workspace at the same instant could both see room for one more: a claim whose
workspace has a cap counts again under a lock on the workspace's row and is undone when
over (``_within_cap``). ``claim_job`` around it returns a held job again, and waits.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from tortoise import connections
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError

from delidev import events, metrics
from delidev import models as m
from delidev.errors import FailedPrecondition, NotFound
from delidev.services import common
from delidev.services import secrets as secret_service
from delidev.services import sessions as session_service
from delidev.services.common import get_row, transaction
from delidev.services.workers.registry import get_worker, unit_task_of
from delidev.services.workers.waiting import JobSignal, wait_deadline

log = logging.getLogger(__name__)

SessionStatus = m.AgentSessionStatus
DEFAULT_MAX_RUN_SECONDS = 4 * 3600  # Settings.max_run_seconds
# Queued runs one claim looks at, at most (in claim order): a worker that can run none of
# the first this many (labels, agent types, caps, backoffs) finds nothing this time and is
# woken again when the queue changes. This bounds the cost of an idle worker's claim.
QUEUE_WINDOW = 1000
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


# One statement claims the first claimable session, marks the worker busy and returns
# what the job description needs (everything but the base
# remotes). A worker marked unhealthy claims nothing until a heartbeat makes it healthy
# again: the sweep would only take the job back (and queue yet another run of it). The
# partial unique index ``agent_sessions_one_running_per_worker`` (see db.EXTRA_INDEXES)
# refuses a second running session for one worker, so two GetTask calls of one worker at
# once cannot both claim.
# $1 worker, $2 lease, $3 now, $4 ready agent task ids (text[]), $5 agent types (text[]),
# $6 labels (json text), $7 default max run seconds, $8 excluded workspaces (uuid[]).
_CLAIM_PG = f"""
WITH candidate AS (
    SELECT s.id, s.workspace_id, a.max_run_seconds
    FROM (
        -- The queue in claim order, from the partial index agent_sessions_queue_rounds;
        -- at most QUEUE_WINDOW runs are looked at. The joins below keep this order, so
        -- the claim stops at the first run that passes the filters and is not locked.
        SELECT q.id, q.priority, q.fair_round, q.created_at FROM agent_sessions q
        WHERE q.status = 'queued'
        ORDER BY q.priority DESC, q.fair_round, q.created_at, q.id
        LIMIT {QUEUE_WINDOW}) front
    JOIN agent_sessions s ON s.id = front.id
    -- Per run, by primary key (OFFSET 0 keeps the planner from scanning agent_tasks first).
    CROSS JOIN LATERAL (
        SELECT a.max_run_seconds FROM agent_tasks a
        WHERE a.id = s.agent_task_id
          AND (NOT a.expects_secrets OR a.id::text = ANY($4::text[]))
          AND a.required_labels <@ $6::text::jsonb
        OFFSET 0) a
    WHERE s.status = 'queued'
      AND (s.not_before IS NULL OR s.not_before <= $3)
      AND (cardinality($5::text[]) = 0 OR s.ai_agent_type = ANY($5::text[]))
      AND NOT COALESCE(s.workspace_id = ANY($8::uuid[]), false)
      AND NOT EXISTS (SELECT 1 FROM workspaces wb
                      WHERE wb.id = s.workspace_id AND wb.budget_blocked_until > $3)
      AND NOT EXISTS (
            SELECT 1 FROM workspaces ws
            WHERE ws.id = s.workspace_id AND ws.max_concurrent_jobs IS NOT NULL
              AND ws.max_concurrent_jobs <= (
                SELECT count(*) FROM agent_sessions r
                WHERE r.status = 'running' AND r.workspace_id = s.workspace_id))
      AND EXISTS (SELECT 1 FROM workers w
                  WHERE w.id = $1 AND w.status <> 'unhealthy' AND NOT w.draining)
    ORDER BY front.priority DESC, front.fair_round, front.created_at, front.id
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
           current_task_id = COALESCE(
               (SELECT u.id FROM unit_tasks u WHERE u.agent_task_id = claimed.agent_task_id),
               (SELECT f.unit_task_id FROM unit_task_auto_fix_tasks f
                WHERE f.agent_task_id = claimed.agent_task_id))
    FROM claimed WHERE workers.id = $1 AND workers.status <> 'unhealthy'
)
SELECT claimed.*, a.expects_secrets, a.workspace_id AS job_workspace_id,
       (SELECT ws.max_concurrent_jobs FROM workspaces ws WHERE ws.id = a.workspace_id)
           AS workspace_cap,
       u.id AS unit_id, COALESCE(f.prompt, u.prompt) AS unit_prompt, u.title AS unit_title,
       u.branch_name, u.workspace_id AS unit_workspace_id,
       u.composite_task_id AS unit_composite_id,
       c.id AS composite_id, c.prompt AS composite_prompt, c.title AS composite_title,
       c.workspace_id AS composite_workspace_id,
       (SELECT json_agg(json_build_array(r.git_remote_dir_path, r.git_branch_name)
                        ORDER BY r.git_remote_dir_path)
        FROM agent_task_base_remotes r WHERE r.agent_task_id = claimed.agent_task_id) AS remotes
FROM claimed
JOIN agent_tasks a ON a.id = claimed.agent_task_id
-- An auto-fix run is told its unit task, with its own prompt.
LEFT JOIN unit_task_auto_fix_tasks f ON f.agent_task_id = claimed.agent_task_id
LEFT JOIN unit_tasks u ON u.id = COALESCE(
    f.unit_task_id,
    (SELECT own.id FROM unit_tasks own WHERE own.agent_task_id = claimed.agent_task_id))
LEFT JOIN composite_tasks c ON c.planning_task_id = claimed.agent_task_id
"""


# The cap, checked again under the workspace row's lock (see the module's docstring).
# Two statements: under READ COMMITTED a statement reads with the snapshot it started with,
# also after waiting for a lock, so the count must come in a statement after the lock's.
_CAP_LOCK_PG = "SELECT max_concurrent_jobs AS cap FROM workspaces WHERE id = $1 FOR UPDATE"
_CAP_COUNT_PG = """
SELECT count(*) AS running FROM agent_sessions r JOIN agent_tasks ra ON ra.id = r.agent_task_id
WHERE r.status = 'running' AND ra.workspace_id = $1
"""


# SQLite serialises writers, so the statement's own count holds (no recheck). Placeholders:
# worker, lease, now (started), now (updated), now (not_before), worker, agent types (json)
# twice, labels (json), now (budget), then the ready agent task ids.
_CLAIM_SQLITE = """
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
      AND (ws.budget_blocked_until IS NULL OR ws.budget_blocked_until <= ?)
      AND (a.expects_secrets = 0 OR a.id IN ({ready}))
    ORDER BY s.priority DESC, s.fair_round, s.created_at, s.id
    LIMIT 1
)
RETURNING id, agent_task_id
"""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a worker declared at Register: fixed for its id (a new registration is a new id),
    so a process may keep them."""

    agent_types: list[str]
    labels: list[str]


_capabilities: collections.OrderedDict[UUID, Capabilities] = collections.OrderedDict()
_CAPABILITIES_KEPT = 10_000


async def capabilities_of(worker_id: UUID) -> Capabilities:
    """The worker's agent types and labels (read once per process). Raises: NotFound."""
    known = _capabilities.get(worker_id)
    if known is None:
        worker = await get_worker(worker_id=worker_id)
        known = Capabilities(agent_types=list(worker.agent_types), labels=list(worker.labels))
        _capabilities[worker_id] = known
        if len(_capabilities) > _CAPABILITIES_KEPT:
            _capabilities.popitem(last=False)
    return known


async def _claim_once(
    worker_id: UUID,
    ready_agent_ids: Sequence[UUID],
    *,
    max_run_seconds: int,
    excluded: Sequence[UUID] = (),
) -> Job | None:
    """Claims the first claimable session for this worker, or None.

    ``ready_agent_ids``: the agent tasks expecting secrets whose secrets have arrived;
    ``excluded``: workspaces found over their cap by this claim's recheck.
    Raises: IntegrityError when the worker already runs a session; NotFound.
    """
    conn = connections.get("default")
    lease = secrets.token_urlsafe(24)
    caps = await capabilities_of(worker_id)
    if conn.capabilities.dialect == "postgres":
        return await _claim_pg(
            conn, worker_id, lease, ready_agent_ids, caps, max_run_seconds, excluded
        )
    return await _claim_sqlite(conn, worker_id, lease, ready_agent_ids, caps, max_run_seconds)


class _OverCap(Exception):
    def __init__(self, workspace_id: UUID) -> None:
        self.workspace_id = workspace_id


async def _within_cap(row: dict[str, object], lease: str) -> bool:
    """The cap, counted again under the lock on the workspace's row; a claim that took the
    workspace over it is undone (compare-and-set on its lease). Claims of one capped
    workspace serialise here, so of two that raced for its last place exactly one keeps it."""
    session_id, worker_id = row["id"], row["worker_id"]
    async with transaction() as tx:
        locked = await tx.execute_query_dict(_CAP_LOCK_PG, [row["job_workspace_id"]])
        if not locked or locked[0]["cap"] is None:
            return True
        counted = await tx.execute_query_dict(_CAP_COUNT_PG, [row["job_workspace_id"]])
        if int(counted[0]["running"]) <= int(locked[0]["cap"]):
            return True
        await (
            m.AgentSession.filter(id=session_id, status=SessionStatus.RUNNING, lease_token=lease)
            .using_db(tx)
            .update(
                status=SessionStatus.QUEUED,
                worker_id=None,
                lease_token=None,
                started_at=None,
                deadline_at=None,
            )
        )
        await (
            m.Worker.filter(id=worker_id, current_session_id=session_id)
            .using_db(tx)
            .update(
                **common.changed(
                    status=m.WorkerStatus.IDLE, current_session_id=None, current_task_id=None
                )
            )
        )
    return False


async def _claim_pg(
    conn: BaseDBAsyncClient,
    worker_id: UUID,
    lease: str,
    ready_agent_ids: Sequence[UUID],
    caps: Capabilities,
    max_run_seconds: int,
    excluded: Sequence[UUID],
) -> Job | None:
    """The claim, the worker marked busy and the job's description in one round trip (and
    the cap's recheck when the workspace has one)."""
    rows = await conn.execute_query_dict(
        _CLAIM_PG,
        [
            worker_id,
            lease,
            common.now(),
            [str(a) for a in ready_agent_ids],
            list(caps.agent_types),
            json.dumps(caps.labels),
            float(max_run_seconds),
            list(excluded),
        ],
    )
    if not rows:
        return None
    row = rows[0]
    if row["workspace_cap"] is not None and not await _within_cap(row, lease):
        raise _OverCap(UUID(str(row["job_workspace_id"])))
    session = m.AgentSession._init_from_db(**row)  # takes its columns, ignores the rest
    if session.started_at is not None:
        metrics.job_claimed(session.created_at, session.started_at)
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
    conn: BaseDBAsyncClient,
    worker_id: UUID,
    lease: str,
    ready_agent_ids: Sequence[UUID],
    caps: Capabilities,
    max_run_seconds: int,
) -> Job | None:
    """The claim, then the worker marked busy, the run's deadline and the job described by
    ordinary queries."""
    ready = ", ".join("?" for _ in ready_agent_ids) or "NULL"
    now = common.now()
    stamp = now.isoformat(" ")  # as Tortoise writes it, so that comparisons hold
    types = json.dumps(caps.agent_types)
    rows = await conn.execute_query_dict(
        _CLAIM_SQLITE.format(ready=ready),
        [
            str(worker_id),
            lease,
            stamp,
            stamp,
            stamp,
            str(worker_id),
            types,
            types,
            json.dumps(caps.labels),
            stamp,
            *map(str, ready_agent_ids),
        ],
    )
    if not rows:
        return None
    claimed_id = UUID(str(rows[0]["id"]))
    try:
        return await _claimed_sqlite(worker_id, claimed_id, rows[0], now, max_run_seconds)
    except NotFound:
        # Its task was deleted right after the claim (the steps below are separate
        # statements): there is no job, which is no reason to tell the worker that it is
        # unknown (a GetTask's not_found), and it is not left busy with it.
        log.info("job %s was deleted as worker %s claimed it", claimed_id, worker_id)
        await m.Worker.filter(id=worker_id, current_session_id=claimed_id).update(
            **common.changed(
                status=m.WorkerStatus.IDLE, current_session_id=None, current_task_id=None
            )
        )
        return None


async def _claimed_sqlite(
    worker_id: UUID,
    claimed_id: UUID,
    row: dict[str, object],
    now: dt.datetime,
    max_run_seconds: int,
) -> Job:
    """What follows a claim on SQLite. Raises: NotFound (the job was deleted meanwhile)."""
    agent = await get_row(m.AgentTask, id=UUID(str(row["agent_task_id"])))
    limit = dt.timedelta(seconds=agent.max_run_seconds or max_run_seconds)
    await m.AgentSession.filter(id=claimed_id).update(deadline_at=now + limit)
    claimed = await get_row(m.AgentSession, id=claimed_id)
    if claimed.started_at is not None:
        metrics.job_claimed(claimed.created_at, claimed.started_at)
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


async def _claim_capped(worker_id: UUID, ready: Sequence[UUID], max_run_seconds: int) -> Job | None:
    """A claim; one undone because it took its workspace over the cap is tried again
    without that workspace (a few times: caps are rare and races for them rarer)."""
    excluded: list[UUID] = []
    for _ in range(4):
        try:
            return await _claim_once(
                worker_id, ready, max_run_seconds=max_run_seconds, excluded=excluded
            )
        except IntegrityError:  # it already runs one (or it does not exist)
            return None
        except _OverCap as over:
            excluded.append(over.workspace_id)
    return None


async def claim_now(
    *,
    worker_id: UUID,
    store: secret_service.SecretStore | None = None,
    max_run_seconds: int = DEFAULT_MAX_RUN_SECONDS,
) -> Job | None:
    """One claim attempt and nothing else: for a caller that already knows the worker exists
    and holds no job (its Watch stream), so a wake-up of many idle workers costs each of them
    one statement. None when nothing is claimable for it."""
    ready = await secret_service.ready_agent_task_ids(store) if store is not None else []
    return await _claim_capped(worker_id, ready, max_run_seconds)


async def _held_job(worker_id: UUID) -> Job | None:
    held = await m.AgentSession.filter(worker_id=worker_id, status=SessionStatus.RUNNING).first()
    return None if held is None else await describe_job(held)


async def claim_job(
    *,
    worker_id: UUID,
    wait: dt.timedelta = dt.timedelta(0),
    signal: JobSignal | None = None,
    store: secret_service.SecretStore | None = None,
    max_run_seconds: int = DEFAULT_MAX_RUN_SECONDS,
    closing: asyncio.Event | None = None,
) -> Job | None:
    """The worker's current job, or the first queued one it may take claimed for it, or None.

    Which job, and in which order, is the claim statement's (see above); ``max_run_seconds``
    is the run time limit of a job whose task sets none.

    A worker holds at most one job: asking again returns the job it holds. A job whose task
    expects secrets is handed out only once they are in ``store``. Waits up to ``wait``
    (bounded by ``MAX_WAIT_MS``) for a job to appear, woken by ``signal``; once ``closing``
    is set (the server shuts down) it answers at once instead. A worker marked unhealthy
    claims nothing until a heartbeat makes it healthy again.
    Raises: InvalidArgument (a negative wait), NotFound, FailedPrecondition (the worker is
    unhealthy).
    """
    deadline = wait_deadline(wait)
    loop = asyncio.get_running_loop()
    checked = False
    while True:
        generation = signal.generation() if signal is not None else None
        ready = await secret_service.ready_agent_task_ids(store) if store is not None else []
        job = await _claim_capped(worker_id, ready, max_run_seconds)
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
        if remaining <= 0 or generation is None or (closing is not None and closing.is_set()):
            return None
        await JobSignal.wait(generation, min(remaining, RECHECK_S))


async def describe_job(session: m.AgentSession) -> Job:
    """What a worker is told about the job a session is (a held job is told again)."""
    agent = await get_row(m.AgentTask, id=session.agent_task_id)
    remotes = list(
        await m.AgentTaskBaseRemote.filter(agent_task_id=agent.id).order_by("git_remote_dir_path")
    )
    unit = await m.UnitTask.get_or_none(agent_task_id=agent.id)
    fix = None
    if unit is None and session.kind == m.JobKind.AUTO_FIX:  # told its unit task, own prompt
        fix = await m.UnitTaskAutoFixTask.get_or_none(agent_task_id=agent.id)
        unit = await m.UnitTask.get_or_none(id=fix.unit_task_id) if fix else None
    composite = None if unit else await m.CompositeTask.get_or_none(planning_task_id=agent.id)
    task_id = unit.id if unit else (composite.id if composite else None)
    prompt = unit.prompt if unit else (composite.prompt if composite else "")
    if fix is not None and fix.prompt:
        prompt = fix.prompt
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
