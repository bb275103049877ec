"""Deleting a workspace, seen by real clients of a real server (issue 9, item 17).

GraphQL WebSocket subscribers of one task and of the workspace hear the task as deleted, and
a Connect StreamLog of its running session ends with not_found, at once (before: nothing was
announced, the stream ended at its periodic re-check ~15 s later). On PostgreSQL the
subscribers sit on one server process and the delete goes through another.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from tests.conftest import BACKEND
from tests.e2e.harness import (
    Connect,
    ConnectFailure,
    GraphQLWs,
    Worker,
    connect_stream,
    server_pair,
)

UPDATES = (
    "subscription($t: ID, $w: ID) { taskUpdated(taskId: $t, workspaceId: $w) { taskId deleted } }"
)
GUARD_S = 10.0  # only against a hang; the re-check that ended streams before came after 15 s


async def test_a_deleted_workspace_ends_its_subscriptions_and_streams(
    e2e_database_url: str, tmp_path: Path
) -> None:
    async with server_pair(e2e_database_url, tmp_path, two=BACKEND == "postgres") as (a, b):
        api, other = Connect(a.base), Connect(b.base)
        worker = Worker(b.base)
        client = GraphQLWs(a.base)
        try:
            group = await api.group()
            listed = await api("RepositoryGroupService/List", {})
            workspace = listed["groups"][0]["workspaceId"]
            task = await api.unit(group, "p")
            session_id = await worker.claim(task["id"])
            await worker.write("some output\n")

            await client.connect()
            by_task = await client.subscribe(UPDATES, {"t": task["id"]})
            by_workspace = await client.subscribe(UPDATES, {"w": workspace})

            streaming = asyncio.Event()

            async def stream_log() -> Any:
                try:
                    async for _ in connect_stream(
                        a.base, "SessionService/StreamLog", {"sessionId": session_id}
                    ):
                        streaming.set()  # the stored output came: the stream follows now
                except ConnectFailure as failure:
                    return failure.code
                return "ended without an error"

            follower = asyncio.create_task(stream_log())
            # The subscriptions are in place once both hear a change of the task, made again
            # every second until they do (no fixed wait guesses the set-up time).
            live: set[str] = set()
            priorities = iter(["TASK_PRIORITY_HIGH", "TASK_PRIORITY_LOW"] * 10)
            while live != {by_task, by_workspace}:
                await api(
                    "TaskService/SetPriority", {"taskId": task["id"], "priority": next(priorities)}
                )
                with contextlib.suppress(TimeoutError):
                    while live != {by_task, by_workspace}:
                        message = await client.receive(1)
                        if message["type"] == "ping":
                            await client.send({"type": "pong"})
                        else:
                            assert message["type"] == "next", message
                            live.add(message["id"])
            await asyncio.wait_for(streaming.wait(), GUARD_S)
            await other("WorkspaceService/Delete", {"workspaceId": workspace})

            heard: dict[str, list[dict[str, Any]]] = {by_task: [], by_workspace: []}
            completed: set[str] = set()
            while not heard[by_workspace] or by_task not in completed:
                message = await client.receive(GUARD_S)
                if message["type"] == "ping":
                    await client.send({"type": "pong"})
                elif message["type"] == "complete":
                    completed.add(message["id"])
                else:
                    assert message["type"] == "next", message
                    heard[message["id"]].append(message["payload"]["data"]["taskUpdated"])
            expected = {"taskId": task["id"], "deleted": True}
            # The deletion, after late echoes of the probes at most.
            probe = {"taskId": task["id"], "deleted": False}
            for updates in heard.values():
                assert updates[-1] == expected, heard
                assert all(u == probe for u in updates[:-1]), heard
            assert await asyncio.wait_for(follower, GUARD_S) == "not_found"
        finally:
            await client.close()
            await worker.close()
            await other.close()
            await api.close()
    assert "Traceback" not in a.log() + b.log()
