"""The database goes away under a running server (a loopback proxy in front of PostgreSQL is
cut; another process holds SQLite's write lock): clients are told ``unavailable``, the
probes answer at once, the log stays short, and once the database is back a worker that
kept beating keeps its job (its beats during the outage could not be stored)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.browser.proxy import CuttableProxy
from tests.conftest import BACKEND
from tests.e2e.harness import Connect, ConnectFailure, Server, Worker, fresh_database, serving

INTERVAL_S = 0.5
UNAVAILABLE = "the database is unavailable: try again shortly"


async def _refused(call: asyncio.Future[object] | object) -> ConnectFailure:
    with pytest.raises(ConnectFailure) as refused:
        await call  # type: ignore[misc]
    return refused.value


@pytest.mark.skipif(BACKEND != "postgres", reason="PostgreSQL only: a proxy in front of it")
async def test_a_postgres_outage_is_unavailable_and_costs_no_worker_its_job(
    tmp_path: Path,
) -> None:
    async with fresh_database(tmp_path) as url:
        proxy = CuttableProxy(urlsplit(url).port or 5432)
        through = urlsplit(await proxy.start()).port
        server = Server(
            url.replace(f":{urlsplit(url).port}/", f":{through}/"),
            tmp_path / "server.log",
            DELIDEV_HEARTBEAT_INTERVAL_MS=str(int(INTERVAL_S * 1000)),
        )
        api = Connect(server.base)
        worker = Worker(server.base)
        try:
            await server.ready()
            task = await api.unit(await api.group(), "runs through an outage")
            session_id = await worker.claim(task["id"])
            beat = {"workerId": worker.lease["workerId"], "sessionId": session_id}

            proxy.cut()
            refused = await _refused(api("TaskService/List", {}))
            assert (refused.status, refused.code, refused.message) == (
                503,
                "unavailable",
                UNAVAILABLE,
            )
            answer = await api.http.post("/graphql", json={"query": "{ workers { totalCount } }"})
            assert answer.json()["errors"][0]["extensions"]["code"] == "UNAVAILABLE"
            # The probes answer within their timeouts and tell the truth.
            started = time.monotonic()
            assert (await api.http.get("/readyz")).status_code == 503
            assert "delidev_database_up 0.0" in (await api.http.get("/metrics")).text
            assert time.monotonic() - started < 15
            # The worker beats on, and nothing it sends can be stored.
            for _ in range(6):  # three intervals' worth: it would count as silent
                assert (await _refused(api("WorkerService/Heartbeat", beat))).code == (
                    "unavailable"
                )
                await asyncio.sleep(INTERVAL_S)

            proxy.restore()
            await _back(api)
            # Its next beat comes an interval and a half later: by then the sweep has run
            # (every interval) and, before, took the worker for silent and its job away.
            await asyncio.sleep(INTERVAL_S * 1.5)
            for _ in range(6):
                await api("WorkerService/Heartbeat", beat)
                await asyncio.sleep(INTERVAL_S)
            runs = (await api.task(task["id"]))["agentTask"]["sessions"]
            assert [(r.get("attempt"), r["status"]) for r in runs] == [
                (1, "AGENT_SESSION_STATUS_RUNNING")
            ]
        finally:
            await worker.close()
            await api.close()
            server.stop()
            await proxy.stop()
    log = server.log()
    assert "unexpected error" not in log  # no request logged an internal error
    assert 1 <= log.count("database unavailable (") <= 3  # one line per 10 s, not per call


async def _back(api: Connect) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            await api("TaskService/List", {})
            return
        except (ConnectFailure, httpx.HTTPError):
            assert time.monotonic() < deadline, "the server did not come back"
            await asyncio.sleep(0.1)


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite's write lock")
async def test_a_sqlite_file_locked_by_another_process_is_unavailable(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        api = Connect(server.base)
        try:
            group = await api.group()
            holder = sqlite3.connect(tmp_path / "e2e.db", isolation_level=None, timeout=10)
            try:
                holder.execute("BEGIN EXCLUSIVE")  # e.g. a backup tool, or sqlite3 by hand
                refused = await _refused(api.unit(group, "waits for the lock"))
            finally:
                holder.execute("ROLLBACK")
                holder.close()
            assert (refused.code, refused.message) == ("unavailable", UNAVAILABLE)
            assert (await api.unit(group, "after the lock"))["prompt"] == "after the lock"
        finally:
            await api.close()
    assert "unexpected error" not in server.log()
