"""Background work of one server process: the periodic sweep.

Every replica runs it; each step is safe to run concurrently (compare-and-set updates).
The time is passed in, so tests sweep "an hour later" by handing a clock value instead of
sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging

from delidev import events
from delidev.services import auth as auth_service
from delidev.services import secrets, sessions, workers
from delidev.services.secrets import SecretStore

log = logging.getLogger(__name__)


class Sweeper:
    """Marks silent workers unhealthy (their jobs go back to the queue), times out unanswered
    questions, prunes secrets and drops expired sign-in rows, every heartbeat interval."""

    def __init__(
        self, *, bus: events.EventBus, store: SecretStore, heartbeat_interval: dt.timedelta
    ) -> None:
        self._bus = bus
        self._store = store
        self.interval = heartbeat_interval

    async def sweep(self, now: dt.datetime | None = None) -> None:
        """One pass, as of ``now`` (default: the current time)."""
        now = now or dt.datetime.now(dt.UTC)
        await workers.sweep_workers(heartbeat_interval=self.interval, now=now)
        await sessions.expire_tty_requests(now)
        await secrets.prune_secrets(self._store)
        await auth_service.purge_expired(now=now)

    async def run_forever(self) -> None:
        events.bind(self._bus)
        while True:
            await asyncio.sleep(self.interval.total_seconds())
            try:
                await self.sweep()
            except Exception:
                log.exception("background sweep failed; retrying at the next interval")
