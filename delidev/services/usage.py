"""Usage and cost: what each run used, reported by its worker as the run goes, and the
totals people look at — per run, unit task (its auto-fix runs included), composite task
(planning and every node), workspace and day.

A report is stored as it arrives (a worker that dies mid-run has its usage so far
counted), under the job's lease, and at most once: the worker names each report, and a
report sent again under the same name is not counted again. Money is fixed-point: micros
(millionths) of the currency unit, integers end to end. Each report records whom it counts
for when it is stored, so every total is one indexed sum, and the totals of any list of
tasks one statement.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from tortoise.connection import connections
from tortoise.exceptions import IntegrityError
from tortoise.functions import Count, Sum

from delidev import events, metrics
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import Conflict, InvalidArgument
from delidev.services import budgets, common
from delidev.services.workspaces import get_workspace

MAX_TOKENS = 10**12  # in one report: far above any run, far below int64
MAX_COST_MICROS = 10**13  # in one report: 10 million currency units
MAX_MODEL_CHARS = 255
MAX_DAYS = 366
DEFAULT_DAYS = 30
_REPORT_ID = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micros: int = 0
    reports: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(_values(self), _values(other), strict=True)))


NONE = Usage()


def _values(usage: Usage) -> tuple[int, ...]:
    return dataclasses.astuple(usage)


def total(usages: Iterable[Usage]) -> Usage:
    summed = NONE
    for usage in usages:
        summed = summed + usage
    return summed


@dataclass(frozen=True, slots=True)
class UsageReport:
    """One report as a worker sends it."""

    report_id: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cost_micros: int = 0

    def checked(self) -> UsageReport:
        """Raises: InvalidArgument naming the field."""
        if not _REPORT_ID.fullmatch(self.report_id):
            raise InvalidArgument(
                "report_id must be 1 to 64 printable ASCII characters without spaces",
                field="report_id",
            )
        model = common.check_text(self.model, "model", max_length=MAX_MODEL_CHARS)
        for name in _COUNTS:
            value = getattr(self, name)
            if not 0 <= value <= MAX_TOKENS:
                raise InvalidArgument(f"{name} must be between 0 and {MAX_TOKENS}", field=name)
        if not 0 <= self.cost_micros <= MAX_COST_MICROS:
            raise InvalidArgument(
                f"cost_micros must be between 0 and {MAX_COST_MICROS}", field="cost_micros"
            )
        return dataclasses.replace(self, model=model)

    def same_as(self, record: m.UsageRecord) -> bool:
        return record.model == self.model and all(
            getattr(record, name) == getattr(self, name) for name in (*_COUNTS, "cost_micros")
        )


@dataclass(frozen=True, slots=True)
class _Owner:
    workspace_id: UUID
    unit_task_id: UUID | None
    composite_task_id: UUID | None


async def record_usage(
    *, worker_id: UUID, session_id: UUID, lease_token: str, report: UsageReport
) -> tuple[bool, Usage]:
    """Counts ``report`` for the run this worker holds under this lease; returns whether it
    was counted now (False: the same report was counted before) and the run's usage so far.

    Raises: InvalidArgument (a bad value, or a report id used before for other usage),
    Conflict (stale lease), NotFound.
    """
    # Imported here: the task read model (tasks.views) imports this module for its totals,
    # and the workers package imports the tasks package.
    from delidev.services.workers.jobs import leased_session

    report = report.checked()
    session = await leased_session(
        worker_id=worker_id, session_id=session_id, lease_token=lease_token
    )
    owner = await _owner_of(session.agent_task_id)
    try:  # one INSERT: atomic alone; the unique (session, report_id) catches a repeat
        await m.UsageRecord.create(
            session_id=session.id,
            report_id=report.report_id,
            workspace_id=owner.workspace_id,
            unit_task_id=owner.unit_task_id,
            composite_task_id=owner.composite_task_id,
            ai_agent_type=session.ai_agent_type,
            model=report.model,
            **{name: getattr(report, name) for name in (*_COUNTS, "cost_micros")},
        )
        counted = True
    except IntegrityError:
        earlier = await m.UsageRecord.get_or_none(session_id=session.id, report_id=report.report_id)
        if earlier is None:  # not a repeat: the run went away meanwhile
            await leased_session(
                worker_id=worker_id, session_id=session_id, lease_token=lease_token
            )
            raise Conflict("the run changed while its usage was stored: try again") from None
        if not report.same_as(earlier):
            raise InvalidArgument(
                f"report_id {report.report_id!r} was already used for other usage of this run",
                field="report_id",
            ) from None
        counted = False
    if counted:
        metrics.usage_reported(
            session.ai_agent_type.value,
            report.model,
            {name.removesuffix("_tokens"): getattr(report, name) for name in _COUNTS},
            report.cost_micros,
        )
        await budgets.after_report(
            workspace_id=owner.workspace_id,
            unit_task_id=owner.unit_task_id,
            composite_task_id=owner.composite_task_id,
        )
        for task_id in (owner.unit_task_id, owner.composite_task_id):
            if task_id is not None:
                events.publish(
                    events.TaskChanged(task_id=str(task_id), workspace_id=str(owner.workspace_id))
                )
    return counted, (await session_usage([session.id])).get(session.id, NONE)


async def _owner_of(agent_task_id: UUID) -> _Owner:
    """Whom a run of this AgentTask counts for. Raises: NotFound (its task is gone)."""
    unit = await m.UnitTask.filter(agent_task_id=agent_task_id).values(
        "id", "workspace_id", "composite_task_id"
    ) or await m.UnitTask.filter(auto_fix_tasks__agent_task_id=agent_task_id).values(
        "id", "workspace_id", "composite_task_id"
    )
    if unit:
        row = unit[0]
        return _Owner(row["workspace_id"], row["id"], row["composite_task_id"])
    composite = await common.get_row(m.CompositeTask, planning_task_id=agent_task_id)
    return _Owner(composite.workspace_id, None, composite.id)


# Totals ----------------------------------------------------------------------------------------


async def _sums(key: str, ids: Sequence[UUID]) -> dict[UUID, Usage]:
    """Usage summed per ``key`` (a column of usage_records) for ``ids``: one statement."""
    if not ids:
        return {}
    rows = (
        await m.UsageRecord.filter(**{f"{key}__in": list(set(ids))})
        .annotate(
            **{f"sum_{name}": Sum(name) for name in (*_COUNTS, "cost_micros")},
            reports=Count("id"),
        )
        .group_by(key)
        .values(key, *(f"sum_{name}" for name in (*_COUNTS, "cost_micros")), "reports")
    )
    return {row[key]: _usage(row) for row in rows}


def _usage(row: dict[str, Any]) -> Usage:
    # PostgreSQL sums bigints as numeric (Decimal): back to int, exactly.
    def summed(name: str) -> int:
        return int(row[f"sum_{name}"] or 0)

    return Usage(
        input_tokens=summed("input_tokens"),
        output_tokens=summed("output_tokens"),
        cache_read_tokens=summed("cache_read_tokens"),
        cache_write_tokens=summed("cache_write_tokens"),
        cost_micros=summed("cost_micros"),
        reports=int(row["reports"] or 0),
    )


async def session_usage(session_ids: Sequence[UUID]) -> dict[UUID, Usage]:
    return await _sums("session_id", session_ids)


async def unit_task_usage(unit_task_ids: Sequence[UUID]) -> dict[UUID, Usage]:
    """All runs of each unit task: its own attempts and its auto-fix runs."""
    return await _sums("unit_task_id", unit_task_ids)


async def composite_task_usage(composite_task_ids: Sequence[UUID]) -> dict[UUID, Usage]:
    """All runs of each composite task: its planning runs and every node's runs."""
    return await _sums("composite_task_id", composite_task_ids)


