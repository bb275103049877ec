"""Live updates of tasks, TTY questions and workers: the events that name them, batched and
re-read with the subscriber's permissions (GraphQL subscriptions iterate these; a session's
log is followed through ``services.live``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import auth as auth_service
from delidev.services import sessions as session_service
from delidev.services import tasks as task_service
from delidev.services import workers as worker_service
from delidev.services.workers.registry import visible_tasks
from delidev.services.workspaces import get_workspace


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    task_id: UUID
    task: task_service.Task | None  # None: the task was deleted


async def _updates(
    watch: events.Watch, ids_of: Callable[[events.Event], list[str]]
) -> AsyncIterator[list[UUID]]:
    """Batches of ids named by the watch's events, in order, without repeats in a batch.

    Ends after the batch that holds a ``WorkspaceDeleted``: the workspace's tasks were
    announced before it, and nothing in it can change any more.
    """
    with watch:
        while True:
            await watch.wait()
            batch = watch.drain()
            if watch.overflowed:
                raise FailedPrecondition(
                    "the subscription fell too far behind its events and was closed; "
                    "subscribe again"
                )
            ids: list[UUID] = []
            gone = False
            for event in batch:
                gone = gone or isinstance(event, events.WorkspaceDeleted)
                for raw in ids_of(event):
                    with contextlib.suppress(ValueError):
                        uid = UUID(raw)
                        if uid not in ids:
                            ids.append(uid)
            if ids:
                yield ids
            if gone:
                return


async def task_updates(
    *,
    actor: Principal,
    bus: events.EventBus,
    task_id: UUID | None = None,
    workspace_id: UUID | None = None,
) -> AsyncIterator[TaskUpdate]:
    """Each change of one task, or of any task of a workspace (status, sessions, nodes).

    Every event is re-read with the caller's permissions; a deleted task comes as an update
    without a task (and ends a one-task subscription). Raises: InvalidArgument,
    Unauthenticated, NotFound, FailedPrecondition (the subscriber fell behind).
    """
    if (task_id is None) == (workspace_id is None):
        raise InvalidArgument("give exactly one of task_id and workspace_id", field="task_id")
    await auth_service.ensure_still_signed_in(actor=actor)
    if task_id is not None:
        await task_service.get_task(actor=actor, task_id=task_id)
        watch = bus.watch(("task", str(task_id)))
    else:
        assert workspace_id is not None
        await get_workspace(actor=actor, workspace_id=workspace_id)
        watch = bus.watch(("workspace-tasks", str(workspace_id)))

    def ids_of(event: events.Event) -> list[str]:
        if isinstance(event, events.TaskChanged):
            return [event.task_id]
        if isinstance(event, events.Resync) and task_id is not None:
            return [str(task_id)]  # events may have been lost: send the current state
        return []

    async for ids in _updates(watch, ids_of):
        for changed in ids:
            try:
                task = await task_service.get_task(actor=actor, task_id=changed)
            except NotFound:
                yield TaskUpdate(task_id=changed, task=None)
                if task_id is not None:
                    return
                continue
            yield TaskUpdate(task_id=changed, task=task)


async def tty_requests(
    *, actor: Principal, bus: events.EventBus, workspace_id: UUID
) -> AsyncIterator[m.TtyInputRequest]:
    """Questions asked in the workspace, as they are asked.

    Raises: Unauthenticated, NotFound, FailedPrecondition (the subscriber fell behind)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    await get_workspace(actor=actor, workspace_id=workspace_id)
    watch = bus.watch(("workspace-tty", str(workspace_id)))

    def ids_of(event: events.Event) -> list[str]:
        return [event.request_id] if isinstance(event, events.TtyChanged) else []

    async for ids in _updates(watch, ids_of):
        for request_id in ids:
            try:
                request = await session_service.get_tty_request(actor=actor, request_id=request_id)
            except NotFound:
                continue
            if request.status == m.TtyInputStatus.PENDING:
                yield request


async def budget_warnings(
    *, actor: Principal, bus: events.EventBus, workspace_id: UUID
) -> AsyncIterator[events.BudgetWarning]:
    """The workspace's budget warnings (spending reached its threshold), as they happen.

    Raises: Unauthenticated, NotFound, FailedPrecondition (the subscriber fell behind)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    await get_workspace(actor=actor, workspace_id=workspace_id)
    with bus.watch(("workspace-budget", str(workspace_id))) as watch:
        while True:
            await watch.wait()
            batch = watch.drain()
            if watch.overflowed:
                raise FailedPrecondition(
                    "the subscription fell too far behind its events and was closed; "
                    "subscribe again"
                )
            for event in batch:
                if isinstance(event, events.BudgetWarning):
                    yield event


@dataclass(frozen=True, slots=True)
class WorkerUpdate:
    worker_id: UUID
    worker: m.Worker | None  # None: it unregistered
    current_task_id: UUID | None = None
    """The task the worker runs, when the subscriber may see it: the fleet is shared between
    tenants, their tasks are not."""


async def worker_updates(*, actor: Principal, bus: events.EventBus) -> AsyncIterator[WorkerUpdate]:
    """Registrations, status changes and departures of workers.

    Raises: Unauthenticated, FailedPrecondition (the subscriber fell behind)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    watch = bus.watch(("workers",))

    def ids_of(event: events.Event) -> list[str]:
        return [event.worker_id] if isinstance(event, events.WorkerChanged) else []

    async for ids in _updates(watch, ids_of):
        for worker_id in ids:
            try:
                worker = await worker_service.get_worker(worker_id=worker_id)
            except NotFound:
                yield WorkerUpdate(worker_id=worker_id, worker=None)
                continue
            shown = await visible_tasks(actor=actor, workers=[worker])
            yield WorkerUpdate(
                worker_id=worker_id, worker=worker, current_task_id=shown.get(worker.id)
            )
