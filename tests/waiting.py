"""Waiting on a condition instead of sleeping a fixed time: the one polling helper."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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
