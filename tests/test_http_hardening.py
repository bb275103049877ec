"""The HTTP front door: allowed hosts (DNS rebinding), CORS for browsers on other origins,
and the start-up checks of the settings behind them (hosts, origins, the JWT secret)."""

from __future__ import annotations

import base64
import random
import shutil
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from tortoise.context import TortoiseContext

from delidev import events
from delidev.app import allowed_hosts, create_app
from delidev.settings import Settings, SettingsError

APP_ORIGIN = "http://localhost:5173"
UNARY = "/delidev.v1.WorkspaceService/List"
STREAM = "/delidev.v1.SessionService/StreamLog"
JWT_SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
MULTI = {
    "single_user_mode": False,
    "oidc_issuer_url": "https://id.example.test",
    "oidc_client_id": "delidev",
    "oidc_client_secret": "s3cr3t-value",
}


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    token = events.bind(app.state.events)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:54871"
        ) as client:
            yield client
    finally:
        events.unbind(token)


@pytest.fixture
async def browser(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    """A client of a server that lets pages on APP_ORIGIN call it (the origin written as
    an operator might: upper case, trailing slash)."""
    async for client in _client(settings.replace(cors_origins=("HTTP://LOCALHOST:5173/",))):
        yield client


@pytest.fixture
async def no_cors(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    async for client in _client(settings.replace(cors_origins=())):
        yield client


def _preflight(origin: str, headers: str = "content-type,connect-protocol-version") -> Any:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": headers,
    }


@pytest.mark.parametrize("path", [UNARY, STREAM, "/graphql"])
async def test_preflights_from_an_allowed_origin_are_answered(
    browser: httpx.AsyncClient, path: str
) -> None:
    response = await browser.options(path, headers=_preflight(APP_ORIGIN))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert {"content-type", "connect-protocol-version"} <= set(allowed.split(", "))


async def test_every_connect_and_grpc_web_request_header_is_allowed(
    browser: httpx.AsyncClient,
) -> None:
    wanted = (
        "authorization,content-type,connect-protocol-version,connect-timeout-ms,"
        "connect-accept-encoding,connect-content-encoding,grpc-timeout,x-grpc-web,x-user-agent"
    )
    response = await browser.options(UNARY, headers=_preflight(APP_ORIGIN, wanted))
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == APP_ORIGIN


async def test_actual_calls_carry_the_cors_headers(browser: httpx.AsyncClient) -> None:
    origin = {"origin": APP_ORIGIN, "content-type": "application/json"}
    unary = await browser.post(UNARY, content=b"{}", headers=origin)
    stream = await browser.post(
        STREAM,
        content=b"\x00\x00\x00\x00\x02{}",
        headers={**origin, "content-type": "application/connect+json"},
    )
    graphql = await browser.post(
        "/graphql", json={"query": "{ __typename }"}, headers={"origin": APP_ORIGIN}
    )
    for response in (unary, stream, graphql):
        assert response.status_code == 200, response.text
        assert response.headers["access-control-allow-origin"] == APP_ORIGIN
        exposed = set(response.headers["access-control-expose-headers"].lower().split(", "))
        assert {
            "grpc-status",
            "grpc-message",
            "grpc-status-details-bin",
            "connect-content-encoding",
            "content-encoding",
        } <= exposed
    assert b'"code": "invalid_argument"' in stream.content  # the stream's own answer


@pytest.mark.parametrize("origin", ["http://localhost:5174", "https://evil.example.test", "null"])
async def test_other_origins_are_refused(browser: httpx.AsyncClient, origin: str) -> None:
    preflight = await browser.options(UNARY, headers=_preflight(origin))
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    actual = await browser.post(
        UNARY, content=b"{}", headers={"origin": origin, "content-type": "application/json"}
    )
    assert "access-control-allow-origin" not in actual.headers


async def test_an_unlisted_request_header_is_refused(browser: httpx.AsyncClient) -> None:
    response = await browser.options(UNARY, headers=_preflight(APP_ORIGIN, "x-custom"))
    assert response.status_code == 400


@pytest.mark.parametrize("path", [UNARY, "/graphql"])
async def test_without_cors_origins_every_preflight_is_refused(
    no_cors: httpx.AsyncClient, path: str
) -> None:
    response = await no_cors.options(path, headers=_preflight(APP_ORIGIN))
    assert response.status_code == 400  # a clear refusal, not 405
    assert "access-control-allow-origin" not in response.headers


# Hosts -------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [UNARY, "/graphql"])
@pytest.mark.parametrize("mode", ["single", "multi"])
async def test_a_foreign_host_is_refused(
    settings: Settings, database: TortoiseContext, path: str, mode: str
) -> None:
    changes: dict[str, Any] = {"allowed_hosts": ()}
    if mode == "multi":  # where the check is on once names are configured
        changes = {**MULTI, "jwt_secret": JWT_SECRET, "allowed_hosts": ("delidev.example.test",)}
    async for client in _client(settings.replace(**changes)):
        for host, status in (
            ("rebound.attacker.test", 400),
            ("localhost.attacker.test:54871", 400),
            ("127.0.0.1:54871", None),
            ("localhost", None),
            ("[::1]:9", None),
        ):
            response = await client.post(
                path,
                json={"query": "{ __typename }"} if path == "/graphql" else {},
                headers={"host": host},
            )
            if status is None:
                assert response.status_code != 400, (host, response.text)
            else:
                assert response.status_code == status, (host, response.text)
                assert response.text == "Invalid host header"


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_name = st.one_of(
    st.sampled_from(["localhost", "LocalHost", "127.0.0.1", "[::1]", "delidev.example.test"]),
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.sampled_from(["localhost", "127.0.0.1", "delidev.example.test"]).flatmap(
        lambda name: _label.map(lambda label: f"{label}.{name}")  # a rebinding look-alike
    ),
)
_port = st.none() | st.integers(min_value=0, max_value=65535)


@pytest.fixture
async def configured_host(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    async for client in _client(settings.replace(allowed_hosts=("delidev.example.test",))):
        yield client


@hypothesis_settings(
    max_examples=150,
    derandomize=True,  # the same inputs on every run; explore with --hypothesis-seed
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one app for all inputs
)
@given(name=_name, port=_port)
async def test_a_host_is_served_exactly_when_it_is_allowed(
    configured_host: httpx.AsyncClient, name: str, port: int | None
) -> None:
    allowed = {"localhost", "127.0.0.1", "[::1]", "delidev.example.test"}
    host = name if port is None else f"{name}:{port}"
    response = await configured_host.post(UNARY, json={}, headers={"host": host})
    assert response.status_code == (200 if name.lower() in allowed else 400), host
    # Health probes come from orchestrators, to a pod's address: any name.
    assert (await configured_host.get("/healthz", headers={"host": host})).status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:080", 200),
        ("[::1]", 200),
        ("[::1]:80", 200),
        ("localhost:abc", 400),
        ("localhost:", 400),
        ("[::1]:", 400),
        ("::1", 400),
        ("localhost.", 400),
        ("localhost:80:80", 400),
        ("127.0.0.1 ", 400),
    ],
)
async def test_odd_host_forms(configured_host: httpx.AsyncClient, host: str, status: int) -> None:
    response = await configured_host.post(UNARY, json={}, headers={"host": host})
    assert response.status_code == status


