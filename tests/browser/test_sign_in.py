"""Multi-user mode in the browser: the console signs in through AuthService's OIDC redirect
flow with a real OpenID provider (npm ``oidc-provider``), works with the tokens it got, and
signs out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from playwright.async_api import Page, Request, expect

from tests.e2e.harness import Server
from tests.oidc import CLIENT_ID, CLIENT_SECRET, openid_provider

JWT_SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
TOKENS = "delidev.tokens@{server}"  # the console's storage key of one server's tokens


async def test_sign_in_work_and_sign_out(
    page: Page, e2e_database_url: str, static_origin: str, tmp_path: Path
) -> None:
    console = f"{static_origin}/"
    with openid_provider(redirect_uri=console) as issuer:
        server = await Server(
            e2e_database_url,
            tmp_path / "server.log",
            DELIDEV_SINGLE_USER_MODE="false",
            DELIDEV_JWT_SECRET=JWT_SECRET,
            DELIDEV_OIDC_ISSUER_URL=issuer,
            DELIDEV_OIDC_CLIENT_ID=CLIENT_ID,
            DELIDEV_OIDC_CLIENT_SECRET=CLIENT_SECRET,
            DELIDEV_OIDC_REDIRECT_URL=console,
            DELIDEV_ALLOWED_REDIRECT_URIS=console,
            DELIDEV_CORS_ORIGINS=static_origin,
        ).ready()
        try:
            await page.goto(f"{console}?server={server.base}")
            await page.get_by_role("button", name="Sign in").click()

            # The provider's own login and consent pages.
            await page.wait_for_url(f"{issuer}/**")
            await page.locator("input[name=login]").fill("ada")
            await page.locator("input[name=password]").fill("any")
            await page.locator("button[type=submit]").click()
            await page.locator("button[type=submit]").click()  # consent

            # Back in the console, signed in as the provider's account.
            await expect(page.get_by_text("User ada")).to_be_visible()
            assert "code=" not in page.url
            assert "state=" not in page.url
            await page.get_by_test_id("nav-setup").click()
            await page.get_by_label("Workspace name").fill("Ada's")
            await page.get_by_role("button", name="Create workspace").click()
            await expect(page.get_by_role("heading", name="Repositories of Ada's")).to_be_visible()

            # A reload keeps the session.
            await page.reload()
            await expect(page.get_by_text("User ada")).to_be_visible()

            # An access token the server refuses is refreshed once, and the call goes on.
            first = await _stored_tokens(page, server.base)
            await page.evaluate(
                """() => {
                  const key = Object.keys(localStorage).find(k => k.startsWith("delidev.tokens@"));
                  const t = JSON.parse(localStorage.getItem(key));
                  t.accessToken = "no-longer-valid";
                  localStorage.setItem(key, JSON.stringify(t));
                }"""
            )
            await page.reload()
            await expect(page.get_by_text("User ada")).to_be_visible()
            second = await _stored_tokens(page, server.base)
            assert second["accessToken"] not in ("no-longer-valid", first["accessToken"])
            # One about to expire is refreshed before it does.
            await page.evaluate(
                """() => {
                  const key = Object.keys(localStorage).find(k => k.startsWith("delidev.tokens@"));
                  const t = JSON.parse(localStorage.getItem(key));
                  t.expiresAt = Date.now();
                  localStorage.setItem(key, JSON.stringify(t));
                }"""
            )
            await page.reload()
            await page.wait_for_function(
                "([key, old]) => JSON.parse(localStorage.getItem(key)).accessToken !== old",
                arg=[TOKENS.format(server=server.base), second["accessToken"]],
                timeout=30_000,
            )
            await page.get_by_test_id("nav-setup").click()
            await expect(page.get_by_role("button", name="Ada's", exact=True)).to_be_visible()

            # A link pointing the console at another server hands it no token of this one.
            sent: list[Request] = []
            page.on("request", lambda request: sent.append(request))
            await page.goto(f"{console}?server={static_origin}")
            await expect(page.get_by_role("alert")).to_contain_text("Cannot reach the server")
            to_other = [r for r in sent if r.url.startswith(f"{static_origin}/delidev.v1.")]
            assert to_other
            assert all("authorization" not in r.headers for r in to_other)
            await page.goto(f"{console}?server={server.base}")
            await expect(page.get_by_text("User ada")).to_be_visible()

            # Signing out ends the session, also after a reload.
            await page.get_by_role("button", name="Sign out").click()
            await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
            await page.reload()
            await expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        finally:
            server.stop()


async def _stored_tokens(page: Page, server: str) -> dict[str, Any]:
    stored = await page.evaluate("key => localStorage.getItem(key)", TOKENS.format(server=server))
    assert stored, "the console keeps its tokens"
    tokens: dict[str, Any] = json.loads(stored)
    return tokens