@dataclass(frozen=True, slots=True)
class ModelUsage:
    ai_agent_type: m.AiAgentType
    model: str
    usage: Usage


@dataclass(frozen=True, slots=True)
class WorkspaceUsage:
    total: Usage
    days: list[tuple[dt.date, Usage]]
    """Days with usage, oldest first (UTC)."""
    models: list[ModelUsage]
    """Per agent type and model, the most expensive first."""


_DAY_SQL = {
    "postgres": "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
    "sqlite": "substr(created_at, 1, 10)",
}
_SUMS_SQL = ", ".join(f"SUM({name}) AS sum_{name}" for name in (*_COUNTS, "cost_micros"))


def check_days(days: int | None) -> int:
    """The period asked for, in days (0 or None: 30). Raises: InvalidArgument."""
    days = days or DEFAULT_DAYS
    if not 1 <= days <= MAX_DAYS:
        raise InvalidArgument(f"days must be between 1 and {MAX_DAYS}", field="days")
    return days


async def workspace_usage(
    *, actor: Principal, workspace_id: UUID, days: int | None = None
) -> WorkspaceUsage:
    """The workspace's usage over its last ``days`` days (UTC, today included; default 30):
    the total, per day and per model, in two statements whatever the volume.

    Raises: InvalidArgument (days out of range), NotFound.
    """
    days = check_days(days)
    await get_workspace(actor=actor, workspace_id=workspace_id)
    return (await workspaces_usage([workspace_id], days))[workspace_id]


