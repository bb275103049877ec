"""Live updates of tasks, TTY questions and workers: the events that name them, batched and
re-read with the subscriber's permissions (GraphQL subscriptions iterate these; a session's
log is followed through ``services.live``).

A ``Resync`` (this replica's listener reconnected, or another replica dropped events) means
events may have been lost. A subscription then sends the current state of everything it
shows when it can read that exactly (one task; the workspace's pending questions; the
workspace's budget warning), and otherwise ends with ``FailedPrecondition`` (``LOST``),
which tells the client to subscribe again and reload what it shows: a workspace's tasks and
the fleet cannot be re-read exactly. A task or worker deleted meanwhile leaves no row to find,
and ``TaskChanged`` also stands for changes of sessions, nodes and questions that move no
timestamp of the task (and timestamps are taken by each replica's clock when a statement
runs, not in commit order), so "what changed since the last event" has no exact query.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound
from delidev.services import auth as auth_service
from delidev.services import budgets
from delidev.services import sessions as session_service
from delidev.services import tasks as task_service
from delidev.services import workers as worker_service
from delidev.services.common import MAX_PAGE_SIZE
from delidev.services.workers.registry import visible_tasks
from delidev.services.workspaces import get_workspace

LOST = (
    "events may have been lost (the server's connection to the event feed was interrupted): "
    "subscribe again and reload what you show"
)
BEHIND = "the subscription fell too far behind its events and was closed; subscribe again"


@dataclass(frozen=True, slots=True)
class TaskUpdate:
    task_id: UUID
    task: task_service.Task | None  # None: the task was deleted


@dataclass(frozen=True, slots=True)
class _Batch:
    ids: list[UUID]
    """Named by the batch's events, in order, without repeats."""
    resync: bool
    """Events may have been lost before this batch: what the subscription shows must be
    read again (or the subscription ended)."""
    since: float
    """When its latest event arrived (``time.monotonic``): a read started then or later
    sees what the batch announces (events are published after their commit)."""


T = TypeVar("T")


class _SharedReads:
    """One re-read per changed object and way of seeing it, for all the subscribers of the
    process that an event wakes together.

    Each subscriber used to re-read each changed task with its own query: an audit held
    10,000 workspace subscriptions and one task change cost 10,000 reads. A read is shared
    by the subscribers with the same key (the object and the user it is read for) when it
    started no earlier than the event they were woken by; reads are forgotten ``KEEP_S``
    after they started.
    """

    KEEP_S = 5.0

    def __init__(self) -> None:
        self._reads: OrderedDict[Hashable, tuple[float, asyncio.Future[Any]]] = OrderedDict()

    async def read(self, key: Hashable, since: float, load: Callable[[], Awaitable[T]]) -> T:
        held = self._reads.get(key)
        if held is None or held[0] < since:
            now = time.monotonic()
            future = asyncio.ensure_future(load())
            # Retrieved here too: every subscriber sharing it may have gone meanwhile.
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            held = self._reads[key] = (now, future)
            self._reads.move_to_end(key)
            while self._reads:
                oldest = next(iter(self._reads.values()))
                if oldest[0] >= now - self.KEEP_S:
                    break
                self._reads.popitem(last=False)
        # Shielded: a subscriber that goes away does not cancel the others' read.
        result: T = await asyncio.shield(held[1])
        return result


_shared = _SharedReads()


def _seen_by(actor: Principal) -> tuple[Hashable, ...]:
    """What an object read with ``actor``'s permissions depends on."""
    return (actor.user_id, actor.is_worker)


async def _updates(
    watch: events.Watch, ids_of: Callable[[events.Event], list[str]]
) -> AsyncIterator[_Batch]:
    """Batches of the watch's events.

    Ends after the batch that holds a ``WorkspaceDeleted``: the workspace's tasks were
    announced before it, and nothing in it can change any more.
    """
    with watch:
        while True:
            await watch.wait()
            batch = watch.drain()
            if watch.overflowed:
                raise FailedPrecondition(BEHIND)
            ids: list[UUID] = []
            gone = resync = False
            for event in batch:
                gone = gone or isinstance(event, events.WorkspaceDeleted)
                resync = resync or isinstance(event, events.Resync)
                for raw in ids_of(event):
                    with contextlib.suppress(ValueError):
                        uid = UUID(raw)
                        if uid not in ids:
                            ids.append(uid)
            if ids or resync:
                yield _Batch(ids=ids, resync=resync, since=watch.delivered_at)
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
    without a task (and ends a one-task subscription). After events may have been lost, a
    one-task subscription sends the task again; a workspace's ends (``LOST``). Raises:
    InvalidArgument, Unauthenticated, NotFound, FailedPrecondition (the subscriber fell
    behind, or events may have been lost).
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

    async for batch in _updates(watch, ids_of):
        if batch.resync and workspace_id is not None:
            # Sent first, what the batch names would look like everything the client missed.
            raise FailedPrecondition(LOST)
        for changed in batch.ids:
            try:
                task = await _shared.read(
                    ("task", changed, *_seen_by(actor)),
                    batch.since,
                    partial(task_service.get_task, actor=actor, task_id=changed),
                )
            except NotFound:
                yield TaskUpdate(task_id=changed, task=None)
                if task_id is not None:
                    return
                continue
            yield TaskUpdate(task_id=changed, task=task)


