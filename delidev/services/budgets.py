"""Budgets: what a workspace's runs may spend per period, and what one task may spend.

- **Per task** (``workspaces.task_budget_micros``): a task's runs together (a composite's
  planning and all its nodes) may spend this much. The report that takes a task over it
  asks every running run of that task to stop (reason ``budget``), and only those: the
  other tasks' runs go on. Each report is committed before it sums its task, so of two
  reports racing past the limit at least the later sees both, and stops the runs.
- **Per workspace** (``monthly_budget_micros`` per ``budget_period``, the calendar month in
  UTC or the last 30 days): once spending reaches it, no new run of the workspace starts
  (the claim skips it, and its queued jobs say they wait for ``budget``) until the budget
  is raised or the period turns (``budget_blocked_until``). Running runs finish.
- **Warning**: when spending first reaches ``budget_warning_percent`` of the budget in a
  period, the workspace records it (``budget_warned_at``) and a ``BudgetWarning`` event is
  published.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any
from uuid import UUID

from tortoise.connection import connections
from tortoise.functions import Sum

from delidev import events
from delidev import models as m
from delidev.errors import InvalidArgument
from delidev.services import common

log = logging.getLogger(__name__)

ROLLING_DAYS = 30
MAX_BUDGET_MICROS = 10**15  # a billion currency units: no cap in practice


def period_start(period: m.BudgetPeriod, now: dt.datetime) -> dt.datetime:
    """Where the budget period that holds ``now`` begins (UTC)."""
    now = now.astimezone(dt.UTC)
    if period == m.BudgetPeriod.ROLLING_30_DAYS:
        return now - dt.timedelta(days=ROLLING_DAYS)
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def _next_month(now: dt.datetime) -> dt.datetime:
    start = period_start(m.BudgetPeriod.MONTH, now)
    return (start + dt.timedelta(days=32)).replace(day=1)


def _sql(dialect: str, sql: str) -> str:
    """``sql`` with ``$n`` placeholders, as SQLite wants them (``?``, in order)."""
    return sql if dialect == "postgres" else re.sub(r"\$\d+", "?", sql)


def _params(dialect: str, *values: Any) -> list[Any]:
    """Parameters as each driver wants them: SQLite compares stored text (UUIDs and
    timestamps as Tortoise writes them)."""
    if dialect == "postgres":
        return list(values)
    out: list[Any] = []
    for v in values:
        if isinstance(v, UUID):
            out.append(str(v))
        elif isinstance(v, dt.datetime):
            out.append(v.isoformat(" "))
        else:
            out.append(v)
    return out


async def _spent(**where: Any) -> int:
    """Micros spent by the usage records ``where`` selects: one summing statement."""
    rows = await m.UsageRecord.filter(**where).annotate(spent=Sum("cost_micros")).values("spent")
    return int(rows[0]["spent"] or 0) if rows else 0


async def spent(workspace_id: UUID, since: dt.datetime) -> int:
    """Micros the workspace's runs spent since ``since``."""
    return await _spent(workspace_id=workspace_id, created_at__gte=since)


async def task_spent(*, unit_task_id: UUID | None, composite_task_id: UUID | None) -> int:
    """Micros the top-level task spent: a composite with its nodes, or a unit task."""
    if composite_task_id is not None:
        return await _spent(composite_task_id=composite_task_id)
    return await _spent(unit_task_id=unit_task_id)


async def after_report(
    *,
    workspace_id: UUID,
    unit_task_id: UUID | None,
    composite_task_id: UUID | None,
) -> None:
    """What a counted report changes: the task's runs stopped when it is over its budget,
    the workspace blocked when over its budget, a warning at the threshold."""
    workspace = await m.Workspace.get_or_none(id=workspace_id)
    if workspace is None:
        return
    if workspace.task_budget_micros is not None:
        used = await task_spent(unit_task_id=unit_task_id, composite_task_id=composite_task_id)
        if used >= workspace.task_budget_micros:
            await _stop_task_runs(
                unit_task_id=unit_task_id,
                composite_task_id=composite_task_id,
                used=used,
                budget=workspace.task_budget_micros,
            )
    if workspace.monthly_budget_micros is not None:
        await check_workspace(workspace)


