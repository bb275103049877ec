"""Links that point the console at a server (``?server=``) cannot take a user's sign-in.

Regression: a link to the console the server itself serves, naming another server, made
the console ask that server for its sign-in link and then hand it the code the identity
provider sent back: the other server passed the code on to the real one and kept the
user's tokens. Now the served console reaches no other server (its Content-Security-Policy)
and any copy of the console asks before it uses a server a link names.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.async_api import Dialog, Page, expect

from tests.e2e.harness import Server, free_port

HITS: list[str] = []


class _Counting(BaseHTTPRequestHandler):
    """Answers anything, and counts what reached it."""

    def do_GET(self) -> None:  # http.server's names
        HITS.append(f"{self.command} {self.path}")
        self.send_response(200)
        self.send_header("access-control-allow-origin", "*")
        self.send_header("access-control-allow-headers", "*")
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b"{}")

    do_POST = do_OPTIONS = do_GET  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def other_server() -> Iterator[str]:
    """Another "server" on another port, which would take whatever the console sends."""
    HITS.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), _Counting)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


async def test_the_served_console_reaches_no_server_a_link_names(
    page: Page, server: Server, other_server: str
) -> None:
    asked: list[str] = []
    page.on("dialog", lambda dialog: asked.append(dialog.message))
    await page.goto(f"{server.base}/?server={other_server}")
    # The link was asked about (and accepted, by the fixture), the server unreachable all
    # the same: the page's policy lets it talk to its own origin only.
    assert asked
    assert other_server in asked[0]
    await expect(page.get_by_role("alert")).to_contain_text("Cannot reach the server")
    assert HITS == []
    assert "server=" not in page.url
    # A fresh tab on the plain address works as ever.
    fresh = await page.context.new_page()
    await fresh.goto(f"{server.base}/#/setup")
    await expect(fresh.get_by_label("Workspace name")).to_be_visible()


async def test_a_copy_elsewhere_asks_before_it_uses_a_server_a_link_names(
    page: Page, static_origin: str, other_server: str
) -> None:
    async def refuse(dialog: Dialog) -> None:
        await dialog.dismiss()

    tab = await page.context.new_page()  # without the fixture's accepting handler
    tab.on("dialog", refuse)
    await tab.goto(f"{static_origin}/?server={other_server}")
    # Refused: the console stays with its own origin (where no API answers).
    await expect(tab.get_by_role("alert")).to_contain_text("Cannot reach the server")
    assert HITS == []
    assert "server=" not in tab.url
    # Accepted (the page's handler): that server is used.
    await page.goto(f"{static_origin}/?server={other_server}")
    await page.wait_for_function("() => !location.search.includes('server=')")
    for _ in range(300):  # its first call reaches the other server (30 s at most)
        if HITS:
            break
        await asyncio.sleep(0.1)
    assert HITS
