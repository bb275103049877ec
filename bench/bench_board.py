"""The dashboard board: the GraphQL task list a board shows, 500 tasks of a workspace.

    python bench/bench_board.py [--tasks 500] [--seconds 5] [--rounds 3] [--connections 4]

One real server process (``bench/_app.py``, uvicorn, one worker) on a throwaway PostgreSQL
database (created and dropped with the tests' helpers; ``--admin-url`` as in
bench_workers.py). The bench seeds, through the services in its own process on the same
database: one workspace, ``--tasks`` tasks of which one in ten is a composite task with a
five-node plan approved (so its nodes are unit tasks too), each unit task with a queued run.

- **board**: the console's board query (``console/src/queries.ts`` ``TASKS``, the
  ``TaskSummary`` fragment: status, priority, why it waits, latest run, usage, a composite's
  nodes) with ``first: 500``, closed loop over ``--connections`` keep-alive connections;
  requests/s and latency p50 / p99;
- **baseline** (same run, same connections, interleaved rounds): the same page of the same
  tasks through Connect, ``TaskService/List`` (JSON, ``limit: 500``), which builds the same
  read model (``services/tasks/views.py``) without GraphQL; ``x base`` is board / baseline;
- **statements per request**: the board query run in this process against the app with
  Tortoise's statement log counted, at 50 tasks and at ``--tasks`` (the same count means
  it does not grow with the board).

Every answer is checked (status 200, no GraphQL errors, the expected number of tasks).
Prints figures, asserts nothing; every measurement is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.bench_get import (  # noqa: E402
    process_cpu_s,
    read_response,
    start_server,
    stop_server,
)
from bench.bench_workers import pct  # noqa: E402

WAIT = "wait { reason since detail until position }"
LATEST = "latestSession { id status attempt error }"
BOARD = f"""
  fragment TaskSummary on Task {{
    __typename id workspaceId repositoryGroupId title prompt createdAt updatedAt
    usage {{ costMicros inputTokens outputTokens }}
    ... on UnitTask {{ unitStatus: status priority compositeTaskId linkedPrUrl {WAIT} {LATEST} }}
    ... on CompositeTask {{
      compositeStatus: status priority {WAIT} {LATEST}
      nodes {{ id planId state dependsOnNodeIds unitTask {{ id title prompt status }} }}
    }}
  }}
  query Tasks($workspaceId: ID!, $after: String) {{
    tasks(workspaceId: $workspaceId, first: 500, after: $after) {{
      totalCount
      pageInfo {{ hasNextPage endCursor }}
      edges {{ node {{ ...TaskSummary }} }}
    }}
  }}"""
PLAN = "tasks:\n" + "".join(
    f"  - id: n{i}\n    prompt: node {i}\n" + ("    dependsOn: [n0]\n" if i else "")
    for i in range(5)
)


async def seed(workspace_name: str, count: int) -> str:
    """A workspace with ``count`` tasks (every tenth a composite with five nodes)."""
    from delidev import models as m
    from delidev.auth.principal import LOCAL_USER
    from delidev.services import repositories, tasks, workspaces

    ws = await workspaces.create_workspace(actor=LOCAL_USER, name=workspace_name)
    repo = await repositories.add_repository(
        actor=LOCAL_USER, workspace_id=ws.id, remote_url=f"https://github.com/b/{ws.id}"
    )
    group = await repositories.create_repository_group(
        actor=LOCAL_USER, workspace_id=ws.id, repository_ids=[repo.id]
    )
    made = 0
    i = 0
    while made < count:
        if i % 10 == 9 and count - made >= 1:
            composite = await tasks.create_composite_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt=f"composite {i}"
            )
            await tasks.submit_plan(composite_task_id=composite.id, plan_yaml=PLAN)
            await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
        else:
            await tasks.create_unit_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt=f"task {i}", title=f"T{i}"
            )
        made += 1
        i += 1
    listed = await m.UnitTask.filter(workspace_id=ws.id, composite_task_id=None).count()
    listed += await m.CompositeTask.filter(workspace_id=ws.id).count()
    assert listed == count, (listed, count)
    return str(ws.id)


class StatementCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage().lstrip().upper()
        if text.startswith(("SELECT", "INSERT", "UPDATE", "DELETE", "WITH")):
            self.count += 1


async def statements_per_board(database_url: str, workspace_id: str) -> int:
    """The board query once through the app in this process, its statements counted."""
    from delidev.app import create_app
    from delidev.settings import Settings

    app = create_app(Settings(database_url=database_url, single_user_mode=True))
    logger = logging.getLogger("tortoise.db_client")
    counter = StatementCount()
    logger.setLevel(logging.DEBUG)
    logger.addHandler(counter)
    try:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://localhost") as http,
        ):
            body = {"query": BOARD, "variables": {"workspaceId": workspace_id}}
            await http.post("/graphql", json=body)  # warm: per-process caches
            counter.count = 0
            answer = await http.post("/graphql", json=body)
            if answer.status_code != 200 or "errors" in answer.json():
                raise RuntimeError(f"the board query failed: {answer.text[:500]}")
    finally:
        logger.removeHandler(counter)
        logger.setLevel(logging.WARNING)
    return counter.count


async def closed_loop(
    port: int, path: str, body: bytes, connections: int, seconds: float, expect: int
) -> tuple[int, list[float], int]:
    request = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    stop_at = time.perf_counter() + seconds
    latencies: list[float] = []
    errors = 0

    async def connection() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                status, answer = await read_response(reader)
                latencies.append(time.perf_counter() - t0)
                if status != 200 or b'"errors"' in answer or answer.count(b'"prompt"') < expect:
                    errors += 1
                    if errors == 1:
                        print(f"first error: {status} {answer[:300]!r}", flush=True)
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return len(latencies), latencies, errors


async def run(args: argparse.Namespace) -> int:
    if args.admin_url:  # read by tests.conftest when it is imported
        os.environ["DELIDEV_TEST_POSTGRES_URL"] = args.admin_url
    from delidev import db
    from delidev.settings import Settings
    from tests.conftest import create_postgres_database, drop_postgres_database, postgres_url

    name = await create_postgres_database()
    database_url = postgres_url(name)
    log_path = Path(tempfile.mkdtemp(prefix="delidev-bench-")) / "server.log"
    proc = None
    rows: list[tuple[str, float, float, float, float]] = []
    errors = 0
    try:
        proc, port = start_server(database_url, log_path)
        ctx = await db.open_database(Settings(database_url=database_url), migrate=False)
        try:
            small = await seed("board-small", 50)
            board = await seed("board", args.tasks)
        finally:
            await db.close_database(ctx)
        counts = {
            50: await statements_per_board(database_url, small),
            args.tasks: await statements_per_board(database_url, board),
        }
        scenarios = {
            "graphql board": (
                "/graphql",
                json.dumps({"query": BOARD, "variables": {"workspaceId": board}}).encode(),
            ),
            "connect List": (
                "/delidev.v1.TaskService/List",
                json.dumps({"workspaceId": board, "limit": 500}).encode(),
            ),
        }
        # Each unit task and composite carries its prompt; nodes carry theirs too.
        expect = args.tasks
        for round_no in range(args.rounds):
            for label, (path, body) in scenarios.items():
                await closed_loop(port, path, body, args.connections, 1.0, expect)  # warm-up
                cpu0 = process_cpu_s(proc.pid) or 0.0
                t0 = time.perf_counter()
                done, lat, errs = await closed_loop(
                    port, path, body, args.connections, args.seconds, expect
                )
                elapsed = time.perf_counter() - t0
                cpu = ((process_cpu_s(proc.pid) or 0.0) - cpu0) / elapsed
                errors += errs
                rate = done / elapsed
                rows.append((label, rate, pct(lat, 0.5), pct(lat, 0.99), cpu))
                print(
                    f"round {round_no + 1} {label:<14} {rate:7.1f} req/s  p50 {pct(lat, 0.5):7.1f}"
                    f" ms  p99 {pct(lat, 0.99):7.1f} ms  server CPU {cpu:.2f} core  "
                    f"errors {errs}",
                    flush=True,
                )
    finally:
        if proc is not None:
            stop_server(proc)
        await drop_postgres_database(name)

    base = statistics.median(r[1] for r in rows if r[0] == "connect List")
    print(f"\n{args.tasks} tasks per request; median over {args.rounds} rounds")
    print(f"{'scenario':<14} {'req/s':>7} {'x base':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU ms/req':>10}")  # fmt: skip
    for label in scenarios:
        mine = [r for r in rows if r[0] == label]
        rate = statistics.median(r[1] for r in mine)
        per = statistics.median(r[4] / r[1] * 1000 for r in mine if r[1])
        print(f"{label:<14} {rate:>7.1f} {rate / base:>7.2f} "
              f"{statistics.median(r[2] for r in mine):>7.1f} "
              f"{statistics.median(r[3] for r in mine):>7.1f} {per:>10.1f}")  # fmt: skip
    print(
        "SQL statements per board request: "
        + ", ".join(f"{n} tasks: {c}" for n, c in counts.items())
        + ("  (constant)" if len(set(counts.values())) == 1 else "  (GROWS with the tasks)")
    )
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--admin-url",
        default=os.environ.get("DELIDEV_BENCH_ADMIN_URL"),
        help="PostgreSQL server where a throwaway database is created and dropped (default: "
        "DELIDEV_TEST_POSTGRES_URL, else postgresql://postgres@127.0.0.1:5432/postgres)",
    )
    p.add_argument("--tasks", type=int, default=500)
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections")
    return asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
