"""Worker coordination on PostgreSQL: claim throughput and latency, and log ingestion.

    python bench/bench_workers.py [--admin-url postgresql://postgres@127.0.0.1:5432/postgres]

One real server process (the app of ``bench/_app.py``, uvicorn, one worker) on a throwaway
PostgreSQL database that the bench creates and drops with the tests' helpers
(``tests/conftest.py``; the server is ``--admin-url``, else ``DELIDEV_TEST_POSTGRES_URL``,
else the local cluster). Simulated workers in this process call
the real WorkerService over HTTP, binary codec: a minimal HTTP/1.1 client by default, so that
the load generator's own CPU (it shares the two cores with the server and PostgreSQL) stays
small, or the generated Connect client (``--client connect``).

- **claims**: with 1, 10 and 50 workers, each worker loops GetTask → ReportStatus(succeeded)
  over a queue of seeded jobs; claims/s and GetTask latency (p50, p99). Scheduling is on:
  the jobs are spread over 5 workspaces (round-robin across them), require a label the
  workers declared at Register, and get a run deadline when claimed.
- **baseline** (same run, same database, same concurrency): the raw claim statement, one
  ``UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED) RETURNING`` round trip per claim,
  sent by asyncpg straight to PostgreSQL. The ratio shows what the server adds around it.
- **floor** (same run): the cycle through two bare routes of the same server process
  (``bench/_app.py``: ``/bare/claim`` runs the raw claim statement, ``/bare/end`` one
  ``UPDATE`` that ends the run, both by asyncpg, JSON in and out, served by a bare Starlette
  in front of the app: nothing of DeliDev's around them), on the same lean HTTP client. It
  is what two HTTP requests and two statements cost in this process on this machine: no
  implementation of the cycle served here over HTTP goes faster, so its ratio to raw bounds
  any target on that ratio.
- **logs**: 4 workers, each holding a job, upload output with AppendLog (10 chunks of 100
  lines per call); stored lines/s.

It prints figures and asserts nothing. Each measurement is bounded in time (``--seconds``).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench._app import RAW_CLAIM  # noqa: E402
from bench.bench_get import (  # noqa: E402
    host_busy_s,
    process_cpu_s,
    read_response,
    start_server,
    stop_server,
)
from delidev.connect.gen.delidev.v1 import task_pb, worker_pb  # noqa: E402
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient  # noqa: E402

# Scheduling is on in the server scenarios: the jobs require a label the workers have, and
# they are spread over WORKSPACES workspaces (round-robin across them).
WORKSPACES = 5
REQUIRED = '["os=linux"]'
LABELS = '["os=linux","region=eu"]'
TARGET_CLAIMS_S = 1000
TARGET_RATIO = 0.5
TARGET_LINES_S = 50_000


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process and its children (uvicorn's worker processes)."""
    own = process_cpu_s(pid)
    if own is None:
        return None
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return own + sum(tree_cpu_s(int(c)) or 0.0 for c in children)


async def seed_jobs(
    conn: asyncpg.Connection, agent_task_ids: uuid.UUID | list[uuid.UUID], count: int
) -> None:
    """``count`` queued jobs, dealt in turn to the agent tasks (one per workspace)."""
    ids = agent_task_ids if isinstance(agent_task_ids, list) else [agent_task_ids]
    now = dt.datetime.now(dt.UTC)
    await conn.copy_records_to_table(
        "agent_sessions",
        columns=[
            "id", "agent_task_id", "ai_agent_type", "kind", "status", "attempt",
            "stop_requested", "log_size", "log_next_sequence", "created_at", "updated_at",
            "auto_retries",
        ],
        records=[
            (uuid.uuid4(), ids[i % len(ids)], "claude_code", "unit_task", "queued", 1, False, 0,
             0, now + dt.timedelta(microseconds=i), now, 0)
            for i in range(count)
        ],
    )  # fmt: skip


