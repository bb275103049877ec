"""OIDC sign-in against a stand-in provider on a loopback port (``tests.oidc.FakeProvider``):
every way an ID token can be wrong, the issuer as discovery states it, PKCE, the profile
updated on sign-in, and the bound on pending sign-ins. Real HTTP and a real database; the
real provider's happy path is in ``tests/interop/test_oidc_login.py``."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from delidev import models as m
from delidev.app import create_app
from delidev.errors import Unauthenticated
from delidev.services import auth
from delidev.services.oidc import OidcClient
from delidev.settings import Settings
from tests.oidc import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, FakeProvider

pytestmark = pytest.mark.usefixtures("database")
JWT_SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


@pytest.fixture
def multi(settings: Settings, provider: FakeProvider) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret=JWT_SECRET,
        oidc_issuer_url=provider.base_url,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_redirect_url=REDIRECT_URI,
    )


@pytest.fixture
async def api(multi: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(multi))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def _call(api: httpx.AsyncClient, method: str, body: dict[str, Any]) -> httpx.Response:
    return await api.post(
        f"/delidev.v1.AuthService/{method}",
        content=json.dumps(body),
        headers={"content-type": "application/json"},
    )


async def _start(api: httpx.AsyncClient) -> dict[str, str]:
    """GetLoginUrl; returns the authorization request's query parameters."""
    started = await _call(api, "GetLoginUrl", {"redirectUri": REDIRECT_URI})
    assert started.status_code == 200, started.text
    return {k: v[0] for k, v in parse_qs(urlsplit(started.json()["url"]).query).items()}


