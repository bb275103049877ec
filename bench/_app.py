"""The app under benchmark: the real DeliDev app plus one bare Starlette route (the baseline).

``make_app()`` is a uvicorn factory; ``bench_get.py`` serves it in its own process with

    python -m uvicorn --factory bench._app:make_app --host 127.0.0.1 --port N

Settings come from the environment like ``delidev-server`` (``DATABASE_URL``,
``DELIDEV_LOG_LEVEL``, ...), except that single-user mode is forced on: the bare route reads
as the local user, and the Connect and GraphQL calls must do the same (no token) for the
comparison to be fair.

``POST /bare/workspace`` takes ``{"workspaceId": "<uuid>"}`` and does what
``WorkspaceService.Get`` does minus the Connect runtime: parse the body, call
``services.workspaces.get_workspace`` (one SELECT), return the same fields as JSON. It is
appended to the app's own routes, so it goes through the same middleware stack and router
as ``/graphql`` does.

``POST /bare/workspace-raw`` is the same route with the read done by the database driver
itself (aiosqlite or asyncpg, on a connection of its own, opened on first use): the same
SELECT (every column, the workspace's id and the local user's rows), no ORM. It measures
what the ORM costs on top of the driver (issue 16: the bare route's server CPU per read at
most 2x this one's).

``POST /bare/claim`` and ``POST /bare/end`` (PostgreSQL only) are the claim cycle's floor
for ``bench_workers.py``: the raw loop's claim statement, and one ``UPDATE`` that ends the
claimed run, each sent by asyncpg from a bare Starlette route (a pool of their own, the
server's pool size), with JSON in and out. They are served in front of the app, past its
middleware stack: no authentication, lease, label, fairness, event, metric or access log.
What uvicorn, Starlette, two HTTP requests and two statements cost in this process, and
nothing of DeliDev's.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any
from uuid import UUID

import aiosqlite
import asyncpg
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from delidev import db
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.errors import NotFound
from delidev.services.workspaces import get_workspace
from delidev.settings import Settings

BARE_PATH = "/bare/workspace"
RAW_PATH = "/bare/workspace-raw"
# What ``get_workspace`` asks of the ORM for the local user (``owner_filter``): every column.
_RAW_SQLITE = "SELECT * FROM workspaces WHERE id = ? AND user_id IS NULL LIMIT 1"
_RAW_PG = "SELECT * FROM workspaces WHERE id = $1 AND user_id IS NULL LIMIT 1"


async def bare_workspace(request: Request) -> Response:
    """The same read as WorkspaceService.Get, with nothing but Starlette around it."""
    try:
        workspace_id = UUID(json.loads(await request.body())["workspaceId"])
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "bad request"}, status_code=400)
    try:
        ws = await get_workspace(actor=LOCAL_USER, workspace_id=workspace_id)
    except NotFound:
        return JSONResponse({"error": "not found"}, status_code=404)
    return JSONResponse(
        {
            "workspace": {
                "id": str(ws.id),
                "name": ws.name,
                "description": ws.description,
                "userId": None if ws.user_id is None else str(ws.user_id),
                "createdAt": ws.created_at.isoformat(),
                "updatedAt": ws.updated_at.isoformat(),
            }
        }
    )


def _stamp(value: Any) -> str:
    """A timestamp as the ORM returns it, ISO-formatted (SQLite stores text)."""
    when = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return when.isoformat()


class RawReader:
    """The bare route's read through the driver: one connection (SQLite) or a pool
    (PostgreSQL) of its own."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sqlite: aiosqlite.Connection | None = None
        self._pg: asyncpg.Pool | None = None

    async def workspace(self, workspace_id: UUID) -> dict[str, Any] | None:
        if self._settings.is_sqlite:
            if self._sqlite is None:
                self._sqlite = await aiosqlite.connect(db.sqlite_path(self._settings))
                self._sqlite.row_factory = aiosqlite.Row
            rows = list(await self._sqlite.execute_fetchall(_RAW_SQLITE, (str(workspace_id),)))
            return dict(rows[0]) if rows else None
        if self._pg is None:
            self._pg = await asyncpg.create_pool(db.asyncpg_dsn(self._settings), max_size=4)
        row = await self._pg.fetchrow(_RAW_PG, workspace_id)
        return None if row is None else dict(row)


