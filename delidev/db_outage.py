"""When the database cannot be reached: what clients are told, what is logged, and what the
health sweep must not take for a lost worker.

A refused, reset or timed-out database connection, a PostgreSQL server shutting down or
refusing connections, and SQLite's "database is locked" are no bug of ours: both APIs answer
``unavailable`` ("try again shortly"), which clients and the reference worker retry, instead
of ``internal``. One line is logged per outage and then one every ``LOG_EVERY_S`` with the
number of calls refused meanwhile, without a traceback (a 15 s outage under load logged
13,612 lines and 206 tracebacks before). ``seen_since`` tells the health sweep when this
process last saw the database fail: heartbeats sent during an outage could not be stored,
so no worker is declared lost until the database has been reachable for a while.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import asyncpg
from tortoise.exceptions import DBConnectionError, OperationalError

from delidev import errors

log = logging.getLogger(__name__)
T = TypeVar("T")

LOG_EVERY_S = 10.0
MESSAGE = "the database is unavailable: try again shortly"

# A connection refused, reset or timed out (``OSError``), and asyncpg's errors that mean
# the connection, not the statement, failed: class 08 (connection exceptions), class 57
# (the server shutting down or not yet accepting, a statement cancelled by a timeout), too
# many connections, the connection closed under a statement.
_DOWN = (
    OSError,
    DBConnectionError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
)
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")


class _State:
    last_seen = float("-inf")  # time.monotonic() of the latest failure seen
    logged = float("-inf")
    refused = 0  # calls refused since the last line


def is_outage(error: BaseException) -> bool:
    """Whether ``error`` (or what caused it) says the database could not be reached or did
    not answer in time (a timeout is an ``OSError``)."""
    seen: BaseException | None = error
    for _ in range(8):  # the chain of causes is short; a cycle is not followed
        if seen is None:
            return False
        if isinstance(seen, _DOWN):
            return True
        if isinstance(seen, sqlite3.OperationalError | OperationalError) and (
            str(seen) in _SQLITE_BUSY
        ):
            return True
        # As a traceback would show it: ``raise … from None`` hides the context.
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return False


def refused(error: BaseException, where: str) -> errors.Unavailable:
    """Notes an outage seen while serving ``where`` (logged, without the driver's text, at
    most every ``LOG_EVERY_S``) and returns the error to answer."""
    now = time.monotonic()
    _State.last_seen = now
    _State.refused += 1
    if now - _State.logged >= LOG_EVERY_S:
        log.warning(
            "database unavailable (%s in %s): %d call(s) answered unavailable since the last"
            " such line",
            type(error).__name__,
            where,
            _State.refused,
        )
        _State.logged = now
        _State.refused = 0
    return errors.Unavailable(MESSAGE)


def note(error: BaseException) -> None:
    """Notes an outage that a background task met (it logs on its own)."""
    del error
    _State.last_seen = time.monotonic()


def forget() -> None:
    """Forgets every outage seen (for tests that make one in this process)."""
    _State.last_seen = _State.logged = float("-inf")
    _State.refused = 0


def seconds_since_last() -> float:
    """Seconds since this process last saw the database fail (infinity: never)."""
    return time.monotonic() - _State.last_seen


class Probe(Generic[T]):
    """Runs a database read for a probe (readiness, the metrics' gauges) and gives up on it
    after ``seconds`` without waiting for it to end: a statement cancelled while the database
    does not answer holds its caller until it does (20 s behind a black hole, whatever the
    timeout). One read at a time: a probe repeated meanwhile joins the pending one, so that
    they do not pile up."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._pending: asyncio.Future[T] | None = None

    async def run(self, read: Callable[[], Awaitable[T]]) -> T:
        """``read()``'s result. Raises: TimeoutError, or what ``read()`` raised."""
        pending = self._pending
        if pending is None or pending.done():
            pending = self._pending = asyncio.ensure_future(read())
            pending.add_done_callback(_retrieve)
        done, _ = await asyncio.wait({pending}, timeout=self.seconds)
        if not done:
            raise TimeoutError(f"no answer within {self.seconds} s")
        return pending.result()


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Marks a failure as seen (a probe that gave up no longer awaits it)."""
    if not future.cancelled():
        future.exception()


def log_failure(logger: logging.Logger, error: BaseException, message: str, *args: object) -> None:
    """Logs a background task's failure: with its traceback when it is a bug, as one warning
    line naming the kind of failure when the database was unavailable (noted too)."""
    if is_outage(error):
        note(error)
        logger.warning(message + " (the database is unavailable: %s)", *args, type(error).__name__)
    else:
        logger.error(message, *args, exc_info=error)