async def test_multi_user_mode_serves_any_host_until_names_are_configured(
    settings: Settings, database: TortoiseContext
) -> None:
    multi = settings.replace(**MULTI, jwt_secret=JWT_SECRET, allowed_hosts=())
    assert allowed_hosts(multi) == ["*"]
    async for client in _client(multi):
        response = await client.post(
            "/graphql", json={"query": "{ __typename }"}, headers={"host": "elsewhere.test"}
        )
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("server_host", "configured", "expected"),
    [
        ("127.0.0.1", (), {"localhost", "127.0.0.1", "[::1]"}),
        ("0.0.0.0", (), {"localhost", "127.0.0.1", "[::1]"}),
        ("::", (), {"localhost", "127.0.0.1", "[::1]"}),
        ("192.168.1.20", (), {"localhost", "127.0.0.1", "[::1]", "192.168.1.20"}),
        ("fd00::20", (), {"localhost", "127.0.0.1", "[::1]", "[fd00::20]"}),
        (
            "0.0.0.0",
            ("delidev.example.test", "*.corp.test"),
            {"localhost", "127.0.0.1", "[::1]", "delidev.example.test", "*.corp.test"},
        ),
    ],
)
def test_the_hosts_served(
    server_host: str, configured: tuple[str, ...], expected: set[str]
) -> None:
    settings = Settings(server_host=server_host, allowed_hosts=configured)
    assert set(allowed_hosts(settings)) == expected


# Settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "secret",
    [
        "a" * 32,
        "1234567890" * 4,
        "12345678901234567890123456789012",
        "password" * 4,
        "0123456789abcdef" * 2,
        "abcdefghijklmnopqrstuvwxyzabcdef",
        "qwertyuiopasdfghjklzxcvbnm123456",
        "Password1234567890Password123456",
        "correct horse battery staple!!!!",
        "zxcvbn" * 20,  # long, and as guessable as its first 72 characters
    ],
)
@pytest.mark.parametrize("single_user_mode", [False, True])
def test_guessable_jwt_secrets_are_refused(secret: str, single_user_mode: bool) -> None:
    """Also in single-user mode, where a secret set seals the secret relay."""
    with pytest.raises(SettingsError, match="DELIDEV_JWT_SECRET looks weak"):
        Settings(**{**MULTI, "single_user_mode": single_user_mode}, jwt_secret=secret).validate()


