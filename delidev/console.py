"""The web console (issue 13) at ``/``: the files its build (Preact + Vite) leaves in
``delidev/console_dist/``, an ``index.html`` and content-hashed files under ``assets/``.

Serving files is Starlette's: ``StaticFiles`` (ETag, Last-Modified, 304, HEAD, ranges, and
no path that leaves the directory), inside ``GZipMiddleware`` (the console's initial-load
budget is measured compressed). Written here: the headers (``ConsoleHeaders``: how long a
browser keeps each file, and the hardening headers on every console answer) and the routes,
one per top-level file of the build plus ``/assets/``, so that the console never shadows
another route and any other path stays 404. A server without a build serves no console.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

# A transport like metrics_http.py (HTTP answers, no business rule): Starlette is its to use.
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import PlainTextResponse
from starlette.routing import BaseRoute, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DEFAULT_DIR = Path(__file__).parent / "console_dist"
ASSETS_PREFIX = "/assets/"
"""Files whose names carry a hash of their content: a changed file has a new name."""

# The console's own files only: no inline script or style (Vite emits none), no frames.
# The console served here talks to this server only (connect-src: its origin and the same
# host's WebSockets): a link with ``?server=`` that points it at another server gets no
# request through, so it cannot hand that server a sign-in (the other server would pass
# the code on and keep the user's tokens). The same build on another host may still be
# pointed at a server with ``?server=`` (its host sets its own policy).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'{sockets}; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
# A Host header as a browser sends it (a name or an address, and a port): only such a host
# is written into the policy.
_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def content_security_policy(host: str | None) -> str:
    """The console's policy for a page requested with ``host``: 'self' also covers the same
    host's WebSockets in current browsers; they are named too, for older ones."""
    sockets = f" ws://{host} wss://{host}" if host and _HOST.fullmatch(host) else ""
    return CONTENT_SECURITY_POLICY.format(sockets=sockets)


SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"  # index.html names the current assets: always asked again (304)
_SERVED_STATUSES = frozenset({200, 206, 304})
# A top-level file gets a route of its own, so its name must be a plain route path.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class ConsoleHeaders:
    """Adds the console's headers to each answer of ``app`` (a ``StaticFiles``), its 404s
    included: those are raised as ``HTTPException`` and answered here, not by the app's
    exception handler, which would send them without these headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        asset = scope["path"].startswith(ASSETS_PREFIX)
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
        policy = content_security_policy(host).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                kept = asset and message["status"] in _SERVED_STATUSES
                headers["cache-control"] = IMMUTABLE if kept else REVALIDATE
                headers.raw.append((b"content-security-policy", policy))
                for name, value in SECURITY_HEADERS:
                    headers.raw.append((name, value))
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as exc:  # as Starlette's default handler answers it
            response = PlainTextResponse(exc.detail, exc.status_code, headers=exc.headers)
            await response(scope, receive, send_with_headers)


def console_routes(directory: Path) -> list[BaseRoute]:
    """The console's routes: ``/`` (``index.html``), each other top-level file of the build,
    and ``/assets/...``; none when ``directory`` holds no build (logged once)."""
    if not (directory / "index.html").is_file():
        log.info("web console not served: no build in %s (index.html is missing)", directory)
        return []
    # html: "/" (the directory) is answered with its index.html.
    app = GZipMiddleware(ConsoleHeaders(StaticFiles(directory=directory, html=True)))
    files = sorted(
        p.name for p in directory.iterdir() if p.is_file() and _PLAIN_NAME.fullmatch(p.name)
    )
    return [
        Route("/", app, methods=["GET"]),  # HEAD comes with GET
        *(Route(f"/{name}", app, methods=["GET"]) for name in files),
        Route(ASSETS_PREFIX + "{path:path}", app, methods=["GET"]),
    ]
