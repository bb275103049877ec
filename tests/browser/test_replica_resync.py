"""The console's board on one replica while another creates tasks and the first one's event
listener is killed again and again: the board ends up showing every task, because a
subscription the server ends (events may have been lost) is started again and the board
reloaded."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.e2e.harness import Connect, server_pair
from tests.e2e.test_replica_resync import ROUNDS, _kill_listeners

pytestmark = pytest.mark.postgres_only

RELAY_SECRET = "browser-relay-Qm4Tz8Wc2Lp6Rv0Xk3Jb7Nh5Fs9Dg1Ya"
CREATED = 20


async def test_the_board_shows_every_task_made_while_the_listener_was_killed(
    page: Page, e2e_database_url: str, tmp_path: Path
) -> None:
    """Regression: the board on B kept its subscription after B's listener reconnected, and
    the tasks made meanwhile on A never appeared (until a manual reload)."""
    async with server_pair(
        e2e_database_url, tmp_path, two=True, DELIDEV_JWT_SECRET=RELAY_SECRET
    ) as (b, a):
        api = Connect(a.base)
        try:
            group = await api.group()
            await api.unit(group, "the first")
            await page.goto(f"{b.base}/#/board")
            cards = page.get_by_test_id("task-card")
            await expect(cards).to_have_count(1)
            await api.unit(group, "the second")  # live: the subscription works
            await expect(cards).to_have_count(2)

            async def killer() -> None:
                for _ in range(ROUNDS):
                    await _kill_listeners(e2e_database_url)
                    await asyncio.sleep(0.3)

            killing = asyncio.create_task(killer())
            for i in range(CREATED):
                await api.unit(group, f"made during the outages {i}")
                await asyncio.sleep(0.1)
            await killing
            await expect(cards).to_have_count(2 + CREATED)
            assert b.log().count("event listener reconnected") >= ROUNDS
        finally:
            await api.close()
