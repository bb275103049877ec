"""Interop: the official Connect-ES client (TypeScript, Node) against a real server process.

Runs ``npm ci`` (when ``node_modules`` is missing or older than ``package-lock.json``), the
codegen (``npm run generate``: buf with the local protoc-gen-es plugin) and a type check in
this directory, starts ``delidev-server`` on a free loopback port with a fresh database of
the backend under test (SQLite or PostgreSQL, see ``DELIDEV_TEST_DATABASE``), then runs
``interop.test.ts`` (``npm test``) against it with ``DELIDEV_URL``.

Without Node/npm the test is skipped, except in CI (``CI`` set), where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.e2e.harness import Connect, Server, Sim
from tests.waiting import blocking_until, until

HERE = Path(__file__).resolve().parent
READY_TIMEOUT_S = 30.0
NPM_CI_TIMEOUT_S = 300.0
STEP_TIMEOUT_S = 120.0
PLAN = """
tasks:
  - id: schema
    title: Schema
    prompt: Create the schema
  - id: api
    title: API
    prompt: Build the API on the schema
    dependsOn: [schema]
"""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed: the TypeScript interop test needs Node.js and npm"
        if _in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_command() -> list[str]:
    script = Path(sys.executable).parent / (
        "delidev-server.exe" if os.name == "nt" else "delidev-server"
    )
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "delidev.cli", "serve"]


def _run(args: list[str], *, timeout: float, env: dict[str, str] | None = None) -> None:
    try:
        result = subprocess.run(
            args, cwd=HERE, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"`{' '.join(args)}` timed out after {timeout:.0f} s\n{_outputs(exc)}")
    if result.returncode != 0:
        pytest.fail(
            f"`{' '.join(args)}` exited with {result.returncode}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )


def _outputs(exc: subprocess.TimeoutExpired) -> str:
    def text(value: str | bytes | None) -> str:
        if isinstance(value, bytes):
            return value.decode(errors="replace")
        return value or ""

    return f"--- stdout ---\n{text(exc.stdout)}\n--- stderr ---\n{text(exc.stderr)}"


def _prepare_node_project(npm: str) -> None:
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=NPM_CI_TIMEOUT_S)
    _run([npm, "run", "generate"], timeout=STEP_TIMEOUT_S)
    _run([npm, "run", "typecheck"], timeout=STEP_TIMEOUT_S)


def _server_env(database_url: str, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("DELIDEV_") and key != "DATABASE_URL"
    }
    env.update(
        DATABASE_URL=database_url,
        DELIDEV_SINGLE_USER_MODE="true",
        DELIDEV_SERVER_HOST="127.0.0.1",
        DELIDEV_SERVER_PORT=str(port),
        DELIDEV_LOG_LEVEL="info",
    )
    return env


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    last = "no answer yet"
    with httpx.Client(timeout=2.0) as client:

        def answers() -> bool:
            nonlocal last
            if proc.poll() is not None:
                pytest.fail(
                    f"the server exited with {proc.returncode} before it was ready\n"
                    f"--- server output ---\n{log.read_text(errors='replace')}"
                )
            try:
                response = client.get(f"{base_url}/readyz")
            except httpx.HTTPError as exc:
                last = repr(exc)
                return False
            last = f"{response.status_code} {response.text}"
            return response.status_code == 200

        try:
            blocking_until(answers, READY_TIMEOUT_S, every=0.2)
        except AssertionError:
            pytest.fail(
                f"the server was not ready after {READY_TIMEOUT_S:.0f} s (last /readyz: {last})"
                f"\n--- server output ---\n{log.read_text(errors='replace')}"
            )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def test_typescript_connect_client(tmp_path: Path, server_database_url: str) -> None:
    _tool("node")
    npm = _tool("npm")
    _prepare_node_project(npm)

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _server_command(),
            cwd=tmp_path,
            env=_server_env(server_database_url, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(proc, base_url, log)
            env = {**os.environ, "DELIDEV_URL": base_url}
            try:
                result = subprocess.run(
                    [npm, "test"],
                    cwd=HERE,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=STEP_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(
                    f"the TypeScript test timed out after {STEP_TIMEOUT_S:.0f} s\n{_outputs(exc)}\n"
                    f"--- server output ---\n{log.read_text(errors='replace')}"
                )
        finally:
            _stop(proc)

    if result.returncode != 0:
        pytest.fail(
            f"the TypeScript interop test failed (exit {result.returncode})\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}\n"
            f"--- server output ---\n{log.read_text(errors='replace')}"
        )
    print(result.stdout)  # the spec report: shown with `pytest -rP` or `-s`
    if os.name != "nt" and proc.returncode not in (0, -15):
        pytest.fail(
            f"the server exited with {proc.returncode} on SIGTERM\n"
            f"--- server output ---\n{log.read_text(errors='replace')}"
        )


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_typescript_task_life_cycles(
    tmp_path: Path, server_database_url: str, binary: bool
) -> None:
    """A unit and a composite task driven by the TypeScript client on the client side and by
    the reference worker (``delidev-worker-sim``) on the worker side, both over Connect."""
    _tool("node")
    npm = _tool("npm")
    _prepare_node_project(npm)

    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    state = tmp_path / "state.json"
    env = {
        **os.environ,
        "DELIDEV_URL": base_url,
        "STATE_FILE": str(state),
        "BINARY": "1" if binary else "0",
    }
    plan = tmp_path / "PLAN.yaml"
    plan.write_text(PLAN)
    # The reference worker over Connect: runs every queued job, then leaves when idle.
    worker = [
        sys.executable, "-m", "delidev.worker_sim", "--server", base_url, "--plan-file",
        str(plan), "--lines", "3", "--lines-per-second", "0", "--wait-ms", "200",
        "--idle-exit", "1", "--log-level", "warning",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(
            _server_command(),
            cwd=tmp_path,
            env=_server_env(server_database_url, port),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_ready(proc, base_url, log)
            for phase in ("create", "worker", "review", "worker", "node1", "worker", "node2"):
                if phase == "worker":
                    _run(worker, timeout=STEP_TIMEOUT_S)
                else:
                    _run(
                        [npm, "run", "-s", "lifecycle"],
                        timeout=STEP_TIMEOUT_S,
                        env={**env, "PHASE": phase},
                    )
        finally:
            _stop(proc)


async def test_typescript_live_streams(tmp_path: Path) -> None:
    """graphql-ws (npm) and Connect-ES streaming subscribe on server process A while the
    reference worker writes the log through process B, both on one PostgreSQL database:
    each client sees every character once, in order, also one that drops its stream every
    few thousand characters and resumes from the last message's next offset; taskUpdated
    reaches IN_REVIEW. The output holds emoji, combining marks and CJK, whose lengths differ
    in code points (the offsets' unit) and UTF-16 units (JavaScript's ``length``)."""
    _tool("node")
    npm = _tool("npm")
    _prepare_node_project(npm)
    database = await create_postgres_database()
    servers = [Server(postgres_url(database), tmp_path / f"{name}.log") for name in ("a", "b")]
    sim: Sim | None = None
    api = Connect(servers[0].base)
    try:
        for server in servers:
            await server.ready()
        group = await api.group()
        task = await api.unit(group, "live [sim:lines=300] [sim:unicode]")
        session_id = task["latestSession"]["id"]
        env = {
            **os.environ,
            "DELIDEV_URL": servers[0].base,
            "SESSION_ID": session_id,
            "TASK_ID": task["id"],
        }
        live = await asyncio.create_subprocess_exec(
            npm, "run", "-s", "live", cwd=HERE, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # The clients are connected before the worker starts (live.ts's WebSocket accepted,
        # in server A's access log): taskUpdated must see the task reach IN_REVIEW.
        await until(
            lambda: '"WebSocket /graphql" [accepted]' in servers[0].log(),
            within=STEP_TIMEOUT_S,
            what="live.ts connecting",
        )
        sim = Sim(servers[1].base, tmp_path, "writer", "--lines-per-second", "300",
                  "--chunk-interval", "0.02", "--wait-ms", "200", "--idle-exit", "1")  # fmt: skip
        try:
            out, err = await asyncio.wait_for(live.communicate(), STEP_TIMEOUT_S)
        except TimeoutError:
            live.kill()
            pytest.fail(f"live.ts timed out\n{servers[0].log()}")
        stdout, stderr = out.decode(), err.decode()
        assert live.returncode == 0, f"{stdout}\n{stderr}\n{servers[0].log()}"
        await asyncio.to_thread(sim.wait, 30)
        stored = await api("SessionService/GetLog", {"sessionId": session_id})
    finally:
        if sim is not None:
            sim.kill()
        await api.close()
        for server in servers:
            server.stop()
        await drop_postgres_database(database)
    seen = json.loads(stdout.strip().splitlines()[-1])
    assert stored["complete"] is True
    assert stored["content"].count("\n") >= 300
    assert stored["content"].count("\U0001f600 caf\u00e9 e\u0301\u0301 \u4e2d\u6587") >= 300
    assert seen["graphql"] == stored["content"]
    assert seen["connectJson"] == stored["content"]
    assert seen["connectBinary"] == stored["content"]
    assert seen["connectResumed"] == stored["content"]
    assert seen["graphqlResumed"] == stored["content"]
    assert seen["pagedJson"] == stored["content"]
    assert seen["pagedBinary"] == stored["content"]
    assert seen["reconnects"]["connect"] >= 2, seen["reconnects"]
    assert seen["reconnects"]["graphql"] >= 2, seen["reconnects"]
    assert seen["taskStatuses"][-1] == "IN_REVIEW"