async def workspaces_usage(workspace_ids: Sequence[UUID], days: int) -> dict[UUID, WorkspaceUsage]:
    """``workspace_usage`` of several workspaces at once, in two statements (for DataLoaders,
    whose callers checked access; ``days`` checked by ``check_days``)."""
    ids = list(dict.fromkeys(workspace_ids))
    if not ids:
        return {}
    today = common.now().astimezone(dt.UTC).date()
    since = dt.datetime.combine(today - dt.timedelta(days=days - 1), dt.time(), dt.UTC)
    conn = connections.get("default")
    params: list[Any]
    if conn.capabilities.dialect == "postgres":
        day_sql = _DAY_SQL["postgres"]
        where = "workspace_id = ANY($1::uuid[]) AND created_at >= $2"
        params = [ids, since]
    else:  # stored as text: compared in the stored form
        day_sql = _DAY_SQL["sqlite"]
        where = f"workspace_id IN ({', '.join('?' for _ in ids)}) AND created_at >= ?"
        params = [*map(str, ids), since.isoformat(sep=" ")]
    per_day = await conn.execute_query_dict(
        f"SELECT workspace_id, {day_sql} AS day, {_SUMS_SQL}, COUNT(*) AS reports"
        f" FROM usage_records WHERE {where} GROUP BY workspace_id, day ORDER BY day",
        params,
    )
    per_model = await conn.execute_query_dict(
        f"SELECT workspace_id, ai_agent_type, model, {_SUMS_SQL}, COUNT(*) AS reports"
        f" FROM usage_records WHERE {where} GROUP BY workspace_id, ai_agent_type, model",
        params,
    )
    day_lists: dict[UUID, list[tuple[dt.date, Usage]]] = {i: [] for i in ids}
    for row in per_day:
        day_lists[UUID(str(row["workspace_id"]))].append(
            (dt.date.fromisoformat(row["day"]), _usage(row))
        )
    model_lists: dict[UUID, list[ModelUsage]] = {i: [] for i in ids}
    for row in per_model:
        model_lists[UUID(str(row["workspace_id"]))].append(
            ModelUsage(m.AiAgentType(row["ai_agent_type"]), row["model"], _usage(row))
        )
    found: dict[UUID, WorkspaceUsage] = {}
    for i in ids:
        models = sorted(
            model_lists[i], key=lambda u: (-u.usage.cost_micros, u.ai_agent_type.value, u.model)
        )
        found[i] = WorkspaceUsage(
            total=total(u for _, u in day_lists[i]), days=day_lists[i], models=models
        )
    return found
