"""Live updates after events may have been lost (``Resync``): each subscription sends the
current state of what it shows, or ends with a reason its client acts on; none goes on as
if nothing happened.

The changes made "while the listener was down" are made here with the events going to a
bus nobody watches: what another replica published while this one's listener reconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Iterator
from typing import TypeVar

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import FailedPrecondition
from delidev.services import budgets, live, sessions, tasks, workers
from tests.factories import make_group, make_repository, make_workspace, start_latest
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("database")
T = TypeVar("T")


@contextlib.contextmanager
def unheard() -> Iterator[None]:
    """Events published inside go to a bus nobody watches."""
    token = events.bind(events.EventBus())
    try:
        yield
    finally:
        events.unbind(token)


async def _next(stream: AsyncIterator[T], seconds: float = 5) -> T:
    return await asyncio.wait_for(anext(stream), seconds)


async def _opened(bus: events.EventBus, stream: AsyncIterator[T]) -> asyncio.Future[T]:
    """The stream's next item, asked for now; returns once the stream watches the bus."""
    before = bus.watcher_count()
    nxt = asyncio.ensure_future(anext(stream))
    await until(lambda: bus.watcher_count() > before)
    return nxt


async def test_a_workspace_task_subscription_ends_when_events_may_be_lost(
    bus: events.EventBus,
) -> None:
    """Regression: after a Resync it went on, and the tasks changed while the listener was
    down never came (2 of 30 in the audit). It cannot re-read "what changed" exactly (a
    deleted task leaves no row, a session's change moves no timestamp of its task): it ends
    and its client reloads."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    stream = live.task_updates(actor=LOCAL_USER, bus=bus, workspace_id=ws.id)
    nxt = await _opened(bus, stream)
    with unheard():
        await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="x")
    bus.deliver(events.Resync())
    with pytest.raises(FailedPrecondition) as info:
        await asyncio.wait_for(nxt, 5)
    assert "events may have been lost" in info.value.message
    assert "subscribe again" in info.value.message
    assert bus.watcher_count() == 0


async def test_a_one_task_subscription_sends_the_task_again_after_a_resync(
    bus: events.EventBus,
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="x")
    stream = live.task_updates(actor=LOCAL_USER, bus=bus, task_id=task.id)
    nxt = await _opened(bus, stream)
    bus.deliver(events.Resync())
    update = await asyncio.wait_for(nxt, 5)
    assert update.task_id == task.id
    assert update.task is not None
    await stream.aclose()  # type: ignore[attr-defined]


async def test_the_fleet_subscription_ends_when_events_may_be_lost(
    bus: events.EventBus,
) -> None:
    """Regression: it ignored Resync; a worker that left meanwhile stayed on the page."""
    stream = live.worker_updates(actor=LOCAL_USER, bus=bus)
    nxt = await _opened(bus, stream)
    with unheard():
        await workers.register_worker(name="w", endpoint_url="http://w:1")
    bus.deliver(events.Resync())
    with pytest.raises(FailedPrecondition) as info:
        await asyncio.wait_for(nxt, 5)
    assert "events may have been lost" in info.value.message
    assert "subscribe again" in info.value.message


async def test_pending_questions_are_sent_again_after_a_resync(bus: events.EventBus) -> None:
    """Regression: a question asked while the listener was down never reached the inbox."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="x")
    session = await start_latest(task.agent_task_id)

    async def ask(prompt: str) -> m.TtyInputRequest:
        return await sessions.create_tty_request(
            session_id=session.id,
            prompt=prompt,
            input_type=m.TtyInputType.TEXT,
            expires_in=dt.timedelta(minutes=5),
        )

    stream = live.tty_requests(actor=LOCAL_USER, bus=bus, workspace_id=ws.id)
    nxt = await _opened(bus, stream)
    with unheard():
        answered = await ask("answered meanwhile")
        await sessions.submit_tty_input(actor=LOCAL_USER, request_id=answered.id, response="y")
        missed = await ask("asked meanwhile")
    bus.deliver(events.Resync())
    got = await asyncio.wait_for(nxt, 5)
    assert got.id == missed.id
    # Only what is still pending; and the stream goes on as before.
    later = await ask("asked after")
    assert (await _next(stream)).id == later.id
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_budget_warning_raised_meanwhile_is_sent_after_a_resync(
    bus: events.EventBus,
) -> None:
    ws = await make_workspace()
    await m.Workspace.filter(id=ws.id).update(
        monthly_budget_micros=5_000_000, budget_warning_percent=0
    )
    stream = live.budget_warnings(actor=LOCAL_USER, bus=bus, workspace_id=ws.id)
    nxt = await _opened(bus, stream)
    bus.deliver(events.Resync())  # nothing was missed: nothing is sent
    await asyncio.sleep(0.2)
    assert not nxt.done()
    with unheard():
        await budgets.check_workspace(await m.Workspace.get(id=ws.id))
    assert (await m.Workspace.get(id=ws.id)).budget_warned_at is not None
    bus.deliver(events.Resync())
    warning = await asyncio.wait_for(nxt, 5)
    assert warning == events.BudgetWarning(
        workspace_id=str(ws.id), spent_micros=0, budget_micros=5_000_000
    )
    # Told once: a later resync sends nothing more.
    again = asyncio.ensure_future(anext(stream))
    bus.deliver(events.Resync())
    await asyncio.sleep(0.2)
    assert not again.done()
    again.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await again