def raw_route(reader: RawReader) -> Route:
    async def bare_workspace_raw(request: Request) -> Response:
        """The bare route with the driver's read instead of the ORM's."""
        try:
            workspace_id = UUID(json.loads(await request.body())["workspaceId"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "bad request"}, status_code=400)
        row = await reader.workspace(workspace_id)
        if row is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        user_id = row["user_id"]
        return JSONResponse(
            {
                "workspace": {
                    "id": str(row["id"]),
                    "name": row["name"],
                    "description": row["description"],
                    "userId": None if user_id is None else str(user_id),
                    "createdAt": _stamp(row["created_at"]),
                    "updatedAt": _stamp(row["updated_at"]),
                }
            }
        )

    return Route(RAW_PATH, bare_workspace_raw, methods=["POST"])


# The raw claim of ``bench_workers.py`` (which imports it from here), for one worker.
RAW_CLAIM = """
UPDATE agent_sessions SET status = 'running', worker_id = $1::uuid, lease_token = $2,
       started_at = now(), updated_at = now()
WHERE id = (
    SELECT s.id FROM agent_sessions s JOIN agent_tasks a ON a.id = s.agent_task_id
    WHERE s.status = 'queued' AND (NOT a.expects_secrets OR a.id::text = ANY($3::text[]))
    ORDER BY s.created_at, s.id LIMIT 1
    FOR UPDATE OF s SKIP LOCKED
)
RETURNING id
"""
RAW_END = """
UPDATE agent_sessions SET status = 'succeeded', completed_at = now(), updated_at = now()
WHERE id = $1 AND lease_token = $2 AND status = 'running'
RETURNING id
"""


def floor_routes(settings: Settings) -> list[Route]:
    """``/bare/claim`` and ``/bare/end``: the claim cycle with raw statements."""
    pool: list[asyncpg.Pool] = []

    async def connection_pool() -> asyncpg.Pool:
        if not pool:
            pool.append(
                await asyncpg.create_pool(
                    db.asyncpg_dsn(settings), min_size=1, max_size=settings.db_pool_size
                )
            )
        return pool[0]

    async def claim(request: Request) -> Response:
        token = os.urandom(16).hex()
        row = await (await connection_pool()).fetchrow(RAW_CLAIM, None, token, [])
        if row is None:
            return JSONResponse({"error": "no job"}, status_code=404)
        return JSONResponse({"sessionId": str(row["id"]), "leaseToken": token})

    async def end(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
            session_id, token = UUID(body["sessionId"]), str(body["leaseToken"])
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "bad request"}, status_code=400)
        row = await (await connection_pool()).fetchrow(RAW_END, session_id, token)
        if row is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return JSONResponse({})

    return [
        Route("/bare/claim", claim, methods=["POST"]),
        Route("/bare/end", end, methods=["POST"]),
    ]


def make_app() -> ASGIApp:
    settings = Settings.from_env({**os.environ, "DELIDEV_SINGLE_USER_MODE": "true"})
    app = create_app(settings)
    app.routes.append(Route(BARE_PATH, bare_workspace, methods=["POST"]))
    app.routes.append(raw_route(RawReader(settings)))
    if settings.is_sqlite:
        return app
    floor = Starlette(routes=floor_routes(settings))
    floor_paths = {route.path for route in floor.routes if isinstance(route, Route)}

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in floor_paths:
            await floor(scope, receive, send)
        else:
            await app(scope, receive, send)

    return serve
