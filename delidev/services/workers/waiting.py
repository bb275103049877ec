"""Waiting in a worker call: the bound on ``wait_ms``, and the signal that wakes GetTask.

GetTask and WaitTtyInput may hold a call open until something happens; both accept the
same ``wait`` and bound it the same way here.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

from delidev import events
from delidev.errors import InvalidArgument

MAX_WAIT_MS = 30_000


def wait_deadline(wait: dt.timedelta) -> float:
    """The event-loop time at which a call that may wait ``wait`` gives up (``wait`` bounded
    by ``MAX_WAIT_MS``).

    Raises: InvalidArgument (a negative wait).
    """
    if wait < dt.timedelta(0):
        raise InvalidArgument("wait_ms must not be negative", field="wait_ms")
    loop = asyncio.get_running_loop()
    return loop.time() + min(wait.total_seconds(), MAX_WAIT_MS / 1000)


class JobSignal:
    """Wakes workers waiting in GetTask when a job may have appeared.

    It listens to the event bus (``JobQueued``, ``SecretsArrived``). A waiter takes the
    current generation *before* it looks at the database, so a job queued between its look
    and its wait still wakes it. Woken waiters re-check the database: a spurious wake-up
    costs one query, a missed one (another process queued the job) costs at most
    ``claims.RECHECK_S``.
    """

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.JobQueued | events.SecretsArrived | events.Resync):
            self.notify()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    def generation(self) -> asyncio.Event:
        return self._event

    @staticmethod
    async def wait(generation: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(generation.wait(), seconds)
