"""Migrations give exactly the models' schema, on SQLite and PostgreSQL, and are safe."""

from __future__ import annotations

import asyncio
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.context import TortoiseContext
from tortoise.migrations.executor import MigrationExecutor, MigrationTarget

from delidev import db
from delidev.settings import Settings
from tests.conftest import BACKEND, create_postgres_database, drop_postgres_database, postgres_url

RECORDER_TABLE = "tortoise_migrations"


async def _schema(conn: BaseDBAsyncClient) -> dict[str, Any]:
    """Tables → columns (type, nullable), foreign keys and indexed column sets."""
    result: dict[str, Any] = {}
    if BACKEND == "sqlite":
        tables = [
            r["name"]
            for r in await conn.execute_query_dict(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        for table in tables:
            if table == RECORDER_TABLE:
                continue
            cols = await conn.execute_query_dict(f'PRAGMA table_info("{table}")')
            fks = await conn.execute_query_dict(f'PRAGMA foreign_key_list("{table}")')
            idx = await conn.execute_query_dict(f'PRAGMA index_list("{table}")')
            indexes = set()
            for index in idx:
                if index["name"] in db.EXTRA_INDEXES:
                    continue
                info = await conn.execute_query_dict(f'PRAGMA index_info("{index["name"]}")')
                indexes.add((tuple(i["name"] for i in info), bool(index["unique"])))
            result[table] = {
                "columns": {
                    c["name"]: (c["type"], bool(c["notnull"]), bool(c["pk"])) for c in cols
                },
                "fks": {(f["from"], f["table"], f["to"], f["on_delete"]) for f in fks},
                "indexes": indexes,
            }
        return result
    cols = await conn.execute_query_dict(
        "SELECT table_name, column_name, data_type, is_nullable FROM information_schema.columns "
        "WHERE table_schema = 'public'"
    )
    for c in cols:
        if c["table_name"] == RECORDER_TABLE:
            continue
        table = result.setdefault(c["table_name"], {"columns": {}, "fks": set(), "indexes": set()})
        table["columns"][c["column_name"]] = (c["data_type"], c["is_nullable"])
    fks = await conn.execute_query_dict(
        "SELECT conrelid::regclass::text AS tbl, pg_get_constraintdef(oid) AS def "
        "FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
    )
    for fk in fks:
        result[fk["tbl"].strip('"')]["fks"].add(fk["def"])
    indexes = await conn.execute_query_dict(
        "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
    )
    for index in indexes:
        if index["tablename"] == RECORDER_TABLE or index["indexname"] in db.EXTRA_INDEXES:
            continue
        definition = index["indexdef"]
        columns = definition[definition.index("(") :]
        result[index["tablename"]]["indexes"].add(("UNIQUE" in definition, columns))
    return result


async def _expected_schema(settings: Settings) -> dict[str, Any]:
    """The schema Tortoise generates straight from the models, in a scratch database."""
    if BACKEND == "sqlite":
        path = settings.database_url.removeprefix("sqlite://") + ".expected"
        url, scratch = f"sqlite://{path}", None
    else:
        scratch = await create_postgres_database()
        url = postgres_url(scratch)
    try:
        async with TortoiseContext() as ctx:
            await ctx.init(config=db.tortoise_config(Settings(database_url=url)))
            await ctx.generate_schemas()
            return await _schema(ctx.db())
    finally:
        if scratch:
            await drop_postgres_database(scratch)


async def test_migrations_give_the_models_schema(
    database: TortoiseContext, settings: Settings
) -> None:
    migrated = await _schema(database.db())
    expected = await _expected_schema(settings)
    assert sorted(migrated) == sorted(expected)
    for table in expected:
        assert migrated[table] == expected[table], table


async def test_every_model_change_has_a_migration(
    database: TortoiseContext, settings: Settings
) -> None:
    pending = await db.pending_model_changes(database, settings)
    assert pending == [], "models changed without a migration: run delidev-server makemigrations"


async def test_migrating_again_is_a_no_op(database: TortoiseContext, settings: Settings) -> None:
    await db.apply_migrations(database, settings)
    recorded = await database.db().execute_query_dict(f"SELECT * FROM {RECORDER_TABLE}")
    assert len(recorded) == len(list(Path(db.__file__).parent.parent.glob("migrations/0*.py")))


@pytest.mark.skipif(BACKEND != "sqlite", reason="SQLite table rebuilds only")
async def test_sqlite_table_rebuild_keeps_child_rows(
    tmp_path: Path, repo_root: Path, database: TortoiseContext
) -> None:
    """Altering a parent table rebuilds it on SQLite; ON DELETE CASCADE must not fire."""
    package = tmp_path / "rebuild_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    # Every real migration, then one that alters a parent table (a rebuild on SQLite).
    real = sorted((repo_root / "migrations").glob("0*.py"))
    for migration in real:
        shutil.copy(migration, package / migration.name)
    latest = real[-1].stem
    (package / "9999_alter.py").write_text(
        textwrap.dedent(
            """
            from tortoise import fields, migrations
            from tortoise.migrations import operations as ops

            class Migration(migrations.Migration):
                dependencies = [("models", "{latest}")]
                operations = [
                    ops.AlterField(
                        model_name="Workspace",
                        name="name",
                        field=fields.CharField(max_length=300),
                    ),
                ]
            """
        ).replace("{latest}", latest)
    )
    sys.path.insert(0, str(tmp_path))
    try:
        conn = database.db()
        config = db.tortoise_config(Settings(database_url="sqlite://unused"))["apps"]
        config["models"]["migrations"] = "rebuild_migrations"
        # The session database already has the real migrations applied under the same names.
        await conn.execute_script(
            "INSERT INTO workspaces (id, name, created_at, updated_at) VALUES "
            "('11111111-1111-1111-1111-111111111111', 'w', '2026-01-01', '2026-01-01')"
        )
        await conn.execute_script(
            "INSERT INTO repositories (id, workspace_id, name, local_path, remote_url, "
            "default_branch, vcs_type, vcs_provider_type, created_at, updated_at) VALUES "
            "('22222222-2222-2222-2222-222222222222', '11111111-1111-1111-1111-111111111111', "
            "'r', '', 'https://github.com/a/r', 'main', 'git', 'github', '2026-01-01', "
            "'2026-01-01')"
        )
        await db._migrate_sqlite(conn, config)
        rows = await conn.execute_query_dict("SELECT id FROM repositories")
        assert len(rows) == 1
        columns = await conn.execute_query_dict('PRAGMA table_info("workspaces")')
        assert {c["name"]: c["type"] for c in columns}["name"] == "VARCHAR(300)"
        fk_on = await conn.execute_query_dict("PRAGMA foreign_keys")
        assert fk_on[0]["foreign_keys"] == 1
        # Back to the latest real migration, so that later tests see the real schema (a
        # rebuild again), with the triggers and partial indexes it drops put back.
        await conn.execute_script("PRAGMA foreign_keys=OFF")
        await MigrationExecutor(conn, config).migrate(
            [MigrationTarget(app_label="models", name=latest)]
        )
        await db._ensure_extra_indexes(conn)
        await conn.execute_script("PRAGMA foreign_keys=ON")
        columns = await conn.execute_query_dict('PRAGMA table_info("workspaces")')
        assert {c["name"]: c["type"] for c in columns}["name"] == "VARCHAR(255)"
        assert len(await conn.execute_query_dict("SELECT id FROM repositories")) == 1
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rebuild_migrations", None)
        await conn.execute_script("PRAGMA foreign_keys=OFF")
        await conn.execute_script("DELETE FROM repositories; DELETE FROM workspaces")
        await conn.execute_script("PRAGMA foreign_keys=ON")


@pytest.mark.postgres_only
async def test_replicas_migrating_at_once(repo_root: Path) -> None:
    """Four `delidev-server migrate` processes on one empty database: all succeed."""
    name = await create_postgres_database()
    try:
        env = {
            "DATABASE_URL": postgres_url(name),
            "DELIDEV_SINGLE_USER_MODE": "true",
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(repo_root),
        }
        procs = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "delidev.cli",
                "migrate",
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            for _ in range(4)
        ]
        outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 120)
        for proc, (out, _) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, out.decode()
        settings = Settings(database_url=postgres_url(name))
        async with TortoiseContext() as ctx:
            await ctx.init(config=db.tortoise_config(settings))
            rows = await ctx.db().execute_query_dict(f"SELECT name FROM {RECORDER_TABLE}")
        files = sorted(p.stem for p in Path(db.__file__).parent.parent.glob("migrations/0*.py"))
        assert sorted(r["name"] for r in rows) == files  # each applied exactly once
    finally:
        await drop_postgres_database(name)