def _claims(provider: FakeProvider, nonce: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "sub": "subject-1",
        "aud": CLIENT_ID,
        "iat": now,
        "exp": now + 300,
        "nonce": nonce,
        "email": "ada@example.com",
        "email_verified": True,
        "name": "Ada",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def _sign_in(
    api: httpx.AsyncClient, provider: FakeProvider, **changes: Any
) -> httpx.Response:
    request = await _start(api)
    provider.id_token = provider.sign(_claims(provider, request["nonce"], **changes))
    return await _call(api, "HandleCallback", {"code": "any", "state": request["state"]})


async def test_a_malformed_code_or_state_is_an_invalid_argument(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    """Refused before the database or a log sees them; the pending sign-in is untouched."""
    request = await _start(api)
    forged_line = "x\n2026-12-04 09:00:00,000 CRITICAL delidev.app: forged"
    cases = {
        "state": ["s" * 256, "a\x00b", forged_line, "\x1b[2J", "é", "y" * 3_000_000, ""],
        "code": ["c" * 4097, "a\x00b", forged_line, "\x7f", ""],
    }
    for field, values in cases.items():
        for value in values:
            body = {"code": "any", "state": request["state"], field: value}
            refused = await _call(api, "HandleCallback", body)
            assert refused.status_code == 400, (field, value[:20], refused.text[:200])
            error = refused.json()
            assert error["code"] == "invalid_argument", error
            assert field in error["message"]
            assert len(refused.content) < 1_000  # the value is not echoed
    assert await m.AuthState.filter(state=request["state"]).exists()
    provider.id_token = provider.sign(_claims(provider, request["nonce"]))
    done = await _call(api, "HandleCallback", {"code": "c", "state": request["state"]})
    assert done.status_code == 200, done.text


async def test_a_forged_or_misdirected_id_token_is_refused(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    now = int(time.time())
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forgeries: dict[str, Callable[[dict[str, Any]], str | None]] = {
        "signed by a key not in the JWKS": lambda c: provider.sign(c, key=stranger),
        "unknown key id": lambda c: provider.sign(c, key=stranger, kid="other"),
        "wrong issuer": lambda c: provider.sign({**c, "iss": "https://evil.example"}),
        "wrong audience": lambda c: provider.sign({**c, "aud": "another-client"}),
        "expired": lambda c: provider.sign({**c, "iat": now - 7200, "exp": now - 3600}),
        "wrong nonce": lambda c: provider.sign({**c, "nonce": "not-the-one"}),
        "no nonce": lambda c: provider.sign({k: v for k, v in c.items() if k != "nonce"}),
        "alg none": lambda c: jwt.encode(
            c, key="", algorithm="none", headers={"kid": FakeProvider.KID}
        ),
        "HS256 with the client secret": lambda c: jwt.encode(
            c, CLIENT_SECRET, algorithm="HS256", headers={"kid": FakeProvider.KID}
        ),
        "tampered payload": lambda c: _tamper(provider.sign(c)),
        "no ID token": lambda c: None,
    }
    for case, forge in forgeries.items():
        request = await _start(api)
        provider.id_token = forge(_claims(provider, request["nonce"]))
        refused = await _call(api, "HandleCallback", {"code": "any", "state": request["state"]})
        assert refused.status_code == 401, case
        assert refused.json()["code"] == "unauthenticated", case
        if provider.id_token:
            assert provider.id_token not in refused.text, case
        assert await m.User.all().count() == 0, case
        assert await m.RefreshToken.all().count() == 0, case
    # The same flow with an honest token signs in: the refusals above are the token's fault.
    accepted = await _sign_in(api, provider)
    assert accepted.status_code == 200, accepted.text
    assert await m.User.all().count() == 1


def _tamper(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_the_issuer_is_the_one_discovery_names(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    # Configured without the trailing slash, named with it by the provider (as some do):
    # the ID token carries the provider's spelling, and that is the one to compare with.
    provider.issuer = f"{provider.base_url}/"
    accepted = await _sign_in(api, provider)
    assert accepted.status_code == 200, accepted.text
    assert (await m.User.get()).oidc_issuer == f"{provider.base_url}/"
    refused = await _sign_in(api, provider, iss=provider.base_url)
    assert refused.json()["code"] == "unauthenticated"


async def test_a_discovery_document_naming_another_issuer_is_refused(
    multi: Settings, provider: FakeProvider
) -> None:
    provider.issuer = "https://someone-else.example"
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(multi)), base_url="http://t"
    )
    async with api:
        refused = await _call(api, "GetLoginUrl", {"redirectUri": REDIRECT_URI})
    assert refused.json()["code"] == "unavailable"
    assert await m.AuthState.all().count() == 0


async def test_pkce_verifier_is_43_base64url_characters_and_the_challenge_is_s256(
    api: httpx.AsyncClient, provider: FakeProvider, multi: Settings
) -> None:
    request = await _start(api)
    verifier = (await m.AuthState.get(state=request["state"])).code_verifier
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", verifier)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    assert request["code_challenge"] == base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert request["code_challenge_method"] == "S256"
    provider.id_token = provider.sign(_claims(provider, request["nonce"]))
    done = await _call(api, "HandleCallback", {"code": "c", "state": request["state"]})
    assert done.status_code == 200, done.text
    assert provider.token_requests[-1]["code_verifier"] == verifier
    # The access token carries the claims FACTS.md lists.
    access = jwt.decode(
        done.json()["accessToken"], JWT_SECRET, algorithms=["HS256"], issuer=multi.jwt_issuer
    )
    assert set(access) == {"sub", "sid", "email", "name", "iat", "exp", "iss", "jti"}
    assert (access["email"], access["name"]) == ("ada@example.com", "Ada")
    # ``sid`` names the sign-in: the family of the refresh token issued with it.
    assert access["sid"] == str((await m.RefreshToken.get()).family_id)


async def test_the_profile_is_updated_on_the_next_sign_in(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    first = await _sign_in(api, provider, email="ada@old.example", name="Ada Old")
    assert first.status_code == 200, first.text
    second = await _sign_in(api, provider, email="ada@new.example", name="Ada New")
    assert second.status_code == 200, second.text
    assert second.json()["user"]["id"] == first.json()["user"]["id"]
    user = await m.User.get()
    assert (user.email, user.name) == ("ada@new.example", "Ada New")
    assert (second.json()["user"]["email"], second.json()["user"]["name"]) == (
        "ada@new.example",
        "Ada New",
    )


async def test_an_unverified_address_is_not_taken_and_cannot_lock_out_its_owner(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    """Mallory signs in first with Ada's address, unverified (or not said to be verified):
    she gets the synthetic address, and Ada, verified, gets hers."""
    host = provider.issuer.split("://")[-1]
    for sub, verified in (("mallory", False), ("mallory-2", None), ("mallory-3", "no")):
        taken = await _sign_in(api, provider, sub=sub, email_verified=verified)
        assert taken.status_code == 200, taken.text
        assert taken.json()["user"]["email"] == f"{sub}@{host}"
    ada = await _sign_in(api, provider, sub="ada")
    assert ada.status_code == 200, ada.text
    assert ada.json()["user"]["email"] == "ada@example.com"
    assert await m.User.filter(email="ada@example.com").count() == 1
    # A later unverified sign-in of Ada drops the address she no longer proves.
    again = await _sign_in(api, provider, sub="ada", email_verified=False)
    assert again.json()["user"]["email"] == f"ada@{host}"
    # Amazon Cognito's string spelling counts as verified.
    cognito = await _sign_in(api, provider, sub="ada", email_verified="true")
    assert cognito.json()["user"]["email"] == "ada@example.com"


async def test_a_verified_address_held_by_another_account_is_refused_without_naming_it(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    assert (await _sign_in(api, provider, sub="ada")).status_code == 200
    refused = await _sign_in(api, provider, sub="someone-else")
    assert refused.status_code == 401, refused.text
    assert "another account" in refused.json()["message"]
    assert "ada@example.com" not in refused.text
    assert await m.User.all().count() == 1


async def test_a_name_is_kept_only_as_storable_text_cut_to_the_column(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    names: list[tuple[Any, str | None]] = [
        ("x" * 300, "x" * 255),
        ("Ada\x00 Love\nlace\ud800", "Ada Love lace"),
        ({"a": 1}, None),
        (["Ada"], None),
        (42, None),
        ("\x00\t ", None),
        ("Ada Lovelace", "Ada Lovelace"),
    ]
    for claim, stored in names:
        signed_in = await _sign_in(api, provider, name=claim)
        assert signed_in.status_code == 200, (claim, signed_in.text)
        user = await m.User.get()
        assert user.name == stored, claim
        assert signed_in.json()["user"].get("name", "") == (stored or ""), claim


async def test_a_subject_the_column_cannot_hold_is_refused(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    for subject in ("s" * 256, "ada\x00", "ada\ud800", "ada\n"):
        refused = await _sign_in(api, provider, sub=subject)
        assert refused.status_code == 401, (subject[:20], refused.text)
        error = refused.json()
        assert error["code"] == "unauthenticated"
        assert "sub" in error["message"]
    assert await m.User.all().count() == 0
    longest = await _sign_in(api, provider, sub="s" * 255)
    assert longest.status_code == 200, longest.text
    assert (await m.User.get()).oidc_subject == "s" * 255


async def test_a_verified_address_that_is_not_one_falls_back_to_the_synthetic_one(
    api: httpx.AsyncClient, provider: FakeProvider
) -> None:
    host = provider.issuer.split("://")[-1]
    for email in ("ada\x00@example.com", {"a": 1}, "a" * 250 + "@example.com", "a b@x.test"):
        signed_in = await _sign_in(api, provider, email=email)
        assert signed_in.status_code == 200, signed_in.text
        assert signed_in.json()["user"]["email"] == f"subject-1@{host}"


async def _pending() -> set[str]:
    return {row["state"] for row in await m.AuthState.all().values("state")}


@pytest.mark.parametrize("body", [b"<html>maintenance</html>", b"[1, 2]", b"", b'"token"'])
async def test_a_token_answer_that_is_no_json_object_is_unavailable(
    api: httpx.AsyncClient,
    provider: FakeProvider,
    caplog: pytest.LogCaptureFixture,
    body: bytes,
) -> None:
    """Regression: the token endpoint's answer was read as JSON unchecked (a 500 and a
    traceback for a provider that answered its maintenance page)."""
    request = await _start(api)
    provider.token_body = body
    answer = await _call(api, "HandleCallback", {"code": "any", "state": request["state"]})
    assert answer.status_code == 503, answer.text
    assert answer.json()["code"] == "unavailable"
    assert answer.json()["message"] == "the sign-in provider sent no token answer: start again"
    assert not [r for r in caplog.records if r.exc_info]


async def test_expired_sign_in_states_are_purged(api: httpx.AsyncClient) -> None:
    stale = (await _start(api))["state"]
    fresh = (await _start(api))["state"]
    await m.AuthState.filter(state=stale).update(
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    assert await auth.purge_expired() >= 1
    assert await m.AuthState.filter(state=stale).count() == 0
    assert await m.AuthState.filter(state=fresh).count() == 1
    # GetLoginUrl drops expired states too, without waiting for the sweep.
    await m.AuthState.filter(state=fresh).update(
        expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    )
    newest = (await _start(api))["state"]
    assert await _pending() == {newest}


async def test_pending_sign_ins_are_capped_oldest_first(
    multi: Settings, provider: FakeProvider
) -> None:
    client = OidcClient(multi, max_pending_logins=3)
    states = [(await client.login_url(redirect_uri=REDIRECT_URI))[1] for _ in range(5)]
    assert await _pending() == set(states[-3:])
    provider.id_token = "irrelevant: the state is gone before the provider is asked"
    with pytest.raises(Unauthenticated, match="unknown or already used"):
        await client.complete_login(code="c", state=states[0])
    assert provider.token_requests == []


async def test_a_first_sign_in_that_loses_a_race_gets_the_winners_row_or_a_clear_refusal(
    multi: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = OidcClient(multi)
    issuer = "https://idp.example"
    winner = await m.User.create(
        email="ada@example.com", name="Ada", oidc_issuer=issuer, oidc_subject="ada"
    )

    async def nobody_yet(*_: object, **__: object) -> bool:
        return False  # as seen just before the other sign-in committed its row

    monkeypatch.setattr(m.User, "exists", nobody_yet)
    monkeypatch.setattr(m.User, "get_or_none", _second_call_finds(m.User.get_or_none))
    verified = {"email": "ada@example.com", "email_verified": True}
    claims = {"iss": issuer, "sub": "ada", **verified, "name": "Ada"}
    assert (await client._upsert_user(claims)).id == winner.id

    other = {"iss": issuer, "sub": "eve", **verified, "name": "Eve"}
    with pytest.raises(Unauthenticated, match="belongs to another account"):
        await client._upsert_user(other)
    assert await m.User.filter(email="ada@example.com").count() == 1


def _second_call_finds(real: Any) -> Any:
    """``get_or_none`` that misses on its first call (the race) and reads for real after."""
    calls = 0

    async def get_or_none(*args: object, **kwargs: object) -> Any:
        nonlocal calls
        calls += 1
        return None if calls % 2 == 1 else await real(*args, **kwargs)

    return get_or_none
