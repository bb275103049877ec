"""Two replicas on PostgreSQL; the event listener of the one clients subscribe to is killed
(``pg_terminate_backend``) while tasks change through the other. A workspace subscriber must
never lose a change silently: each change reaches it, or its subscription ends with a reason
(then it subscribes again and reloads, as the console does)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from delidev import events
from tests.e2e.harness import Connect, GraphQLWs, server_pair

pytestmark = pytest.mark.postgres_only

TASKS = """
subscription($w: ID!) { taskUpdated(workspaceId: $w) { taskId deleted } }
"""
ROUNDS = 8
RELAY_SECRET = "e2e-relay-Qm4Tz8Wc2Lp6Rv0Xk3Jb7Nh5Fs9Dg1Ya"


async def _kill_listeners(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            events.LISTENER_NAME,
        )
    finally:
        await conn.close()
    return killed


class Subscriber:
    """A ``taskUpdated(workspaceId)`` subscriber that does what the console does: when its
    subscription ends with FAILED_PRECONDITION it subscribes again and reloads the tasks."""

    def __init__(self, base: str, api: Connect, workspace: str) -> None:
        self.base, self.api, self.workspace = base, api, workspace
        self.seen: set[str] = set()
        self.ended: list[dict[str, Any]] = []

    async def run(self) -> None:
        while True:
            client = GraphQLWs(self.base)
            await client.connect()
            await client.subscribe(TASKS, {"w": self.workspace})
            try:
                if self.ended:  # subscribed again: reload (after subscribing, misses nothing)
                    listed = await self.api(
                        "TaskService/List", {"workspaceId": self.workspace, "limit": 500}
                    )
                    for task in listed.get("tasks", []):
                        self.seen.add((task.get("unitTask") or task["compositeTask"])["id"])
                while True:
                    message = await client.receive(within=120)
                    if message["type"] == "ping":
                        await client.send({"type": "pong"})
                    elif message["type"] == "next" and message["payload"].get("errors"):
                        self.ended.append(message["payload"]["errors"][0])
                    elif message["type"] == "next":
                        self.seen.add(message["payload"]["data"]["taskUpdated"]["taskId"])
                    elif message["type"] in ("complete", "error"):
                        break
            finally:
                await client.close()


async def test_a_workspace_subscriber_misses_no_change_while_the_listener_is_killed(
    e2e_database_url: str, tmp_path: Path
) -> None:
    """Regression: the subscriber on B saw 2 of 30 tasks created on A while B's listener was
    killed repeatedly, with no error. Now every outage ends the subscription with
    FAILED_PRECONDITION, and a subscriber that resubscribes and reloads has all 30."""
    async with server_pair(
        e2e_database_url, tmp_path, two=True, DELIDEV_JWT_SECRET=RELAY_SECRET
    ) as (b, a):
        api = Connect(a.base)
        subscriber: Subscriber | None = None
        running: asyncio.Task[None] | None = None
        try:
            group = await api.group()
            first = await api.unit(group, "before")
            subscriber = Subscriber(b.base, Connect(b.base), first["workspaceId"])
            running = asyncio.create_task(subscriber.run())
            created = {first["id"]}
            deadline = time.monotonic() + 30
            while not created & subscriber.seen:  # subscribed, and events flow
                assert time.monotonic() < deadline, "the subscription never started"
                created.add((await api.unit(group, "ready?"))["id"])
                await asyncio.sleep(0.2)
            subscriber.seen |= created  # those before it are not under test
            kills = 0

            async def killer() -> None:
                nonlocal kills
                for _ in range(ROUNDS):
                    kills += await _kill_listeners(e2e_database_url)
                    await asyncio.sleep(0.4)

            killing = asyncio.create_task(killer())
            for i in range(30):
                created.add((await api.unit(group, f"task {i}"))["id"])
                await asyncio.sleep(0.1)
            await killing
            deadline = time.monotonic() + 30
            while not created <= subscriber.seen:
                assert time.monotonic() < deadline, (
                    f"missed {len(created - subscriber.seen)} of {len(created)} "
                    f"after {kills} kills; ended {len(subscriber.ended)} times"
                )
                await asyncio.sleep(0.1)
            assert kills >= 2 * ROUNDS  # both replicas' listeners, every round
            assert subscriber.ended, "no outage ended the subscription"
            for error in subscriber.ended:
                assert error["extensions"]["code"] == "FAILED_PRECONDITION"
                assert "subscribe again" in error["message"]
            # Each round found B's listener back (it reconnects at once, not after ~1 s).
            assert b.log().count("event listener reconnected") >= ROUNDS
        finally:
            if running is not None:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
            if subscriber is not None:
                await subscriber.api.close()
            await api.close()
