"""End to end: a failed check on a task's pull request becomes an auto-fix run that a
reference worker executes, against a real server process.

The trigger is the service function the webhook receiver calls (``auto_fix.check_failed``),
called from this process on the server's database: it publishes no event the server sees,
so the worker finds the job on the server's own recheck (within a second).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from delidev import db
from delidev.services import auto_fix
from delidev.settings import Settings
from tests.e2e.harness import Connect, Server, Sim, eventually

FAST = ("--lines-per-second", "0", "--chunk-interval", "0", "--lines", "5")
PR_URL = "https://github.com/e2e/app/pull/7"


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


async def _check_failed(database_url: str, repository_id: str) -> list[UUID]:
    """What the webhook receiver will do for a failed check run on the PR."""
    ctx = await db.open_database(Settings(database_url=database_url), migrate=False)
    try:
        return await auto_fix.check_failed(
            repository_id=UUID(repository_id),
            pr_url=PR_URL + "/checks",
            check_name="unit tests",
            summary="FAILED tests/test_export.py::test_csv - AssertionError",
            details_url="https://github.com/e2e/app/runs/1",
        )
    finally:
        await db.close_database(ctx)


async def test_a_failed_check_becomes_an_auto_fix_run_the_worker_executes(
    server: Server, api: Connect, e2e_database_url: str, tmp_path: Path
) -> None:
    ws = (await api("WorkspaceService/Create", {"name": "e2e-auto-fix"}))["workspace"]["id"]
    repo = (
        await api(
            "RepositoryService/Add",
            {"workspaceId": ws, "remoteUrl": f"https://github.com/e2e/r{time.monotonic_ns()}"},
        )
    )["repository"]["id"]
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
            {"taskId": task["id"], "status": "UNIT_TASK_STATUS_PR_OPEN", "linkedPrUrl": PR_URL},
        )
        assert linked["task"]["unitTask"]["prState"] == "PULL_REQUEST_STATE_OPEN"

        [agent_id] = await _check_failed(e2e_database_url, repo)

        report = sim.wait(90)
    except BaseException:
        sim.kill()
        raise
    assert len(report["sessions"]) == 2, report

    # Connect: the run succeeded with kind auto_fix; the task keeps its PR and status.
    unit = await api.task(task["id"])
    assert unit["status"] == "UNIT_TASK_STATUS_PR_OPEN"
    [fix] = unit["autoFixTasks"]
    assert fix["id"] == str(agent_id)
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
            "id": str(agent_id),
            "sessions": [{"id": run["id"], "kind": "AUTO_FIX", "status": "SUCCEEDED"}],
        }
    ]
    log = await api("SessionService/GetLog", {"sessionId": run["id"]})
    assert run["id"] in log.get("content", ""), log
