"""``create_app(settings)``: one Starlette app with the Connect services, GraphQL and health."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import gc
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from strawberry.http.websocket_origin import normalize_origin
from tortoise.context import TortoiseContext

from delidev import console, db, db_outage, events, metrics, request_context, tracing
from delidev.auth.authenticator import Authenticator
from delidev.auth.principal import Principal
from delidev.background import Sweeper, WaitReconciler
from delidev.connect.rate_limits import REGISTER_PATHS, SIGN_IN_PATHS, AddressRateLimit
from delidev.connect.routes import ConnectDispatch
from delidev.graphql.app import DeliDevGraphQL
from delidev.graphql.limits import BodySizeLimit
from delidev.metrics_http import RequestTiming, metrics_endpoint
from delidev.request_context import RequestContext
from delidev.services import auth as auth_service
from delidev.services.live import LogFeeds
from delidev.services.scheduling.policy import RetryPolicy
from delidev.services.secret_relay import SecretRelay, relay_key
from delidev.services.secrets import SecretLimits, SecretStore
from delidev.services.workers import JobSignal
from delidev.settings import Settings
from delidev.webhooks_http import webhook_routes

log = logging.getLogger(__name__)
_frozen = False


def _freeze_startup_objects() -> None:
    """Once per process (tests start many apps in one): what exists now is left out of the
    collector's full collections (``gc.freeze``)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()


READY_TIMEOUT_S = 2.0
PROBE_PATHS = frozenset({"/healthz", "/readyz"})
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
"""Names every server answers to, whatever DELIDEV_ALLOWED_HOSTS says."""
_ANY_ADDRESS = ("", "0.0.0.0", "::")  # wildcard addresses: they name no host
# Browsers may send these on a cross-origin call (Connect, gRPC-Web, GraphQL) and read
# those: the lists connect-es documents, plus authorization for our bearer tokens.
CORS_ALLOW_HEADERS = (
    "authorization",
    "content-type",
    "connect-protocol-version",
    "connect-timeout-ms",
    "connect-accept-encoding",
    "connect-content-encoding",
    "grpc-timeout",
    "x-grpc-web",
    "x-user-agent",
)
CORS_EXPOSE_HEADERS = (
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "connect-content-encoding",
    "content-encoding",
)
CORS_MAX_AGE_S = 7200  # the most Chromium caches a preflight for


class ClientLeft:
    """A request whose client went away before its body was whole (or whose body stopped
    arriving: ``header_timeout``) ends here: Starlette's readers raise ``ClientDisconnect``,
    which is nobody's error and has nobody to answer. Logged as 499, without a traceback."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except ClientDisconnect:
            info = request_context.current()
            if info is not None and info.status is None:
                info.status = request_context.CLIENT_CLOSED


class BindEvents:
    """Binds the app's event bus for each request, so services publish into it."""

    def __init__(self, app: ASGIApp, bus: events.EventBus) -> None:
        self.app = app
        self._bus = bus

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        events.bind(self._bus)
        await self.app(scope, receive, send)