async def _stop_task_runs(
    *, unit_task_id: UUID | None, composite_task_id: UUID | None, used: int, budget: int
) -> None:
    """Asks every running run of the task (a composite: its planning and its nodes) to stop
    for its budget; a stop asked before keeps its reason."""
    agents: list[UUID] = []
    units: list[UUID] = []
    if composite_task_id is not None:
        composite = await m.CompositeTask.get_or_none(id=composite_task_id)
        if composite is None:
            return
        agents.append(composite.planning_task_id)
        for unit_id, agent_id in await m.UnitTask.filter(
            composite_task_id=composite_task_id
        ).values_list("id", "agent_task_id"):
            units.append(UUID(str(unit_id)))
            agents.append(UUID(str(agent_id)))
    else:
        unit = await m.UnitTask.get_or_none(id=unit_task_id)
        if unit is None:
            return
        agents.append(unit.agent_task_id)
        units.append(unit.id)
    fixes = await m.UnitTaskAutoFixTask.filter(unit_task_id__in=units).values_list(
        "agent_task_id", flat=True
    )
    agents.extend(UUID(str(a)) for a in fixes)
    running = await m.AgentSession.filter(
        agent_task_id__in=agents, status=m.AgentSessionStatus.RUNNING, stop_requested=False
    ).values_list("id", flat=True)
    now = common.now()
    for session_id in running:
        if await m.AgentSession.filter(
            id=session_id, status=m.AgentSessionStatus.RUNNING, stop_requested=False
        ).update(
            **common.changed(
                stop_requested=True,
                stop_reason=m.StopReason.BUDGET.value,
                stop_requested_at=now,
            )
        ):
            log.info(
                "run %s asked to stop: its task spent %s of its budget of %s",
                session_id,
                format_money(used),
                format_money(budget),
            )
            # Imported here: services.workspaces imports this module, and sessions import it.
            from delidev.services import sessions as session_service

            await session_service.announce_session(
                await common.get_row(m.AgentSession, id=session_id)
            )


def format_money(micros: int) -> str:
    """``12.345678`` style, exactly (micros are integers)."""
    sign = "-" if micros < 0 else ""
    units, rest = divmod(abs(micros), 1_000_000)
    return f"{sign}${units}.{rest:06d}"


async def check_workspace(workspace: m.Workspace, *, now: dt.datetime | None = None) -> None:
    """Blocks (or unblocks) the workspace's new runs by what it spent in its period, and
    raises the period's warning once. Publishes JobQueued when the block changed, so the
    waits and the workers hear it."""
    now = now or common.now()
    budget = workspace.monthly_budget_micros
    blocked_until: dt.datetime | None = None
    if budget is not None:
        start = period_start(workspace.budget_period, now)
        used = await spent(workspace.id, start)
        if used >= budget:
            blocked_until = await _blocked_until(workspace, start, used, budget, now)
        threshold = budget * workspace.budget_warning_percent // 100
        warned = workspace.budget_warned_at
        first = used >= threshold and (warned is None or warned < start)
        if first and await m.Workspace.filter(id=workspace.id, budget_warned_at=warned).update(
            budget_warned_at=now
        ):
            log.warning("workspace %s spent %s of its budget of %s", workspace.id, used, budget)
            events.publish(
                events.BudgetWarning(
                    workspace_id=str(workspace.id), spent_micros=used, budget_micros=budget
                )
            )
    if blocked_until != workspace.budget_blocked_until:
        await m.Workspace.filter(id=workspace.id).update(budget_blocked_until=blocked_until)
        workspace.budget_blocked_until = blocked_until
        events.publish(events.JobQueued())


async def _blocked_until(
    workspace: m.Workspace, start: dt.datetime, used: int, budget: int, now: dt.datetime
) -> dt.datetime:
    """When spending falls back under the budget by itself: the next month, or (rolling)
    when enough of the oldest spending leaves the 30-day window."""
    if workspace.budget_period == m.BudgetPeriod.MONTH:
        return _next_month(now)
    conn = connections.get("default")
    dialect = "postgres" if conn.capabilities.dialect == "postgres" else "sqlite"
    # The first report whose leaving (with all older ones) takes the sum under the budget.
    rows = await conn.execute_query_dict(
        _sql(
            dialect,
            "SELECT created_at FROM (SELECT created_at, SUM(cost_micros) OVER"
            " (ORDER BY created_at, id) AS leaving FROM usage_records"
            " WHERE workspace_id = $1 AND created_at >= $2) t"
            " WHERE $3 - leaving < $4 ORDER BY created_at LIMIT 1",
        ),
        _params(dialect, workspace.id, start, used, budget),
    )
    if not rows:
        return now + dt.timedelta(days=ROLLING_DAYS)
    value = rows[0]["created_at"]
    left = dt.datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(left, dt.datetime)
    if left.tzinfo is None:
        left = left.replace(tzinfo=dt.UTC)
    return left + dt.timedelta(days=ROLLING_DAYS)


async def blocked_workspaces(now: dt.datetime) -> dict[UUID, dt.datetime]:
    """Workspaces whose new runs wait for their budget now: id → until when."""
    rows = await m.Workspace.filter(budget_blocked_until__gt=now).values_list(
        "id", "budget_blocked_until"
    )
    return {UUID(str(w)): until for w, until in rows}


def check_budget(value: int, field: str) -> int | None:
    """A budget in micros: 0 = none. Raises: InvalidArgument."""
    if not 0 <= value <= MAX_BUDGET_MICROS:
        raise InvalidArgument(
            f"{field} must be between 0 (none) and {MAX_BUDGET_MICROS} micros", field=field
        )
    return value or None


def check_warning_percent(value: int) -> int:
    if not 1 <= value <= 100:
        raise InvalidArgument(
            "budget_warning_percent must be between 1 and 100", field="budget_warning_percent"
        )
    return value
