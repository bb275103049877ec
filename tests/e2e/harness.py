"""Real processes for end-to-end tests: servers on loopback ports and reference workers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import fresh_database as fresh_database

# Re-exported: the e2e tests poll through the harness.
from tests.waiting import eventually as eventually

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIDEV_")}
    env.pop("DATABASE_URL", None)
    env.update(extra)
    return env


class Server:
    """One ``delidev-server`` process on a free loopback port.

    ``prelude``: Python statements the process runs before it serves, for a test that
    needs a module constant changed (``"from delidev.services import live; live.X = 1"``).
    """

    def __init__(self, database_url: str, log_path: Path, *, prelude: str = "", **env: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        command = ["-m", "delidev.cli", "serve"]
        if prelude:
            serve = "import sys\nfrom delidev.cli import main\nsys.exit(main(['serve']))"
            command = ["-c", f"{prelude}\n{serve}"]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            env=clean_env(
                **{
                    "DATABASE_URL": database_url,
                    "DELIDEV_SINGLE_USER_MODE": "true",
                    "DELIDEV_SERVER_PORT": str(self.port),
                    "DELIDEV_LOG_LEVEL": "info",
                    # A lost job comes back at once (its backoff has service tests of its own).
                    "DELIDEV_RETRY_BACKOFF_BASE_MS": "1",
                    **env,
                }
            ),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self) -> Server:
        async with httpx.AsyncClient() as client:

            async def answers() -> bool:
                if self.proc.poll() is not None:
                    raise AssertionError("the server exited")
                try:
                    return (await client.get(f"{self.base}/readyz", timeout=2)).status_code == 200
                except httpx.TransportError:
                    return False

            try:
                await eventually(answers, bool, within=START_TIMEOUT_S)
            except AssertionError:
                self.stop()
                raise AssertionError(f"server did not start:\n{self.log()}") from None
        return self

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@asynccontextmanager
async def serving(directory: Path, **env: str) -> AsyncIterator[Server]:
    """One ready server process with ``env`` on a fresh database (see ``fresh_database``),
    logging to ``directory/server.log``; stopped and its database dropped afterwards."""
    async with fresh_database(directory) as url:
        server = Server(url, directory / "server.log", **env)
        try:
            yield await server.ready()
        finally:
            server.stop()


@asynccontextmanager
async def server_pair(
    database_url: str, tmp_path: Path, *, two: bool, prelude: str = "", **env: str
) -> AsyncIterator[tuple[Server, Server]]:
    """(where clients subscribe, with ``prelude``; where the worker writes): two server
    processes on one database when ``two`` (PostgreSQL), else one serving both roles."""
    a = Server(database_url, tmp_path / "a.log", prelude=prelude, **env)
    b = Server(database_url, tmp_path / "b.log", **env) if two else a
    try:
        await a.ready()
        if b is not a:
            await b.ready()
        yield a, b
    finally:
        a.stop()
        if b is not a:
            b.stop()


class Sim:
    """A ``delidev-worker-sim`` process."""

    def __init__(self, server: str, workdir: Path, name: str, *args: str) -> None:
        self.report = workdir / f"{name}.json"
        self.log_path = workdir / f"{name}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "delidev.worker_sim",
                "--server",
                server,
                "--name",
                name,
                "--report",
                str(self.report),
                "--log-level",
                "warning",
                *args,
            ],
            env=clean_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"worker sim did not finish:\n{self.log()}") from None
        self._log.close()
        assert code == 0, f"worker sim exited with {code}:\n{self.log()}"
        result: dict[str, Any] = json.loads(self.report.read_text())
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")


# Shorter than uvicorn's keep-alive timeout (5 s).
KEEPALIVE_S = 1.0


class Connect:
    """Connect JSON calls over real HTTP."""

    def __init__(self, base: str, token: str | None = None) -> None:
        # Idle connections are dropped before the server's 5 s keep-alive ends them: a call
        # after a long wait must not go out on a connection the server is closing (httpx
        # then fails with ReadError, as it did once in CI).
        self.http = httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S)
        )
        self.token = token

    async def __call__(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        response = await self.http.post(
            f"/delidev.v1.{method}", content=json.dumps(body or {}), headers=headers
        )
        payload: dict[str, Any] = response.json() if response.content else {}
        if response.status_code != 200:
            raise ConnectFailure(response.status_code, payload)
        return payload

    async def close(self) -> None:
        await self.http.aclose()

    async def group(self) -> str:
        ws = (await self("WorkspaceService/Create", {"name": f"e2e-{time.monotonic_ns()}"}))[
            "workspace"
        ]["id"]
        repo = (
            await self(
                "RepositoryService/Add",
                {"workspaceId": ws, "remoteUrl": f"https://github.com/e2e/r{time.monotonic_ns()}"},
            )
        )["repository"]["id"]
        group = await self(
            "RepositoryGroupService/Create", {"workspaceId": ws, "repositoryIds": [repo]}
        )
        return str(group["group"]["id"])

    async def unit(self, group: str, prompt: str, **extra: Any) -> dict[str, Any]:
        created = await self(
            "TaskService/CreateUnit", {"repositoryGroupId": group, "prompt": prompt, **extra}
        )
        return dict(created["task"]["unitTask"])

    async def task(self, task_id: str) -> dict[str, Any]:
        got = await self("TaskService/Get", {"taskId": task_id})
        return dict(got["task"].get("unitTask") or got["task"]["compositeTask"])


class Worker:
    """A worker driven by the test itself: it claims one job and writes exactly what the
    test asks, when it asks (the reference worker follows its own script)."""

    def __init__(self, base: str, registration_token: str | None = None) -> None:
        self.api = Connect(base, registration_token)
        self.lease: dict[str, str] = {}
        self.sequence = 0

    async def claim(self, task_id: str) -> str:
        """Registers and runs the job of ``task_id`` (the only one queued); its session id."""
        registered = await self.api(
            "WorkerService/Register",
            {"name": f"w-{task_id[:8]}", "endpointUrl": "http://127.0.0.1:9"},
        )
        self.api.token = registered["credential"] or self.api.token
        claimed = await self.api(
            "WorkerService/GetTask", {"workerId": registered["workerId"], "waitMs": 10_000}
        )
        job = claimed["job"]
        assert job["taskId"] == task_id, job
        self.lease = {
            "workerId": registered["workerId"],
            "sessionId": job["sessionId"],
            "leaseToken": job["leaseToken"],
        }
        return str(job["sessionId"])

    async def write(self, *texts: str) -> None:
        """Appends each text as the next chunk of the log."""
        chunks = []
        for text in texts:
            chunks.append({"sequence": self.sequence, "data": text})
            self.sequence += 1
        await self.api("WorkerService/AppendLog", {**self.lease, "chunks": chunks})

    async def finish(self) -> None:
        await self.api(
            "WorkerService/ReportStatus",
            {**self.lease, "status": "AGENT_SESSION_STATUS_SUCCEEDED"},
        )

    async def close(self) -> None:
        await self.api.close()


class ConnectFailure(Exception):
    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(f"{status}: {payload}")
        self.status = status
        self.code = payload.get("code")
        self.message = str(payload.get("message", ""))


class GraphQLWs:
    """A minimal GraphQL-over-WebSocket client (graphql-transport-ws or legacy graphql-ws)."""

    def __init__(self, base: str, protocol: str = "graphql-transport-ws") -> None:
        self.url = base.replace("http://", "ws://") + "/graphql"
        self.protocol = protocol
        self.ws: Any = None
        self._ids = 0

    async def connect(
        self, payload: dict[str, Any] | None = None, *, init: bool = True, **options: Any
    ) -> None:
        """Opens the socket (``options`` go to ``websockets.connect``) and, with ``init``,
        sends ``connection_init`` and waits for its ack."""
        import websockets

        self.ws = await websockets.connect(
            self.url,
            subprotocols=[self.protocol],  # type: ignore[list-item]
            max_size=None,
            ping_interval=None,
            **options,
        )
        if init:
            await self.send({"type": "connection_init", "payload": payload or {}})
            ack = await self.receive()
            assert ack["type"] == "connection_ack", ack

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, within: float = 30) -> dict[str, Any]:
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), within)
            message: dict[str, Any] = json.loads(raw)
            if message.get("type") == "ka":  # legacy keep-alive
                continue
            return message

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        self._ids += 1
        op = str(self._ids)
        kind = "subscribe" if self.protocol == "graphql-transport-ws" else "start"
        await self.send(
            {"id": op, "type": kind, "payload": {"query": query, "variables": variables or {}}}
        )
        return op

    async def results(self, within: float = 60) -> AsyncIterator[dict[str, Any]]:
        """Payloads of ``next`` (or ``data``) messages until the operation completes."""
        while True:
            message = await self.receive(within)
            kind = message["type"]
            if kind == "ping":
                await self.send({"type": "pong"})
                continue
            if kind in ("next", "data"):
                yield message["payload"]
            elif kind == "complete":
                return
            elif kind == "error":
                raise AssertionError(f"subscription error: {message}")

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


SESSION_LOG = """
subscription($id: ID!, $from: Float!) {
  sessionLog(sessionId: $id, fromOffset: $from) { offset nextOffset data status final }
}
"""


async def connect_stream(
    base: str, method: str, body: dict[str, Any], *, within: float = 60
) -> AsyncIterator[dict[str, Any]]:
    """A Connect server-streaming call with the JSON codec over HTTP/1.1 (enveloped
    messages; the end-of-stream envelope carries an error, if any)."""
    data = json.dumps(body).encode()
    envelope = bytes([0]) + len(data).to_bytes(4, "big") + data
    async with (
        httpx.AsyncClient(timeout=within) as http,
        http.stream(
            "POST",
            f"{base}/delidev.v1.{method}",
            content=envelope,
            headers={"content-type": "application/connect+json", "connect-protocol-version": "1"},
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        buffer = b""
        async for chunk in response.aiter_bytes():
            buffer += chunk
            while len(buffer) >= 5:
                flags, size = buffer[0], int.from_bytes(buffer[1:5], "big")
                if len(buffer) < 5 + size:
                    break
                payload, buffer = buffer[5 : 5 + size], buffer[5 + size :]
                message = json.loads(payload)
                if flags & 0x02:
                    if "error" in message:
                        raise ConnectFailure(200, message["error"])
                    return
                yield message