def _openssl_like(seed: int) -> list[str]:
    """What ``openssl rand -hex 32``, ``-base64 32`` and ``-hex 16`` print."""
    rng = random.Random(seed)
    return [
        rng.randbytes(32).hex(),
        base64.b64encode(rng.randbytes(32)).decode(),
        rng.randbytes(16).hex(),
    ]


@pytest.mark.parametrize("seed", range(20))
def test_random_jwt_secrets_pass(seed: int) -> None:
    for secret in _openssl_like(seed):
        Settings(**MULTI, jwt_secret=secret).validate()


def test_a_random_secret_may_hold_a_short_run_or_word() -> None:
    Settings(**MULTI, jwt_secret="Kq3xxxZ8mP2vL9rT4wN7bF1hJ6cD0gYa").validate()
    Settings(**MULTI, jwt_secret="h8TodoQ2mZ7vL4rX9wN1bF6kJ3cD5gYa").validate()


def test_openssl_rand_output_passes() -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")  # the seeded cases above cover the formats
    for args in (["-hex", "32"], ["-base64", "32"]):
        secret = subprocess.run(
            [openssl, "rand", *args], capture_output=True, text=True, check=True
        ).stdout.strip()
        Settings(**MULTI, jwt_secret=secret).validate()


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DELIDEV_ALLOWED_HOSTS", "delidev.example.test:443"),
        ("DELIDEV_ALLOWED_HOSTS", "dev*.example.test"),
        ("DELIDEV_ALLOWED_HOSTS", "*."),
        ("DELIDEV_ALLOWED_HOSTS", "https://delidev.example.test"),
        ("DELIDEV_CORS_ORIGINS", "localhost:5173"),
        ("DELIDEV_CORS_ORIGINS", "http://localhost:5173/app"),
        ("DELIDEV_CORS_ORIGINS", "ftp://files.example.test"),
        ("DELIDEV_CORS_ORIGINS", "http://localhost:99999"),
        ("DELIDEV_MAX_JSON_DEPTH", "0"),
        ("DELIDEV_MAX_JSON_DEPTH", "100000"),
        ("DELIDEV_HEADER_TIMEOUT_MS", "0"),
        ("DELIDEV_HEADER_TIMEOUT_MS", "soon"),
        ("DELIDEV_BODY_TIMEOUT_MS", "0"),
        ("DELIDEV_BODY_TIMEOUT_MS", "-5"),
        ("DELIDEV_SIGN_IN_PER_MINUTE", "-1"),
        ("DELIDEV_SIGN_IN_BURST", "0"),
    ],
)
def test_bad_front_door_settings_name_the_variable(var: str, value: str) -> None:
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({"DELIDEV_SINGLE_USER_MODE": "true", var: value})


def test_front_door_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DELIDEV_ALLOWED_HOSTS": "delidev.example.test, *.corp.test ,[fd00::1]",
            "DELIDEV_CORS_ORIGINS": "http://localhost:5173,https://app.example.test",
            "DELIDEV_MAX_JSON_DEPTH": "32",
            "DELIDEV_HEADER_TIMEOUT_MS": "2500",
            "DELIDEV_BODY_TIMEOUT_MS": "15000",
        }
    )
    assert settings.body_timeout_ms == 15_000
    assert Settings.from_env({}).body_timeout_ms == 60_000
    assert settings.allowed_hosts == ("delidev.example.test", "*.corp.test", "[fd00::1]")
    assert settings.cors_origins == ("http://localhost:5173", "https://app.example.test")
    assert (settings.max_json_depth, settings.header_timeout_ms) == (32, 2500)
    defaults = Settings.from_env({})
    assert (defaults.allowed_hosts, defaults.max_json_depth, defaults.header_timeout_ms) == (
        (),
        64,
        10_000,
    )


async def test_get_answers_vary_by_origin_for_caches(browser: httpx.AsyncClient) -> None:
    """A GET (GraphQL queries, GraphiQL) may be cached: the answer says it depends on
    Origin even when none was sent, so a cache never serves it to another origin."""
    response = await browser.get("/graphql", params={"query": "{ __typename }"})
    assert response.status_code == 200, response.text
    assert "origin" in response.headers["vary"].lower()
