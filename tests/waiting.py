"""Waiting on a condition instead of sleeping a fixed time: the one polling helper, in
three shapes (a plain check, an awaited probe, blocking code)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

GUARD_S = 10.0
"""How long a condition may take on a busy machine before the test fails (a hang guard,
never a performance claim)."""


async def until(check: Callable[[], object], within: float = GUARD_S, what: str = "") -> None:
    """Returns as soon as ``check()`` is true; fails the test after ``within`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, f"{what or 'condition'} not reached in {within} s"
        await asyncio.sleep(0.01)


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], object],
    *,
    within: float = 30,
    every: float = 0.1,
) -> T:
    """Awaits ``probe()`` every ``every`` s until ``check`` holds for its value, and returns
    that value; fails with the last value after ``within`` s (for probes that cost a request
    or a query, hence the longer default interval)."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {within} s; last value: {value!r}")
        await asyncio.sleep(every)


def blocking_until(
    check: Callable[[], object], within: float = GUARD_S, what: str = "", every: float = 0.1
) -> None:
    """``until`` for code that runs outside an event loop (sync fixtures, threads)."""
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"{what or 'condition'} not reached in {within} s"
        time.sleep(every)
