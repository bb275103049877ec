"""End to end, a fleet with different machines: reference workers that run different agent
types take only their jobs, through their Watch streams, on two server processes sharing
PostgreSQL (one process on SQLite); a Watch stream ends cleanly when its server shuts down."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from delidev.connect.gen.delidev.v1 import worker_pb
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from tests.conftest import BACKEND
from tests.e2e.harness import Connect, Server, Sim, eventually, server_pair

FAST = ("--lines", "3", "--lines-per-second", "0", "--chunk-interval", "0")


async def test_workers_of_different_agent_types_take_only_their_jobs(
    e2e_database_url: str, tmp_path: Path
) -> None:
    async with server_pair(e2e_database_url, tmp_path, two=BACKEND == "postgres") as (a, b):
        api = Connect(a.base)
        codex = Sim(
            a.base,
            tmp_path,
            "codex",
            "--agent-type",
            "codex_cli",
            "--workers",
            "2",
            "--idle-exit",
            "60",
            *FAST,
        )
        claude = Sim(
            b.base,
            tmp_path,
            "claude",
            "--agent-type",
            "claude_code",
            "--workers",
            "2",
            "--idle-exit",
            "60",
            *FAST,
        )
        try:
            group = await api.group()
            tasks: list[tuple[str, dict[str, Any]]] = []
            for i in range(6):
                agent = "AI_AGENT_TYPE_CODEX_CLI" if i % 2 else "AI_AGENT_TYPE_CLAUDE_CODE"
                tasks.append((agent, await api.unit(group, f"job {i}", aiAgentType=agent)))
            for _, task in tasks:
                await eventually(
                    lambda t=task: api.task(t["id"]),
                    lambda t: t["status"] == "UNIT_TASK_STATUS_IN_REVIEW",
                    within=60,
                )
            for sim in (codex, claude):
                sim.proc.send_signal(signal.SIGTERM)  # finish, report and leave
            reports = {
                name: await asyncio.to_thread(sim.wait, 60)
                for name, sim in (("codex", codex), ("claude", claude))
            }
            for agent, task in tasks:
                done = await api.task(task["id"])
                expected = "codex" if agent.endswith("CODEX_CLI") else "claude"
                assert done["latestSession"]["id"] in reports[expected]["sessions"], agent
        finally:
            codex.kill()
            claude.kill()
            await api.close()
    assert sum(r["succeeded"] for r in reports.values()) == 6
    # Every job came on a Watch stream.
    assert [(r["pushed"], r["polled"]) for r in reports.values()] == [(3, 0), (3, 0)]


async def test_a_watching_worker_takes_even_its_first_jobs_from_its_stream(
    e2e_database_url: str, tmp_path: Path
) -> None:
    """Regression (CI, PostgreSQL): the stream said nothing until it had news, so a starting
    worker long polled GetTask meanwhile and took a queued job that way (5 of 6 pushed)."""
    server = await Server(e2e_database_url, tmp_path / "server.log").ready()
    api = Connect(server.base)
    try:
        group = await api.group()
        for i in range(4):  # queued before the worker starts
            await api.unit(group, f"job {i}")
        sim = Sim(server.base, tmp_path, "w", "--max-jobs", "4", *FAST)
        report = await asyncio.to_thread(sim.wait, 60)
    finally:
        await api.close()
        server.stop()
    assert (report["succeeded"], report["pushed"], report["polled"]) == (4, 4, 0)


async def test_a_watch_stream_ends_cleanly_when_its_server_shuts_down(
    e2e_database_url: str, tmp_path: Path
) -> None:
    server = await Server(e2e_database_url, tmp_path / "server.log").ready()
    client = WorkerServiceClient(server.base)
    try:
        reg = await client.register(
            worker_pb.RegisterWorkerRequest(name="w", endpoint_url="http://127.0.0.1:9")
        )
        stream = client.watch(worker_pb.WatchRequest(worker_id=reg.worker_id)).__aiter__()
        opened = await asyncio.wait_for(anext(stream), 8)
        assert opened.event is not None
        assert opened.event.field == "keep_alive"
        pending = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.3)  # the stream is open and waiting (nothing to tell yet)
        assert not pending.done()
        server.proc.send_signal(signal.SIGINT)
        with pytest.raises(StopAsyncIteration):  # an orderly end, not a cut connection
            await asyncio.wait_for(pending, 8)
        code = await asyncio.to_thread(server.proc.wait, 15)
        assert code in (0, -signal.SIGINT)  # uvicorn re-raises the signal it handled
        assert "timeout graceful shutdown exceeded" not in server.log()
    finally:
        await client.close()
        server.stop()
