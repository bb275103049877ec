"""A stored link the server would refuse today is not a link in the console.

The server refuses pull request and issue links that are not plain http(s) URLs
(``common.check_web_url``). Rows stored before it did (or written around it) still reach
the console: a ``javascript:`` link there would run in the console's origin with the
user's session when clicked. The console shows such a link as text.
"""

from __future__ import annotations

import sqlite3
import uuid

import asyncpg
from playwright.async_api import Page, expect

from tests.e2e.harness import Connect, Server


async def _store_pr_link(database_url: str, task_id: str, url: str) -> None:
    """Writes the link straight into the table, as an old row would hold it."""
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as db:
            db.execute(
                "UPDATE unit_tasks SET status = 'pr_open', linked_pr_url = ? WHERE id = ?",
                (url, task_id),
            )
        return
    conn = await asyncpg.connect(database_url.replace("postgres://", "postgresql://", 1))
    try:
        await conn.execute(
            "UPDATE unit_tasks SET status = 'pr_open', linked_pr_url = $1 WHERE id = $2",
            url,
            uuid.UUID(task_id),
        )
    finally:
        await conn.close()


async def test_a_stored_script_link_is_shown_as_text(
    page: Page, server: Server, e2e_database_url: str
) -> None:
    api = Connect(server.base)
    try:
        group = await api.group()
        bad = await api("TaskService/CreateUnit", {"repositoryGroupId": group, "prompt": "a"})
        good = await api("TaskService/CreateUnit", {"repositoryGroupId": group, "prompt": "b"})
    finally:
        await api.close()
    bad_id, good_id = bad["task"]["unitTask"]["id"], good["task"]["unitTask"]["id"]
    await _store_pr_link(e2e_database_url, bad_id, "javascript:window.__clicked=1")
    await _store_pr_link(e2e_database_url, good_id, "https://github.com/e2e/r/pull/7")

    await page.goto(f"{server.base}/#/tasks/{bad_id}")
    shown = page.get_by_test_id("not-a-link")
    await expect(shown).to_have_text("javascript:window.__clicked=1")
    await expect(page.locator('a[href^="javascript:"]')).to_have_count(0)
    await shown.click()
    assert await page.evaluate("window.__clicked") is None

    await page.goto(f"{server.base}/#/tasks/{good_id}")
    link = page.get_by_test_id("pr-link")
    await expect(link).to_have_attribute("href", "https://github.com/e2e/r/pull/7")
    await expect(page.get_by_test_id("not-a-link")).to_have_count(0)
