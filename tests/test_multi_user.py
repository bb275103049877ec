"""Multi-user mode: access tokens, refresh rotation, logout, refusals and tenant isolation,
through the real app (Connect JSON and GraphQL over HTTP)."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from delidev import db
from delidev import models as m
from delidev.app import create_app
from delidev.auth.tokens import issue_access_token
from delidev.services import auth
from delidev.settings import Settings
from tests.waiting import GUARD_S, eventually

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
    good = (await auth.issue_tokens(settings=multi, user=user)).access_token
    sid = str((await m.RefreshToken.get(user_id=user.id)).family_id)
    header, payload, signature = good.split(".")
    now = dt.datetime.now(dt.UTC)
    claims = {"iss": "delidev", "sub": str(user.id), "sid": sid, "iat": now, "jti": "x" * 32}
    bad = {
        "missing": None,
        "garbage": "not-a-token",
        "tampered": f"{header}.{payload}.{signature[:-4]}AAAA",
        "expired": issue_access_token(
            multi, user.id, session_id=uuid.UUID(sid), now=now - dt.timedelta(days=2)
        ).token,
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
            {**claims, "exp": now + dt.timedelta(hours=1)}, key="", algorithm="none"
        ),
        "no jti": jwt.encode(
            {k: v for k, v in claims.items() if k != "jti"} | {"exp": now + dt.timedelta(hours=1)},
            SECRET,
            algorithm="HS256",
        ),
        "unknown user": issue_access_token(multi, uuid.uuid4(), session_id=uuid.UUID(sid)).token,
        "huge": "a" * 100_000,
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
    first_access = await _call(client, "WorkspaceService/List", {}, first.access_token)
    assert _unauthenticated(first_access)
    unknown = await _refresh(client, "nope")
    assert _unauthenticated(unknown)


async def _until_waiting_on_locks(conn: asyncpg.Connection, count: int) -> None:
    async def waiting() -> int:
        # Inside a transaction, pg_stat_activity is a snapshot taken once: take a new one.
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
        )

    await eventually(waiting, lambda n: n >= count, within=GUARD_S, every=0.02)


@pytest.mark.postgres_only
async def test_concurrent_refreshes_with_one_token_revoke_the_family_for_good(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await _user("race@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    # Hold the token's row, so that both refreshes read it unused and then queue on its
    # lock: one claims it, the other finds it claimed (the "a concurrent refresh won" path).
    blocker = await asyncpg.connect(db.asyncpg_dsn(multi))
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute(
            "SELECT 1 FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE",
            hashlib.sha256(pair.refresh_token.encode()).hexdigest(),
        )
        calls = [asyncio.create_task(_refresh(client, pair.refresh_token)) for _ in range(2)]
        await _until_waiting_on_locks(blocker, 2)
        await hold.rollback()
        responses = await asyncio.gather(*calls)
    finally:
        await blocker.close()
    won = [r for r in responses if r.status_code == 200]
    assert len(won) == 1, [r.text for r in responses]
    assert _unauthenticated(next(r for r in responses if r.status_code != 200))
    # The loser's revocation stuck, and it reached the winner's new tokens as well.
    winner = won[0].json()
    for access in (pair.access_token, winner["accessToken"]):
        assert _unauthenticated(await _call(client, "WorkspaceService/List", {}, access))
    assert _unauthenticated(await _refresh(client, winner["refreshToken"]))
    assert not await m.RefreshToken.filter(user_id=user.id, revoked_at=None).exists()


async def test_a_family_revocation_outlives_long_lived_access_tokens(multi: Settings) -> None:
    settings = multi.replace(jwt_expiration_hours=24 * 90)
    user = await _user("long@example.com")
    first = await auth.issue_tokens(settings=settings, user=user)
    second = await auth.refresh_tokens(settings=settings, refresh_token=first.refresh_token)
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert _unauthenticated(await _refresh(client, first.refresh_token))
        # The sweep runs long after a day has passed, but before the tokens expire.
        await auth.purge_expired(now=second.expires_at - dt.timedelta(hours=1))
        for pair in (first, second):
            response = await _call(client, "WorkspaceService/List", {}, pair.access_token)
            assert _unauthenticated(response)


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
    assert not await m.RefreshToken.filter(user_id=user.id, revoked_at=None).exists()


async def test_logout_without_a_refresh_token_ends_the_sign_in(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await _user("fay@example.com")
    fresh = await auth.issue_tokens(settings=multi, user=user)
    out = await _call(client, "AuthService/Logout", {}, fresh.access_token)
    assert out.status_code == 200, out.text
    assert _unauthenticated(await _refresh(client, fresh.refresh_token))
    # After a rotation too: logging out with the newest access token ends its refresh token.
    first = await auth.issue_tokens(settings=multi, user=user)
    rotated = (await _refresh(client, first.refresh_token)).json()
    other = await auth.issue_tokens(settings=multi, user=user)
    out = await _call(client, "AuthService/Logout", {}, rotated["accessToken"])
    assert out.status_code == 200, out.text
    assert _unauthenticated(await _refresh(client, rotated["refreshToken"]))
    assert _unauthenticated(
        await _call(client, "WorkspaceService/List", {}, rotated["accessToken"])
    )
    # The access token issued before the rotation belongs to the same sign-in: it ends too.
    assert _unauthenticated(await _call(client, "WorkspaceService/List", {}, first.access_token))
    # Another sign-in of the same user is not this one: it goes on.
    assert (await _refresh(client, other.refresh_token)).status_code == 200


def _mint(user_id: uuid.UUID, **claims: Any) -> str:
    """A token signed with the server's secret, as someone holding it could make one."""
    now = dt.datetime.now(dt.UTC)
    base = {
        "iss": "delidev",
        "sub": str(user_id),
        "sid": str(uuid.uuid4()),
        "iat": now,
        "exp": now + dt.timedelta(hours=1),
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode({**base, **claims}, SECRET, algorithm="HS256")


async def _refused_by_both_apis(client: httpx.AsyncClient, token: str) -> bool:
    connect = await _call(client, "WorkspaceService/List", {}, token)
    gql = await _gql(client, "{ workspaces { totalCount } }", token)
    return _unauthenticated(connect) and gql["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


async def test_a_token_the_server_never_issued_is_refused(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    """Signed with the secret but for no sign-in the server holds, or held beyond the
    configured lifetime: refused, whatever ``jti`` and ``exp`` say."""
    user = await _user("gil@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    sid = str((await m.RefreshToken.get(user_id=user.id)).family_id)  # the sign-in's id
    now = dt.datetime.now(dt.UTC)
    ten_years = now + dt.timedelta(days=3650)
    # The same claims as a real sign-in's, with sid, iat and exp as they come: accepted.
    assert (await _call(client, "WorkspaceService/List", {}, _mint(user.id, sid=sid))).is_success
    forged = {
        "no sign-in of that id": _mint(user.id),
        "another user's sign-in": _mint((await _user("hal@example.com")).id, sid=sid),
        "no sid": jwt.encode(
            {"iss": "delidev", "sub": str(user.id), "iat": now, "exp": ten_years, "jti": "j"},
            SECRET,
            algorithm="HS256",
        ),
        "sid not a uuid": _mint(user.id, sid="session-1"),
        "exp ten years out, iat a day and an hour ago": _mint(
            user.id, sid=sid, iat=now - dt.timedelta(hours=25), exp=ten_years
        ),
        "iat in the future": _mint(user.id, sid=sid, iat=now + dt.timedelta(hours=2)),
    }
    for case, token in forged.items():
        assert await _refused_by_both_apis(client, token), case
    # exp ten years out with a fresh iat: accepted, but only for the configured lifetime.
    long_lived = _mint(user.id, sid=sid, exp=ten_years)
    principal = await auth.authenticate(settings=multi, token=long_lived)
    assert principal.token_expires_at is not None
    assert principal.token_expires_at <= now + dt.timedelta(
        hours=multi.jwt_expiration_hours, seconds=1
    )
    # Logout ends the sign-in for every token of it, a freshly minted jti included.
    out = await _call(client, "AuthService/Logout", {}, pair.access_token)
    assert out.status_code == 200, out.text
    for token in (pair.access_token, long_lived, _mint(user.id, sid=sid)):
        assert await _refused_by_both_apis(client, token)


async def test_logout_ends_the_sign_in_on_other_replicas_at_once(multi: Settings) -> None:
    """Two apps on one database stand for two replicas: no cache keeps a token alive."""
    user = await _user("ivy@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    replicas = [
        httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(multi)), base_url="http://r")
        for _ in range(2)
    ]
    async with replicas[0] as one, replicas[1] as other:
        assert (await _call(other, "WorkspaceService/List", {}, pair.access_token)).is_success
        assert (await _call(one, "AuthService/Logout", {}, pair.access_token)).is_success
        assert _unauthenticated(await _call(other, "WorkspaceService/List", {}, pair.access_token))


async def test_oversized_or_malformed_refresh_tokens_are_invalid_arguments(
    client: httpx.AsyncClient, multi: Settings
) -> None:
    user = await _user("jo@example.com")
    pair = await auth.issue_tokens(settings=multi, user=user)
    for value in ("r" * 1_000_000, "r" * 4_097, "a\x00b", "a\nb"):
        for method, token in (
            ("AuthService/Logout", pair.access_token),
            ("AuthService/RefreshToken", None),
        ):
            refused = await _call(client, method, {"refreshToken": value}, token)
            assert refused.status_code == 400, (method, refused.text[:200])
            error = refused.json()
            assert error["code"] == "invalid_argument", error
            assert "refresh_token" in error["message"]
            assert len(refused.content) < 1_000
    # Nothing was ended by the refused calls: the sign-in goes on and its refresh token works.
    assert (await _call(client, "WorkspaceService/List", {}, pair.access_token)).is_success
    assert (await _refresh(client, pair.refresh_token)).status_code == 200


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
