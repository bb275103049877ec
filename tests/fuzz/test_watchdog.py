"""The event-loop watchdog catches a callback that computes for too long, and only that."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.loop_watchdog import Watchdog


def _compute(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


async def test_a_callback_computing_for_80_ms_is_reported(loop_watchdog: Watchdog) -> None:
    with loop_watchdog.armed("the test"):
        await asyncio.get_running_loop().run_in_executor(None, lambda: None)
        asyncio.get_running_loop().call_soon(_compute, 0.080)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
    stalls = loop_watchdog.take()
    assert len(stalls) == 1
    assert stalls[0].cpu_s >= 0.080
    assert "_compute" in stalls[0].callback
    assert stalls[0].context == "the test"


async def test_waiting_and_short_callbacks_are_not(loop_watchdog: Watchdog) -> None:
    with loop_watchdog.armed():
        await asyncio.sleep(0.1)  # waiting holds nothing (the sleep is the behaviour tested)
        for _ in range(20):
            asyncio.get_running_loop().call_soon(_compute, 0.002)
            await asyncio.sleep(0)
    assert loop_watchdog.take() == []


async def test_a_request_that_never_waits_is_measured_too(loop_watchdog: Watchdog) -> None:
    """An in-process ASGI call may run whole inside the callback that armed the watchdog."""
    loop_watchdog.install()
    await asyncio.sleep(0)  # the next step of this task runs through the wrapped callback
    with loop_watchdog.armed("inline"):
        _compute(0.080)
    await asyncio.sleep(0)
    stalls = loop_watchdog.take()
    assert len(stalls) == 1
    assert stalls[0].cpu_s >= 0.080


def test_the_marker_fails_a_test_that_holds_the_loop(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import asyncio, time
        import pytest

        def compute(seconds):
            start = time.thread_time()
            while time.thread_time() - start < seconds:
                pass

        @pytest.mark.loop_watchdog
        async def test_holds():
            compute(0.080)
            await asyncio.sleep(0)

        @pytest.mark.loop_watchdog
        async def test_waits():
            await asyncio.sleep(0.080)  # the behaviour tested: 80 ms of waiting holds nothing
        """
    )
    # The inner run imports the plugin from this checkout, wherever pytest runs it.
    root = str(Path(__file__).resolve().parents[2])
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    )
    result = pytester.runpytest_subprocess(
        "-p", "tests.loop_watchdog", "-o", "asyncio_mode=auto", "-p", "no:cacheprovider"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*event loop held for more than 50 ms*", "*FAILED*test_holds*"])
