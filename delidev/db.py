"""Database set-up: Tortoise configuration, start-up and migrations.

Migrations live in the top-level ``migrations`` package (Tortoise's built-in
framework; one folder serves SQLite and PostgreSQL).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.context import TortoiseContext
from tortoise.migrations.autodetector import MigrationAutodetector
from tortoise.migrations.executor import MigrationExecutor
from tortoise.migrations.writer import MigrationWriter

from delidev.settings import Settings

log = logging.getLogger(__name__)

APP_LABEL = "models"
MIGRATIONS_MODULE = "migrations"
# Any constant works; it only has to be the same in every replica.
_MIGRATION_LOCK_KEY = 0x0DE11DE7


class MigrationError(Exception):
    """Migrations could not be applied; the message says why."""


def sqlite_path(settings: Settings) -> str:
    """The SQLite file of a ``sqlite://`` URL, with ``~`` expanded (``:memory:`` as is)."""
    path = settings.database_url.removeprefix("sqlite://").split("?", 1)[0]
    return path if path in ("", ":memory:") else str(Path(path).expanduser())


SQLITE_SYNCHRONOUS = "NORMAL"
"""SQLite's ``synchronous`` unless the URL says otherwise (``?synchronous=FULL``). Tortoise
opens SQLite in WAL mode, where NORMAL is SQLite's own advice: a commit is not fsynced (the
WAL is, at each checkpoint), so an application crash loses nothing and the database never
corrupts, while a power cut or OS crash may roll back the last commits. FULL fsyncs every
commit: ~0.3 ms each on this kind of disk, more than the rest of a log append."""


def tortoise_url(settings: Settings) -> str:
    """The database URL in Tortoise's form: ``postgresql://`` → ``postgres://`` with the
    pool size; a SQLite path with ``~`` expanded, as the directory is created there, and
    ``SQLITE_SYNCHRONOUS`` unless given.
    """
    url = settings.database_url
    if settings.is_sqlite:
        path = sqlite_path(settings)
        query = dict(parse_qsl(url.partition("?")[2], keep_blank_values=True))
        if path not in ("", ":memory:"):
            query.setdefault("synchronous", SQLITE_SYNCHRONOUS)
        return f"sqlite://{path}" + (f"?{urlencode(query)}" if query else "")
    if url.startswith("postgresql://"):
        url = "postgres://" + url.removeprefix("postgresql://")
    if settings.is_postgres:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        query.setdefault("maxsize", str(settings.db_pool_size))
        query.setdefault("minsize", "1")
        url = urlunsplit(parts._replace(query=urlencode(query)))
    return url


async def _release_without_reset(connection: asyncpg.Connection) -> None:
    """What the pool runs when a connection comes back, instead of asyncpg's default.

    The default sends ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` on
    every release: one more round trip for each query Tortoise runs outside a transaction.
    Pooled connections here never take session advisory locks, LISTEN, open cursors or SET
    anything (the migration lock and the event listener use connections of their own), so
    only an unfinished transaction needs undoing.
    """
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


