"""End to end across replicas: a client on one server process, a worker on another."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import Connect, Server, Sim
from tests.waiting import until

pytestmark = pytest.mark.postgres_only

SECRET = "sk-replica-8d2f61a0c7e94b35"
# Every replica shares it, as a deployment would.
RELAY_SECRET = "e2e-relay-Qm4Tz8Wc2Lp6Rv0Xk3Jb7Nh5Fs9Dg1Ya"
FAST = ("--lines", "3", "--lines-per-second", "0", "--chunk-interval", "0")


async def _sessions(api: Connect, task_id: str) -> list[dict[str, Any]]:
    task = await api.task(task_id)
    return sorted(task["agentTask"].get("sessions", []), key=lambda s: s.get("attempt", 0))


async def test_secrets_sent_to_one_replica_reach_a_worker_on_another(
    e2e_database_url: str, tmp_path: Path
) -> None:
    a = Server(e2e_database_url, tmp_path / "a.log", DELIDEV_JWT_SECRET=RELAY_SECRET)
    b = Server(e2e_database_url, tmp_path / "b.log", DELIDEV_JWT_SECRET=RELAY_SECRET)
    sim: Sim | None = None
    api = None
    try:
        await a.ready()
        await b.ready()
        api = Connect(a.base)
        group = await api.group()
        first = await api.unit(group, "deploy [sim:echo-secrets]", expectsSecrets=True)
        second = await api.unit(group, "again [sim:echo-secrets]", expectsSecrets=True)
        sim = Sim(b.base, tmp_path, "on-b", "--poll", "--idle-exit", "2", "--wait-ms", "300", *FAST)
        # The worker on B has polled (a GetTask answered, in B's access log); the jobs wait
        # for their secrets.
        await until(lambda: "WorkerService/GetTask" in b.log(), what="a poll")
        assert [(await _sessions(api, t["id"]))[0]["status"] for t in (first, second)] == [
            "AGENT_SESSION_STATUS_QUEUED"
        ] * 2
        for task in (first, second):
            await api("SecretsService/Send", {"taskId": task["id"], "secrets": {"KEY": SECRET}})
        report = await asyncio.to_thread(sim.wait, 60)
        assert report["succeeded"] == 2
        for task in (first, second):
            run = (await _sessions(api, task["id"]))[0]
            log = await api("SessionService/GetLog", {"sessionId": run["id"]})
            assert "received 1 secret(s)" in log["content"]
            assert "KEY=********" in log["content"]
            assert SECRET not in log["content"]
    finally:
        if sim is not None:
            sim.kill()
        if api is not None:
            await api.close()
        a.stop()
        b.stop()
    for text in (a.log(), b.log(), sim.log() if sim else ""):
        assert SECRET not in text
        assert "does not authenticate" not in text
