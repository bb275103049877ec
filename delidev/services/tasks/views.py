"""The read models both APIs show tasks with: listing, composite nodes with their state,
why a task's job waits (``task_waits``), and ``TaskBundle``, everything a set of tasks
needs loaded in a fixed number of queries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any
from uuid import UUID

from tortoise import connections

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument, NotFound
from delidev.services import estimates as estimate_service
from delidev.services import usage as usage_service
from delidev.services.common import Page, fitting, owner_filter, page_bounds
from delidev.services.repositories import get_repository_group
from delidev.services.scheduling import waits as job_waits
from delidev.services.tasks._shared import RETRYABLE, S, SessionStatus, Task, latest_sessions
from delidev.services.workspaces import get_workspace


class NodeState(StrEnum):
    WAITING = "waiting"
    QUEUED = "queued"
    RUNNING = "running"
    IN_REVIEW = "in_review"
    DONE = "done"
    FAILED = "failed"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class NodeView:
    node: m.CompositeTaskNode
    unit_task: m.UnitTask
    depends_on: list[UUID]
    state: NodeState


# Listing ----------------------------------------------------------------------------


async def list_tasks(
    *,
    actor: Principal,
    workspace_id: UUID | None = None,
    repository_group_id: UUID | None = None,
    kind: str | None = None,
    unit_status: m.UnitTaskStatus | None = None,
    composite_status: m.CompositeTaskStatus | None = None,
    include_nodes: bool = False,
    limit: int | None = None,
    offset: int | None = None,
) -> Page[Task]:
    """Unit and composite tasks, oldest first (ties broken by id), as every list is.

    ``kind`` is "unit", "composite" or None for both. A status filter of one kind leaves
    out the other kind. Nodes of composite tasks are left out unless ``include_nodes``.

    Raises: InvalidArgument, NotFound (unknown workspace or group).
    """
    limit, offset = page_bounds(limit, offset)
    if kind not in (None, "unit", "composite"):
        raise InvalidArgument("kind must be unit or composite", field="kind")
    scope = owner_filter(actor, "workspace__")
    if workspace_id is not None:
        await get_workspace(actor=actor, workspace_id=workspace_id)
        scope["workspace_id"] = workspace_id
    if repository_group_id is not None:
        await get_repository_group(
            actor=actor, group_id=repository_group_id, field="repository_group_id"
        )
        scope["repository_group_id"] = repository_group_id
    sources: list[tuple[type[Task], dict[str, Any]]] = []
    if kind != "composite" and composite_status is None:
        unit_filter = dict(scope)
        if not include_nodes:
            unit_filter["composite_task_id__isnull"] = True
        if unit_status is not None:
            unit_filter["status"] = unit_status
        sources.append((m.UnitTask, unit_filter))
    if kind != "unit" and unit_status is None:
        composite_filter = dict(scope)
        if composite_status is not None:
            composite_filter["status"] = composite_status
        sources.append((m.CompositeTask, composite_filter))
    return await _merged_page(sources, limit, offset)


async def _merged_page(
    sources: Sequence[tuple[type[Task], dict[str, Any]]], limit: int, offset: int
) -> Page[Task]:
    """One page of the rows of ``sources`` (model, filter) merged by (created_at, id), in
    at most 2 + len(sources) statements whatever the offset: the database counts and pages
    the keys, and only the page's rows are loaded (by id). Past the end: the count alone."""
    if not sources:
        return Page(items=[], total_count=0)
    conn = connections.get("default")
    postgres = conn.capabilities.dialect == "postgres"
    count = _Statement(postgres)
    counts = " + ".join(f"(SELECT COUNT(*) {count.source(mod, f)})" for mod, f in sources)
    rows = await conn.execute_query_dict(f"SELECT {counts} AS total", count.values)
    total = int(rows[0]["total"])
    if offset >= total:
        return Page(items=[], total_count=total)

    keys = _Statement(postgres)
    # The table name tells which model a key is of. This order is (created_at, str(id)):
    # SQLite keeps both as text (ISO times in UTC, ids in lowercase hex) and PostgreSQL's
    # uuid order is that of the hex.
    # With each key, the length of the task's long text, so that the page ends before
    # ``PAGE_CHARS`` of it (a composite's nodes hold about its plan's text again).
    union = " UNION ALL ".join(
        f"SELECT t.created_at, t.id, '{mod._meta.db_table}' AS kind, {_LONG_TEXT[mod]} AS weight"
        f" {keys.source(mod, f)}"
        for mod, f in sources
    )
    page = await conn.execute_query_dict(
        f"SELECT id, kind, weight FROM ({union}) AS merged ORDER BY created_at, id"
        f" LIMIT {keys.value(limit)} OFFSET {keys.value(offset)}",
        keys.values,
    )
    page = page[: fitting([int(r["weight"]) for r in page])]
    found: dict[str, Task] = {}
    for model, _ in sources:
        ids = [r["id"] for r in page if r["kind"] == model._meta.db_table]
        if ids:
            found |= {str(t.id): t for t in await model.filter(id__in=ids)}
    # A task deleted since its key was read is left out, as it would be a moment later.
    return Page(
        items=[found[str(r["id"])] for r in page if str(r["id"]) in found], total_count=total
    )


