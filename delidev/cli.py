"""``delidev-server``: run the server, or manage the database schema."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import socket
import sys

from delidev import logs
from delidev.settings import Settings, SettingsError


def configure_logging(level: str, max_value_chars: int, log_format: str = "text") -> None:
    # One line per record whatever a request sent: values escaped and bounded (logs.py), as
    # text or as JSON; records written during a request carry its id (request_context.py).
    logs.install(level=level, max_value_chars=max_value_chars, log_format=log_format)
    # The database layers log every SQL statement with its values at DEBUG (a TTY password
    # answer, a user's email): keep them out of the log whatever the level.
    floor = max(logging.INFO, logging.getLogger().level)
    for name in ("tortoise", "aiosqlite", "asyncpg"):
        logging.getLogger(name).setLevel(floor)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="delidev-server", description="DeliDev Main Server. Configured by DELIDEV_* variables."
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="run the server (the default)")
    sub.add_parser("migrate", help="apply pending database migrations and exit")
    mk = sub.add_parser("makemigrations", help="(development) write a migration for model changes")
    mk.add_argument("--name", help="migration name, e.g. 0002_add_column")
    sub.add_parser("check-migrations", help="exit 1 if the models have unmigrated changes")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"delidev-server: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_max_value_chars, settings.log_format)

    command = args.command or "serve"
    if command == "serve":
        return _serve(settings)
    if command == "migrate":
        asyncio.run(_migrate(settings))
        return 0
    if command == "makemigrations":
        return asyncio.run(_makemigrations(settings, args.name))
    return asyncio.run(_check_migrations(settings))


# What a graphql-ws message adds around a request body ({"id": …, "type": "subscribe",
# "payload": …}): a subscription as large as the largest HTTP request still fits.
WS_ENVELOPE_BYTES = 4096


def _serve(settings: Settings) -> int:
    import uvicorn

    from delidev.app import create_app
    from delidev.header_timeout import with_header_timeout
    from delidev.websocket_deflate import protocol_class

    app = create_app(settings)

    class Server(uvicorn.Server):
        """Tells the app that shutdown began before uvicorn waits for open connections, so
        long-lived streams (a worker's Watch) end instead of holding the shutdown."""

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.state.begin_shutdown()
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app,
        http=with_header_timeout(
            settings.header_timeout_ms / 1000, settings.body_timeout_ms / 1000
        ),
        ws=protocol_class(settings.ws_deflate_bypass),
        # A WebSocket message is inflated and read whole before the app sees it: as large as
        # a GraphQL request body may be (and its message envelope), not uvicorn's 16 MiB
        # (close code 1009 past it).
        ws_max_size=settings.graphql_max_body_bytes + WS_ENVELOPE_BYTES,
        host=settings.server_host,
        port=settings.server_port,
        log_level=settings.log_level,
        log_config=None,
        # The app writes one access line per request (delidev/request_context.py), without
        # the query string; uvicorn's would add a second, query (and any token in it) included.
        access_log=False,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    server = Server(config)
    # As uvicorn.run: the Ctrl-C / SIGINT that ended a graceful shutdown is re-raised by
    # uvicorn as KeyboardInterrupt once it is done, and a server that could not start exits 3.
    # uvicorn re-raises a SIGTERM too, with the handler found before it started: a no-op one,
    # so that a clean stop exits 0 rather than being killed by the default action.
    signal.signal(signal.SIGTERM, lambda *_: None)
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    return 0 if server.started else 3


async def _migrate(settings: Settings) -> None:
    from delidev import db

    ctx = await db.open_database(settings, migrate=True)
    await db.close_database(ctx)


async def _makemigrations(settings: Settings, name: str | None) -> int:
    from delidev import db

    ctx = await db.open_database(settings, migrate=True)
    try:
        writers = await db.pending_model_changes(ctx, settings)
        for writer in writers:
            if name:
                writer.name = name
            print(f"wrote {writer.write()}")
        if not writers:
            print("no model changes")
    finally:
        await db.close_database(ctx)
    return 0


async def _check_migrations(settings: Settings) -> int:
    from delidev import db

    ctx = await db.open_database(settings, migrate=True)
    try:
        writers = await db.pending_model_changes(ctx, settings)
    finally:
        await db.close_database(ctx)
    if writers:
        print("models have changes without a migration: run `delidev-server makemigrations`")
        return 1
    print("migrations match the models")
    return 0


if __name__ == "__main__":
    sys.exit(main())
