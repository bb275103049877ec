"""Dispatch latency: a task is created → its job is in a worker's hands, via push and poll.

    python bench/bench_dispatch.py [--database postgres|sqlite] [--jobs 40] [--workers 1 50]

One real server process (``bench/_app.py`` under uvicorn, as ``bench_get.py`` starts it) on a
throwaway database (PostgreSQL through the tests' helpers, or a SQLite file). Simulated
workers in this process, over real HTTP with the generated Connect client:

- **push**: each idle worker holds a ``WorkerService.Watch`` stream; the job arrives on it;
- **poll**: each idle worker waits in ``GetTask`` (long poll, ``wait_ms`` 30 s).

For 1 and 50 idle workers, jobs are created one at a time (``TaskService.CreateUnit``); the
latency is from just before the create call to the moment a worker holds the job. The worker
reports it done at once, so every job finds the same number of idle workers.

**baseline** (same run): the CreateUnit call alone, with no worker connected; the dispatch
latency can be no lower than it. Printed: p50/p99 per mode, and ratios to the baseline.
It asserts nothing, and each scenario is bounded by ``--jobs``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_get import start_server, stop_server  # noqa: E402
from delidev.connect.gen.delidev.v1 import task_pb, worker_pb  # noqa: E402
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


class Fleet:
    """``count`` registered workers that wait for jobs (push or poll) and finish each at once."""

    def __init__(self, base: str, count: int, mode: str) -> None:
        self.client = WorkerServiceClient(base, timeout_ms=60_000)
        self.count = count
        self.mode = mode
        self.received: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self.ids: list[str] = []

    async def start(self) -> None:
        for i in range(self.count):
            reg = await self.client.register(
                worker_pb.RegisterWorkerRequest(name=f"d{i}", endpoint_url="http://b:1")
            )
            self.ids.append(reg.worker_id)
        runner = self._push if self.mode == "push" else self._poll
        self._tasks = [asyncio.create_task(runner(w)) for w in self.ids]
        await asyncio.sleep(0.5)  # every stream / long poll is open before the first job

    async def _done(self, wid: str, job: worker_pb.Job) -> None:
        self.received.put_nowait((time.perf_counter(), job.task_id))
        await self.client.report_status(
            worker_pb.ReportStatusRequest(
                worker_id=wid,
                session_id=job.session_id,
                lease_token=job.lease_token,
                status=task_pb.AgentSessionStatus.SUCCEEDED,
            )
        )

    async def _poll(self, wid: str) -> None:
        while True:
            got = await self.client.get_task(
                worker_pb.ClaimJobRequest(worker_id=wid, wait_ms=30_000)
            )
            if got.job is not None:
                await self._done(wid, got.job)

    async def _push(self, wid: str) -> None:
        while True:
            async for message in self.client.watch(worker_pb.WatchRequest(worker_id=wid)):
                event: Any = message.event
                if event is not None and event.field == "job_assigned":
                    await self._done(wid, event.value)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for wid in self.ids:
            await self.client.unregister(worker_pb.UnregisterWorkerRequest(worker_id=wid))
        await self.client.close()


async def create_task(http: httpx.AsyncClient, group: str, prompt: str) -> str:
    r = await http.post(
        "/delidev.v1.TaskService/CreateUnit", json={"repositoryGroupId": group, "prompt": prompt}
    )
    r.raise_for_status()
    return str(r.json()["task"]["unitTask"]["id"])


async def dispatch(http: httpx.AsyncClient, group: str, fleet: Fleet, jobs: int) -> list[float]:
    latencies = []
    for i in range(jobs):
        t0 = time.perf_counter()
        task_id = await create_task(http, group, f"dispatch {i}")
        while True:
            t1, got = await asyncio.wait_for(fleet.received.get(), 30)
            if got == task_id:
                break
        latencies.append(t1 - t0)
    return latencies


async def baseline(http: httpx.AsyncClient, group: str, jobs: int) -> list[float]:
    """CreateUnit alone (no worker anywhere: the jobs stay queued and are removed after)."""
    latencies = []
    for i in range(jobs):
        t0 = time.perf_counter()
        await create_task(http, group, f"baseline {i}")
        latencies.append(time.perf_counter() - t0)
    return latencies


async def run(args: argparse.Namespace) -> int:
    drop = None
    if args.database == "postgres":
        from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url

        name = await create_postgres_database()
        database_url = postgres_url(name)
        drop = (drop_postgres_database, name)
    else:
        database_url = f"sqlite://{tempfile.mkdtemp(prefix='delidev-dispatch-')}/bench.db"
    log_path = Path(tempfile.mkdtemp(prefix="delidev-bench-")) / "server.log"
    proc = None
    try:
        proc, port = start_server(database_url, log_path)
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            ws = (await http.post("/delidev.v1.WorkspaceService/Create", json={"name": "d"})).json()
            repo = (
                await http.post(
                    "/delidev.v1.RepositoryService/Add",
                    json={
                        "workspaceId": ws["workspace"]["id"],
                        "remoteUrl": "https://github.com/bench/dispatch",
                    },
                )
            ).json()
            group = (
                await http.post(
                    "/delidev.v1.RepositoryGroupService/Create",
                    json={
                        "workspaceId": ws["workspace"]["id"],
                        "repositoryIds": [repo["repository"]["id"]],
                    },
                )
            ).json()["group"]["id"]
            base_lat = await baseline(http, group, args.jobs)
            # The baseline's jobs stay queued: a fleet would take them first. Stop them.
            for task in (
                (
                    await http.post(
                        "/delidev.v1.TaskService/List",
                        json={"repositoryGroupId": group, "limit": 500},
                    )
                )
                .json()
                .get("tasks", [])
            ):
                await http.post(
                    "/delidev.v1.TaskService/Delete", json={"taskId": task["unitTask"]["id"]}
                )
            rows = [("baseline: CreateUnit alone", base_lat)]
            for count in args.workers:
                for mode in ("push", "poll"):
                    fleet = Fleet(base, count, mode)
                    await fleet.start()
                    try:
                        rows.append(
                            (
                                f"{mode}, {count} idle workers",
                                await dispatch(http, group, fleet, args.jobs),
                            )
                        )
                    finally:
                        await fleet.stop()
    finally:
        if proc is not None:
            stop_server(proc)
        if drop is not None:
            await drop[0](drop[1])
    base_p50 = statistics.median(base_lat)
    print(f"dispatch latency, {args.database}, {args.jobs} jobs each (ms)")
    print(f"{'scenario':34} {'p50':>8} {'p99':>8} {'p50/baseline':>13}")
    for label, values in rows:
        p50, p99 = statistics.median(values), pct(values, 0.99)
        print(f"{label:34} {p50 * 1000:8.2f} {p99 * 1000:8.2f} {p50 / base_p50:12.2f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--database", choices=["postgres", "sqlite"], default="postgres")
    p.add_argument("--jobs", type=int, default=40, help="jobs per scenario")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 50], help="idle workers")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
