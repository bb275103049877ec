"""The real server process: zero-configuration start, health, the README's calls, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url
from tests.waiting import blocking_until

SERVER = [sys.executable, "-m", "delidev.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELIDEV_")}
    env.pop("DATABASE_URL", None)
    env.update(HOME=str(home), **extra)
    return env


@contextlib.contextmanager
def running_server(home: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A server process (cwd ``home``) that has answered /readyz with 200."""
    port = free_port()
    proc = subprocess.Popen(
        SERVER,
        env=_env(home, DELIDEV_SERVER_PORT=str(port), **env),
        cwd=home,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError("the server exited")
            try:
                return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            blocking_until(answers, 30, what="/readyz")
        except AssertionError:
            proc.kill()
            raise AssertionError(f"server did not start:\n{proc.communicate()[0]}") from None
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, then the whole output once the process has ended."""
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM), output
    return output


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    with running_server(tmp_path) as (base, proc):
        yield base, proc, tmp_path


def test_zero_configuration_server_answers_both_apis(
    server: tuple[str, subprocess.Popen[str], Path],
) -> None:
    base, proc, home = server
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    created = httpx.post(
        f"{base}/delidev.v1.WorkspaceService/Create",
        content='{"name":"w"}',
        headers={"Content-Type": "application/json"},
    )
    assert created.status_code == 200
    workspace = created.json()["workspace"]
    assert workspace["name"] == "w"
    query = httpx.post(
        f"{base}/graphql", json={"query": "{ workspaces { totalCount items { id } } }"}
    )
    assert query.json() == {
        "data": {"workspaces": {"totalCount": 1, "items": [{"id": workspace["id"]}]}}
    }
    assert (home / ".delidev" / "delidev.db").exists()

    output = stop(proc)
    assert "DeliDev server stopped" in output
    assert "Traceback" not in output


def test_multi_user_without_secret_refuses_to_start(tmp_path: Path) -> None:
    result = subprocess.run(
        SERVER,
        env=_env(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "DELIDEV_JWT_SECRET" in result.stderr


def test_migrate_command(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    env = _env(tmp_path, DATABASE_URL=f"sqlite://{db}", DELIDEV_SINGLE_USER_MODE="true")
    result = subprocess.run(
        [*SERVER, "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [*SERVER, "check-migrations"], env=env, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "migrations match the models" in check.stdout


async def test_readyz_is_503_until_the_database_is_open(app: object) -> None:
    transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]  # an ASGI app
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "starting"}


def test_tilde_in_a_sqlite_url_means_the_home_directory(tmp_path: Path) -> None:
    # The README's form of the default; the server's working directory is tmp_path, so a
    # literal "~" would be a directory named "~" there (or "unable to open database file").
    home = tmp_path
    url = "sqlite://~/data/delidev.db"
    with running_server(home, DATABASE_URL=url, DELIDEV_SINGLE_USER_MODE="true") as (base, proc):
        created = httpx.post(
            f"{base}/delidev.v1.WorkspaceService/Create",
            content='{"name":"w"}',
            headers={"Content-Type": "application/json"},
        )
        assert created.status_code == 200, created.text
        stop(proc)
    assert (home / "data" / "delidev.db").exists()
    assert not (home / "~").exists()


@pytest.mark.parametrize(
    ("level", "shown", "hidden"), [("warning", None, " INFO "), ("debug", " DEBUG ", None)]
)
def test_log_level_takes_effect(
    tmp_path: Path, level: str, shown: str | None, hidden: str | None
) -> None:
    with running_server(tmp_path, DELIDEV_LOG_LEVEL=level) as (base, proc):
        assert httpx.get(f"{base}/healthz").status_code == 200
        output = stop(proc)
    if shown is not None:
        assert shown in output
    if hidden is not None:
        assert hidden not in output
    assert "Traceback" not in output


def test_debug_logs_carry_no_sql_values(tmp_path: Path) -> None:
    marker = "private-name-4e1f0a9c"
    with running_server(tmp_path, DELIDEV_LOG_LEVEL="debug") as (base, proc):
        created = httpx.post(
            f"{base}/delidev.v1.WorkspaceService/Create",
            json={"name": marker},
            headers={"Content-Type": "application/json"},
        )
        assert created.status_code == 200, created.text
        output = stop(proc)
    assert " DEBUG delidev.app: configuration: Settings(" in output
    assert marker not in output


@pytest.mark.postgres_only
def test_readyz_is_503_when_the_database_goes_away(tmp_path: Path) -> None:
    name = asyncio.run(create_postgres_database())
    env = {"DATABASE_URL": postgres_url(name), "DELIDEV_SINGLE_USER_MODE": "true"}
    try:
        with running_server(tmp_path, **env) as (base, proc):
            assert httpx.get(f"{base}/readyz").status_code == 200
            # Terminates the server's connections, and no new one can be opened.
            asyncio.run(drop_postgres_database(name))
            gone = httpx.get(f"{base}/readyz", timeout=30)
            assert gone.status_code == 503
            assert gone.json() == {"status": "database unreachable"}
            assert httpx.get(f"{base}/healthz").status_code == 200
            output = stop(proc)
        assert "readiness check failed: database unreachable" in output
    finally:
        asyncio.run(drop_postgres_database(name))
