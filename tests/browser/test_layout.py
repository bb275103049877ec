"""The console on a phone-sized screen and from the keyboard, and what its first load costs:
the budget the README states (≤ 300 KB compressed) measured as the browser transferred it."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import screenshot
from tests.e2e.harness import Connect, Server, Worker

BUDGET_BYTES = 300 * 1024


async def test_the_first_load_stays_within_its_budget(page: Page, server: Server) -> None:
    await page.goto(f"{server.base}/")
    await expect(page.get_by_role("link", name="DeliDev")).to_be_visible()
    transferred = await page.evaluate(
        """() => {
          const entries = [
            ...performance.getEntriesByType("navigation"),
            ...performance.getEntriesByType("resource"),
          ].filter((e) => !e.name.includes("/graphql") && !e.name.includes("/delidev.v1."));
          return entries.map((e) => ({ name: e.name, size: e.transferSize, body: e.encodedBodySize,
                                       decoded: e.decodedBodySize }));
        }"""
    )
    scripts = [e for e in transferred if e["name"].endswith(".js")]
    assert scripts, transferred
    # Compressed on the wire: far fewer bytes than the script holds.
    assert all(e["body"] < e["decoded"] / 2 for e in scripts), transferred
    assert sum(e["size"] for e in transferred) <= BUDGET_BYTES, transferred


async def test_a_phone_sized_screen_needs_no_sideways_scrolling(
    browser: Browser, server: Server, tmp_path: Path
) -> None:
    api = Connect(server.base)
    group = await api.group()
    task = await api.unit(group, "A rather long prompt " * 20)
    worker = Worker(server.base)
    await worker.claim(task["id"])
    await worker.write("a line of output that is much wider than a phone's screen " * 5 + "\n")
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    try:
        page = await context.new_page()
        for route in ("#/", f"#/tasks/{task['id']}", "#/inbox", "#/fleet", "#/setup"):
            await page.goto(f"{server.base}/{route}")
            await expect(page.locator("main")).to_be_visible()
            await page.wait_for_load_state("networkidle")
            overflow = await page.evaluate(
                "() => document.documentElement.scrollWidth - window.innerWidth"
            )
            assert overflow <= 0, f"{route} scrolls sideways by {overflow}px"
        await screenshot(page, tmp_path, "phone-setup")
    finally:
        await context.close()
        await worker.close()
        await api.close()


async def test_the_board_is_usable_from_the_keyboard(page: Page, server: Server) -> None:
    api = Connect(server.base)
    await api.group()
    await api.close()
    await page.goto(f"{server.base}/")
    new_task = page.get_by_role("button", name="New task")
    await expect(new_task).to_be_visible()
    for _ in range(30):  # Tab through the page until the button has the focus
        if await new_task.evaluate("el => el === document.activeElement"):
            break
        await page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached the New task button")
    await page.keyboard.press("Enter")
    form = page.get_by_role("form", name="New task")
    await expect(form).to_be_visible()
    await page.get_by_label("Prompt").focus()
    await page.keyboard.type("typed without a mouse")
    await page.keyboard.press("Tab")  # to the agent
    await page.keyboard.press("Tab")  # to the priority
    await page.keyboard.press("Tab")  # to the composite box
    await page.keyboard.press("Tab")  # to Create task
    await page.keyboard.press("Enter")
    await expect(page.get_by_test_id("task-title")).to_have_text("typed without a mouse")
