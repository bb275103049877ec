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
"""

from __future__ import annotations

import json
import os
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.errors import NotFound
from delidev.services.workspaces import get_workspace
from delidev.settings import Settings

BARE_PATH = "/bare/workspace"


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


def make_app() -> Starlette:
    settings = Settings.from_env({**os.environ, "DELIDEV_SINGLE_USER_MODE": "true"})
    app = create_app(settings)
    app.routes.append(Route(BARE_PATH, bare_workspace, methods=["POST"]))
    return app
