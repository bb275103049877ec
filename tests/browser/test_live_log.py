"""The task page's live log under load and outage: a 100,000-line log stays a few hundred
elements in the page, follows its end, and after the network drops it resumes from its
offset — every line once, none lost — while the console says the server is unreachable."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from tests.browser.proxy import CuttableProxy
from tests.e2e.harness import Connect, Server, Worker

LINES = 100_000
PER_CHUNK = 10_000
MAX_RENDERED = 300  # lines in the page at once: the visible ones and a margin


def _lines(start: int, count: int) -> str:
    return "".join(f"\x1b[36m{i:06d}\x1b[0m output line {i}\n" for i in range(start, start + count))


@pytest.fixture
async def cors_server(
    e2e_database_url: str, static_origin: str, tmp_path: Path
) -> AsyncIterator[Server]:
    server = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_CORS_ORIGINS=static_origin)
    try:
        yield await server.ready()
    finally:
        server.stop()


async def test_a_long_log_resumes_after_an_outage(
    page: Page, cors_server: Server, static_origin: str
) -> None:
    proxy = CuttableProxy(cors_server.port)
    through = await proxy.start()
    api = Connect(cors_server.base)
    worker = Worker(cors_server.base)
    try:
        task = await api.unit(await api.group(), "a long log")
        await worker.claim(task["id"])
        for start in range(0, LINES, PER_CHUNK):
            await worker.write(_lines(start, PER_CHUNK))

        await page.goto(f"{static_origin}/?server={through}#/tasks/{task['id']}")
        log = page.get_by_test_id("log")
        count = page.get_by_test_id("log-lines")
        await expect(count).to_have_text(f"{LINES:,} lines")
        await expect(page.get_by_test_id("log-state")).to_have_text("live")
        # It follows the end, in colour, with only the visible lines in the page.
        await expect(log).to_contain_text(f"output line {LINES - 1}")
        await expect(log.locator(".ansi-cyan-fg").last).to_have_text(f"{LINES - 1:06d}")
        assert await log.locator(".log-line").count() <= MAX_RENDERED
        # Scrolled to the top: the first lines, still few in the page, and no more following.
        await log.evaluate("el => { el.scrollTop = 0; }")
        await expect(log).to_contain_text("000000 output line 0")
        await expect(page.get_by_role("button", name="Follow output")).to_be_visible()
        assert await log.locator(".log-line").count() <= MAX_RENDERED
        await page.get_by_role("button", name="Follow output").click()
        await expect(log).to_contain_text(f"output line {LINES - 1}")

        # The network drops; output goes on meanwhile.
        proxy.cut()
        banner = page.get_by_role("alert").filter(has_text="Cannot reach the server")
        await expect(banner).to_be_visible()
        await worker.write(_lines(LINES, 50))
        # It comes back: the log resumes where it was, every line exactly once.
        proxy.restore()
        await expect(banner).to_be_hidden()
        await expect(count).to_have_text(f"{LINES + 50:,} lines")
        await expect(log).to_contain_text(f"output line {LINES + 49}")
        await worker.finish()
        await expect(page.get_by_test_id("log-state")).to_have_text("complete")
        await expect(count).to_have_text(f"{LINES + 50:,} lines")
    finally:
        await worker.close()
        await api.close()
        await proxy.stop()
