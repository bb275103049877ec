"""A started server freezes what it built at start-up out of the cyclic collector's full
collections (``gc.freeze``): each one otherwise walked every module, the schema and the ORM
and held a busy event loop for 40-80 ms (bench/bench_fleet.py: heartbeat p99 at 2,000
workers 112 ms before, 9.5 ms after). Checked in a fresh process: it is done once per
process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, gc, sys
from delidev.app import create_app
from delidev.settings import Settings

async def main() -> None:
    app = create_app(Settings(database_url="sqlite://" + sys.argv[1], single_user_mode=True))
    before = gc.get_freeze_count()
    async with app.router.lifespan_context(app):
        print(before, gc.get_freeze_count())

asyncio.run(main())
"""


def test_start_up_objects_are_frozen_once_started(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "x.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split())
    assert before == 0
    assert after > 10_000  # the modules, schema and models of the whole app
