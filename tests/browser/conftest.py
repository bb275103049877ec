"""A real browser for the console's tests: Debian's ``chromium`` driven by Playwright
(Playwright cannot download its own browsers here), one per test session, a fresh context
(cookies, storage, permissions) per test. In CI a missing browser fails the run instead of
skipping it: ``.ci/run`` installs it."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Dialog,
    Page,
    async_playwright,
    expect,
)

from tests.e2e.conftest import e2e_database_url as e2e_database_url  # the fixture, re-used
from tests.e2e.harness import Server, free_port

CONSOLE_DIST = Path(__file__).resolve().parents[2] / "delidev" / "console_dist"
# Real workers and real streams: a step may take seconds on a loaded 2-core machine.
expect.set_options(timeout=30_000)
SCREENSHOTS = os.environ.get("DELIDEV_SCREENSHOTS")  # a folder to keep the screenshots in

# Wraps the Notification constructor so a test can see what the page announced.
RECORD_NOTIFICATIONS = """
(() => {
  window.__notifications = [];
  const Original = window.Notification;
  if (!Original) return;
  window.Notification = class extends Original {
    constructor(title, options) {
      super(title, options);
      window.__notifications.push({ title, body: options && options.body });
    }
  };
})();
"""


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    executable = _chromium()
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await browser.new_context(viewport={"width": 1280, "height": 860})
    await ctx.add_init_script(RECORD_NOTIFICATIONS)
    yield ctx
    await ctx.close()


@pytest.fixture
async def page(context: BrowserContext) -> AsyncIterator[Page]:
    """A page whose uncaught script errors fail the test, and whose dialogs (the console
    asks before it follows a ``?server=`` link to a new server) are accepted: a test
    that refuses one says so with its own handler."""
    opened = await context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.on("dialog", _accept)
    yield opened
    assert not errors, f"script errors in the page: {errors}"


async def _accept(dialog: Dialog) -> None:
    await dialog.accept()


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    """A single-user server that serves the console, with a short heartbeat interval (a
    killed worker turns unhealthy within seconds)."""
    started = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_HEARTBEAT_INTERVAL_MS="500")
    try:
        yield await started.ready()
    finally:
        started.stop()


@pytest.fixture
def static_origin() -> Iterator[str]:
    """The built console on a plain static file server on another port: another origin."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(CONSOLE_DIST))

    class Quiet(ThreadingHTTPServer):
        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a browser dropping a connection is no test failure

    port = free_port()
    httpd = Quiet(("127.0.0.1", port), handler)
    SimpleHTTPRequestHandler.log_message = lambda *_: None  # type: ignore[method-assign]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    """Saves a screenshot beside the test's files (and in DELIDEV_SCREENSHOTS when set)."""
    path = tmp_path / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    if SCREENSHOTS:
        await asyncio.to_thread(_keep, path, Path(SCREENSHOTS))
    return path


def _keep(path: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / path.name)