def _lengths(*columns: str, plan: str | None = None) -> str:
    terms = [f"COALESCE(LENGTH(t.{c}), 0)" for c in columns]
    if plan is not None:
        terms.append(f"2 * COALESCE(LENGTH(t.{plan}), 0)")
    return " + ".join(terms)


_LONG_TEXT: dict[type[Task], str] = {
    m.UnitTask: _lengths("prompt", "rejection_reason"),
    m.CompositeTask: _lengths("prompt", "plan_error", plan="plan_yaml"),
}


class _Statement:
    """The values of one raw SQL statement, with placeholders in the dialect's style
    (``$1`` on PostgreSQL, ``?`` on SQLite) numbered in the order the text takes them."""

    def __init__(self, postgres: bool) -> None:
        self.postgres = postgres
        self.values: list[Any] = []

    def value(self, value: Any) -> str:
        if isinstance(value, Enum):
            value = value.value
        elif isinstance(value, UUID) and not self.postgres:
            value = str(value)  # SQLite keeps ids as text
        self.values.append(value)
        return f"${len(self.values)}" if self.postgres else "?"

    def source(self, model: type[Task], where: dict[str, Any]) -> str:
        """``FROM`` the model's table (as ``t``, joined to its workspace as ``w``) ``WHERE``
        ``where``, the ORM filter arguments this listing uses (equality and ``__isnull``,
        on the task or on ``workspace__``): visibility stays ``owner_filter``'s."""
        terms = []
        for key, value in where.items():
            alias, lookup = "t", key
            if key.startswith("workspace__"):
                alias, lookup = "w", key.removeprefix("workspace__")
            column, _, op = lookup.partition("__")
            if op == "isnull" and value is True:
                terms.append(f"{alias}.{column} IS NULL")
            elif not op and value is not None:
                terms.append(f"{alias}.{column} = {self.value(value)}")
            else:
                raise ValueError(f"filter {key}={value!r} is not expressed in SQL here")
        return (
            f"FROM {model._meta.db_table} t"
            f" JOIN {m.Workspace._meta.db_table} w ON w.id = t.workspace_id"
            + (f" WHERE {' AND '.join(terms)}" if terms else "")
        )


# Composite nodes --------------------------------------------------------------------


async def composite_nodes(composite_task_ids: Sequence[UUID]) -> dict[UUID, list[NodeView]]:
    """Nodes of each composite with their unit task, dependencies and state (4 queries)."""
    result: dict[UUID, list[NodeView]] = {cid: [] for cid in composite_task_ids}
    if not composite_task_ids:
        return result
    nodes = await m.CompositeTaskNode.filter(
        composite_task_id__in=list(composite_task_ids)
    ).order_by("created_at", "id")
    if not nodes:
        return result
    units = {u.id: u for u in await m.UnitTask.filter(id__in=[n.unit_task_id for n in nodes])}
    deps = await m.CompositeTaskNodeDependency.filter(
        node_id__in=[n.id for n in nodes]
    ).values_list("node_id", "depends_on_node_id")
    depends: dict[UUID, list[UUID]] = {n.id: [] for n in nodes}
    for node_id, dep_id in deps:
        depends[node_id].append(dep_id)
    latest = await latest_sessions([u.agent_task_id for u in units.values()])
    for node in nodes:
        unit = units.get(node.unit_task_id)
        if unit is None:  # its composite was deleted between the two reads
            continue
        result[node.composite_task_id].append(
            NodeView(
                node=node,
                unit_task=unit,
                depends_on=depends[node.id],
                state=node_state(unit, latest.get(unit.agent_task_id)),
            )
        )
    return result


def node_state(unit: m.UnitTask, latest: m.AgentSession | None) -> NodeState:
    if unit.status == S.DONE:
        return NodeState.DONE
    if unit.status == S.REJECTED:
        return NodeState.REJECTED
    if unit.status in (S.IN_REVIEW, S.APPROVED, S.PR_OPEN):
        return NodeState.IN_REVIEW
    if latest is None:
        return NodeState.WAITING
    if latest.status == SessionStatus.QUEUED:
        return NodeState.QUEUED
    if latest.status == SessionStatus.RUNNING:
        return NodeState.RUNNING
    if latest.status in RETRYABLE:
        return NodeState.FAILED
    return NodeState.RUNNING


