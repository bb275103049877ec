"""The PostgreSQL event listener: how fast it is back after its connection is killed."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from delidev import db, events
from delidev.settings import Settings

pytestmark = pytest.mark.postgres_only


async def _kill_listeners(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        killed: int = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()",
            events.LISTENER_NAME,
        )
    finally:
        await conn.close()
    return killed


async def test_a_killed_listener_reconnects_at_once(settings: Settings) -> None:
    """Regression: the listener noticed its connection had ended only at its next 1-second
    probe, so each outage (events lost) lasted about 1.1 s. Now the end of the connection
    wakes it, and it listens again (then tells its watchers to resync) at once."""
    dsn = db.asyncpg_dsn(settings)
    bus = events.PostgresEventBus(dsn)
    await bus.start()
    try:
        assert bus.listening.is_set()
        outages = []
        for _ in range(3):
            watch = bus.watch(("session", "s"))
            await asyncio.sleep(0.3)  # mid-way between probes, as an outage would come
            started = time.monotonic()
            assert await _kill_listeners(dsn) == 1
            assert await watch.wait(5)
            outages.append(time.monotonic() - started)
            assert watch.drain() == [events.Resync()]
            assert bus.listening.is_set()
            watch.close()
        assert bus.reconnects == 3
        assert max(outages) < 0.5, outages
    finally:
        await bus.stop()
