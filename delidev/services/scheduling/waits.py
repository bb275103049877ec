"""Why a queued job is not running, and since when.

The reasons are worked out here, from what the claim statement checks (secrets, backoff, the
live fleet's agent types and labels, the workspace's cap), so that what a user is told and
what the scheduler does cannot drift apart. ``reconcile_waits`` stores each queued session's
reason (``wait_reason``, ``wait_detail``, ``waiting_since``: when that reason began) and
announces the tasks whose reason changed, so the task subscription carries it (a claimable
job is stored as no reason, ``waiting_since`` saying since when it is); it runs after
the events that can change a reason and on each sweep, on every replica (each update is a
compare-and-set, so replicas agree). The position in the queue changes with every claim: it
is worked out on read (``waits_of``), never stored.

A composite node that has no job yet waits for its dependencies: the task views say so
(``dependency_wait``); no session carries it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tortoise import connections
from tortoise.functions import Count

from delidev import events
from delidev import models as m
from delidev.services import budgets
from delidev.services import secrets as secret_service
from delidev.services import sessions as session_service
from delidev.services.common import now as current_time
from delidev.services.scheduling.labels import missing_labels

Reason = m.WaitReason
# Queued sessions looked at per pass (oldest first), and ranked for positions on read.
MAX_RECONCILED = 5_000
MAX_RANKED = 10_000
_DETAIL_CHARS = 500
_BATCH = 500  # ids per UPDATE (SQLite's bound on parameters is far above)


@dataclass(frozen=True, slots=True)
class Wait:
    reason: m.WaitReason
    since: dt.datetime
    detail: str
    until: dt.datetime | None = None
    position: int | None = None


@dataclass(frozen=True, slots=True)
class _Queued:
    id: UUID
    agent_task_id: UUID
    agent_type: str
    not_before: dt.datetime | None
    auto_retries: int
    expects_secrets: bool
    required: list[str]
    workspace_id: UUID | None
    reason: str | None
    detail: str | None


@dataclass(frozen=True, slots=True)
class _Fleet:
    live: list[tuple[list[str], list[str]]]
    """(agent types, labels) of each distinct kind of live worker."""
    registered_types: set[str] | None
    """Agent types some registered worker runs; None when one runs every type."""


def _json_list(value: Any) -> list[str]:
    if isinstance(value, str):
        value = json.loads(value)
    return [str(v) for v in value or []]


async def _fleet() -> _Fleet:
    # The distinct kinds of worker, not every worker: a fleet of thousands is a handful of
    # kinds, and this runs on every pass of the reconciler.
    rows = await m.Worker.all().distinct().values("status", "draining", "agent_types", "labels")
    live: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
    registered: set[str] | None = set()
    for row in rows:
        types = _json_list(row["agent_types"])
        if registered is not None:
            registered = None if not types else registered | set(types)
        if row["status"] != m.WorkerStatus.UNHEALTHY and not row["draining"]:
            live.add((tuple(types), tuple(_json_list(row["labels"]))))
    # Sorted: two reads of the same fleet compare equal (``Inputs``), whatever the row order.
    return _Fleet(
        live=[(list(t), list(labels)) for t, labels in sorted(live)], registered_types=registered
    )


@dataclass(frozen=True, slots=True)
class Inputs:
    """What the reason of a job queued a while ago depends on, besides time, secrets and the
    running counts of capped workspaces: the live fleet and the caps. A reconcile after
    events that changed none of these need only look at runs queued since the last one."""

    fleet: _Fleet
    caps: tuple[tuple[str, int], ...]
    """(workspace id, cap) of every capped workspace."""
    blocked: tuple[str, ...] = ()
    """Workspaces whose new runs wait for their budget."""


async def inputs() -> Inputs:
    caps = await m.Workspace.filter(max_concurrent_jobs__isnull=False).values_list(
        "id", "max_concurrent_jobs"
    )
    blocked = await budgets.blocked_workspaces(current_time())
    return Inputs(
        fleet=await _fleet(),
        caps=tuple(sorted((str(w), int(c)) for w, c in caps)),
        blocked=tuple(sorted(map(str, blocked))),
    )


async def _queued(limit: int, since: dt.datetime | None = None) -> list[_Queued]:
    """The ``limit`` oldest queued sessions (queued since ``since``), read ``_BATCH`` at a
    time: other tasks run between the reads (5,000 in one answer held the event loop for
    ~0.2 s). A run claimed between two reads may shift the next one past another run, which
    the next pass sees."""
    found: list[_Queued] = []
    while len(found) < limit:
        page = min(_BATCH, limit - len(found))
        part = await _queued_page(len(found), page, since)
        found += part
        if len(part) < page:
            break
    return found


async def _queued_page(offset: int, limit: int, since: dt.datetime | None) -> list[_Queued]:
    recent = {} if since is None else {"created_at__gte": since}
    rows = (
        await m.AgentSession.filter(status=m.AgentSessionStatus.QUEUED, **recent)
        .order_by("created_at", "id")
        .offset(offset)
        .limit(limit)
        .values(
            "id",
            "agent_task_id",
            "ai_agent_type",
            "not_before",
            "auto_retries",
            "wait_reason",
            "wait_detail",
            "agent_task__expects_secrets",
            "agent_task__required_labels",
            "agent_task__workspace_id",
        )
    )
    return [
        _Queued(
            id=UUID(str(row["id"])),
            agent_task_id=UUID(str(row["agent_task_id"])),
            agent_type=str(row["ai_agent_type"]),
            not_before=row["not_before"],
            auto_retries=int(row["auto_retries"]),
            expects_secrets=bool(row["agent_task__expects_secrets"]),
            required=_json_list(row["agent_task__required_labels"]),
            workspace_id=(
                None
                if row["agent_task__workspace_id"] is None
                else UUID(str(row["agent_task__workspace_id"]))
            ),
            reason=row["wait_reason"],
            detail=row["wait_detail"],
        )
        for row in rows
    ]


async def _full_workspaces(workspace_ids: Iterable[UUID]) -> dict[UUID, tuple[int, int]]:
    """Capped workspaces that run as many jobs as their cap: id → (running, cap)."""
    caps = dict(
        await m.Workspace.filter(
            id__in=list(set(workspace_ids)), max_concurrent_jobs__isnull=False
        ).values_list("id", "max_concurrent_jobs")
    )
    if not caps:
        return {}
    running = {
        UUID(str(row["agent_task__workspace_id"])): int(row["n"])
        for row in await m.AgentSession.filter(
            status=m.AgentSessionStatus.RUNNING, agent_task__workspace_id__in=list(caps)
        )
        .annotate(n=Count("id"))
        .group_by("agent_task__workspace_id")
        .values("agent_task__workspace_id", "n")
    }
    return {
        UUID(str(ws)): (running.get(UUID(str(ws)), 0), int(cap))
        for ws, cap in caps.items()
        if running.get(UUID(str(ws)), 0) >= int(cap)
    }


def _no_worker_detail(job: _Queued, fleet: _Fleet) -> str | None:
    """Why no live worker can take the job, or None when one can."""
    if fleet.registered_types is not None and job.agent_type not in fleet.registered_types:
        return f"no registered worker runs the agent type {job.agent_type}"
    typed = [labels for types, labels in fleet.live if not types or job.agent_type in types]
    if not typed:
        return f"no live worker runs the agent type {job.agent_type}"
    fewest = min((missing_labels(job.required, labels) for labels in typed), key=len)
    if not fewest:
        return None
    return (
        f"no live worker that runs {job.agent_type} has the labels "
        f"{', '.join(job.required)} (closest lacks {', '.join(fewest)})"
    )


def _reason(
    job: _Queued,
    *,
    now: dt.datetime,
    ready: set[UUID],
    fleet: _Fleet,
    full: dict[UUID, tuple[int, int]],
    blocked: dict[UUID, dt.datetime],
) -> tuple[m.WaitReason, str]:
    if job.not_before is not None and job.not_before > now:
        return Reason.BACKOFF, (
            f"automatic retry {job.auto_retries} after an infrastructure failure, "
            f"not before {job.not_before.isoformat(timespec='seconds')}"
        )
    if job.expects_secrets and job.agent_task_id not in ready:
        return Reason.SECRETS, "waits for the task's secrets (SecretsService.Send)"
    missing = _no_worker_detail(job, fleet)
    if missing is not None:
        return Reason.NO_CAPABLE_WORKER, missing
    if job.workspace_id in blocked:
        return Reason.BUDGET, (
            "its workspace spent its budget for the period; new runs start when the budget"
            f" is raised or at {blocked[job.workspace_id].isoformat(timespec='seconds')}"
        )
    if job.workspace_id in full:
        running, cap = full[job.workspace_id]
        return Reason.CONCURRENCY_CAP, (
            f"its workspace runs {running} of at most {cap} jobs at once"
        )
    return Reason.QUEUED, "waits for a free worker"


async def reconcile_waits(
    *,
    store: secret_service.SecretStore | None = None,
    now: dt.datetime | None = None,
    limit: int = MAX_RECONCILED,
    queued_since: dt.datetime | None = None,
) -> int:
    """Stores the reason each queued session waits (the ``limit`` oldest; with
    ``queued_since``, only of those queued since then) where it changed, and announces their
    tasks. Returns how many changed. ``now``: tests pass a later time."""
    when = now or current_time()
    queued = await _queued(limit, queued_since)
    if not queued:
        return 0
    ready = set(await secret_service.ready_agent_task_ids(store)) if store is not None else set()
    fleet = await _fleet()
    full = await _full_workspaces(j.workspace_id for j in queued if j.workspace_id is not None)
    blocked = await budgets.blocked_workspaces(when)
    # Runs that move from one (reason, detail) to the same other one are updated together:
    # one statement per kind of change, not one per run (a big queue changes all at once
    # when the fleet does).
    moves: dict[tuple[str | None, str | None, str | None, str | None], list[_Queued]]
    moves = defaultdict(list)
    for index, job in enumerate(queued):
        if index and index % _BATCH == 0:
            await asyncio.sleep(0)  # let other tasks run between batches of a long queue
        reason, detail = _reason(
            job, now=when, ready=ready, fleet=fleet, full=full, blocked=blocked
        )
        # Claimable is stored as no reason at all: in a healthy queue (every job claimable)
        # a pass then writes nothing, and never competes with the claims for its rows.
        stored = (None, None) if reason == Reason.QUEUED else (reason.value, detail[:_DETAIL_CHARS])
        if (job.reason, job.detail) != stored:
            moves[(job.reason, job.detail, *stored)].append(job)
    changed: list[UUID] = []
    claimable = False
    for (old_reason, old_detail, reason_value, new_detail), jobs in moves.items():
        fields: dict[str, Any] = {"wait_reason": reason_value, "wait_detail": new_detail}
        if old_reason != reason_value:
            fields["waiting_since"] = when
        for start in range(0, len(jobs), _BATCH):
            batch = jobs[start : start + _BATCH]
            # Compare-and-set: another replica may have stored the same change meanwhile.
            if await m.AgentSession.filter(
                id__in=[j.id for j in batch],
                status=m.AgentSessionStatus.QUEUED,
                wait_reason=old_reason,
                wait_detail=old_detail,
            ).update(**fields):
                changed.extend(j.agent_task_id for j in batch)
                claimable = claimable or reason_value is None
    for start in range(0, len(changed), _BATCH):  # a statement each: others run between
        await session_service.announce_tasks_of(changed[start : start + _BATCH])
    if claimable:  # a backoff ended, a capable worker came, a cap freed: wake the workers
        events.publish(events.JobQueued())
    return len(changed)


async def next_change_by_time(now: dt.datetime | None = None) -> dt.datetime | None:
    """The next moment a queued job's reason changes with time alone (a backoff or a
    workspace's budget block ends), if any: the reconciler passes then, so that a watching
    worker hears of the job at once rather than at its safety-net re-check."""
    when = now or current_time()
    found: list[dt.datetime] = []
    for rows in (
        await m.AgentSession.filter(status=m.AgentSessionStatus.QUEUED, not_before__gt=when)
        .order_by("not_before")
        .limit(1)
        .values_list("not_before", flat=True),
        await m.Workspace.filter(budget_blocked_until__gt=when)
        .order_by("budget_blocked_until")
        .limit(1)
        .values_list("budget_blocked_until", flat=True),
    ):
        found.extend(t for t in rows if isinstance(t, dt.datetime))  # type: ignore[misc]  # values_list(flat=True) is typed as tuples
    return min(found) if found else None


async def waits_of(sessions: Sequence[m.AgentSession]) -> dict[UUID, Wait]:
    """The wait of each queued session among ``sessions`` (others are left out): its stored
    reason (QUEUED until the first reconcile) and, when queued, its position, worked out with
    one query for any number of sessions."""
    queued = [s for s in sessions if s.status == m.AgentSessionStatus.QUEUED]
    if not queued:
        return {}
    positions = await _positions(
        [s.id for s in queued if s.wait_reason in (None, Reason.QUEUED.value)]
    )
    result: dict[UUID, Wait] = {}
    for s in queued:
        reason = Reason(s.wait_reason) if s.wait_reason else Reason.QUEUED
        result[s.id] = Wait(
            reason=reason,
            since=s.waiting_since or s.created_at,
            detail=s.wait_detail or "waits for a free worker",
            until=s.not_before if reason == Reason.BACKOFF else None,
            position=positions.get(s.id) if reason == Reason.QUEUED else None,
        )
    return result


async def _positions(session_ids: Sequence[UUID]) -> dict[UUID, int]:
    """These sessions (those claimable and among the first ``MAX_RANKED`` in the claim's
    order: higher priority first, then the lower round, then older) → how many are ahead.
    Ranked by the database, which answers only for these sessions: reading the whole queue
    and sorting it here held the event loop for ~0.4 s per read at 10,000 queued jobs."""
    if not session_ids:
        return {}
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    found: dict[UUID, int] = {}
    for start in range(0, len(session_ids), _BATCH):
        part = session_ids[start : start + _BATCH]
        if postgres:
            marks = ", ".join(f"${i + 1}" for i in range(len(part)))
            args: list[object] = list(part)
        else:
            marks = ", ".join("?" for _ in part)
            args = [str(i) for i in part]
        rows = await conn.execute_query_dict(_RANKED.format(top=MAX_RANKED, ids=marks), args)
        found.update((UUID(str(r["id"])), int(r["position"])) for r in rows)
    return found


_RANKED = """
SELECT id, position FROM (
    SELECT id, ROW_NUMBER() OVER (
        ORDER BY priority DESC, fair_round, created_at, id
    ) - 1 AS position
    FROM (
        SELECT id, priority, fair_round, created_at FROM agent_sessions
        WHERE status = 'queued' AND (wait_reason IS NULL OR wait_reason = 'queued')
        ORDER BY priority DESC, fair_round, created_at, id
        LIMIT {top}
    ) claimable
) ranked
WHERE id IN ({ids})
"""


def dependency_wait(*, since: dt.datetime, waiting_for: Sequence[str]) -> Wait:
    """The wait of a composite node whose dependencies (their PLAN.yaml ids) are unfinished."""
    names = ", ".join(waiting_for[:10]) + (" …" if len(waiting_for) > 10 else "")
    return Wait(
        reason=Reason.DEPENDENCIES,
        since=since,
        detail=f"waits for {len(waiting_for)} unfinished dependencies: {names}",
    )