async def agent_tasks_by_id(agent_task_ids: Sequence[UUID]) -> dict[UUID, m.AgentTask]:
    """AgentTasks by id (one query; for DataLoaders)."""
    if not agent_task_ids:
        return {}
    return {a.id: a for a in await m.AgentTask.filter(id__in=list(agent_task_ids))}


async def auto_fix_agent_task_ids(unit_task_ids: Sequence[UUID]) -> dict[UUID, list[UUID]]:
    """The auto-fix AgentTasks of each unit task, oldest first (one query; for DataLoaders)."""
    result: dict[UUID, list[UUID]] = {u: [] for u in unit_task_ids}
    if unit_task_ids:
        for fix in await m.UnitTaskAutoFixTask.filter(
            unit_task_id__in=list(unit_task_ids)
        ).order_by("created_at"):
            result[fix.unit_task_id].append(fix.agent_task_id)
    return result


async def base_remotes_of(
    agent_task_ids: Sequence[UUID],
) -> dict[UUID, list[m.AgentTaskBaseRemote]]:
    """Base remotes of each AgentTask (one query; for DataLoaders)."""
    result: dict[UUID, list[m.AgentTaskBaseRemote]] = {a: [] for a in agent_task_ids}
    if agent_task_ids:
        for remote in await m.AgentTaskBaseRemote.filter(agent_task_id__in=list(agent_task_ids)):
            result[remote.agent_task_id].append(remote)
    return result


# Waits ----------------------------------------------------------------------------------


async def task_waits(items: Sequence[Task]) -> dict[UUID, job_waits.Wait]:
    """Why each task among ``items`` waits, by task id (a fixed number of queries): the wait
    of its latest run (a composite: its planning run) while queued, or, for a composite node
    that has no run yet, its unfinished dependencies. Tasks that do not wait are left out."""
    latest = await latest_sessions([_runs_of(t) for t in items])
    fixes = await auto_fix_agent_task_ids([t.id for t in items if isinstance(t, m.UnitTask)])
    last_fix = {u: agents[-1] for u, agents in fixes.items() if agents}
    fix_runs = await latest_sessions(list(last_fix.values()))
    return await _waits(
        items, latest, {u: fix_runs[a] for u, a in last_fix.items() if a in fix_runs}
    )


def _runs_of(task: Task) -> UUID:
    return task.agent_task_id if isinstance(task, m.UnitTask) else task.planning_task_id


async def _waits(
    items: Sequence[Task],
    latest: Mapping[UUID, m.AgentSession],
    auto_fix_runs: Mapping[UUID, m.AgentSession],
) -> dict[UUID, job_waits.Wait]:
    """``auto_fix_runs``: the latest run of each unit task's latest auto-fix, by unit task
    id; a task whose own run does not wait shows the wait of that one."""
    queued = await job_waits.waits_of([*latest.values(), *auto_fix_runs.values()])
    result: dict[UUID, job_waits.Wait] = {}
    for task in items:
        session = latest.get(_runs_of(task))
        if session is None or session.id not in queued:
            session = auto_fix_runs.get(task.id)
        if session is not None and session.id in queued:
            result[task.id] = queued[session.id]
    unstarted = [
        t
        for t in items
        if isinstance(t, m.UnitTask)
        and t.composite_task_id is not None
        and t.status == S.IN_PROGRESS
        and t.agent_task_id not in latest
    ]
    result.update(await _dependency_waits(unstarted))
    return result


async def _dependency_waits(nodes: Sequence[m.UnitTask]) -> dict[UUID, job_waits.Wait]:
    """Composite nodes without a run whose dependencies have not all finished (one query)."""
    if not nodes:
        return {}
    rows = await m.CompositeTaskNodeDependency.filter(
        node__unit_task_id__in=[n.id for n in nodes]
    ).values("node__unit_task_id", "depends_on_node__plan_id", "depends_on_node__unit_task__status")
    pending: dict[UUID, list[str]] = {}
    for row in rows:
        if row["depends_on_node__unit_task__status"] != S.DONE.value:
            unit_id = UUID(str(row["node__unit_task_id"]))
            pending.setdefault(unit_id, []).append(str(row["depends_on_node__plan_id"]))
    return {
        n.id: job_waits.dependency_wait(since=n.created_at, waiting_for=sorted(pending[n.id]))
        for n in nodes
        if n.id in pending
    }


