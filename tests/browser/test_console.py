"""The web console in a real browser, against a real server process and reference workers:
what a person does every day, click by click."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import BrowserContext, Page, expect

from delidev.services.common import ITEM_CHARS, MAX_TEXT_LENGTH, PAGE_CHARS
from tests.browser.conftest import screenshot
from tests.e2e.harness import Connect, Server, Sim, Worker


async def _set_up_workspace(page: Page, base: str) -> None:
    """Workspace, repository and group, created through the Setup page."""
    await page.goto(f"{base}/#/setup")
    await page.get_by_label("Workspace name").fill("Acme")
    await page.get_by_role("button", name="Create workspace").click()
    await expect(page.get_by_role("heading", name="Repositories of Acme")).to_be_visible()
    # A refusal of the server is shown as it comes, and nothing is added.
    await page.get_by_label("Repository URL").fill("not a repository")
    await page.get_by_role("button", name="Add repository").click()
    await expect(page.get_by_test_id("setup-error")).to_contain_text("(InvalidArgument)")
    await expect(page.get_by_test_id("repository")).to_have_count(0)
    await page.get_by_label("Repository URL").fill("https://github.com/acme/widgets")
    await page.get_by_role("button", name="Add repository").click()
    await expect(page.get_by_test_id("repository")).to_contain_text("widgets")
    await expect(page.get_by_test_id("setup-error")).to_have_count(0)
    await page.get_by_role("checkbox", name="widgets").check()
    await page.get_by_label("Group name").fill("Widgets")
    await page.get_by_role("button", name="Create group").click()
    await expect(page.get_by_test_id("group")).to_contain_text("Widgets")


async def _new_task(page: Page, title: str, prompt: str, *, composite: bool = False) -> None:
    await page.get_by_test_id("nav-board").click()
    await page.get_by_role("button", name="New task").click()
    await page.get_by_label("Title").fill(title)
    await page.get_by_label("Prompt").fill(prompt)
    if composite:
        await page.get_by_label(re.compile("Composite")).check()
    await page.get_by_role("button", name="Create task").click()
    await expect(page.get_by_test_id("task-title")).to_have_text(title)


async def test_a_task_from_setup_to_approval(
    page: Page, context: BrowserContext, server: Server, tmp_path: Path
) -> None:
    await context.grant_permissions(["notifications"], origin=server.base)
    await _set_up_workspace(page, server.base)
    await _new_task(page, "Colour the output", "[sim:ansi] [sim:lines=40] [sim:tty]")
    # No worker yet: the page says why the task waits.
    await expect(page.get_by_test_id("task-wait")).to_contain_text("no capable worker")

    sim = Sim(server.base, tmp_path, "laptop-1", "--lines-per-second", "40", "--usage")
    try:
        # The live log arrives, coloured.
        log = page.get_by_test_id("log")
        await expect(log).to_contain_text("line 40 of 40")
        await expect(log.locator(".ansi-green-fg").first).to_have_text("ok")
        await expect(log.locator(".ansi-red-fg").first).to_have_text("warn")
        await expect(page.get_by_test_id("log-state")).to_have_text("live")

        # The agent's question reaches the inbox (and a notification); answered there.
        await expect(page.get_by_test_id("nav-inbox")).to_have_text("Needs you (1)")
        notes = await page.evaluate("window.__notifications")
        assert [n["body"] for n in notes] == ["Which branch should I use?"]
        await page.get_by_test_id("nav-inbox").click()
        question = page.get_by_test_id("question")
        await expect(question).to_contain_text("Which branch should I use?")
        await question.get_by_label("Answer").fill("main")
        await question.get_by_role("button", name="Send").click()
        await expect(page.get_by_test_id("no-questions")).to_be_visible()

        # The run ends; the task waits for review on the board.
        await page.get_by_test_id("nav-board").click()
        review = page.get_by_test_id("column-IN_REVIEW")
        card = review.get_by_test_id("task-card").filter(has_text="Colour the output")
        await expect(card).to_be_visible()
        await screenshot(page, tmp_path, "board")
        await card.click()
        await expect(page.get_by_test_id("task-status")).to_have_text("in review")
        await expect(page.get_by_test_id("log")).to_contain_text("got an answer of 4 characters")
        await expect(page.get_by_test_id("log-state")).to_have_text("complete")
        # What the run reported using, in dollars and tokens.
        await expect(page.get_by_test_id("task-cost")).to_contain_text("tokens in")
        await expect(page.get_by_test_id("task-cost")).not_to_contain_text("$0.00 ")
        await screenshot(page, tmp_path, "task")

        await page.get_by_role("button", name="Approve", exact=True).click()
        await expect(page.get_by_test_id("task-status")).to_have_text("approved")
        # A refusal of the server is shown as it comes: approving twice is not allowed.
        assert await page.get_by_role("button", name="Approve", exact=True).count() == 0
    finally:
        sim.kill()


async def test_a_password_question_is_never_shown(
    page: Page, server: Server, tmp_path: Path
) -> None:
    api = Connect(server.base)
    group = await api.group()
    await api.close()
    await page.goto(f"{server.base}/#/inbox")
    secret = "correct horse battery staple"
    sim = Sim(server.base, tmp_path, "w", "--lines-per-second", "0")
    try:
        api = Connect(server.base)
        await api.unit(group, "[sim:lines=2] [sim:tty=password]")
        await api.close()
        question = page.get_by_test_id("question")
        await expect(question).to_contain_text("Passphrase of the deploy key?")
        field = question.get_by_label("Answer")
        assert await field.get_attribute("type") == "password"
        await field.fill(secret)
        await question.get_by_role("button", name="Send").click()
        await expect(page.get_by_test_id("no-questions")).to_be_visible()
        assert secret not in await page.content()
    finally:
        sim.kill()


async def test_a_composite_plan_is_approved_and_its_nodes_run(
    page: Page, server: Server, tmp_path: Path
) -> None:
    await _set_up_workspace(page, server.base)
    sim = Sim(server.base, tmp_path, "planner", "--lines-per-second", "0", "--lines", "3")
    try:
        await _new_task(page, "Split the monolith", "[sim:plan=3] split it", composite=True)
        await expect(page.get_by_test_id("task-status")).to_have_text("pending approval")
        await page.get_by_test_id("nav-inbox").click()
        plan = page.get_by_test_id("plan")
        await expect(plan).to_contain_text("3 planned tasks")
        # Nothing comparable has run in this group yet: no made-up figure.
        await expect(plan.get_by_test_id("plan-estimate")).to_contain_text("No history")
        await plan.get_by_role("button", name="Approve plan").click()
        await expect(page.get_by_text("No plan is waiting for approval.")).to_be_visible()
        await page.get_by_test_id("nav-board").click()
        await page.get_by_test_id("task-card").filter(has_text="Split the monolith").click()
        nodes = page.get_by_test_id("dag-node")
        await expect(nodes).to_have_count(3)
        # A chain: each node runs once the one before it is approved, from its own page.
        for i in range(3):
            await expect(nodes.nth(i)).to_have_attribute("data-state", "IN_REVIEW")
            for later in range(i + 1, 3):
                await expect(nodes.nth(later)).to_have_attribute("data-state", "WAITING")
            if i == 1:
                await screenshot(page, tmp_path, "composite")
            await nodes.nth(i).click()
            await expect(page.get_by_test_id("task-status")).to_have_text("in review")
            await page.get_by_role("button", name="Approve", exact=True).click()
            await expect(page.get_by_test_id("task-status")).to_have_text("approved")
            # Its pull request, recorded, then merged: the node is done.
            await page.get_by_role("button", name="Record pull request…").click()
            await page.get_by_label("Pull request URL").fill(
                f"https://github.com/acme/widgets/pull/{i + 1}"
            )
            await page.get_by_role("button", name="Record", exact=True).click()
            await expect(page.get_by_test_id("task-status")).to_have_text("pr open")
            await page.get_by_role("button", name="Mark done").click()
            await expect(page.get_by_test_id("task-status")).to_have_text("done")
            await page.get_by_role("link", name="a composite task").click()
        await expect(page.get_by_test_id("task-status")).to_have_text("done")
    finally:
        sim.kill()


async def test_a_run_is_stopped_and_a_lost_worker_shows_unhealthy(
    page: Page, server: Server, tmp_path: Path
) -> None:
    api = Connect(server.base)
    group = await api.group()
    task = await api.unit(group, "[sim:hang-first] [sim:lines=3]")
    await api.close()
    sim = Sim(server.base, tmp_path, "builder-7", "--lines-per-second", "0")
    try:
        await page.goto(f"{server.base}/#/tasks/{task['id']}")
        rows = page.get_by_test_id("session-row")
        await expect(rows.first).to_have_attribute("data-status", "RUNNING")
        await page.get_by_role("button", name="Stop run").click()
        await expect(rows.first).to_have_attribute("data-status", "STOPPED")
        await expect(page.get_by_test_id("log")).to_contain_text("stopped on request")

        await page.get_by_test_id("nav-fleet").click()
        row = page.locator('[data-testid="worker-row"][data-name="builder-7"]')
        await expect(row).to_have_attribute("data-status", "IDLE")
        sim.kill()  # no goodbye: its heartbeats just stop
        await expect(row).to_have_attribute("data-status", "UNHEALTHY")
        await expect(row).to_contain_text("unhealthy")
    finally:
        sim.kill()


async def test_budgets_are_set_from_the_setup_page(page: Page, server: Server) -> None:
    await _set_up_workspace(page, server.base)
    budgets = page.get_by_role("region", name="Budgets")
    await expect(budgets.get_by_test_id("spent")).to_contain_text("$0.00")
    # Not an amount: refused in the page, nothing sent.
    await budgets.get_by_label("Workspace budget (USD)").fill("lots")
    await budgets.get_by_role("button", name="Save budgets").click()
    await expect(budgets.get_by_role("alert")).to_contain_text("an amount in dollars")
    await budgets.get_by_label("Workspace budget (USD)").fill("250.5")
    await budgets.get_by_label("Budget period").select_option(label="per 30 days")
    await budgets.get_by_label("Task budget (USD)").fill("12.345678")
    await budgets.get_by_label("Warning threshold (%)").fill("90")
    await budgets.get_by_role("button", name="Save budgets").click()
    await expect(budgets.get_by_text("saved")).to_be_visible()
    api = Connect(server.base)
    ws = (await api("WorkspaceService/List", {}))["workspaces"][0]
    await api.close()
    # Exactly, in micros: no float on the way.
    assert ws["monthlyBudgetMicros"] == "250500000"
    assert ws["taskBudgetMicros"] == "12345678"
    assert ws["budgetPeriod"] == "BUDGET_PERIOD_ROLLING_30_DAYS"
    assert ws["budgetWarningPercent"] == 90
    # A server refusal is shown: a budget beyond any the server takes.
    await budgets.get_by_label("Workspace budget (USD)").fill("999999999999")
    await budgets.get_by_role("button", name="Save budgets").click()
    await expect(budgets.get_by_role("alert")).to_contain_text("monthly_budget_micros")


async def test_select_and_confirm_questions_are_answered_with_a_click(
    page: Page, server: Server, tmp_path: Path
) -> None:
    api = Connect(server.base)
    group = await api.group()
    await page.goto(f"{server.base}/#/inbox")
    sim = Sim(server.base, tmp_path, "w", "--lines-per-second", "0")
    try:
        select = await api.unit(group, "[sim:lines=1] [sim:tty=select]")
        question = page.get_by_test_id("question").filter(has_text="Which database?")
        await question.get_by_role("button", name="postgres").click()
        await expect(page.get_by_test_id("no-questions")).to_be_visible()
        confirm = await api.unit(group, "[sim:lines=1] [sim:tty=confirm]")
        question = page.get_by_test_id("question").filter(has_text="Push the branch?")
        await question.get_by_role("button", name="Yes").click()
        await expect(page.get_by_test_id("no-questions")).to_be_visible()
        for task, length in ((select, len("postgres")), (confirm, len("yes"))):
            await page.goto(f"{server.base}/#/tasks/{task['id']}")
            log = page.get_by_test_id("log")
            await expect(log).to_contain_text(f"got an answer of {length} characters")
    finally:
        sim.kill()
        await api.close()


async def test_the_inbox_pages_through_long_questions(page: Page, server: Server) -> None:
    """The server cuts a page of long questions short (services/common.PAGE_CHARS): the inbox
    pages on, so that every pending question is shown, not only the first page's."""
    api = Connect(server.base)
    worker = Worker(server.base)
    try:
        task = await api.unit(await api.group(), "asks a lot")
        await worker.claim(task["id"])
        count = PAGE_CHARS // (MAX_TEXT_LENGTH + ITEM_CHARS) + 4  # more than one page holds
        for i in range(count):
            prompt = f"question {i}: " + "x" * (MAX_TEXT_LENGTH - 20)
            await worker.api(
                "WorkerService/RequestTtyInput",
                {**worker.lease, "prompt": prompt, "inputType": "TTY_INPUT_TYPE_TEXT"},
            )
        await page.goto(f"{server.base}/#/inbox")
        await expect(page.get_by_test_id("nav-inbox")).to_have_text(f"Needs you ({count})")
        await expect(page.get_by_test_id("question")).to_have_count(count)
        await expect(page.get_by_test_id("question").last).to_contain_text(f"question {count - 1}:")
    finally:
        await worker.close()
        await api.close()


async def test_every_workspace_is_offered_however_long_their_descriptions(
    page: Page, server: Server
) -> None:
    """The workspace picker pages on past a page the server ended early (long descriptions):
    it offered only the first page's workspaces."""
    api = Connect(server.base)
    try:
        count = PAGE_CHARS // (MAX_TEXT_LENGTH + ITEM_CHARS) + 3
        for i in range(count):
            await api(
                "WorkspaceService/Create",
                {"name": f"described {i:02d}", "description": "d" * MAX_TEXT_LENGTH},
            )
    finally:
        await api.close()
    await page.goto(f"{server.base}/#/")
    picker = page.get_by_label("Workspace")
    await expect(picker.locator("option")).to_have_count(count)
    await expect(picker.locator("option").last).to_have_text(f"described {count - 1:02d}")
