"""End to end: a fleet of reference workers drains unit and composite tasks while some of
its workers die mid-job (on PostgreSQL through two server processes, on SQLite one).

No job may be lost or run twice: every AgentTask ends with exactly one successful run, and
the only other runs are those lost with the killed workers."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import BACKEND
from tests.e2e.harness import Connect, Server, Sim, eventually

UNITS = 24
COMPOSITES = 3
PLAN_NODES = 3
# Long enough that a doomed worker seen holding three jobs cannot finish one before the kill.
JOB_SECONDS = 1.5
HEARTBEAT_MS = "200"  # three missed beats: a dead worker's jobs are queued again in 0.6 s


async def _finish_review(api: Connect, unit: dict[str, Any]) -> bool:
    """Approves a unit task in review and marks it done; whether it is done."""
    if unit["status"] == "UNIT_TASK_STATUS_IN_REVIEW":
        await api("TaskService/Approve", {"taskId": unit["id"]})
        await api(
            "TaskService/UpdateStatus", {"taskId": unit["id"], "status": "UNIT_TASK_STATUS_DONE"}
        )
        return True
    return bool(unit["status"] == "UNIT_TASK_STATUS_DONE")


async def _approve_and_finish_reviews(api: Connect) -> tuple[int, int]:
    """Plays the user: approves every plan and every run in review, then marks the unit
    task done (which starts the next nodes of a composite). Returns (unit tasks done, nodes
    included; composites done)."""
    units_done = composites_done = 0
    listed = await api("TaskService/List", {"limit": 500})
    for item in listed.get("tasks", []):
        if "unitTask" in item:
            units_done += await _finish_review(api, item["unitTask"])
            continue
        composite = await api.task(item["compositeTask"]["id"])
        if composite["status"] == "COMPOSITE_TASK_STATUS_PENDING_APPROVAL":
            await api("TaskService/Approve", {"taskId": composite["id"]})
        for node in composite.get("nodes", []):
            units_done += await _finish_review(api, node["unitTask"])
        composites_done += composite["status"] == "COMPOSITE_TASK_STATUS_DONE"
    return units_done, composites_done


async def _runs_of_every_agent_task(api: Connect) -> list[list[dict[str, Any]]]:
    runs: list[list[dict[str, Any]]] = []
    listed = await api("TaskService/List", {"limit": 500})
    ids = [(item.get("unitTask") or item["compositeTask"])["id"] for item in listed["tasks"]]
    for task_id in ids:
        task = await api.task(task_id)
        agent = task.get("agentTask") or task["planningTask"]
        runs.append(agent.get("sessions", []))
        for node in task.get("nodes", []):
            ids.append(node["unitTask"]["id"])
    return runs


async def test_a_fleet_drains_unit_and_composite_tasks_while_workers_die(
    e2e_database_url: str, tmp_path: Path
) -> None:
    servers = [
        Server(e2e_database_url, tmp_path / "a.log", DELIDEV_HEARTBEAT_INTERVAL_MS=HEARTBEAT_MS)
    ]
    if BACKEND == "postgres":
        servers.append(
            Server(e2e_database_url, tmp_path / "b.log", DELIDEV_HEARTBEAT_INTERVAL_MS=HEARTBEAT_MS)
        )
    sims: list[Sim] = []
    api = Connect(servers[0].base)
    try:
        for srv in servers:
            await srv.ready()
        group = await api.group()
        for i in range(UNITS):
            await api.unit(group, f"job {i} [sim:sleep={JOB_SECONDS}]")
        for i in range(COMPOSITES):
            await api(
                "TaskService/CreateComposite",
                {
                    "repositoryGroupId": group,
                    "prompt": f"epic {i} [sim:plan={PLAN_NODES}] [sim:sleep={JOB_SECONDS}]",
                },
            )

        # The doomed workers claim first, and die holding their jobs.
        doomed = Sim(servers[-1].base, tmp_path, "doomed", "--workers", "3", "--wait-ms", "300",
                     "--lines", "2", "--lines-per-second", "0")  # fmt: skip
        sims.append(doomed)
        await eventually(
            lambda: _runs_of_every_agent_task(api),
            lambda runs: (
                sum(r["status"] == "AGENT_SESSION_STATUS_RUNNING" for s in runs for r in s) == 3
            ),
        )
        doomed.kill()

        options = ("--workers", "3", "--wait-ms", "300", "--idle-exit", "4", "--lines", "2",
                   "--lines-per-second", "0")  # fmt: skip
        steady = [
            Sim(servers[i % len(servers)].base, tmp_path, f"steady{i}", *options) for i in range(3)
        ]
        sims.extend(steady)
        await eventually(
            lambda: _approve_and_finish_reviews(api),
            lambda done: done == (UNITS + COMPOSITES * PLAN_NODES, COMPOSITES),
            within=120,
            every=0.2,
        )
        reports = [await asyncio.to_thread(s.wait, 60) for s in steady]
        runs = await _runs_of_every_agent_task(api)
    finally:
        for sim in sims:
            sim.kill()
        await api.close()
        for srv in servers:
            srv.stop()

    assert len(runs) == UNITS + COMPOSITES * (1 + PLAN_NODES)
    lost = 0
    for sessions in runs:
        statuses = Counter(r["status"] for r in sessions)
        assert statuses["AGENT_SESSION_STATUS_SUCCEEDED"] == 1, sessions
        assert set(statuses) <= {"AGENT_SESSION_STATUS_SUCCEEDED", "AGENT_SESSION_STATUS_LOST"}
        lost += statuses["AGENT_SESSION_STATUS_LOST"]
    assert lost == 3  # the killed workers' jobs, each run again once
    ran = Counter(session for r in reports for session in r["sessions"])
    assert set(ran.values()) == {1}, "a job ran twice"
    succeeded = {
        r["id"] for s in runs for r in s if r["status"] == "AGENT_SESSION_STATUS_SUCCEEDED"
    }
    assert succeeded == set(ran)
    assert sum(r["refused"] for r in reports) == 0
    assert sum(r["failed"] for r in reports) == 0
