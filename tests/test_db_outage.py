"""What counts as the database being unavailable, and the probe that does not wait for a
database that does not answer (``delidev/db_outage.py``). Through real servers:
``tests/e2e/test_database_outage.py``."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time

import asyncpg
import pytest
from tortoise.exceptions import DBConnectionError, IntegrityError, OperationalError

from delidev import db_outage


def _caused(outer: BaseException, cause: BaseException) -> BaseException:
    outer.__cause__ = cause
    return outer


@pytest.mark.parametrize(
    ("error", "outage"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (DBConnectionError("no connection"), True),
        (asyncpg.exceptions.AdminShutdownError("terminating connection"), True),
        (asyncpg.exceptions.CannotConnectNowError("starting up"), True),
        (asyncpg.exceptions.TooManyConnectionsError("too many"), True),
        (asyncpg.exceptions.ConnectionDoesNotExistError("closed"), True),
        (OperationalError("database is locked"), True),
        (sqlite3.OperationalError("database is locked"), True),
        (_caused(OperationalError("x"), ConnectionResetError()), True),
        (_caused(RuntimeError("wrapped"), _caused(ValueError(), TimeoutError())), True),
        (OperationalError("no such table: tasks"), False),
        (IntegrityError("duplicate key"), False),
        (asyncpg.exceptions.UndefinedTableError("no table"), False),
        (ValueError("bad"), False),
        (RuntimeError(), False),
    ],
)
def test_what_is_an_outage(error: BaseException, outage: bool) -> None:
    assert db_outage.is_outage(error) is outage


def test_a_cycle_of_causes_ends() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not db_outage.is_outage(a)


async def test_a_probe_gives_up_at_once_and_repeated_probes_share_the_pending_read() -> None:
    started = 0
    release = asyncio.Event()

    async def hangs() -> str:
        nonlocal started
        started += 1
        await release.wait()
        return "answered"

    probe: db_outage.Probe[str] = db_outage.Probe(0.05)
    for _ in range(5):
        began = time.monotonic()
        with pytest.raises(TimeoutError):
            await probe.run(hangs)
        assert time.monotonic() - began < 1
    assert started == 1  # one read pending, not five
    release.set()
    assert await probe.run(hangs) == "answered"  # the pending read's answer
    assert await probe.run(hangs) == "answered"
    assert started == 2  # a new read once the last one ended


async def test_a_failed_read_is_raised_and_the_next_probe_reads_again() -> None:
    calls = 0

    async def fails() -> str:
        nonlocal calls
        calls += 1
        raise ConnectionRefusedError(111, "refused")

    probe: db_outage.Probe[str] = db_outage.Probe(1)
    for _ in range(2):
        with pytest.raises(ConnectionRefusedError):
            await probe.run(fails)
    assert calls == 2


def test_outages_are_logged_once_per_period(caplog: pytest.LogCaptureFixture) -> None:
    db_outage.forget()
    try:
        with caplog.at_level("WARNING", logger="delidev.db_outage"):
            for _ in range(50):
                refused = db_outage.refused(ConnectionResetError(), "TaskService/List")
        assert refused.message == db_outage.MESSAGE
        assert len(caplog.records) == 1
        assert "Traceback" not in caplog.text
        assert db_outage.seconds_since_last() < 5
    finally:
        db_outage.forget()
    assert db_outage.seconds_since_last() == float("inf")


def test_background_failures_log_a_traceback_only_for_bugs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("delidev.test_background")
    db_outage.forget()
    try:
        with caplog.at_level("WARNING", logger="delidev.test_background"):
            db_outage.log_failure(logger, ConnectionResetError(104, "reset"), "pass %s", "one")
            db_outage.log_failure(logger, KeyError("bug"), "pass %s", "two")
        outage, bug = caplog.records
        assert outage.levelname == "WARNING"
        assert outage.exc_info is None
        assert outage.getMessage() == (
            "pass one (the database is unavailable: ConnectionResetError)"
        )
        assert bug.levelname == "ERROR"
        assert bug.exc_info is not None
        assert db_outage.seconds_since_last() < 5  # the sweep hears of it
    finally:
        db_outage.forget()


def test_a_context_hidden_by_raise_from_none_is_not_followed() -> None:
    def bug() -> None:
        try:
            raise ConnectionResetError(104, "reset")
        except OSError:
            raise KeyError("a bug of ours, raised from None") from None

    with pytest.raises(KeyError) as raised:
        bug()
    assert raised.value.__context__ is not None  # there, but hidden
    assert not db_outage.is_outage(raised.value)
