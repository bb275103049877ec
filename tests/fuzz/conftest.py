"""The fuzz suite's world, in both modes: the app in process, a principal for the fuzzer
(the local user, or user A with a real token) and protected rows it must not change (the
local user's rows it is never told about, or user B's rows whose ids it is given)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from tortoise.context import TortoiseContext

from delidev import events
from delidev import models as m
from delidev.app import create_app
from delidev.services import auth
from delidev.settings import Settings
from tests.e2e.conftest import e2e_database_url  # noqa: F401  # the real-server run
from tests.fuzz import harness as h
from tests.loop_watchdog import Watchdog


@dataclass
class World:
    mode: str
    app: Any
    http: httpx.AsyncClient
    api: h.Api
    settings: Settings
    attacker: h.Principal
    owner: h.Principal
    """Who owns the protected rows (the attacker itself in single-user mode)."""
    protected: h.Rows
    playground: h.Rows
    secrets: h.Secrets
    checker: h.Checker
    before: dict[str, Any] = field(default_factory=dict)

    def ids(self) -> list[str]:
        """Ids the fuzzer tries: its own rows, and in multi-user mode another user's."""
        ids = self.playground.ids()
        if self.mode == "multi":
            ids += self.protected.ids()
        return ids

    def auth_headers(self) -> list[dict[str, str]]:
        """Authorization variants the fuzzer sends (its own, none, broken)."""
        own = self.attacker.headers
        return [
            own,
            own,
            own,
            {},
            {"authorization": "Bearer "},
            {"authorization": "Bearer not.a.token"},
            {"authorization": "Basic Zm9vOmJhcg=="},
            {"authorization": "Bearer " + "A" * 5000},
        ]

    async def unchanged(self) -> None:
        after = await h.snapshot(self.api, self.owner, self.protected)
        assert after == self.before, "rows created before the run changed"

    async def alive(self) -> None:
        health = await self.http.get("/healthz")
        assert health.status_code == 200, health.text
        await self.api("WorkspaceService/List", {}, self.owner.headers)


def multi_user(settings: Settings) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret=h.JWT_SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret=h.OIDC_CLIENT_SECRET,
        worker_registration_token=h.REGISTRATION_TOKEN,
    )


@pytest.fixture(params=["single", "multi"])
async def world(
    request: pytest.FixtureRequest,
    settings: Settings,
    database: TortoiseContext,
    loop_watchdog: Watchdog,
) -> AsyncIterator[World]:
    mode: str = request.param
    secrets = h.Secrets()
    app_settings = settings if mode == "single" else multi_user(settings)
    app = create_app(app_settings)
    token = events.bind(app.state.events)
    transport = httpx.ASGITransport(app=app)
    tap = h.LogTap()
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1", timeout=60
    ) as http:
        api = h.Api(http)
        if mode == "single":
            attacker = owner = h.Principal({})
            worker_headers: dict[str, str] = {}
        else:
            secrets.add(h.JWT_SECRET, h.OIDC_CLIENT_SECRET, h.REGISTRATION_TOKEN)
            a = await m.User.create(email="attacker@example.com", name="attacker")
            b = await m.User.create(email="owner@example.com", name="owner")
            a_tokens = await auth.issue_tokens(settings=app_settings, user=a)
            b_tokens = await auth.issue_tokens(settings=app_settings, user=b)
            secrets.add(b_tokens.access_token, b_tokens.refresh_token, a_tokens.refresh_token)
            attacker = h.Principal({"authorization": f"Bearer {a_tokens.access_token}"})
            owner = h.Principal({"authorization": f"Bearer {b_tokens.access_token}"})
            worker_headers = {"authorization": f"Bearer {h.REGISTRATION_TOKEN}"}
        protected = await h.seed(
            api, owner, worker_headers=worker_headers, secrets=secrets, finish=False
        )
        playground = await h.seed(
            api, attacker, worker_headers=worker_headers, secrets=secrets, finish=True
        )
        checker = h.Checker(secrets, tap, loop_watchdog)
        world = World(
            mode,
            app,
            http,
            api,
            app_settings,
            attacker,
            owner,
            protected,
            playground,
            secrets,
            checker,
        )
        world.before = await h.snapshot(api, owner, protected)
        try:
            with tap.installed():
                yield world
        finally:
            events.unbind(token)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not h.COUNTS:
        return
    total = sum(h.COUNTS.values())
    parts = ", ".join(f"{kind} {n}" for kind, n in sorted(h.COUNTS.items()))
    terminalreporter.section("fuzz")
    terminalreporter.write_line(f"fuzz inputs: {total} ({parts})")
