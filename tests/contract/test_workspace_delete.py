"""Deleting a workspace is announced as deleting each of its tasks would be (issue 9, item 17).

Through Connect and GraphQL: subscribers of one task and of the workspace hear every task
as deleted, the one-task subscription ends, and a StreamLog of a running session ends at
once with not_found (before, it ended only at its next periodic re-check, ~15 s later).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import events
from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import session_pb
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceClient
from delidev.services import live, tasks
from tests.clients import ConnectApi, GraphQLApi, connect_codecs
from tests.factories import finish_latest, make_group, make_repository, make_workspace, start_latest
from tests.waiting import until

PLAN = "tasks:\n  - id: a\n    prompt: first\n  - id: b\n    prompt: second\n    dependsOn: [a]\n"
GUARD_S = 10.0  # only against a hang: the announcements are checked as events, not timed


@pytest.fixture(params=["connect-json", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectApi | GraphQLApi
    if request.param == "graphql":
        client = GraphQLApi(app)
    else:
        client = ConnectApi(app, connect_codecs()["json"])
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def session_client(app: Any) -> AsyncIterator[SessionServiceClient]:
    http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
    client = SessionServiceClient("http://test", http_client=http, codec=connect_codecs()["json"])
    yield client
    await client.close()


async def test_deleting_a_workspace_announces_every_task_and_run(
    api: Any, app: Any, session_client: SessionServiceClient
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    running = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="r"
    )
    run = await start_latest(running.agent_task_id)
    queued = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="q"
    )
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="c"
    )
    await finish_latest(composite.planning_task_id, plan_yaml=PLAN)
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)  # node a is queued
    nodes = await m.UnitTask.filter(composite_task_id=composite.id)
    assert len(nodes) == 2
    task_ids = {running.id, queued.id, composite.id, *(n.id for n in nodes)}
    active = set(
        await m.AgentSession.filter(
            status__in=[m.AgentSessionStatus.QUEUED, m.AgentSessionStatus.RUNNING]
        ).values_list("id", flat=True)
    )
    assert len(active) == 3  # the running one, the queued one, node a's

    bus: events.EventBus = app.state.events
    heard: list[events.Event] = []
    unsubscribe = bus.subscribe(heard.append)
    one_task: list[live.TaskUpdate] = []
    whole_workspace: list[live.TaskUpdate] = []

    async def follow(into: list[live.TaskUpdate], **which: UUID) -> None:
        async for update in live.task_updates(actor=LOCAL_USER, bus=bus, **which):
            into.append(update)

    async def stream_log() -> Code:
        request = session_pb.StreamLogRequest(session_id=str(run.id))
        try:
            async for _ in session_client.stream_log(request):
                pass
        except ConnectError as error:
            return error.code
        raise AssertionError("the stream ended without an error")

    watchers = bus.watcher_count()
    task_sub = asyncio.create_task(follow(one_task, task_id=running.id))
    workspace_sub = asyncio.create_task(follow(whole_workspace, workspace_id=ws.id))
    follower = asyncio.create_task(stream_log())
    await until(lambda: bus.watcher_count() >= watchers + 3)
    try:
        await api.delete_workspace(str(ws.id))

        changed = {UUID(e.task_id) for e in heard if isinstance(e, events.TaskChanged)}
        assert changed == task_ids
        stopped = {
            UUID(e.session_id)
            for e in heard
            if isinstance(e, events.SessionChanged) and e.status == "stopped"
        }
        assert stopped == active

        assert await asyncio.wait_for(follower, GUARD_S) == Code.NOT_FOUND
        await asyncio.wait_for(task_sub, GUARD_S)  # a deleted task ends its subscription
        assert [(u.task_id, u.task) for u in one_task] == [(running.id, None)]
        # The workspace subscription hears every task as deleted, then ends.
        await asyncio.wait_for(workspace_sub, GUARD_S)
        assert {u.task_id for u in whole_workspace} == task_ids
        assert all(u.task is None for u in whole_workspace)
    finally:
        unsubscribe()
        for pending in (task_sub, workspace_sub, follower):
            pending.cancel()
        await asyncio.gather(task_sub, workspace_sub, follower, return_exceptions=True)
    assert not await m.AgentTask.exists()
    assert not await m.AgentSession.exists()


async def test_deleting_an_empty_workspace_ends_its_subscriptions(app: Any, api: Any) -> None:
    ws = await make_workspace()
    bus: events.EventBus = app.state.events

    async def drain(updates: Any) -> list[Any]:
        return [u async for u in updates]

    watchers = bus.watcher_count()
    tasks_sub = asyncio.create_task(
        drain(live.task_updates(actor=LOCAL_USER, bus=bus, workspace_id=ws.id))
    )
    tty_sub = asyncio.create_task(
        drain(live.tty_requests(actor=LOCAL_USER, bus=bus, workspace_id=ws.id))
    )
    await until(lambda: bus.watcher_count() >= watchers + 2)
    try:
        await api.delete_workspace(str(ws.id))
        assert await asyncio.wait_for(tasks_sub, GUARD_S) == []
        assert await asyncio.wait_for(tty_sub, GUARD_S) == []
    finally:
        for pending in (tasks_sub, tty_sub):
            pending.cancel()
        await asyncio.gather(tasks_sub, tty_sub, return_exceptions=True)
