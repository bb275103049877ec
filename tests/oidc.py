"""A real OpenID provider for the sign-in tests: the npm package ``oidc-provider`` on a
loopback port (``tests/interop/oidc_provider.mjs``), and a browser-less walk through its
login and consent forms."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from tests.interop.test_typescript_interop import HERE, NPM_CI_TIMEOUT_S, _free_port, _run, _tool

CLIENT_ID = "delidev-tests"
CLIENT_SECRET = "oidc-client-secret-for-tests-only"
REDIRECT_URI = "http://127.0.0.1:5173/auth/callback"


def _node_modules() -> None:
    """``npm ci`` in tests/interop when its node_modules is missing or stale."""
    npm = _tool("npm")
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=NPM_CI_TIMEOUT_S)


@contextmanager
def openid_provider() -> Iterator[str]:
    """Starts the provider and yields its issuer URL; stops it on exit."""
    node = _tool("node")
    _node_modules()
    port = _free_port()
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": REDIRECT_URI,
    }
    proc = subprocess.Popen(
        [node, "oidc_provider.mjs"],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        else:
            pytest.fail("the OpenID provider did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        if tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


async def browse(login_url: str, *, login: str) -> dict[str, str]:
    """What a browser does: follow the provider's redirects, sign in as ``login`` on its
    login form, consent, and stop at our redirect URI. Returns its query parameters."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        url, method, data = login_url, "GET", None
        for _ in range(20):
            response = await browser.request(method, url, data=data)
            if response.is_redirect:
                url, method, data = urljoin(url, response.headers["location"]), "GET", None
                if url.startswith(REDIRECT_URI):
                    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                continue
            assert response.status_code == 200, response.text
            form = _Form()
            form.feed(response.text)
            assert form.action is not None, response.text
            fields = dict(form.fields)
            if "login" in fields:
                fields.update(login=login, password="any")
            url, method, data = urljoin(url, form.action), "POST", fields
    raise AssertionError("the provider never sent the browser back")
