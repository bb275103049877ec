"""Workspaces: the tenant boundary. Everything else hangs under a workspace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument, NotFound
from delidev.services import budgets as budget_rules
from delidev.services import cascade, prepared
from delidev.services.common import (
    MAX_TEXT_LENGTH,
    Page,
    check_optional_text,
    check_text,
    owner_filter,
    paginate,
    transaction,
)

# The highest cap on a workspace's concurrent jobs (a bigger one is no cap in practice).
MAX_CONCURRENT_JOBS = 10_000


def _check_cap(value: int) -> int | None:
    """A workspace's cap on running jobs: 0 = none. Raises: InvalidArgument."""
    if not 0 <= value <= MAX_CONCURRENT_JOBS:
        raise InvalidArgument(
            f"max_concurrent_jobs must be between 0 (no cap) and {MAX_CONCURRENT_JOBS}",
            field="max_concurrent_jobs",
        )
    return value or None


async def create_workspace(
    *,
    actor: Principal,
    name: str,
    description: str | None = None,
    max_concurrent_jobs: int | None = None,
    monthly_budget_micros: int | None = None,
    budget_period: m.BudgetPeriod | None = None,
    task_budget_micros: int | None = None,
    budget_warning_percent: int | None = None,
) -> m.Workspace:
    """``max_concurrent_jobs``: at most this many of its jobs run at once (None or 0: no cap).
    The budgets (micros; None or 0: none) are explained in ``services/budgets.py``.

    Raises: InvalidArgument.
    """
    name = check_text(name, "name")
    description = check_optional_text(description, "description", max_length=MAX_TEXT_LENGTH)
    cap = None if max_concurrent_jobs is None else _check_cap(max_concurrent_jobs)
    budgets = _budget_changes(
        monthly_budget_micros, budget_period, task_budget_micros, budget_warning_percent
    )
    owner_filter(actor)  # refuses worker credentials
    return await m.Workspace.create(
        name=name,
        description=description,
        user_id=actor.user_id,
        max_concurrent_jobs=cap,
        **budgets,
    )


def _budget_changes(
    monthly: int | None, period: m.BudgetPeriod | None, task: int | None, percent: int | None
) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    if monthly is not None:
        changes["monthly_budget_micros"] = budget_rules.check_budget(
            monthly, "monthly_budget_micros"
        )
    if period is not None:
        changes["budget_period"] = period
    if task is not None:
        changes["task_budget_micros"] = budget_rules.check_budget(task, "task_budget_micros")
    if percent is not None:
        changes["budget_warning_percent"] = budget_rules.check_warning_percent(percent)
    return changes


async def list_workspaces(
    *, actor: Principal, limit: int | None = None, offset: int | None = None
) -> Page[m.Workspace]:
    """The actor's workspaces, oldest first. Raises: InvalidArgument."""
    query = m.Workspace.filter(**owner_filter(actor))
    return await paginate(query, limit, offset, long_text=("description",))


async def get_workspace(*, actor: Principal, workspace_id: UUID) -> m.Workspace:
    """Raises: NotFound (also for another user's workspace)."""
    workspace = await prepared.get_one(m.Workspace, id=workspace_id, **owner_filter(actor))
    if workspace is None:
        raise NotFound(f"workspace {workspace_id} not found", field="workspace_id")
    return workspace


async def workspaces_by_id(workspace_ids: Sequence[UUID]) -> dict[UUID, m.Workspace]:
    """Workspaces by id (one query; for DataLoaders, whose callers checked access)."""
    if not workspace_ids:
        return {}
    return {w.id: w for w in await m.Workspace.filter(id__in=list(workspace_ids))}


async def update_workspace(
    *,
    actor: Principal,
    workspace_id: UUID,
    name: str | None = None,
    description: str | None = None,
    max_concurrent_jobs: int | None = None,
    monthly_budget_micros: int | None = None,
    budget_period: m.BudgetPeriod | None = None,
    task_budget_micros: int | None = None,
    budget_warning_percent: int | None = None,
) -> m.Workspace:
    """Changes the fields given; an empty description clears it, a cap or budget of 0
    removes it. A budget changed is applied at once: new runs may start again (or not).

    Raises: InvalidArgument, NotFound.
    """
    changes: dict[str, object] = {}
    if name is not None:
        changes["name"] = check_text(name, "name")
    if description is not None:
        changes["description"] = check_optional_text(
            description, "description", max_length=MAX_TEXT_LENGTH
        )
    if max_concurrent_jobs is not None:
        changes["max_concurrent_jobs"] = _check_cap(max_concurrent_jobs)
    changes |= _budget_changes(
        monthly_budget_micros, budget_period, task_budget_micros, budget_warning_percent
    )
    workspace = await get_workspace(actor=actor, workspace_id=workspace_id)
    if changes:
        workspace.update_from_dict(changes)
        await workspace.save(update_fields=[*changes, "updated_at"])
    if {"monthly_budget_micros", "budget_period", "budget_warning_percent"} & changes.keys():
        await budget_rules.check_workspace(workspace)
    if "max_concurrent_jobs" in changes:
        # A new cap can free (or hold) queued jobs: workers and the wait reasons hear it.
        events.publish(events.JobQueued())
    return workspace


_UNITS_PER_STEP = 200
_COMPOSITES_PER_STEP = 10
"""Tasks removed per step of a workspace's deletion (a composite goes with its nodes)."""


async def delete_workspace(*, actor: Principal, workspace_id: UUID) -> None:
    """Deletes the workspace with everything under it: repositories, groups, todo
    items, tasks with their agent runs, logs and TTY requests.

    Announced as deleting each task would be: its active runs stop (their followers and
    workers hear at once), its questions are cancelled, every task reads as deleted.

    Raises: NotFound.
    """
    async with transaction():
        workspace = await get_workspace(actor=actor, workspace_id=workspace_id)
        # Locked first (PostgreSQL): a task being created under it commits before the read
        # below sees it, or waits and then finds the workspace gone. Without the lock a task
        # committed between the read and the delete went with the workspace's cascade and
        # left its queued run behind, with no task, for a worker to claim.
        if await m.Workspace.filter(id=workspace.id).select_for_update().first() is None:
            # A concurrent deletion came first (its commit released the lock).
            raise NotFound(f"workspace {workspace.id} not found", field="workspace_id")
        # Tasks hold their repository group with ON DELETE RESTRICT, so they go first: a
        # few at a time (composites, then their nodes by steps), so that other calls run
        # between the steps of a workspace with thousands of tasks (all at once held the
        # event loop for ~0.25 s per 2,000 tasks, twice). No task can join meanwhile: the
        # lock above.
        while (
            composites := await m.CompositeTask.filter(workspace_id=workspace.id)
            .order_by("id")
            .limit(_COMPOSITES_PER_STEP)
        ):
            if not await cascade.remove_composites(composites):
                break  # cannot happen under the lock; never loop on it
        while (
            units := await m.UnitTask.filter(workspace_id=workspace.id)
            .order_by("id")
            .limit(_UNITS_PER_STEP)
        ):
            if not await cascade.remove_tasks(units=units, composites=[]):
                break
        await workspace.delete()
        events.publish(events.WorkspaceDeleted(workspace_id=str(workspace.id)))