def tortoise_config(settings: Settings) -> dict[str, Any]:
    connection: str | dict[str, Any] = tortoise_url(settings)
    if settings.is_postgres:
        expanded = expand_db_url(tortoise_url(settings))
        expanded["credentials"]["reset"] = _release_without_reset
        connection = expanded
    return {
        "connections": {"default": connection},
        "apps": {
            APP_LABEL: {
                "models": ["delidev.models"],
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def _ensure_sqlite_directory(settings: Settings) -> None:
    if not settings.is_sqlite:
        return
    path = sqlite_path(settings)
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


async def open_database(settings: Settings, *, migrate: bool | None = None) -> TortoiseContext:
    """Connects Tortoise (as the process-wide context) and applies pending migrations."""
    _ensure_sqlite_directory(settings)
    ctx = TortoiseContext()
    ctx.__enter__()  # model set-up below needs a current context
    try:
        await ctx.init(config=tortoise_config(settings), _enable_global_fallback=True)
        if settings.migrate_on_start if migrate is None else migrate:
            await apply_migrations(ctx, settings)
    except BaseException:
        await close_database(ctx)
        raise
    return ctx


async def close_database(ctx: TortoiseContext) -> None:
    await ctx.close_connections()
    with contextlib.suppress(ValueError):  # closed from another context than it was opened in
        ctx.__exit__(None, None, None)


async def apply_migrations(ctx: TortoiseContext, settings: Settings) -> None:
    """Applies pending migrations; safe with several PostgreSQL replicas starting at once."""
    connection = ctx.db()
    config = tortoise_config(settings)["apps"]
    if settings.is_postgres:
        # A session-level advisory lock on a connection of its own: the executor uses
        # pooled connections, and every other replica waits here until we are done.
        lock_conn = await asyncpg.connect(asyncpg_dsn(settings))
        try:
            await lock_conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK_KEY)
            await MigrationExecutor(connection, config).migrate()
            await _ensure_extra_indexes(connection)
        finally:
            try:
                await lock_conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK_KEY)
            finally:
                await lock_conn.close()
    else:
        await _migrate_sqlite(connection, config)
        await _ensure_extra_indexes(connection)
    log.info("database schema is up to date")


# Constraints the models cannot declare (partial unique indexes). They are (re)created after
# every migration run, idempotently, so a table rebuild on SQLite cannot lose them.
EXTRA_INDEXES = {
    # A worker holds at most one job, even if it calls GetTask twice at once.
    "agent_sessions_one_running_per_worker": (
        "CREATE UNIQUE INDEX IF NOT EXISTS agent_sessions_one_running_per_worker "
        "ON agent_sessions (worker_id) WHERE status = 'running'"
    ),
    # The queue in claim order (services/workers/claims.py): queued runs only.
    "agent_sessions_queue_rounds": (
        "CREATE INDEX IF NOT EXISTS agent_sessions_queue_rounds "
        "ON agent_sessions (priority DESC, fair_round, created_at, id) WHERE status = 'queued'"
    ),
    # A workspace's latest queued round, and the latest round handed out, per priority:
    # what the trigger below reads to give a newly queued run its round.
    "agent_sessions_workspace_rounds": (
        "CREATE INDEX IF NOT EXISTS agent_sessions_workspace_rounds "
        "ON agent_sessions (workspace_id, priority, fair_round) WHERE status = 'queued'"
    ),
    "agent_sessions_claimed_rounds": (
        "CREATE INDEX IF NOT EXISTS agent_sessions_claimed_rounds "
        "ON agent_sessions (priority, fair_round) WHERE started_at IS NOT NULL"
    ),
    # The next backoff to end (waits.next_change_by_time, after every reconcile pass).
    "agent_sessions_queued_backoffs": (
        "CREATE INDEX IF NOT EXISTS agent_sessions_queued_backoffs "
        "ON agent_sessions (not_before) WHERE status = 'queued' AND not_before IS NOT NULL"
    ),
}

# A run carries its task's priority and workspace (the claim orders the queue by them
# through the index above), copied by triggers so that no way of queueing a run can miss
# them and a priority changed while it waits reaches it. Re-created after every migration
# run, like the indexes (a SQLite table rebuild drops a table's triggers).
#
# A queued run also gets its round (``fair_round``, round-robin across workspaces): one past
# its workspace's latest queued run of the same priority, and never below the latest round
# handed out at that priority (so a workspace that had nothing queued joins the current
# round instead of jumping ahead of, or falling behind, everyone else). The claim takes equal
# priorities in round order, so a backlog of 500 in one workspace holds each other
# workspace's next run back by one round at most. Two runs of one workspace queued at the
# same instant may share a round (then the older goes first): fairness is not worth a lock.
EXTRA_SQL = {
    "postgres": [
        """
        CREATE OR REPLACE FUNCTION delidev_session_queue_fields() RETURNS trigger AS $$
        BEGIN
            SELECT a.priority, a.workspace_id INTO NEW.priority, NEW.workspace_id
            FROM agent_tasks a WHERE a.id = NEW.agent_task_id;
            IF NEW.status = 'queued' THEN
                NEW.fair_round := GREATEST(
                    COALESCE((SELECT max(q.fair_round) + 1 FROM agent_sessions q
                              WHERE q.status = 'queued' AND q.workspace_id = NEW.workspace_id
                                AND q.priority = NEW.priority), 0),
                    COALESCE((SELECT max(c.fair_round) FROM agent_sessions c
                              WHERE c.started_at IS NOT NULL
                                AND c.priority = NEW.priority), 0));
            END IF;
            RETURN NEW;
        END $$ LANGUAGE plpgsql
        """,
        """
        CREATE OR REPLACE TRIGGER agent_sessions_queue_fields
        BEFORE INSERT ON agent_sessions
        FOR EACH ROW EXECUTE FUNCTION delidev_session_queue_fields()
        """,
        """
        CREATE OR REPLACE FUNCTION delidev_task_queue_fields() RETURNS trigger AS $$
        BEGIN
            UPDATE agent_sessions SET priority = NEW.priority, workspace_id = NEW.workspace_id
            WHERE agent_task_id = NEW.id AND status = 'queued';
            RETURN NULL;
        END $$ LANGUAGE plpgsql
        """,
        """
        CREATE OR REPLACE TRIGGER agent_tasks_queue_fields
        AFTER UPDATE OF priority, workspace_id ON agent_tasks
        FOR EACH ROW EXECUTE FUNCTION delidev_task_queue_fields()
        """,
    ],
    "sqlite": [
        "DROP TRIGGER IF EXISTS agent_sessions_queue_fields",  # replaced as it changes
        """
        CREATE TRIGGER IF NOT EXISTS agent_sessions_queue_fields
        AFTER INSERT ON agent_sessions FOR EACH ROW BEGIN
            UPDATE agent_sessions SET
                priority = (SELECT a.priority FROM agent_tasks a WHERE a.id = NEW.agent_task_id),
                workspace_id = (SELECT a.workspace_id FROM agent_tasks a
                                WHERE a.id = NEW.agent_task_id)
            WHERE id = NEW.id;
            UPDATE agent_sessions SET fair_round = MAX(
                    COALESCE((SELECT max(q.fair_round) + 1 FROM agent_sessions q
                              WHERE q.status = 'queued' AND q.id <> NEW.id
                                AND q.workspace_id = agent_sessions.workspace_id
                                AND q.priority = agent_sessions.priority), 0),
                    COALESCE((SELECT max(c.fair_round) FROM agent_sessions c
                              WHERE c.started_at IS NOT NULL
                                AND c.priority = agent_sessions.priority), 0))
            WHERE id = NEW.id AND status = 'queued';
        END
        """,
        """
        CREATE TRIGGER IF NOT EXISTS agent_tasks_queue_fields
        AFTER UPDATE OF priority, workspace_id ON agent_tasks FOR EACH ROW BEGIN
            UPDATE agent_sessions SET priority = NEW.priority, workspace_id = NEW.workspace_id
            WHERE agent_task_id = NEW.id AND status = 'queued';
        END
        """,
    ],
}


async def _ensure_extra_indexes(connection: BaseDBAsyncClient) -> None:
    for statement in EXTRA_INDEXES.values():
        await connection.execute_script(statement)
    dialect = "postgres" if connection.capabilities.dialect == "postgres" else "sqlite"
    for statement in EXTRA_SQL[dialect]:
        await connection.execute_script(statement)


async def _migrate_sqlite(connection: BaseDBAsyncClient, config: dict[str, Any]) -> None:
    # A table rebuild with foreign keys ON would delete child rows through ON DELETE
    # CASCADE, so migrations run with them OFF and the result is checked afterwards.
    await connection.execute_script("PRAGMA foreign_keys=OFF")
    try:
        await MigrationExecutor(connection, config).migrate()
        rows = await connection.execute_query_dict("PRAGMA foreign_key_check")
        if rows:
            raise MigrationError(f"foreign key check failed after migrating: {rows[:5]}")
    finally:
        await connection.execute_script("PRAGMA foreign_keys=ON")


def asyncpg_dsn(settings: Settings) -> str:
    url = settings.database_url
    parts = urlsplit(url)
    query = {k: v for k, v in parse_qsl(parts.query) if k not in ("maxsize", "minsize", "max_size")}
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


async def pending_model_changes(ctx: TortoiseContext, settings: Settings) -> list[MigrationWriter]:
    """Migrations that ``makemigrations`` would write for model changes not yet migrated."""
    apps = ctx.apps
    if apps is None:
        raise MigrationError("Tortoise is not initialised")
    return await MigrationAutodetector(apps, tortoise_config(settings)["apps"]).changes()