class HostCheck:
    """Starlette's ``TrustedHostMiddleware`` for everything but the health probes, which
    orchestrators send to a pod's address and which tell a rebound page nothing.

    A ``Host`` that names one of the exact names allowed passes on a byte comparison: the
    middleware's parsing costs as much as a third of a small Connect call. Anything else
    (wildcards, odd forms, foreign names) is the middleware's to judge.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self._app = app
        self._checked = TrustedHostMiddleware(app, allowed_hosts=allowed_hosts)
        self._any = "*" in allowed_hosts
        self._exact = frozenset(h.lower().encode() for h in allowed_hosts if "*" not in h)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self._app(scope, receive, send)
            return
        probe = scope["type"] == "http" and scope["path"] in PROBE_PATHS
        if self._any or probe or self._exactly_allowed(scope):
            await self._app(scope, receive, send)
        else:
            await self._checked(scope, receive, send)

    def _exactly_allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
                colon = value.rfind(b":")
                if colon > value.rfind(b"]"):  # a port follows (not a colon of IPv6)
                    host, port = value[:colon], value[colon + 1 :]
                    if not port.isdigit():
                        return False
                return host.lower() in self._exact
        return False


class BrowserAccess:
    """Starlette's ``CORSMiddleware`` for requests a browser may have sent cross-origin:
    those with an ``Origin`` header, and every GET (a cache must see ``Vary: Origin`` on
    GraphQL GET answers). A POST without ``Origin`` is no browser's cross-origin call and
    its answer is not cached: it skips the middleware, which would cost a quarter of a
    small Connect call."""

    def __init__(self, app: ASGIApp, allow_origins: list[str]) -> None:
        self._app = app
        self._cors = CORSMiddleware(
            app,
            allow_origins=allow_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=list(CORS_ALLOW_HEADERS),
            expose_headers=list(CORS_EXPOSE_HEADERS),
            max_age=CORS_MAX_AGE_S,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            scope["method"] != "POST" or any(n == b"origin" for n, _ in scope["headers"])
        ):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def allowed_hosts(settings: Settings) -> list[str]:
    """``Host`` names served: loopback, ``server_host`` unless it is a wildcard address, and
    DELIDEV_ALLOWED_HOSTS. Any other name is refused (400), so that a page on a rebound DNS
    name cannot reach a single-user server, which has no sign-in.

    In multi-user mode without DELIDEV_ALLOWED_HOSTS every name is served: each call there
    carries a bearer token, which a page on another site does not have (nothing rides on
    cookies), and such a server usually sits behind a proxy under a name of its own."""
    if not settings.single_user_mode and not settings.allowed_hosts:
        return ["*"]
    hosts = [*LOOPBACK_HOSTS, *settings.allowed_hosts]
    if settings.server_host not in _ANY_ADDRESS:
        host = settings.server_host
        hosts.append(f"[{host}]" if ":" in host else host)
    return hosts


def cors_origins(settings: Settings) -> list[str]:
    """DELIDEV_CORS_ORIGINS in the form browsers send (the WebSocket origin check compares
    the same form)."""
    return [o if o == "*" else (normalize_origin(o) or o) for o in settings.cors_origins]


def create_app(settings: Settings, traced: tracing.Tracing | None = None) -> Starlette:
    """The app; ``traced`` (default: as the ``OTEL_*`` variables say) is its tracing."""
    settings.validate()
    traced = traced or tracing.from_environ(os.environ)
    provider = traced.provider if traced else None

    async def verify(token: str) -> Principal:
        return await auth_service.authenticate(settings=settings, token=token)

    authenticator = Authenticator(settings, verify)
    bus = (
        events.PostgresEventBus(db.asyncpg_dsn(settings))
        if settings.is_postgres
        else events.EventBus()
    )
    signal = JobSignal()
    bus.subscribe(signal.on_event)
    # Set when the server begins to shut down (delidev.cli): long-lived streams end then,
    # so a graceful shutdown does not wait for them.
    closing = asyncio.Event()
    store = SecretStore(
        limits=SecretLimits(
            keys_per_task=settings.secrets_max_keys,
            bytes_per_task=settings.secrets_max_task_bytes,
            bytes_per_user=settings.secrets_max_user_bytes,
        )
    )
    # Replicas share secrets through the bus, sealed with a key from the JWT secret.
    relay = (
        SecretRelay(
            store,
            bus,
            relay_key(settings.jwt_secret),
            max_age=settings.secrets_relay_max_age_ms / 1000,
        )
        if bus.remote and settings.jwt_secret
        else None
    )
    feeds = LogFeeds(bus)
    state: dict[str, TortoiseContext] = {}

    sweeper = Sweeper(
        bus=bus,
        store=store,
        heartbeat_interval=dt.timedelta(milliseconds=settings.heartbeat_interval_ms),
        stop_grace=dt.timedelta(seconds=settings.stop_grace_seconds),
        policy=RetryPolicy.from_settings(settings),
        forget_after=(
            dt.timedelta(seconds=settings.worker_forget_after_s)
            if settings.worker_forget_after_s
            else None
        ),
        tracer=traced.tracer(__name__) if traced else None,
    )
    reconciler = WaitReconciler(
        bus=bus, store=store, tracer=traced.tracer(__name__) if traced else None
    )

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        log.debug("configuration: %r", settings)
        state["db"] = await db.open_database(settings)
        if traced is not None:  # after the migrations: their statements are no request's
            traced.trace_database(postgres=settings.is_postgres)
        await bus.start()
        if relay is not None:
            relay.request_sync()  # secrets the other replicas received before this one started
        elif bus.remote:
            log.warning(
                "DELIDEV_JWT_SECRET is not set: secrets sent to this server process are not"
                " relayed to other replicas; run one process or set it on every replica"
            )
        if (
            settings.single_user_mode
            and settings.server_host in _ANY_ADDRESS
            and not settings.allowed_hosts
        ):
            log.warning(
                "listening on every address, but DELIDEV_ALLOWED_HOSTS is empty: only"
                " requests addressed to %s are answered",
                ", ".join(LOOPBACK_HOSTS),
            )
        # Everything built so far (modules, the GraphQL schema, the ORM's models, settings)
        # lives as long as the process: frozen out of the collector's reach, a full
        # collection no longer walks it. Before, each one took 40-80 ms of a busy server's
        # event loop and freed nothing (the heartbeat p99 of bench/bench_fleet.py at 2,000
        # workers: 112 ms, 9.5 ms after).
        _freeze_startup_objects()
        sweeping = asyncio.create_task(sweeper.run_forever(), name="delidev-sweep")
        reconciling = asyncio.create_task(reconciler.run_forever(), name="delidev-waits")
        log.info(
            "DeliDev server ready (%s mode, %s)",
            "single-user" if settings.single_user_mode else "multi-user",
            "SQLite" if settings.is_sqlite else "PostgreSQL",
        )
        try:
            yield
        finally:
            for background in (sweeping, reconciling):
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
            await bus.stop()
            await db.close_database(state.pop("db"))
            metrics.process_exiting()
            if traced is not None:
                await asyncio.to_thread(traced.shutdown)  # flushes the spans still held
            log.info("DeliDev server stopped")

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    ready_probe: db_outage.Probe[object] = db_outage.Probe(READY_TIMEOUT_S)

    async def readyz(_: Request) -> Response:
        ctx = state.get("db")
        if ctx is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        try:
            await ready_probe.run(lambda: ctx.db().execute_query("SELECT 1"))
        except Exception as error:
            # The driver's text may name the host: only the kind of failure is logged.
            log.warning("readiness check failed: database unreachable (%s)", type(error).__name__)
            return JSONResponse({"status": "database unreachable"}, status_code=503)
        return JSONResponse({"status": "ready"})

    graphql = DeliDevGraphQL(
        settings, authenticator, bus=bus, feeds=feeds, tracer_provider=provider
    )
    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route(
            "/graphql",
            BodySizeLimit(graphql, max_bytes=settings.graphql_max_body_bytes),
            methods=["GET", "POST"],
        ),
        WebSocketRoute("/graphql", graphql),
        # No user authentication: each delivery is signed with its repository's secret.
        *webhook_routes(settings),
    ]
    if settings.metrics:
        routes.append(Route("/metrics", metrics_endpoint(settings), methods=["GET"]))
    # Last: its routes name the build's own files only, and never shadow the ones above.
    served = (
        console.console_routes(settings.console_dir or console.DEFAULT_DIR)
        if settings.console
        else []
    )
    routes += served
    timing: list[Middleware] = []
    if settings.metrics:
        paths = [r.path for r in routes if isinstance(r, Route)]
        prefixes = [console.ASSETS_PREFIX] if served else []
        timing.append(Middleware(RequestTiming, paths=paths, prefixes=prefixes))
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(RequestContext),
            Middleware(ClientLeft),
            *([Middleware(traced.middleware)] if traced else []),
            *timing,
            Middleware(HostCheck, allowed_hosts=allowed_hosts(settings)),
            Middleware(BrowserAccess, allow_origins=cors_origins(settings)),
            Middleware(BindEvents, bus=bus),
            Middleware(
                AddressRateLimit,
                paths=SIGN_IN_PATHS,
                what="sign-in calls",
                setting="DELIDEV_SIGN_IN_PER_MINUTE",
                per_minute=settings.sign_in_per_minute,
                burst=settings.sign_in_burst,
            ),
            Middleware(
                AddressRateLimit,
                paths=REGISTER_PATHS,
                what="worker registrations",
                setting="DELIDEV_WORKER_REGISTER_PER_MINUTE",
                per_minute=settings.worker_register_per_minute,
                burst=settings.worker_register_burst,
            ),
            Middleware(
                ConnectDispatch,
                authenticator=authenticator,
                settings=settings,
                signal=signal,
                store=store,
                feeds=feeds,
                closing=closing,
                tracer_provider=provider,
            ),
        ],
    )
    # For in-process callers of the services (tests, tools): publish into this app's bus.
    app.state.events = bus
    app.state.sweeper = sweeper
    app.state.reconciler = reconciler
    app.state.secrets = store
    app.state.closing = closing

    def begin_shutdown() -> None:
        """Called as the server stops accepting (``delidev.cli``), before it waits for open
        requests: waiting long polls answer at once (no job), Watch streams end, and live
        log followers end with ``unavailable`` at their offset, to resume elsewhere."""
        closing.set()
        signal.notify()
        feeds.close()

    app.state.begin_shutdown = begin_shutdown
    return app


def from_env() -> Starlette:
    """A uvicorn factory for several worker processes in one server:
    ``uvicorn --factory delidev.app:from_env --workers N`` (settings from the environment,
    as ``delidev-server``; set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory so that
    ``/metrics`` sums the processes)."""
    from delidev.cli import configure_logging  # the CLI's set-up, for a server it did not start

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_max_value_chars, settings.log_format)
    return create_app(settings)