# Read model -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskBundle:
    """Everything needed to show a set of tasks, loaded in a fixed number of queries."""

    agents: dict[UUID, m.AgentTask]
    remotes: dict[UUID, list[m.AgentTaskBaseRemote]]
    sessions: dict[UUID, list[m.AgentSession]]
    auto_fix: dict[UUID, list[UUID]]
    nodes: dict[UUID, list[NodeView]]
    waits: dict[UUID, job_waits.Wait]
    """Why a task (by id; also a node) waits: see ``task_waits``."""
    estimates: dict[UUID, estimate_service.PlanEstimate]
    """Of composite tasks whose plan waits for approval (see ``services/estimates.py``)."""
    usage: dict[UUID, usage_service.Usage]
    """Usage by session id, unit task id (its runs, auto-fix included) and composite task
    id (planning and nodes); what used nothing is absent (``usage_of``)."""
    gone: frozenset[UUID] = frozenset()
    """Tasks deleted while the bundle was read: their rows are partly missing."""

    def usage_of(self, id: UUID) -> usage_service.Usage:
        """Usage of a session, unit task or composite task of the bundle."""
        return self.usage.get(id, usage_service.NONE)

    def latest(self, agent_task_id: UUID) -> m.AgentSession | None:
        runs = self.sessions.get(agent_task_id) or []
        return runs[-1] if runs else None

    def scheduling(self, task: Task) -> m.AgentTask:
        """The AgentTask that holds the task's priority, labels and run time limit."""
        return self.agents[_runs_of(task)]

    def shown(self, items: Sequence[Task]) -> list[Task]:
        """``items`` without those deleted while the bundle was read."""
        return [t for t in items if t.id not in self.gone]


async def load_task_bundle(items: Sequence[Task]) -> TaskBundle:
    """Everything needed to show ``items``; tasks deleted meanwhile are named in ``gone``
    (a concurrent delete removes their AgentTasks between our reads)."""
    composite_ids = [t.id for t in items if isinstance(t, m.CompositeTask)]
    nodes = await composite_nodes(composite_ids)
    units = [t for t in items if isinstance(t, m.UnitTask)]
    units += [v.unit_task for views in nodes.values() for v in views]
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id__in=[u.id for u in units]).order_by(
        "created_at"
    )
    auto_fix: dict[UUID, list[UUID]] = {}
    for fix in fixes:
        auto_fix.setdefault(fix.unit_task_id, []).append(fix.agent_task_id)
    agent_ids = {u.agent_task_id for u in units}
    agent_ids |= {t.planning_task_id for t in items if isinstance(t, m.CompositeTask)}
    agent_ids |= {f.agent_task_id for f in fixes}
    ids = list(agent_ids)
    agents = {a.id: a for a in await m.AgentTask.filter(id__in=ids)} if ids else {}
    remotes: dict[UUID, list[m.AgentTaskBaseRemote]] = {a: [] for a in ids}
    sessions: dict[UUID, list[m.AgentSession]] = {a: [] for a in ids}
    if ids:
        for remote in await m.AgentTaskBaseRemote.filter(agent_task_id__in=ids):
            remotes[remote.agent_task_id].append(remote)
        for session in await m.AgentSession.filter(agent_task_id__in=ids).order_by("attempt"):
            sessions[session.agent_task_id].append(session)

    def agents_of(unit: m.UnitTask) -> list[UUID]:
        return [unit.agent_task_id, *auto_fix.get(unit.id, [])]

    def complete(task: Task) -> bool:
        if isinstance(task, m.UnitTask):
            needed = agents_of(task)
        else:
            needed = [task.planning_task_id]
            needed += [a for v in nodes.get(task.id, []) for a in agents_of(v.unit_task)]
        return all(a in agents for a in needed)

    shown = [*items, *(v.unit_task for views in nodes.values() for v in views)]
    latest = {a: runs[-1] for a, runs in sessions.items() if runs}
    usage = await usage_service.session_usage([s.id for runs in sessions.values() for s in runs])
    usage |= await usage_service.unit_task_usage([u.id for u in units])
    usage |= await usage_service.composite_task_usage(composite_ids)
    estimates: dict[UUID, estimate_service.PlanEstimate] = {}
    for composite in items:
        if isinstance(composite, m.CompositeTask):
            estimate = await estimate_service.estimate_plan(composite)
            if estimate is not None:
                estimates[composite.id] = estimate
    return TaskBundle(
        agents=agents,
        remotes=remotes,
        sessions=sessions,
        auto_fix=auto_fix,
        nodes=nodes,
        waits=await _waits(
            shown,
            latest,
            {u: latest[a[-1]] for u, a in auto_fix.items() if a and a[-1] in latest},
        ),
        usage=usage,
        estimates=estimates,
        gone=frozenset(t.id for t in items if not complete(t)),
    )


async def load_task_view(task: Task) -> TaskBundle:
    """What showing one task needs, just after it was read or changed.

    Raises: NotFound (the task was deleted meanwhile, e.g. by a concurrent DeleteTask).
    """
    bundle = await load_task_bundle([task])
    if task.id in bundle.gone:
        raise NotFound(f"task {task.id} not found (it was deleted)", field="task_id")
    return bundle
