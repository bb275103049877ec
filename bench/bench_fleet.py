"""Fleet scale: thousands of workers heartbeating against one server process (PostgreSQL).

    python bench/bench_fleet.py [--workers 500 2000] [--seconds 8] [--interval-ms 1000]

One real server process (``bench/_app.py``, uvicorn, one worker) on a throwaway PostgreSQL
database (created and dropped with the tests' helpers; ``--admin-url`` as in
bench_workers.py), with ``DELIDEV_HEARTBEAT_INTERVAL_MS`` set to ``--interval-ms`` so that
its health sweep runs at that pace too. N workers are registered straight in the database;
they are simulated by a light client in this process (not N processes): a minimal HTTP/1.1
client over ``--connections`` keep-alive connections sends each worker's Connect
``WorkerService/Heartbeat`` (JSON) once per interval, every worker at its own phase, on an
open-loop schedule. Latency counts from the time a heartbeat was due, not from when a free
connection sent it, so a server that falls behind shows as latency (no coordinated omission).

- **heartbeats**: achieved rate, latency p50 / p99, server CPU (cores) and CPU per heartbeat,
  for each N;
- **baseline** (same run, same schedule, same N): the heartbeat's own write, one
  ``UPDATE workers SET last_heartbeat = now() … RETURNING`` sent by asyncpg straight to
  PostgreSQL; the ratio of p99s shows what the server adds around it;
- **sweep**: the health sweep's duration (this process runs the server's service call,
  ``sweep_workers``, on the same database once the server is stopped) with 2,000 and 20,000
  registered workers (``--sweep-fleet``) and 0, 10 and 100 of them silent, to show what its
  cost grows with.

Target (issue 16): heartbeat p99 < 50 ms at 2,000 workers. Prints figures, asserts nothing;
every measurement is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_get import (  # noqa: E402
    host_busy_s,
    process_cpu_s,
    read_response,
    start_server,
    stop_server,
)
from bench.bench_workers import pct  # noqa: E402

TARGET_P99_MS = 50.0
SILENT = [0, 10, 100]
PATH = "/delidev.v1.WorkerService/Heartbeat"


async def seed_workers(conn: asyncpg.Connection, count: int) -> list[uuid.UUID]:
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    await conn.copy_records_to_table(
        "workers",
        columns=["id", "name", "endpoint_url", "status", "last_heartbeat", "registered_at",
                 "updated_at", "labels", "agent_types", "draining"],
        records=[
            (i, f"fleet-{n}", "http://f:1", "idle", now, now, now, '["os=linux"]', "[]", False)
            for n, i in enumerate(ids)
        ],
    )  # fmt: skip
    await conn.execute("VACUUM ANALYZE workers")
    return ids


class Schedule:
    """Each worker's heartbeats: due once per interval, at its own phase."""

    def __init__(self, workers: list[uuid.UUID], interval: float, seconds: float) -> None:
        self.start = time.perf_counter() + 0.2
        # The first interval is not counted: each worker's first beat, and the connections'
        # and the server's warm-up (prepared statements, pools).
        self.counted_from = self.start + interval
        self.stop = self.start + seconds
        self.due: asyncio.Queue[tuple[float, uuid.UUID]] = asyncio.Queue()
        self.interval = interval
        self.workers = workers
        self.phases = {w: random.random() * interval for w in workers}

    async def feed(self) -> None:
        """Puts each heartbeat on the queue when it is due (open loop)."""
        tick = 0
        while True:
            base = self.start + tick * self.interval
            if base >= self.stop:
                return
            for w, when in sorted(
                ((w, base + p) for w, p in self.phases.items()), key=lambda x: x[1]
            ):
                if when >= self.stop:
                    continue
                delay = when - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                self.due.put_nowait((when, w))
            tick += 1


