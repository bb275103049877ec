"""The console loaded from another origin (a plain static server on another port) and
pointed at the API with ``?server=``: every front door through the browser's CORS rules —
Connect unary (with its preflight), Connect server streaming, GraphQL over HTTP and the
GraphQL WebSocket — and a server that does not allow the origin, refused by the browser."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, Request, expect

from tests.e2e.harness import Connect, Server, Sim


async def test_every_front_door_works_from_an_allowed_origin(
    page: Page, e2e_database_url: str, static_origin: str, tmp_path: Path
) -> None:
    server = await Server(
        e2e_database_url, tmp_path / "server.log", DELIDEV_CORS_ORIGINS=static_origin
    ).ready()
    sent: list[Request] = []
    page.on("request", lambda request: sent.append(request))
    sim = None
    try:
        await page.goto(f"{static_origin}/?server={server.base}#/setup")
        await page.get_by_label("Workspace name").fill("Elsewhere")
        await page.get_by_role("button", name="Create workspace").click()  # Connect unary
        await expect(page.get_by_role("heading", name="Repositories of Elsewhere")).to_be_visible()
        await page.get_by_label("Repository URL").fill("https://github.com/acme/far")
        await page.get_by_role("button", name="Add repository").click()
        await page.get_by_role("checkbox", name="far").check()
        await page.get_by_role("button", name="Create group").click()
        await expect(page.get_by_test_id("group")).to_have_count(1)  # read over GraphQL

        # A task created by someone else appears on the open board: the WebSocket.
        await page.get_by_test_id("nav-board").click()
        await expect(page.get_by_role("heading", name="Board")).to_be_visible()
        api = Connect(server.base)
        workspace = (await api("WorkspaceService/List", {}))["workspaces"][0]["id"]
        groups = await api("RepositoryGroupService/List", {"workspaceId": workspace})
        task = await api.unit(groups["groups"][0]["id"], "[sim:lines=25] from afar")
        await api.close()
        card = page.get_by_test_id("task-card").filter(has_text="from afar")
        await expect(card).to_be_visible()

        # Its log streams in: Connect server streaming.
        sim = Sim(server.base, tmp_path, "far-worker", "--lines-per-second", "20")
        await card.click()
        await expect(page.get_by_test_id("log")).to_contain_text("line 25 of 25")
        assert task["id"] in page.url

        # The browser asked before each kind of call (its preflights are not page
        # requests; the server's access log shows them).
        served = server.log()
        for preflight in (
            "OPTIONS /delidev.v1.WorkspaceService/Create 200",
            "OPTIONS /delidev.v1.SessionService/StreamLog 200",
            "OPTIONS /graphql 200",
        ):
            assert preflight in served
        assert all(r.url.startswith(server.base) for r in sent if "/delidev.v1." in r.url)
        assert any(r.url == f"{server.base}/graphql" and r.method == "POST" for r in sent)
        # The live board's WebSocket was accepted from this origin (the card above came
        # through it).
        assert '"WebSocket /graphql" [accepted]' in served
    finally:
        if sim is not None:
            sim.kill()
        server.stop()


async def test_an_origin_the_server_does_not_allow_is_refused(
    page: Page, e2e_database_url: str, static_origin: str, tmp_path: Path
) -> None:
    server = await Server(
        e2e_database_url, tmp_path / "server.log", DELIDEV_CORS_ORIGINS="http://localhost:5173"
    ).ready()
    try:
        await page.goto(f"{static_origin}/?server={server.base}")
        banner = page.get_by_role("alert").filter(has_text="Cannot reach the server")
        await expect(banner).to_contain_text("DELIDEV_CORS_ORIGINS")
        api = Connect(server.base)
        assert (await api("WorkspaceService/List", {})).get("workspaces", []) == []
        await api.close()
    finally:
        server.stop()
