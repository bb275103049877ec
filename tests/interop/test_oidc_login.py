"""Sign-in against a real OpenID provider (npm ``oidc-provider``) on a loopback port:
authorization code + PKCE, browser-less (the test fills the provider's login and consent
forms), then the issued tokens through the app, and every refusal of the login itself."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest

from delidev import models as m
from delidev.app import create_app
from delidev.settings import Settings
from tests.interop.test_typescript_interop import HERE, _free_port, _prepare_node_project, _tool

pytestmark = pytest.mark.usefixtures("database")
CLIENT_ID = "delidev-tests"
CLIENT_SECRET = "oidc-client-secret-for-tests-only"
REDIRECT_URI = "http://127.0.0.1:5173/auth/callback"


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    _tool("node")
    _prepare_node_project(_tool("npm"))
    port = _free_port()
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": REDIRECT_URI,
    }
    proc = subprocess.Popen(
        ["node", "oidc_provider.mjs"],
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


@pytest.fixture
def multi(settings: Settings, provider: str) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret="k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd",
        oidc_issuer_url=provider,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_redirect_url=REDIRECT_URI,
    )


@pytest.fixture
async def api(multi: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(multi))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def _call(
    api: httpx.AsyncClient, method: str, body: dict[str, Any], token: str | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return await api.post(f"/delidev.v1.{method}", content=json.dumps(body), headers=headers)


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


async def _sign_in(api: httpx.AsyncClient, login: str) -> dict[str, Any]:
    started = await _call(api, "AuthService/GetLoginUrl", {"redirectUri": REDIRECT_URI})
    assert started.status_code == 200, started.text
    url = started.json()["url"]
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["state"] == [started.json()["state"]]
    back = await browse(url, login=login)
    done = await _call(
        api, "AuthService/HandleCallback", {"code": back["code"], "state": back["state"]}
    )
    assert done.status_code == 200, done.text
    return dict(done.json())


async def test_a_user_signs_in_uses_the_apis_refreshes_and_logs_out(
    api: httpx.AsyncClient,
) -> None:
    session = await _sign_in(api, "ada")
    assert session["user"]["email"] == "ada@example.com"
    token = session["accessToken"]
    me = await _call(api, "AuthService/GetCurrentUser", {}, token)
    assert me.json()["user"]["name"] == "User ada"
    made = await _call(api, "WorkspaceService/Create", {"name": "ada's"}, token)
    assert made.status_code == 200
    gql = await api.post(
        "/graphql",
        json={"query": "{ workspaces { items { name } } }"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert gql.json()["data"]["workspaces"]["items"] == [{"name": "ada's"}]
    # Signing in again finds the same user.
    again = await _sign_in(api, "ada")
    assert again["user"]["id"] == session["user"]["id"]
    assert await m.User.filter(email="ada@example.com").count() == 1
    refreshed = await _call(
        api, "AuthService/RefreshToken", {"refreshToken": session["refreshToken"]}
    )
    assert refreshed.status_code == 200
    new_token = refreshed.json()["accessToken"]
    out = await _call(api, "AuthService/Logout", {}, new_token)
    assert out.status_code == 200
    refused = await _call(api, "WorkspaceService/List", {}, new_token)
    assert refused.json()["code"] == "unauthenticated"


async def test_the_login_refuses_replays_forgeries_and_foreign_redirects(
    api: httpx.AsyncClient,
) -> None:
    foreign = await _call(
        api, "AuthService/GetLoginUrl", {"redirectUri": "https://evil.example/cb"}
    )
    assert foreign.json()["code"] == "invalid_argument"
    assert await m.AuthState.all().count() == 0
    started = await _call(api, "AuthService/GetLoginUrl", {"redirectUri": REDIRECT_URI})
    back = await browse(started.json()["url"], login="bob")
    forged = await _call(
        api, "AuthService/HandleCallback", {"code": back["code"] + "x", "state": back["state"]}
    )
    assert forged.json()["code"] == "unauthenticated"
    # The state was spent by that attempt: the real code cannot use it either.
    replay = await _call(
        api, "AuthService/HandleCallback", {"code": back["code"], "state": back["state"]}
    )
    assert replay.json()["code"] == "unauthenticated"
    unknown = await _call(
        api, "AuthService/HandleCallback", {"code": "c", "state": "no-such-state"}
    )
    assert unknown.json()["code"] == "unauthenticated"
    missing = await _call(api, "AuthService/HandleCallback", {"state": "s"})
    assert missing.json()["code"] == "invalid_argument"
    assert not re.search(back["code"], replay.text)
    assert await m.User.filter(email="bob@example.com").count() == 0


async def test_an_expired_state_is_refused(api: httpx.AsyncClient) -> None:
    started = await _call(api, "AuthService/GetLoginUrl", {"redirectUri": REDIRECT_URI})
    back = await browse(started.json()["url"], login="cy")
    long_ago = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    await m.AuthState.filter(state=back["state"]).update(expires_at=long_ago)
    late = await _call(
        api, "AuthService/HandleCallback", {"code": back["code"], "state": back["state"]}
    )
    assert late.json()["code"] == "unauthenticated"
    assert "too long" in late.json()["message"]