async def drive(
    schedule: Schedule, connection: Callable[[], Coroutine[Any, Any, None]], connections: int
) -> None:
    """Runs the schedule through ``connections`` senders; what is due at its end is still
    sent (within 10 s), then the senders stop."""
    tasks = [asyncio.create_task(connection()) for _ in range(connections)]
    try:
        await schedule.feed()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(schedule.due.join(), 10)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def server_heartbeats(
    host: str, port: int, workers: list[uuid.UUID], seconds: float, interval: float,
    connections: int,
) -> tuple[int, list[float], int]:  # fmt: skip
    schedule = Schedule(workers, interval, seconds)
    latencies: list[float] = []
    errors = 0
    requests = {
        w: (
            f"POST {PATH} HTTP/1.1\r\nhost: {host}:{port}\r\n"
            "content-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for w in workers
        for body in [json.dumps({"workerId": str(w)}).encode()]
    }

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                when, w = await schedule.due.get()
                writer.write(requests[w])
                status, body = await read_response(reader)
                if status != 200 or b"heartbeatIntervalMs" not in body:
                    errors += 1
                    if errors == 1:
                        print(f"first error: {status} {body[:200]!r}", flush=True)
                if when >= schedule.counted_from:
                    latencies.append(time.perf_counter() - when)
                schedule.due.task_done()
        finally:
            writer.close()

    await drive(schedule, connection, connections)
    return len(latencies), latencies, errors


async def raw_heartbeats(
    database_url: str, workers: list[uuid.UUID], seconds: float, interval: float,
    connections: int,
) -> tuple[int, list[float], int]:  # fmt: skip
    """The baseline: the heartbeat's own write, straight to PostgreSQL, same schedule, through
    a pool as large as the server's (``DELIDEV_DB_POOL_SIZE``, 10)."""
    size = int(os.environ.get("DELIDEV_DB_POOL_SIZE", "10"))
    pool = await asyncpg.create_pool(database_url, min_size=size, max_size=size)
    schedule = Schedule(workers, interval, seconds)
    latencies: list[float] = []

    async def connection() -> None:
        while True:
            when, w = await schedule.due.get()
            async with pool.acquire() as conn:
                await conn.fetchrow(
                    "UPDATE workers SET last_heartbeat = now(), updated_at = now() "
                    "WHERE id = $1 RETURNING status, draining",
                    w,
                )
            if when >= schedule.counted_from:
                latencies.append(time.perf_counter() - when)
            schedule.due.task_done()

    await drive(schedule, connection, connections)
    await pool.close()
    return len(latencies), latencies, 0


async def sweep_costs(
    database_url: str, conn: asyncpg.Connection, silent_counts: list[int], interval: float
) -> list[float]:
    """Milliseconds of one health sweep (median of 5, on a warm connection) with every worker
    healthy but ``silent`` of them, for each count."""
    from delidev import db
    from delidev.services import workers as worker_service
    from delidev.settings import Settings

    ctx = await db.open_database(Settings(database_url=database_url), migrate=False)
    every = dt.timedelta(seconds=interval)
    costs = []
    try:
        await worker_service.sweep_workers(heartbeat_interval=every)  # warms the connection
        for silent in silent_counts:
            times = []
            for _ in range(5):
                await conn.execute("UPDATE workers SET last_heartbeat = now(), status = 'idle'")
                await conn.execute(
                    "UPDATE workers SET last_heartbeat = now() - interval '1 hour' WHERE id IN "
                    "(SELECT id FROM workers ORDER BY id LIMIT $1)",
                    silent,
                )
                t0 = time.perf_counter()
                await worker_service.sweep_workers(heartbeat_interval=every)
                times.append((time.perf_counter() - t0) * 1000)
            costs.append(statistics.median(times))
    finally:
        await db.close_database(ctx)
    return costs


async def run(args: argparse.Namespace) -> int:
    if args.admin_url:  # read by tests.conftest when it is imported
        os.environ["DELIDEV_TEST_POSTGRES_URL"] = args.admin_url
    from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url

    name = await create_postgres_database()
    database_url = postgres_url(name)
    log_path = Path(tempfile.mkdtemp(prefix="delidev-bench-")) / "server.log"
    interval = args.interval_ms / 1000
    os.environ["DELIDEV_HEARTBEAT_INTERVAL_MS"] = str(args.interval_ms)
    proc = None
    rows = []
    try:
        proc, port = start_server(database_url, log_path)
        conn = await asyncpg.connect(database_url)
        seeded: list[uuid.UUID] = []
        for n in sorted(args.workers):
            seeded += await seed_workers(conn, n - len(seeded))
            fleet = seeded[:n]
            for label in ("server", "raw"):
                await conn.execute("UPDATE workers SET last_heartbeat = now(), status = 'idle'")
                cpu0 = process_cpu_s(proc.pid) or 0.0
                me0 = process_cpu_s(os.getpid()) or 0.0
                host0 = host_busy_s() or 0.0
                t0 = time.perf_counter()
                if label == "server":
                    done, lat, errors = await server_heartbeats(
                        "127.0.0.1", port, fleet, args.seconds, interval, args.connections
                    )
                else:
                    done, lat, errors = await raw_heartbeats(
                        database_url, fleet, args.seconds, interval, args.connections
                    )
                elapsed = time.perf_counter() - t0
                cpu = ((process_cpu_s(proc.pid) or 0.0) - cpu0) / elapsed
                me = ((process_cpu_s(os.getpid()) or 0.0) - me0) / elapsed
                host = ((host_busy_s() or 0.0) - host0) / elapsed
                counted = args.seconds - interval
                rows.append((n, label, done / counted, pct(lat, 0.5), pct(lat, 0.99), cpu,
                             errors))  # fmt: skip
                print(
                    f"workers {n:>5} {label:<6} {done / counted:7.0f} heartbeats/s  "
                    f"p50 {pct(lat, 0.5):7.2f} ms  p99 {pct(lat, 0.99):8.2f} ms  errors {errors}  "
                    f"CPU: server {cpu:.2f}, bench {me:.2f}, host {host:.2f} cores",
                    flush=True,
                )
        await conn.close()
        stop_server(proc)  # its own sweeps would race the ones measured here
        proc = None
        # The sweep's cost as the fleet grows (the server stopped: its own sweeps would
        # race these), with 0, 10 and 100 silent workers.
        sweeps = []
        conn = await asyncpg.connect(database_url)
        try:
            for size in sorted(args.sweep_fleet):
                if size > len(seeded):
                    seeded += await seed_workers(conn, size - len(seeded))
                await conn.execute("VACUUM ANALYZE workers")
                sweeps.append((size, await sweep_costs(database_url, conn, SILENT, interval)))
        finally:
            await conn.close()
    finally:
        if proc is not None:
            stop_server(proc)
        await drop_postgres_database(name)

    print("\nheartbeats (open loop, each worker once per interval); ratio = server p99 / raw p99")
    target = f"target: p99 < {TARGET_P99_MS:.0f} ms at 2000"
    print(f"{'workers':>7} {'server/s':>9} {'p50 ms':>7} {'p99 ms':>8} {'raw p99':>8} "
          f"{'x raw':>6} {'CPU/hb us':>9}  {target}")  # fmt: skip
    for n in sorted(args.workers):
        (server,) = [r for r in rows if r[0] == n and r[1] == "server"]
        (raw,) = [r for r in rows if r[0] == n and r[1] == "raw"]
        per = server[5] / server[2] * 1e6 if server[2] else float("nan")
        verdict = ""
        if n == 2000:
            verdict = "met" if server[4] < TARGET_P99_MS else "NOT met"
        print(f"{n:>7} {server[2]:>9.0f} {server[3]:>7.2f} {server[4]:>8.2f} {raw[4]:>8.2f} "
              f"{server[4] / raw[4]:>6.1f} {per:>9.0f}  {verdict}")  # fmt: skip
    print("\nhealth sweep, ms (median of 5, this process, warm connection):")
    print(f"{'workers':>7} " + " ".join(f"{f'{k} silent':>10}" for k in SILENT))
    for size, costs in sweeps:
        print(f"{size:>7} " + " ".join(f"{c:>10.2f}" for c in costs))
    return 1 if any(r[6] for r in rows) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--admin-url",
        default=os.environ.get("DELIDEV_BENCH_ADMIN_URL"),
        help="PostgreSQL server where a throwaway database is created and dropped (default: "
        "DELIDEV_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[500, 2000])
    p.add_argument(
        "--seconds", type=float, default=8.0, help="per measurement (the first interval uncounted)"
    )
    p.add_argument(
        "--sweep-fleet",
        type=int,
        nargs="+",
        default=[2000, 20000],
        help="registered workers at which the health sweep is timed",
    )
    p.add_argument("--interval-ms", type=int, default=1000, help="heartbeat interval")
    p.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
