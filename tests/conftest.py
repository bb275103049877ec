"""Shared fixtures.

The database under test is chosen by ``DELIDEV_TEST_DATABASE``: ``sqlite`` (default) or
``postgres``. PostgreSQL tests use a fresh database created on the server named by
``DELIDEV_TEST_POSTGRES_URL`` (default: the machine's local cluster) and dropped at the
end. When PostgreSQL is selected and unreachable the run fails: it never skips.
"""

from __future__ import annotations

import contextvars
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from tortoise.context import TortoiseContext

from delidev import db, events
from delidev.app import create_app
from delidev.settings import Settings

BACKEND = os.environ.get("DELIDEV_TEST_DATABASE", "sqlite").lower()
POSTGRES_ADMIN_URL = os.environ.get(
    "DELIDEV_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
# The event-loop watchdog: ``@pytest.mark.loop_watchdog`` or the ``loop_watchdog`` fixture;
# pytester runs its own test in a subprocess.
pytest_plugins = ("tests.loop_watchdog", "pytester")

if BACKEND not in ("sqlite", "postgres"):
    raise RuntimeError(f"DELIDEV_TEST_DATABASE must be sqlite or postgres, not {BACKEND!r}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if BACKEND == "postgres":
        return
    skip = pytest.mark.skip(reason="PostgreSQL only: run with DELIDEV_TEST_DATABASE=postgres")
    for item in items:
        if "postgres_only" in item.keywords:
            item.add_marker(skip)


def pytest_report_header() -> str:
    return f"delidev test database: {BACKEND}"


def postgres_url(database: str) -> str:
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{database}"


async def create_postgres_database() -> str:
    name = f"delidev_test_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return name


async def drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(POSTGRES_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def fresh_database(directory: Path, filename: str = "e2e.db") -> AsyncIterator[str]:
    """The URL of a new database of the suite's backend: a SQLite file in ``directory``, or a
    throwaway PostgreSQL database, dropped afterwards."""
    if BACKEND == "sqlite":
        yield f"sqlite://{directory / filename}"
        return
    name = await create_postgres_database()
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)


@pytest.fixture(scope="session")
async def database_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with fresh_database(tmp_path_factory.mktemp("db"), "delidev.db") as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str) -> Settings:
    # The ASGI test clients send made-up names (``Host: test``, ``t``...): any is served
    # here, and the Host check has tests of its own (tests/test_http_hardening.py).
    return Settings(database_url=database_url, allowed_hosts=("*",))


@pytest.fixture(scope="session")
async def database(settings: Settings) -> AsyncIterator[TortoiseContext]:
    ctx = await db.open_database(settings)
    try:
        yield ctx
    finally:
        await db.close_database(ctx)


async def _clear(ctx: TortoiseContext) -> None:
    apps = ctx.apps
    assert apps is not None
    tables = [model._meta.db_table for model in apps.get_models_iterable()]
    conn = ctx.db()
    if BACKEND == "postgres":
        quoted = ", ".join(f'"{t}"' for t in tables)
        await conn.execute_script(f"TRUNCATE {quoted} CASCADE")
    else:
        await conn.execute_script("PRAGMA foreign_keys=OFF")
        for table in tables:
            await conn.execute_script(f'DELETE FROM "{table}"')
        await conn.execute_script("PRAGMA foreign_keys=ON")


@pytest.fixture(autouse=True)
async def clean_database(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test that touches the database starts from empty tables."""
    if "database" not in request.fixturenames:
        yield
        return
    ctx: TortoiseContext = request.getfixturevalue("database")
    await _clear(ctx)
    yield


@pytest.fixture
def bus() -> Iterator[events.EventBus]:
    """An event bus of the test's own, bound as the one services publish into (no app)."""
    b = events.EventBus()
    token = events.bind(b)
    try:
        yield b
    finally:
        events.unbind(token)


@pytest.fixture
async def app(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    """The app; service calls made by the test itself publish into the app's event bus."""
    application = create_app(settings)
    token = events.bind(application.state.events)
    try:
        yield application
    finally:
        events.unbind(token)


@pytest.fixture
async def http(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


class SqlCounter(logging.Handler):
    """Counts the SQL statements Tortoise sends (it logs each at DEBUG).

    Only statements sent from the test's own task (and tasks it starts after ``reset``) are
    counted: a background task left over by another test must not change the figure.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.statements: list[str] = []
        self._scope: contextvars.ContextVar[bool] = contextvars.ContextVar(
            "sql_counter_scope", default=False
        )

    def emit(self, record: logging.LogRecord) -> None:
        if not self._scope.get():
            return
        message = record.getMessage()
        if message.lstrip().upper().startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")):
            self.statements.append(message)

    def reset(self) -> None:
        """Starts counting afresh, in the calling task's context."""
        self._scope.set(True)
        self.statements.clear()


@pytest.fixture
def sql_counter() -> Iterator[SqlCounter]:
    logger = logging.getLogger("tortoise.db_client")
    counter = SqlCounter()
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(old_level)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
