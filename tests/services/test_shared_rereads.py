"""Subscribers woken by the same event share its re-read.

Regression (audit): each workspace subscriber re-read each changed task with a query of its
own; with 10,000 subscriptions one task change cost 10,000 reads (11.8 s, a health probe
waiting 7.8 s). Now a read is shared by the subscribers that see the object the same way,
when it started after the event they were woken by; a later change is read again.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.services import live, tasks
from tests.conftest import SqlCounter
from tests.factories import (
    finish_latest,
    make_group,
    make_repository,
    make_user,
    make_workspace,
)
from tests.waiting import until

pytestmark = pytest.mark.usefixtures("database")
SUBSCRIBERS = 20
# The subscription's re-read of a changed task (``task_service.get_task``).
_READS_THE_TASK = 'FROM "unit_tasks" LEFT OUTER JOIN "workspaces"'


async def test_one_read_per_change_however_many_follow_it(
    bus: events.EventBus, sql_counter: SqlCounter
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    sql_counter.reset()  # the subscribers' tasks are counted: they start after this
    streams = [
        live.task_updates(actor=LOCAL_USER, bus=bus, workspace_id=ws.id) for _ in range(SUBSCRIBERS)
    ]
    nexts = [asyncio.ensure_future(anext(s)) for s in streams]
    await until(lambda: bus.watcher_count() == SUBSCRIBERS)
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="first"
    )
    updates = await asyncio.wait_for(asyncio.gather(*nexts), 10)
    assert {u.task_id for u in updates} == {task.id}
    assert all(u.task is not None for u in updates)
    reads = [q for q in sql_counter.statements if _READS_THE_TASK in q]
    assert 0 < len(reads) < SUBSCRIBERS, reads  # not one read each

    # A later change is read again: every subscriber ends up with the task as it is now
    # (a read shared from before the change would leave it with the old state).
    async def until_in_review(stream: AsyncIterator[live.TaskUpdate]) -> None:
        while True:
            update = await anext(stream)
            assert isinstance(update.task, m.UnitTask)
            if update.task.status == m.UnitTaskStatus.IN_REVIEW:
                return

    waiting = [asyncio.ensure_future(until_in_review(s)) for s in streams]
    await asyncio.sleep(0)
    await finish_latest(task.agent_task_id)  # the run succeeds: the task waits for review
    await asyncio.wait_for(asyncio.gather(*waiting), 10)
    for s in streams:
        await s.aclose()


async def test_a_read_is_not_shared_between_users(bus: events.EventBus) -> None:
    """Two users' subscriptions read with their own permissions: another user's read of
    the same id (not theirs to see) gives them nothing."""
    owner = await make_user("owner")
    ws = await make_workspace(owner)
    group = await make_group(ws, [await make_repository(ws, owner)], owner)
    mine = live.task_updates(actor=owner, bus=bus, workspace_id=ws.id)
    nxt = asyncio.ensure_future(anext(mine))
    await until(lambda: bus.watcher_count() == 1)
    task = await tasks.create_unit_task(actor=owner, repository_group_id=group.id, prompt="x")
    update = await asyncio.wait_for(nxt, 10)
    assert update.task is not None
    assert isinstance(update.task, m.UnitTask)
    assert update.task.id == task.id
    await mine.aclose()
