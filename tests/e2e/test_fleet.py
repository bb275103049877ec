"""End to end: real server processes, reference workers (``delidev-worker-sim``) over Connect.

On PostgreSQL the fleet test runs two server processes on one database, with the workers
split between them; SQLite mode is one process, so there the fleet shares one server.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import BACKEND
from tests.e2e.harness import Connect, ConnectFailure, Server, Sim, eventually
from tests.waiting import until

SECRET = "sk-e2e-4c1d9a7b2f6e8053"
FAST = ("--lines", "3", "--lines-per-second", "0", "--chunk-interval", "0")


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_HEARTBEAT_INTERVAL_MS="150")
    try:
        yield await srv.ready()
    finally:
        srv.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Connect]:
    client = Connect(server.base)
    yield client
    await client.close()


async def _sessions(api: Connect, task_id: str) -> list[dict[str, Any]]:
    task = await api.task(task_id)
    agent = task.get("agentTask") or task["planningTask"]
    return sorted(agent.get("sessions", []), key=lambda s: s.get("attempt", 0))


async def test_a_fleet_runs_every_job_exactly_once(e2e_database_url: str, tmp_path: Path) -> None:
    jobs, processes, per_process = (500, 5, 10) if BACKEND == "postgres" else (120, 2, 5)
    servers = [Server(e2e_database_url, tmp_path / "a.log")]
    if BACKEND == "postgres":
        servers.append(Server(e2e_database_url, tmp_path / "b.log"))
    sims: list[Sim] = []
    try:
        for srv in servers:
            await srv.ready()
        api = Connect(servers[0].base)
        group = await api.group()
        created = await asyncio.gather(*(api.unit(group, f"job {i}") for i in range(jobs)))
        task_ids = {t["id"] for t in created}
        sims = [
            Sim(
                servers[i % len(servers)].base,
                tmp_path,
                f"fleet{i}",
                "--workers",
                str(per_process),
                "--wait-ms",
                "500",
                "--idle-exit",
                "3",
                *FAST,
            )
            for i in range(processes)
        ]
        reports = [await asyncio.to_thread(s.wait, 240) for s in sims]
        ran = Counter(session for r in reports for session in r["sessions"])
        assert sum(r["refused"] for r in reports) == 0
        assert len(ran) == jobs
        assert set(ran.values()) == {1}, "a job ran twice"
        listed = await api("TaskService/List", {"limit": 500})
        assert listed["totalCount"] == jobs
        for page_offset in range(0, jobs, 500):
            page = await api("TaskService/List", {"limit": 500, "offset": page_offset})
            for item in page["tasks"]:
                unit = item["unitTask"]
                assert unit["id"] in task_ids
                assert unit["status"] == "UNIT_TASK_STATUS_IN_REVIEW"
                latest = unit["latestSession"]
                assert (latest["status"], latest["attempt"]) == (
                    "AGENT_SESSION_STATUS_SUCCEEDED",
                    1,
                )
                assert latest["id"] in ran
        if BACKEND == "postgres":  # both processes handed out jobs
            workers_by_server = [sum(len(r["sessions"]) for r in reports[i::2]) for i in (0, 1)]
            assert all(workers_by_server)
        await api.close()
    finally:
        for sim in sims:
            sim.kill()
        for srv in servers:
            srv.stop()


async def test_reference_workers_ride_out_a_server_restart(
    e2e_database_url: str, tmp_path: Path
) -> None:
    first = Server(e2e_database_url, tmp_path / "first.log")
    await first.ready()
    api = Connect(first.base)
    group = await api.group()
    before = await api.unit(group, "before the restart")
    sims = Sim(
        first.base,
        tmp_path,
        "riders",
        "--workers",
        "2",
        "--wait-ms",
        "300",
        "--idle-exit",
        "10",
        "--retry-max",
        "0.3",
        *FAST,
    )
    second: Server | None = None
    try:
        await eventually(
            lambda: api.task(before["id"]),
            lambda t: t["status"] == "UNIT_TASK_STATUS_IN_REVIEW",
        )
        first.stop()  # every call of the workers fails while no server listens
        # Both workers have failed to claim and tried again (each failure is one line).
        await until(lambda: sims.log().count("claiming failed") >= 4, what="failed claims")
        assert sims.proc.poll() is None, sims.log()
        second = Server(
            e2e_database_url, tmp_path / "second.log", DELIDEV_SERVER_PORT=str(first.port)
        )
        second.base = first.base
        await second.ready()
        after = await api.unit(group, "after the restart")
        await eventually(
            lambda: api.task(after["id"]),
            lambda t: t["status"] == "UNIT_TASK_STATUS_IN_REVIEW",
        )
        report = await asyncio.to_thread(sims.wait, 60)
    finally:
        sims.kill()
        first.stop()
        if second is not None:
            second.stop()
        await api.close()
    assert (report["succeeded"], report["refused"], report["abandoned"]) == (2, 0, 0)
    assert report["errors"] > 0


async def test_a_killed_worker_loses_its_job_to_another(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    task = await api.unit(group, "long work [sim:hang-first] [sim:lines=2]")
    doomed = Sim(server.base, tmp_path, "doomed", "--max-jobs", "1", *FAST)
    try:
        first = await eventually(
            lambda: _sessions(api, task["id"]),
            lambda s: bool(s) and s[0]["status"] == "AGENT_SESSION_STATUS_RUNNING",
        )
        doomed.kill()  # SIGKILL: no unregister, no report, heartbeats stop
        rescuer = Sim(server.base, tmp_path, "rescuer", "--idle-exit", "2", "--wait-ms", "300")
        report = await asyncio.to_thread(rescuer.wait, 60)
    finally:
        doomed.kill()
    runs = await _sessions(api, task["id"])
    assert [(r["attempt"], r["status"]) for r in runs] == [
        (1, "AGENT_SESSION_STATUS_LOST"),
        (2, "AGENT_SESSION_STATUS_SUCCEEDED"),
    ]
    # The rescuer unregistered when it left, which clears its name from its run.
    assert runs[0]["workerId"] == first[0]["workerId"] != runs[1].get("workerId")
    assert "heartbeats" in runs[0]["error"]
    assert report["sessions"] == [runs[1]["id"]]
    assert (await api.task(task["id"]))["status"] == "UNIT_TASK_STATUS_IN_REVIEW"


async def test_a_late_report_from_a_silent_worker_is_refused(server: Server, api: Connect) -> None:
    group = await api.group()
    task = await api.unit(group, "work")
    reg = await api("WorkerService/Register", {"name": "silent", "endpointUrl": "http://w:1"})
    job = (await api("WorkerService/GetTask", {"workerId": reg["workerId"]}))["job"]
    await eventually(
        lambda: _sessions(api, task["id"]),
        lambda s: s[0]["status"] == "AGENT_SESSION_STATUS_LOST",
    )
    late = {
        "workerId": reg["workerId"],
        "sessionId": job["sessionId"],
        "leaseToken": job["leaseToken"],
    }
    with pytest.raises(ConnectFailure) as refused:
        await api(
            "WorkerService/ReportStatus", {**late, "status": "AGENT_SESSION_STATUS_SUCCEEDED"}
        )
    assert refused.value.code == "aborted"
    assert "no longer current" in refused.value.message
    with pytest.raises(ConnectFailure):
        await api("WorkerService/AppendLog", {**late, "chunks": [{"sequence": 0, "data": "x"}]})
    with pytest.raises(ConnectFailure):
        await api("WorkerService/GetSecrets", late)
    runs = await _sessions(api, task["id"])
    assert [r["status"] for r in runs] == [
        "AGENT_SESSION_STATUS_LOST",
        "AGENT_SESSION_STATUS_QUEUED",
    ]
    assert (await api.task(task["id"]))["status"] == "UNIT_TASK_STATUS_IN_PROGRESS"
    # It comes back: healthy, and it may take the job again under a new lease.
    beat = await api("WorkerService/Heartbeat", {"workerId": reg["workerId"]})
    assert beat["status"] == "WORKER_STATUS_IDLE"
    again = (await api("WorkerService/GetTask", {"workerId": reg["workerId"]}))["job"]
    assert (again["attempt"], again["leaseToken"] != job["leaseToken"]) == (2, True)


async def _stored_text(database_url: str) -> str:
    """Everything the database holds, as text (for SQLite, the raw file bytes too)."""
    if database_url.startswith("sqlite://"):
        path = Path(database_url.removeprefix("sqlite://"))
        return "".join(p.read_bytes().decode("latin-1") for p in path.parent.glob(path.name + "*"))
    conn = await asyncpg.connect(database_url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        dumps = [
            json.dumps(
                [dict(r) for r in await conn.fetch(f'SELECT * FROM "{t["tablename"]}"')],
                default=str,
            )
            for t in tables
        ]
        return "\n".join(dumps)
    finally:
        await conn.close()


async def test_secrets_reach_only_the_leased_worker_and_are_stored_nowhere(
    server: Server, api: Connect, tmp_path: Path, e2e_database_url: str
) -> None:
    group = await api.group()
    task = await api.unit(group, "deploy [sim:echo-secrets]", expectsSecrets=True)
    sim = Sim(server.base, tmp_path, "keeper", "--idle-exit", "2", "--wait-ms", "300", *FAST)
    try:
        # The worker is there (its heartbeat answered, in the access log; its Watch stream
        # is logged when it ends), but the job waits for its secrets.
        await until(lambda: "WorkerService/Heartbeat" in server.log(), what="a heartbeat")
        runs = await _sessions(api, task["id"])
        assert runs[0]["status"] == "AGENT_SESSION_STATUS_QUEUED"
        sent = await api(
            "SecretsService/Send", {"taskId": task["id"], "secrets": {"API_KEY": SECRET}}
        )
        assert sent == {"keys": ["API_KEY"]}
        report = await asyncio.to_thread(sim.wait, 60)
    finally:
        sim.kill()
    assert report["succeeded"] == 1
    run = (await _sessions(api, task["id"]))[0]
    log = await api("SessionService/GetLog", {"sessionId": run["id"]})
    assert "API_KEY=********" in log["content"]
    assert SECRET not in log["content"]
    assert SECRET not in await _stored_text(e2e_database_url)
    assert SECRET not in server.log()
    assert SECRET not in sim.log()
    with pytest.raises(ConnectFailure) as bad:
        await api("SecretsService/Send", {"taskId": task["id"], "secrets": {"9bad": SECRET}})
    assert bad.value.code == "invalid_argument"
    assert SECRET not in bad.value.message


async def test_stop_reaches_a_running_worker(server: Server, api: Connect, tmp_path: Path) -> None:
    group = await api.group()
    task = await api.unit(group, "long [sim:sleep=60]")
    sim = Sim(server.base, tmp_path, "stoppable", "--idle-exit", "1", "--wait-ms", "300", *FAST)
    try:
        runs = await eventually(
            lambda: _sessions(api, task["id"]),
            lambda s: s[0]["status"] == "AGENT_SESSION_STATUS_RUNNING",
        )
        stopped = await api("SessionService/Stop", {"sessionId": runs[0]["id"]})
        assert stopped["session"]["stopRequested"] is True
        report = await asyncio.to_thread(sim.wait, 30)
    finally:
        sim.kill()
    assert report["stopped"] == 1
    run = (await _sessions(api, task["id"]))[0]
    assert run["status"] == "AGENT_SESSION_STATUS_STOPPED"
    log = await api("SessionService/GetLog", {"sessionId": run["id"]})
    assert "stopped on request" in log["content"]
    assert log["complete"] is True


async def test_unit_and_composite_life_cycles_with_the_reference_worker(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    sim = Sim(server.base, tmp_path, "life", "--wait-ms", "300", "--idle-exit", "4", *FAST)
    try:
        unit = await api.unit(group, "feature")
        await eventually(
            lambda: api.task(unit["id"]), lambda t: t["status"] == "UNIT_TASK_STATUS_IN_REVIEW"
        )
        await api("TaskService/Approve", {"taskId": unit["id"]})
        await api(
            "TaskService/UpdateStatus",
            {
                "taskId": unit["id"],
                "status": "UNIT_TASK_STATUS_PR_OPEN",
                "linkedPrUrl": "https://github.com/e2e/r/pull/1",
            },
        )
        await api(
            "TaskService/UpdateStatus", {"taskId": unit["id"], "status": "UNIT_TASK_STATUS_DONE"}
        )

        composite = (
            await api(
                "TaskService/CreateComposite",
                {"repositoryGroupId": group, "prompt": "big change [sim:plan=3]"},
            )
        )["task"]["compositeTask"]
        planned = await eventually(
            lambda: api.task(composite["id"]),
            lambda t: t["status"] == "COMPOSITE_TASK_STATUS_PENDING_APPROVAL",
        )
        assert "step-2" in planned["planYaml"]
        await api("TaskService/Approve", {"taskId": composite["id"]})
        for step in range(3):  # a chain: each node runs once its dependency is done
            current = await eventually(
                lambda: api.task(composite["id"]),
                lambda t, step=step: any(
                    n["planId"] == f"step-{step}"
                    and n["unitTask"]["status"] == "UNIT_TASK_STATUS_IN_REVIEW"
                    for n in t["nodes"]
                ),
            )
            node = next(n for n in current["nodes"] if n["planId"] == f"step-{step}")
            later = [n for n in current["nodes"] if n["planId"] > f"step-{step}"]
            assert all(not n["unitTask"].get("latestSession") for n in later)
            await api("TaskService/Approve", {"taskId": node["unitTask"]["id"]})
            await api(
                "TaskService/UpdateStatus",
                {"taskId": node["unitTask"]["id"], "status": "UNIT_TASK_STATUS_DONE"},
            )
        done = await api.task(composite["id"])
        assert done["status"] == "COMPOSITE_TASK_STATUS_DONE"
        report = await asyncio.to_thread(sim.wait, 60)
    finally:
        sim.kill()
    assert (report["succeeded"], report["failed"], report["refused"]) == (5, 0, 0)
