"""End to end: a failed check on a task's pull request, delivered as GitHub delivers it (its
example ``check_run`` delivery, signed with the repository's webhook secret) to a real server
process, becomes an auto-fix run that a reference worker process executes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Connect, Server, Sim, eventually
from tests.webhook_payloads import GITHUB_SECRET, encode, github_example, github_headers

FAST = ("--lines-per-second", "0", "--chunk-interval", "0", "--lines", "5")


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(e2e_database_url, tmp_path / "server.log")
    try:
        yield await srv.ready()
    finally:
        srv.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Connect]:
    client = Connect(server.base)
    yield client
    await client.close()


def _failed_check_on(pr_number: int, repo_url: str) -> dict[str, Any]:
    """GitHub's example delivery of a failed check run, on this repository's pull request."""
    delivery = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )
    delivery["repository"]["html_url"] = repo_url
    for pr in delivery["check_run"]["pull_requests"]:
        pr["number"] = pr_number
    return delivery


async def test_a_failed_check_becomes_an_auto_fix_run_the_worker_executes(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    ws = (await api("WorkspaceService/Create", {"name": "e2e-auto-fix"}))["workspace"]["id"]
    repo_url = f"https://github.com/e2e/r{time.monotonic_ns()}"
    added = (await api("RepositoryService/Add", {"workspaceId": ws, "remoteUrl": repo_url}))[
        "repository"
    ]
    repo = added["id"]
    await api("RepositoryService/SetWebhookSecret", {"repositoryId": repo, "secret": GITHUB_SECRET})
    hook = (
        await api(
            "RepositoryService/UpdateSettings", {"repositoryId": repo, "autoFixCiFailures": True}
        )
    )["repository"]["webhookPath"]
    pr_url = f"{repo_url}/pull/7"
    group = (
        await api("RepositoryGroupService/Create", {"workspaceId": ws, "repositoryIds": [repo]})
    )["group"]["id"]
    task = await api.unit(group, "Add a CSV export", title="CSV export", branchName="feat/csv")
    sim = Sim(server.base, tmp_path, "fixer", "--max-jobs", "2", *FAST)
    try:
        await eventually(
            lambda: api.task(task["id"]),
            lambda t: t["status"] == "UNIT_TASK_STATUS_IN_REVIEW",
            within=60,
        )
        await api("TaskService/Approve", {"taskId": task["id"]})
        linked = await api(
            "TaskService/UpdateStatus",
            {"taskId": task["id"], "status": "UNIT_TASK_STATUS_PR_OPEN", "linkedPrUrl": pr_url},
        )
        assert linked["task"]["unitTask"]["prState"] == "PULL_REQUEST_STATE_OPEN"

        body = encode(_failed_check_on(7, repo_url))
        async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
            delivered = await http.post(
                hook, content=body, headers=github_headers("check_run", body)
            )
            assert delivered.status_code == 200, delivered.text
            # GitHub redelivers the same id: acknowledged, not acted on twice.
            again = await http.post(
                hook,
                content=body,
                headers=github_headers(
                    "check_run", body, delivery=delivered.request.headers["x-github-delivery"]
                ),
            )
            assert (again.status_code, again.json()["status"]) == (200, "duplicate"), again.text

        report = sim.wait(90)
    except BaseException:
        sim.kill()
        raise
    assert len(report["sessions"]) == 2, report

    # Connect: the run succeeded with kind auto_fix; the task keeps its PR and status.
    unit = await api.task(task["id"])
    assert unit["status"] == "UNIT_TASK_STATUS_PR_OPEN"
    [fix] = unit["autoFixTasks"]
    agent_id = fix["id"]
    [run] = fix["sessions"]
    assert run["kind"] == "JOB_KIND_AUTO_FIX"
    assert run["status"] == "AGENT_SESSION_STATUS_SUCCEEDED"

    # GraphQL: the same, and what the worker wrote is the run's log.
    query = """query($id: ID!) { task(id: $id) { ... on UnitTask {
        status prState autoFixTasks { id sessions { id kind status } } } } }"""
    async with httpx.AsyncClient(base_url=server.base, timeout=30) as http:
        got = await http.post("/graphql", json={"query": query, "variables": {"id": task["id"]}})
    assert got.status_code == 200, got.text
    data: dict[str, Any] = got.json()["data"]["task"]
    assert (data["status"], data["prState"]) == ("PR_OPEN", "OPEN")
    assert data["autoFixTasks"] == [
        {
            "id": agent_id,
            "sessions": [{"id": run["id"], "kind": "AUTO_FIX", "status": "SUCCEEDED"}],
        }
    ]
    log = await api("SessionService/GetLog", {"sessionId": run["id"]})
    assert run["id"] in log.get("content", ""), log