async def tty_requests(
    *, actor: Principal, bus: events.EventBus, workspace_id: UUID
) -> AsyncIterator[m.TtyInputRequest]:
    """Questions asked in the workspace, as they are asked. After events may have been lost,
    every question of the workspace still pending is sent again (a client keeps one copy of
    each by its id).

    Raises: Unauthenticated, NotFound, FailedPrecondition (the subscriber fell behind)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    await get_workspace(actor=actor, workspace_id=workspace_id)
    watch = bus.watch(("workspace-tty", str(workspace_id)))

    def ids_of(event: events.Event) -> list[str]:
        return [event.request_id] if isinstance(event, events.TtyChanged) else []

    async for batch in _updates(watch, ids_of):
        if batch.resync:
            async for request in _pending_questions(actor=actor, workspace_id=workspace_id):
                yield request
            continue
        for request_id in batch.ids:
            try:
                request = await session_service.get_tty_request(actor=actor, request_id=request_id)
            except NotFound:
                continue
            if request.status == m.TtyInputStatus.PENDING:
                yield request


async def _pending_questions(
    *, actor: Principal, workspace_id: UUID
) -> AsyncIterator[m.TtyInputRequest]:
    """Every question of the workspace still pending, oldest first, page by page."""
    offset = 0
    while True:
        page = await session_service.list_tty_requests(
            actor=actor,
            workspace_id=workspace_id,
            status=m.TtyInputStatus.PENDING,
            limit=MAX_PAGE_SIZE,
            offset=offset,
        )
        for request in page.items:
            yield request
        offset += len(page.items)
        if not page.items or offset >= page.total_count:
            return


async def budget_warnings(
    *, actor: Principal, bus: events.EventBus, workspace_id: UUID
) -> AsyncIterator[events.BudgetWarning]:
    """The workspace's budget warnings (spending reached its threshold), as they happen.
    After events may have been lost, a warning raised meanwhile (the workspace's
    ``budget_warned_at`` moved) is sent with the spending of its period as it is now.

    Raises: Unauthenticated, NotFound, FailedPrecondition (the subscriber fell behind)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    with bus.watch(("workspace-budget", str(workspace_id))) as watch:
        # Read after watching: a warning raised in between is heard, or seen at a resync.
        warned = (await get_workspace(actor=actor, workspace_id=workspace_id)).budget_warned_at
        while True:
            await watch.wait()
            batch = watch.drain()
            if watch.overflowed:
                raise FailedPrecondition(BEHIND)
            heard = [e for e in batch if isinstance(e, events.BudgetWarning)]
            for event in heard:
                yield event
            if not heard and not any(isinstance(e, events.Resync) for e in batch):
                continue
            # Each warning moves ``budget_warned_at`` once (at most once a period): the value
            # the last warning left, compared at a resync, tells whether one was missed.
            workspace = await get_workspace(actor=actor, workspace_id=workspace_id)
            if heard or workspace.budget_warned_at in (None, warned):
                warned = workspace.budget_warned_at
                continue
            warned = workspace.budget_warned_at
            assert warned is not None
            if workspace.monthly_budget_micros is None:
                continue  # the budget was removed since: nothing to warn of
            used = await budgets.spent(
                workspace.id, budgets.period_start(workspace.budget_period, warned)
            )
            yield events.BudgetWarning(
                workspace_id=str(workspace.id),
                spent_micros=used,
                budget_micros=workspace.monthly_budget_micros,
            )


@dataclass(frozen=True, slots=True)
class WorkerUpdate:
    worker_id: UUID
    worker: m.Worker | None  # None: it unregistered
    current_task_id: UUID | None = None
    """The task the worker runs, when the subscriber may see it: the fleet is shared between
    tenants, their tasks are not."""


async def worker_updates(*, actor: Principal, bus: events.EventBus) -> AsyncIterator[WorkerUpdate]:
    """Registrations, status changes and departures of workers. Ends (``LOST``) after events
    may have been lost: a worker that left meanwhile leaves no row to tell of it.

    Raises: Unauthenticated, FailedPrecondition (the subscriber fell behind, or events may
    have been lost)."""
    await auth_service.ensure_still_signed_in(actor=actor)
    watch = bus.watch(("workers",))

    def ids_of(event: events.Event) -> list[str]:
        return [event.worker_id] if isinstance(event, events.WorkerChanged) else []

    async for batch in _updates(watch, ids_of):
        if batch.resync:
            raise FailedPrecondition(LOST)
        for worker_id in batch.ids:
            try:
                worker = await _shared.read(
                    ("worker", worker_id),
                    batch.since,
                    partial(worker_service.get_worker, worker_id=worker_id),
                )
            except NotFound:
                yield WorkerUpdate(worker_id=worker_id, worker=None)
                continue
            shown = await _shared.read(
                ("worker-task", worker_id, *_seen_by(actor)),
                batch.since,
                partial(visible_tasks, actor=actor, workers=[worker]),
            )
            yield WorkerUpdate(
                worker_id=worker_id, worker=worker, current_task_id=shown.get(worker.id)
            )
