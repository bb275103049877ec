"""A rolling restart of one of two replicas, with reference workers and a live log follower
attached to it (issue 12, "Shutdown and restarts"): no job is lost, no byte of output, and
the follower goes on from its offset on the other replica.

The clients reach the replicas through a loopback TCP proxy that gives each new connection
to the first replica that accepts it, as a load balancer does with a replica that stopped
listening (``FailoverProxy``).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Connect, ConnectFailure, Server, Sim, connect_stream
from tests.waiting import GUARD_S, eventually

JOBS = 6
LINES = 60  # at 30 lines/s: 2 s per job, so the restart falls in the middle of the runs

pytestmark = pytest.mark.postgres_only


class FailoverProxy:
    """Loopback TCP proxy: a new connection goes to the first upstream port that accepts it;
    bytes are copied both ways until either side closes."""

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = upstreams
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in list(self.upstreams):
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue
            break
        else:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._copy(source, sink))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                sink.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.fixture
async def replicas(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[list[Server]]:
    servers = [
        Server(e2e_database_url, tmp_path / "a.log", DELIDEV_SHUTDOWN_GRACE_S="20"),
        Server(e2e_database_url, tmp_path / "b.log", DELIDEV_SHUTDOWN_GRACE_S="20"),
    ]
    try:
        for server in servers:
            await server.ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


async def _follow(base: str, session_id: str) -> tuple[str, int]:
    """The whole log of a session, followed live until it ends, reconnecting from its offset
    whenever the stream is cut; and how many times it had to reconnect."""
    data, offset, reconnects = "", 0, 0
    while True:
        try:
            async for piece in connect_stream(
                base, "SessionService/StreamLog", {"sessionId": session_id, "fromOffset": offset}
            ):
                assert int(piece.get("offset", 0)) == offset, (piece, offset)
                data += piece.get("data", "")
                offset = int(piece.get("nextOffset", offset))
            return data, reconnects
        except ConnectFailure as failure:  # the replica ends its followers as it goes
            if failure.code != "unavailable":
                raise
        except httpx.HTTPError:  # or the connection went with the replica
            pass
        reconnects += 1
        assert reconnects < 20, "the follower keeps being cut"
        await asyncio.sleep(0.1)


async def test_a_rolling_restart_loses_no_job_no_log_byte_and_no_follower(
    replicas: list[Server], e2e_database_url: str, tmp_path: Path
) -> None:
    a, b = replicas
    proxy = FailoverProxy([a.port, b.port])
    base = f"http://127.0.0.1:{await proxy.start()}"
    api = Connect(b.base)  # the test's own calls go to the replica that stays
    sims: Sim | None = None
    restarted: Server | None = None
    try:
        group = await api.group()
        tasks = [await api.unit(group, f"job {i} [sim:lines={LINES}]") for i in range(JOBS)]
        sims = Sim(
            base, tmp_path, "fleet", "--workers", "3", "--lines-per-second", "30",
            "--chunk-interval", "0.1", "--idle-exit", "4", "--retry-max", "0.3",
        )  # fmt: skip
        first = await eventually(
            lambda: _sessions(api, tasks[0]["id"]),
            lambda s: bool(s) and s[0]["status"] == "AGENT_SESSION_STATUS_RUNNING",
        )
        session_id = first[0]["id"]
        following = asyncio.create_task(_follow(base, session_id))
        await eventually(  # the follower is attached (to replica a) and output flows
            lambda: api("SessionService/GetLog", {"sessionId": session_id}),
            lambda got: got.get("content", "").count("\n") >= 5,
        )

        a.proc.send_signal(signal.SIGTERM)  # the rolling restart: a goes, then comes back
        assert await asyncio.to_thread(a.proc.wait, GUARD_S) == 0, a.log()[-2000:]
        restarted = Server(e2e_database_url, tmp_path / "a2.log", DELIDEV_SERVER_PORT=str(a.port))
        restarted.base, restarted.port = a.base, a.port
        await restarted.ready()

        followed, reconnects = await asyncio.wait_for(following, 60)
        report = await asyncio.to_thread(sims.wait, 90)
        assert (report["succeeded"], report["refused"], report["abandoned"]) == (JOBS, 0, 0)
        for task in tasks:
            runs = await _sessions(api, task["id"])
            assert [r["status"] for r in runs] == ["AGENT_SESSION_STATUS_SUCCEEDED"], runs
            log = await api("SessionService/GetLog", {"sessionId": runs[0]["id"]})
            numbers = re.findall(r"^line (\d+) of", log["content"], re.M)
            assert numbers == [str(n) for n in range(1, LINES + 1)], log["content"][-300:]
        stored = await api("SessionService/GetLog", {"sessionId": session_id})
        assert followed == stored["content"]
        assert reconnects >= 1  # it was attached to the replica that went
        for server in (a, b, restarted):
            assert "Traceback" not in server.log()
    finally:
        if sims is not None:
            sims.kill()
        if restarted is not None:
            restarted.stop()
        await proxy.close()
        await api.close()


async def _sessions(api: Connect, task_id: str) -> list[dict[str, Any]]:
    task = await api.task(task_id)
    return list(task["agentTask"].get("sessions", []))
