"""Multi-user mode: access tokens, refresh rotation, logout, refusals and tenant isolation,
through the real app (Connect JSON and GraphQL over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import jwt
import pytest

from delidev import models as m
from delidev.app import create_app
from delidev.auth.tokens import issue_access_token
from delidev.services import auth
from delidev.settings import Settings

pytestmark = pytest.mark.usefixtures("database")
SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"


@pytest.fixture
def multi(settings: Settings) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret=SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret="client-secret",
        worker_registration_token="reg-token",
    )


@pytest.fixture
async def client(multi: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(multi))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


async def _user(email: str) -> m.User:
    return await m.User.create(email=email, name=email.split("@")[0])


async def _call(
    client: httpx.AsyncClient, method: str, body: dict[str, Any], token: str | None = None
) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    return await client.post(f"/delidev.v1.{method}", content=json.dumps(body), headers=headers)


async def _gql(client: httpx.AsyncClient, query: str, token: str | None = None) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await client.post("/graphql", json={"query": query}, headers=headers)
    return dict(response.json())


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await _call(client, "AuthService/RefreshToken", {"refreshToken": refresh_token})


def _unauthenticated(response: httpx.Response) -> bool:
    return response.status_code == 401 and response.json()["code"] == "unauthenticated"


async def test_an_access_token_opens_both_apis(client: httpx.AsyncClient, multi: Settings) -> None:
    user = await _user("ada@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    created = await _call(client, "WorkspaceService/Create", {"name": "mine"}, pair.access_token)
    assert created.status_code == 200, created.text
    me = await _call(client, "AuthService/GetCurrentUser", {}, pair.access_token)
    assert me.json()["user"]["email"] == "ada@example.com"
    listed = await _gql(client, "{ workspaces { totalCount } }", pair.access_token)
    assert listed == {"data": {"workspaces": {"totalCount": 1}}}
    assert (await m.Workspace.get(name="mine")).user_id == user.id


async def test_every_bad_token_is_refused(client: httpx.AsyncClient, multi: Settings) -> None:
    user = await _user("bob@example.com")
    good = issue_access_token(multi, user.id).token
    header, payload, signature = good.split(".")
    now = dt.datetime.now(dt.UTC)
    claims = {"iss": "delidev", "sub": str(user.id), "iat": now, "jti": "x" * 32}
    bad = {
        "missing": None,
        "garbage": "not-a-token",
        "tampered": f"{header}.{payload}.{signature[:-4]}AAAA",
        "expired": issue_access_token(multi, user.id, now=now - dt.timedelta(days=2)).token,
        "wrong issuer": jwt.encode(
            {**claims, "iss": "someone-else", "exp": now + dt.timedelta(hours=1)},
            SECRET,
            algorithm="HS256",
        ),
        "other secret": jwt.encode(
            {**claims, "exp": now + dt.timedelta(hours=1)},
            "another-secret-of-enough-length-000",
            algorithm="HS256",
        ),
        "alg none": jwt.encode(
            {**claims, "exp": now + dt.timedelta(hours=1)}, key=None, algorithm="none"
        ),
        "no jti": jwt.encode(
            {"iss": "delidev", "sub": str(user.id), "iat": now, "exp": now + dt.timedelta(hours=1)},
            SECRET,
            algorithm="HS256",
        ),
        "unknown user": issue_access_token(multi, uuid.uuid4()).token,
    }
    for name, token in bad.items():
        response = await _call(client, "WorkspaceService/List", {}, token)
        assert _unauthenticated(response), name
        details = response.json()["details"]
        assert details, name
        assert token is None or token not in response.text, name
        gql = await _gql(client, "{ workspaces { totalCount } }", token)
        assert gql["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", name
        assert gql["errors"][0]["extensions"]["delidevCode"] == -32001, name
    assert await m.Workspace.all().count() == 0


async def test_refresh_rotates_and_a_reused_token_revokes_the_family(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await _user("cy@example.com")
    first = await auth.issue_tokens(settings=multi, user=user)
    rotated = await _refresh(client, first.refresh_token)
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    assert second["refreshToken"] != first.refresh_token
    ok = await _call(client, "WorkspaceService/List", {}, second["accessToken"])
    assert ok.status_code == 200
    # The first refresh token again: someone has a copy. Its whole family is revoked.
    reused = await _refresh(client, first.refresh_token)
    assert _unauthenticated(reused)
    again = await _call(
        client, "AuthService/RefreshToken", {"refreshToken": second["refreshToken"]}
    )
    assert _unauthenticated(again)
    revoked = await _call(client, "WorkspaceService/List", {}, second["accessToken"])
    assert _unauthenticated(revoked)
    unknown = await _refresh(client, "nope")
    assert _unauthenticated(unknown)


async def test_logout_revokes_the_access_and_refresh_tokens(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await _user("di@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    out = await _call(
        client, "AuthService/Logout", {"refreshToken": pair.refresh_token}, pair.access_token
    )
    assert out.status_code == 200, out.text
    assert _unauthenticated(await _call(client, "WorkspaceService/List", {}, pair.access_token))
    refreshed = await _call(
        client, "AuthService/RefreshToken", {"refreshToken": pair.refresh_token}
    )
    assert _unauthenticated(refreshed)


async def test_tenants_see_only_their_own(client: httpx.AsyncClient, multi: Settings) -> None:
    alice = await auth.issue_tokens(settings=multi, user=await _user("alice@example.com"))
    mallory = await auth.issue_tokens(settings=multi, user=await _user("mallory@example.com"))
    ws = (await _call(client, "WorkspaceService/Create", {"name": "a"}, alice.access_token)).json()
    ws_id = ws["workspace"]["id"]
    for method, body in (
        ("WorkspaceService/Get", {"workspaceId": ws_id}),
        ("WorkspaceService/Update", {"workspaceId": ws_id, "name": "stolen"}),
        ("WorkspaceService/Delete", {"workspaceId": ws_id}),
        ("RepositoryService/Add", {"workspaceId": ws_id, "remoteUrl": "https://github.com/a/b"}),
    ):
        response = await _call(client, method, body, mallory.access_token)
        assert response.status_code == 404, method
        assert response.json()["code"] == "not_found", method
    listed = await _call(client, "WorkspaceService/List", {}, mallory.access_token)
    assert listed.json().get("totalCount", 0) == 0
    gql = await _gql(client, f'{{ workspace(id: "{ws_id}") {{ name }} }}', mallory.access_token)
    assert gql["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert (await m.Workspace.get(id=ws_id)).name == "a"


async def test_user_and_worker_credentials_do_not_cross(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await auth.issue_tokens(settings=multi, user=await _user("eve@example.com"))
    reg = await _call(
        client, "WorkerService/Register", {"name": "w", "endpointUrl": "http://w:1"}, "reg-token"
    )
    assert reg.status_code == 200
    worker = reg.json()
    as_user = await _call(
        client, "WorkerService/Heartbeat", {"workerId": worker["workerId"]}, user.access_token
    )
    assert _unauthenticated(as_user)
    as_worker = await _call(client, "WorkspaceService/List", {}, worker["credential"])
    assert _unauthenticated(as_worker)
    register_as_user = await _call(
        client,
        "WorkerService/Register",
        {"name": "x", "endpointUrl": "http://x:1"},
        user.access_token,
    )
    assert _unauthenticated(register_as_user)