async def clear_jobs(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM agent_session_log_chunks")
    await conn.execute("UPDATE workers SET current_session_id = NULL, status = 'idle'")
    await conn.execute("DELETE FROM agent_sessions")


class LeanClient:
    """The two calls of the claim cycle on keep-alive HTTP/1.1 connections, with a minimal
    client: the request built by hand around the message's binary encoding, the response
    parsed just enough and decoded by the generated message class. The generated Connect
    client spends ~0.5 ms of this process's CPU per cycle, on the same two cores as the
    server and PostgreSQL; this one a fifth of that. Each worker takes a connection of its
    own, as a fleet of workers would."""

    def __init__(self, base: str) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open: list[asyncio.StreamWriter] = []

    async def _call(self, method: str, message: Any) -> bytes:
        path = f"/delidev.v1.WorkerService/{method}"
        return await self._post(path, "application/proto", message.to_binary())

    async def _post(self, path: str, content_type: str, data: bytes) -> bytes:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.open.append(writer)
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-type: {content_type}\r\ncontent-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        status, body = await read_response(reader)
        self.idle.append((reader, writer))
        if status != 200:
            raise RuntimeError(f"{path}: HTTP {status}: {body[:200]!r}")
        return body

    async def get_task(self, request: worker_pb.ClaimJobRequest) -> worker_pb.ClaimJobResponse:
        return worker_pb.ClaimJobResponse.from_binary(await self._call("GetTask", request))

    async def report_status(
        self, request: worker_pb.ReportStatusRequest
    ) -> worker_pb.ReportStatusResponse:
        body = await self._call("ReportStatus", request)
        return worker_pb.ReportStatusResponse.from_binary(body)

    async def close(self) -> None:
        for writer in self.open:
            writer.close()

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON POST to a bare route of ``bench/_app.py`` (the floor scenario)."""
        return dict(
            json.loads(await self._post(path, "application/json", json.dumps(body).encode()))
        )


CLIENT = "lean"  # set from --client


def _client(base: str) -> Any:
    return LeanClient(base) if CLIENT == "lean" else _connect_client(base)


def _connect_client(base: str) -> WorkerServiceClient:
    return WorkerServiceClient(
        base, timeout_ms=30_000, accept_compression=[], send_compression=None
    )


async def server_claims(
    base: str, worker_ids: list[str], seconds: float
) -> tuple[int, list[float]]:
    """Workers loop GetTask → ReportStatus for ``seconds``; returns claims and latencies."""
    client = _client(base)
    latencies: list[float] = []
    claims = 0
    stop_at = time.perf_counter() + seconds

    async def worker(wid: str) -> None:
        nonlocal claims
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            got = await client.get_task(worker_pb.ClaimJobRequest(worker_id=wid))
            latencies.append(time.perf_counter() - t0)
            job = got.job
            if job is None:
                raise RuntimeError("the queue ran dry: seed more jobs")
            claims += 1
            await client.report_status(
                worker_pb.ReportStatusRequest(
                    worker_id=wid,
                    session_id=job.session_id,
                    lease_token=job.lease_token,
                    status=task_pb.AgentSessionStatus.SUCCEEDED,
                )
            )

    try:
        await asyncio.gather(*(worker(w) for w in worker_ids))
    finally:
        await client.close()
    return claims, latencies


async def server_claims_only(
    base: str, worker_ids: list[str], seconds: float
) -> tuple[int, list[float]]:
    """GetTask alone: each of the concurrent claimers uses a fresh registered worker for every
    claim (a worker holding a job cannot take another), and no job is reported."""
    client = _client(base)
    latencies: list[float] = []
    claims = 0
    stop_at = time.perf_counter() + seconds
    fresh = iter(FRESH_WORKERS)

    async def claimer(_: str) -> None:
        nonlocal claims
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            got = await client.get_task(worker_pb.ClaimJobRequest(worker_id=next(fresh)))
            latencies.append(time.perf_counter() - t0)
            if got.job is None:
                raise RuntimeError("the queue ran dry: seed more jobs")
            claims += 1

    try:
        await asyncio.gather(*(claimer(w) for w in worker_ids))
    finally:
        await client.close()
    return claims, latencies


async def floor_cycles(base: str, worker_ids: list[str], seconds: float) -> tuple[int, list[float]]:
    """The cycle through the bare routes (the floor): claim, then end what was claimed."""
    client = LeanClient(base)
    latencies: list[float] = []
    claims = 0
    stop_at = time.perf_counter() + seconds

    async def worker(_: str) -> None:
        nonlocal claims
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            job = await client.post_json("/bare/claim", {})
            latencies.append(time.perf_counter() - t0)
            claims += 1
            await client.post_json("/bare/end", job)

    try:
        await asyncio.gather(*(worker(w) for w in worker_ids))
    finally:
        await client.close()
    return claims, latencies


FRESH_WORKERS: list[str] = []


async def seed_workers(conn: asyncpg.Connection, count: int) -> list[str]:
    now = dt.datetime.now(dt.UTC)
    ids = [uuid.uuid4() for _ in range(count)]
    await conn.copy_records_to_table(
        "workers",
        columns=["id", "name", "endpoint_url", "status", "last_heartbeat", "registered_at",
                 "updated_at", "labels", "agent_types", "draining"],
        records=[
            (i, "fresh", "http://b:1", "idle", now, now, now, LABELS, "[]", False) for i in ids
        ],
    )  # fmt: skip
    return [str(i) for i in ids]


async def raw_claims(
    database_url: str, worker_ids: list[str], seconds: float
) -> tuple[int, list[float]]:
    pool = await asyncpg.create_pool(
        database_url, min_size=len(worker_ids), max_size=len(worker_ids)
    )
    latencies: list[float] = []
    claims = 0
    stop_at = time.perf_counter() + seconds

    async def worker(_: str) -> None:
        nonlocal claims
        async with pool.acquire() as conn:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                # No worker id: the raw claims never end, and a worker may run one session.
                row = await conn.fetchrow(RAW_CLAIM, None, uuid.uuid4().hex, [])
                latencies.append(time.perf_counter() - t0)
                if row is None:
                    raise RuntimeError("the queue ran dry: seed more jobs")
                claims += 1

    try:
        await asyncio.gather(*(worker(w) for w in worker_ids))
    finally:
        await pool.close()
    return claims, latencies


async def log_ingestion(base: str, worker_ids: list[str], seconds: float) -> tuple[int, int]:
    """Each worker claims a job and uploads chunks for ``seconds``; returns lines and bytes."""
    client = _connect_client(base)
    line = "x" * 72 + "\n"
    chunk_text = line * 100
    lines = 0
    stored = 0
    stop_at = time.perf_counter() + seconds

    async def worker(wid: str) -> None:
        nonlocal lines, stored
        # Silent since they registered minutes ago: healthy again, or the sweep takes back
        # the job while it uploads.
        await client.heartbeat(worker_pb.HeartbeatRequest(worker_id=wid))
        job = (await client.get_task(worker_pb.ClaimJobRequest(worker_id=wid))).job
        assert job is not None
        sequence = 0
        while time.perf_counter() < stop_at:
            chunks = [worker_pb.LogChunk(sequence=sequence + i, data=chunk_text) for i in range(10)]
            reply = await client.append_log(
                worker_pb.AppendLogRequest(
                    worker_id=wid,
                    session_id=job.session_id,
                    lease_token=job.lease_token,
                    chunks=chunks,
                )
            )
            sequence += 10
            assert reply.next_sequence == sequence
            lines += 1000
            stored = max(stored, reply.log_size)

    try:
        await asyncio.gather(*(worker(w) for w in worker_ids))
    finally:
        await client.close()
    return lines, stored


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def run(args: argparse.Namespace) -> int:
    if args.admin_url:  # read by tests.conftest when it is imported
        os.environ["DELIDEV_TEST_POSTGRES_URL"] = args.admin_url
    from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url

    name = await create_postgres_database()
    database_url = postgres_url(name)
    log_path = Path(tempfile.mkdtemp(prefix="delidev-bench-")) / "server.log"
    proc = None
    try:
        extra = ("--workers", str(args.processes)) if args.processes > 1 else ()
        proc, port = start_server(database_url, log_path, extra)
        base = f"http://127.0.0.1:{port}"
        http = httpx.Client(base_url=base, timeout=30)

        def call(method: str, body: dict[str, object]) -> dict[str, object]:
            r = http.post(f"/delidev.v1.{method}", json=body)
            r.raise_for_status()
            return dict(r.json())

        agent_task_ids = []
        for w in range(WORKSPACES):
            ws = call("WorkspaceService/Create", {"name": f"bench {w}"})["workspace"]
            repo = call(
                "RepositoryService/Add",
                {"workspaceId": ws["id"], "remoteUrl": f"https://github.com/bench/r{w}"},  # type: ignore[index]
            )["repository"]
            group = call(
                "RepositoryGroupService/Create",
                {"workspaceId": ws["id"], "repositoryIds": [repo["id"]]},  # type: ignore[index]
            )["group"]
            task = call(
                "TaskService/CreateUnit",
                {"repositoryGroupId": group["id"], "prompt": "bench"},  # type: ignore[index]
            )["task"]
            agent_task_ids.append(uuid.UUID(task["unitTask"]["agentTask"]["id"]))  # type: ignore[index]
        setup = await asyncpg.connect(database_url)
        await setup.execute(
            "UPDATE agent_tasks SET required_labels = $1::jsonb, workspace_id = u.workspace_id "
            "FROM unit_tasks u WHERE u.agent_task_id = agent_tasks.id",
            REQUIRED,
        )
        await setup.close()
        workers = [
            str(
                call(
                    "WorkerService/Register",
                    {"name": f"b{i}", "endpointUrl": "http://b:1", "labels": json.loads(LABELS)},
                )["workerId"]
            )
            for i in range(max(args.workers))
        ]
        conn = await asyncpg.connect(database_url)
        if args.warmup > 0:
            # Not counted: every server process's first requests (connections, pools,
            # prepared statements, caches), which with --processes 2 would otherwise fall in
            # the first scenario's window.
            await clear_jobs(conn)
            await seed_jobs(conn, agent_task_ids, args.seed)
            await server_claims(base, workers[: max(args.workers)], args.warmup)
            print(f"warm-up: {args.warmup:.0f} s of the cycle, not counted", flush=True)
        rows = []
        for round_no in range(args.rounds):
            for n in args.workers:
                ids = workers[:n]
                scenarios = (
                    ("cycle", server_claims),
                    ("claim", server_claims_only),
                    ("raw", raw_claims),
                    ("floor", floor_cycles),
                )
                for label, fn in scenarios:
                    await clear_jobs(conn)
                    if label == "claim":
                        await conn.execute("DELETE FROM workers WHERE name = 'fresh'")
                        FRESH_WORKERS[:] = await seed_workers(conn, args.seed)
                    await seed_jobs(conn, agent_task_ids, args.seed)
                    # The table as autovacuum keeps it: the previous scenario's rows, deleted
                    # a moment ago, are gone and the statistics know the queue just filled.
                    await conn.execute("VACUUM ANALYZE agent_sessions")
                    target = database_url if label == "raw" else base
                    cpu0 = tree_cpu_s(proc.pid) or 0.0
                    me0 = process_cpu_s(os.getpid()) or 0.0
                    host0 = host_busy_s() or 0.0
                    t0 = time.perf_counter()
                    claims, lat = await fn(target, ids, args.seconds)
                    elapsed = time.perf_counter() - t0
                    cpu = ((tree_cpu_s(proc.pid) or 0.0) - cpu0) / elapsed
                    me = ((process_cpu_s(os.getpid()) or 0.0) - me0) / elapsed
                    host = ((host_busy_s() or 0.0) - host0) / elapsed
                    rows.append(
                        (round_no, n, label, claims / elapsed, pct(lat, 0.5), pct(lat, 0.99), cpu)
                    )
                    print(
                        f"round {round_no + 1} workers {n:>3} {label:<6} {claims / elapsed:8.0f} "
                        f"claims/s  p50 {pct(lat, 0.5):6.2f} ms  p99 {pct(lat, 0.99):6.2f} ms  "
                        f"CPU: server {cpu:.2f}, bench client {me:.2f}, host {host:.2f} cores",
                        flush=True,
                    )
        await clear_jobs(conn)
        await seed_jobs(conn, agent_task_ids, 10)
        lines, stored = await log_ingestion(base, workers[:4], args.seconds)
        lines_s = lines / args.seconds
        await conn.close()

        print()
        print("median over rounds; ratio = server rate / raw rate, same run, same concurrency")
        print(f"{'workers':>7} {'scenario':<22} {'claims/s':>9} {'x raw':>6} {'p50 ms':>7} "
              f"{'p99 ms':>7}  target at 50 workers: >= {TARGET_CLAIMS_S}/s and "
              f">= {TARGET_RATIO}x raw")  # fmt: skip
        names = {
            "raw": "raw UPDATE..RETURNING",
            "claim": "GetTask alone",
            "cycle": "GetTask + ReportStatus",
            "floor": "bare routes' cycle",
        }
        for n in args.workers:
            raw_rate = statistics.median(r[3] for r in rows if r[1] == n and r[2] == "raw")
            for label in ("raw", "claim", "cycle", "floor"):
                mine = [r for r in rows if r[1] == n and r[2] == label]
                rate = statistics.median(r[3] for r in mine)
                p50 = statistics.median(r[4] for r in mine)
                p99 = statistics.median(r[5] for r in mine)
                verdict = ""
                if n == 50 and label in ("claim", "cycle"):
                    ok = rate >= TARGET_CLAIMS_S and rate / raw_rate >= TARGET_RATIO
                    verdict = "met" if ok else "NOT met"
                print(f"{n:>7} {names[label]:<22} {rate:>9.0f} {rate / raw_rate:>6.3f} "
                      f"{p50:>7.2f} {p99:>7.2f}  {verdict}")  # fmt: skip
        verdict = "met" if lines_s >= TARGET_LINES_S else "NOT met"
        print(
            f"\nlog ingestion: {lines_s:,.0f} lines/s ({stored / 1e6:.1f} MB in the largest "
            f"log), target >= {TARGET_LINES_S:,}: {verdict}"
        )
        return 0
    finally:
        if proc is not None:
            stop_server(proc)
        await drop_postgres_database(name)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--admin-url",
        default=os.environ.get("DELIDEV_BENCH_ADMIN_URL"),
        help="PostgreSQL server where a throwaway database is created and dropped (default: "
        "DELIDEV_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    p.add_argument("--workers", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--seed",
        type=int,
        default=100_000,
        help="jobs queued per measurement (the raw loop takes up to ~8,000/s here)",
    )
    p.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of the cycle before any is counted"
    )
    p.add_argument(
        "--processes", type=int, default=1, help="uvicorn worker processes of the server"
    )
    p.add_argument(
        "--client",
        choices=["lean", "connect"],
        default="lean",
        help="the claim scenarios' client: a minimal HTTP/1.1 one (lean), or the generated "
        "Connect client (connect, ~0.5 ms of CPU per cycle on the bench's side)",
    )
    args = p.parse_args(argv)
    global CLIENT
    CLIENT = args.client
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
