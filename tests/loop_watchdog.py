"""Event-loop watchdog: reports any callback that holds the event loop for more than 50 ms.

Every asyncio callback (a task step, a timer, a ``call_soon``) runs through
``asyncio.Handle._run``; while the watchdog is armed that method is wrapped to measure the
CPU time of the loop's thread spent in each callback. Thread CPU time, not the wall clock:
a callback is not blamed for the machine being busy (CI shares two cores), and time spent in
the garbage collector (``gc.callbacks``) is taken out, so a collection that happens to start
inside a callback does not count either. What is left is work the callback did on the loop:
exactly what stalls every other request. A callback waiting on a blocking call (a sleep,
blocking I/O) uses no CPU, so its wall-clock stall is recorded as well and reported, but only
CPU time fails a test (wall time on a shared machine is noise).

Hand-written because asyncio's debug mode (``slow_callback_duration``) measures wall time
and slows every callback down (it records a stack at each ``call_soon``).

Use it:
- ``@pytest.mark.loop_watchdog`` on a test (or module): the test fails if any callback run
  while its body ran held the loop for more than the limit;
- the ``loop_watchdog`` fixture: ``with loop_watchdog.armed(): ...`` around the calls to
  watch, then ``loop_watchdog.take()`` for the stalls seen (the fuzz suite does this per input).
The session summary lists every stall seen by either.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

LIMIT_S = 0.050


@dataclass(frozen=True)
class Stall:
    callback: str
    cpu_s: float
    wall_s: float
    context: str = ""

    def __str__(self) -> str:
        where = f" during {self.context}" if self.context else ""
        return (
            f"{self.callback} held the event loop for {self.cpu_s * 1000:.0f} ms of CPU "
            f"({self.wall_s * 1000:.0f} ms wall){where}"
        )


@dataclass
class Watchdog:
    limit_s: float = LIMIT_S
    stalls: list[Stall] = field(default_factory=list)
    """Callbacks over the limit in CPU time since the last ``take``."""
    slow_wall: list[Stall] = field(default_factory=list)
    """Callbacks over the limit in wall time only (reported, never failed on)."""
    history: list[Stall] = field(default_factory=list)
    context: str = ""
    callbacks: int = 0
    _depth: int = 0
    _arms: int = 0
    _last_context: str = ""
    _gc_cpu: float = 0.0
    _gc_started: float | None = None
    _thread: int | None = None
    _original: Callable[[asyncio.Handle], None] | None = None

    @contextlib.contextmanager
    def armed(self, context: str = "") -> Iterator[Watchdog]:
        """Records every callback over the limit that the loop of the calling thread runs
        while the block is open, even in part (the callback running now counts from its
        start)."""
        self.install()
        previous = self.context
        self.context = context
        self._last_context = context
        self._depth += 1
        self._arms += 1
        try:
            yield self
        finally:
            self._depth -= 1
            self.context = previous

    def take(self) -> list[Stall]:
        """The stalls recorded since the last call (CPU time over the limit)."""
        taken, self.stalls = self.stalls, []
        return taken

    def install(self) -> None:
        """Wraps ``asyncio.Handle._run`` (once, until ``uninstall``). It stays installed
        between armed blocks: a callback that starts before a block and runs the whole
        request inside it (an in-process ASGI call that never waits) must be measured."""
        if self._original is not None:
            return
        self._thread = threading.get_ident()
        self._original = asyncio.Handle._run
        original = self._original
        watchdog = self

        def timed_run(handle: asyncio.Handle) -> None:
            if threading.get_ident() != watchdog._thread:
                original(handle)
                return
            armed = watchdog._depth > 0
            arms = watchdog._arms
            gc_before = watchdog._gc_cpu
            cpu = time.thread_time()
            wall = time.perf_counter()
            try:
                original(handle)
            finally:
                if armed or watchdog._depth > 0 or watchdog._arms != arms:
                    cpu_s = time.thread_time() - cpu - (watchdog._gc_cpu - gc_before)
                    wall_s = time.perf_counter() - wall
                    watchdog.callbacks += 1
                    if wall_s > watchdog.limit_s:
                        watchdog._record(handle, cpu_s, wall_s)

        asyncio.Handle._run = timed_run  # type: ignore[method-assign,assignment]  # the point
        gc.callbacks.append(self._on_gc)

    def uninstall(self) -> None:
        if self._original is not None:
            asyncio.Handle._run = self._original  # type: ignore[method-assign,assignment]
            self._original = None
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._gc_started = time.thread_time()
        elif self._gc_started is not None:
            self._gc_cpu += time.thread_time() - self._gc_started
            self._gc_started = None

    def _record(self, handle: asyncio.Handle, cpu_s: float, wall_s: float) -> None:
        stall = Stall(_describe(handle), cpu_s, wall_s, self.context or self._last_context)
        if cpu_s > self.limit_s:
            self.stalls.append(stall)
            self.history.append(stall)
        else:
            self.slow_wall.append(stall)


def _describe(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        return repr(owner)[:300]  # names the coroutine and the line it is at
    return repr(handle)[:300]


WATCHDOG = Watchdog()


@pytest.fixture
def loop_watchdog() -> Watchdog:
    """The session's watchdog; arm it with ``loop_watchdog.armed()`` around the calls to watch."""
    WATCHDOG.take()
    return WATCHDOG


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    if item.get_closest_marker("loop_watchdog") is None:
        return (yield)
    WATCHDOG.take()
    with WATCHDOG.armed(item.nodeid):
        result = yield
    stalls = WATCHDOG.take()
    if stalls:
        pytest.fail(
            "event loop held for more than "
            f"{WATCHDOG.limit_s * 1000:.0f} ms:\n" + "\n".join(f"- {s}" for s in stalls),
            pytrace=False,
        )
    return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "loop_watchdog: fail the test if a callback holds the event loop for more than 50 ms "
        "of CPU (tests/loop_watchdog.py)",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    WATCHDOG.uninstall()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not (WATCHDOG.history or WATCHDOG.slow_wall):
        return
    terminalreporter.section("event-loop watchdog")
    for stall in WATCHDOG.history:
        terminalreporter.write_line(f"STALL {stall}")
    if WATCHDOG.slow_wall:
        worst = sorted(WATCHDOG.slow_wall, key=lambda s: s.wall_s, reverse=True)[:5]
        terminalreporter.write_line(
            f"{len(WATCHDOG.slow_wall)} callbacks over the limit in wall time only "
            "(waiting, or a busy machine; not failed on). Slowest:"
        )
        for stall in worst:
            terminalreporter.write_line(f"  {stall}")
