"""Sign-in against a real OpenID provider (npm ``oidc-provider``) on a loopback port:
authorization code + PKCE, browser-less (the test fills the provider's login and consent
forms), then the issued tokens through the app, and every refusal of the login itself."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from delidev import models as m
from delidev.app import create_app
from delidev.settings import Settings
from tests.oidc import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, browse, openid_provider

pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture(scope="module")
def accounts_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Profile overrides the provider reads at every sign-in (see oidc_provider.mjs)."""
    return tmp_path_factory.mktemp("oidc") / "accounts.json"


@pytest.fixture(scope="module")
def provider(accounts_file: Path) -> Iterator[str]:
    with openid_provider(accounts_file) as issuer:
        yield issuer


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
    # Logout ends the sign-in: its tokens from before the refresh too; the other sign-in
    # of the same user goes on.
    for ended in (new_token, token):
        refused = await _call(api, "WorkspaceService/List", {}, ended)
        assert refused.json()["code"] == "unauthenticated"
    still = await _call(api, "WorkspaceService/List", {}, again["accessToken"])
    assert still.status_code == 200, still.text


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


def _override_profiles(path: Path, accounts: dict[str, dict[str, str]]) -> None:
    """What the provider says about these logins from their next sign-in on (a tiny file:
    written synchronously)."""
    path.write_text(json.dumps(accounts))


async def test_a_changed_profile_is_updated_on_the_next_sign_in(
    api: httpx.AsyncClient, accounts_file: Path
) -> None:
    first = await _sign_in(api, "gus")
    assert (first["user"]["email"], first["user"]["name"]) == ("gus@example.com", "User gus")
    _override_profiles(accounts_file, {"gus": {"email": "gus@new.example", "name": "Gus"}})
    try:
        second = await _sign_in(api, "gus")
    finally:
        _override_profiles(accounts_file, {})
    assert second["user"]["id"] == first["user"]["id"]
    assert (second["user"]["email"], second["user"]["name"]) == ("gus@new.example", "Gus")
    user = await m.User.get(id=first["user"]["id"])
    assert (user.email, user.name) == ("gus@new.example", "Gus")
