"""``GET /metrics`` of a real server process after a scripted run (issue 12): the values,
not only the names. Workers driven by the test complete, fail and go silent (lost, then
taken back and run again), so every count is known exactly."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.harness import (
    Connect,
    ConnectFailure,
    GraphQLWs,
    Server,
    Sim,
    Worker,
    clean_env,
    connect_stream,
    free_port,
)
from tests.waiting import GUARD_S, eventually

FAST = ("--lines", "3", "--lines-per-second", "0", "--chunk-interval", "0")
REPO = Path(__file__).resolve().parent.parent.parent
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    srv = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_HEARTBEAT_INTERVAL_MS="150")
    try:
        yield await srv.ready()
    finally:
        srv.stop()


async def scrape(base: str) -> Samples:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a labelled series not created yet (as Prometheus reads it)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over the series of ``name`` that carry ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def rpc_count(samples: Samples, service: str, method: str, code: str) -> float:
    return value(
        samples,
        "rpc_server_call_duration_seconds_count",
        rpc_system="connect_rpc",
        rpc_service=f"delidev.v1.{service}",
        rpc_method=method,
        rpc_response_status_code=code,
    )


async def _status(api: Connect, task_id: str) -> list[str]:
    task = await api.task(task_id)
    return [s["status"] for s in task["agentTask"].get("sessions", [])]


async def test_a_scripted_run_shows_in_the_metrics(server: Server, tmp_path: Path) -> None:
    """Reference workers complete jobs, fail one and lose one (killed mid-run: taken back
    and run again by another); then every count is known."""
    api = Connect(server.base)
    doomed: Sim | None = None
    try:
        group = await api.group()
        lost = await api.unit(group, "goes silent [sim:hang-first] [sim:lines=2]")
        doomed = Sim(server.base, tmp_path, "doomed", "--max-jobs", "1", *FAST)
        await eventually(
            lambda: _status(api, lost["id"]), lambda s: s == ["AGENT_SESSION_STATUS_RUNNING"]
        )
        doomed.kill()  # SIGKILL: no report, no unregister, heartbeats stop
        await eventually(
            lambda: _status(api, lost["id"]),
            lambda s: "AGENT_SESSION_STATUS_LOST" in s and "AGENT_SESSION_STATUS_QUEUED" in s,
        )
        others = [
            await api.unit(group, "ok [sim:lines=3]"),
            await api.unit(group, "ok [sim:unicode] [sim:lines=3]"),
            await api.unit(group, "bad [sim:fail] [sim:lines=2]"),
        ]
        rescuer = Sim(
            server.base, tmp_path, "rescuer", "--idle-exit", "2", "--wait-ms", "300", *FAST
        )
        report = await asyncio.to_thread(rescuer.wait, 60)
        assert len(report["sessions"]) == 4, report
        # A refused call, an unknown path, GraphQL operations that succeed and fail.
        with pytest.raises(ConnectFailure):
            await api("WorkerService/GetTask", {"workerId": "00000000-0000-0000-0000-000000000001"})
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{server.base}/no/such/path")).status_code == 404
        board = {"query": "query Board { workspaces { totalCount } }"}
        assert "errors" not in (await api.http.post("/graphql", json=board)).json()
        broken = {"query": "query Broken { noSuchField }"}
        assert (await api.http.post("/graphql", json=broken)).json()["errors"]
        stored = 0
        for task in [lost, *others]:
            for session in (await api.task(task["id"]))["agentTask"]["sessions"]:
                log = await api("SessionService/GetLog", {"sessionId": session["id"]})
                stored += len(log.get("content", "").encode())

        got = await scrape(server.base)
        assert value(got, "delidev_tasks_created_total", kind="unit") == 4
        finished = "delidev_sessions_finished_total"
        assert value(got, finished, kind="unit_task", outcome="succeeded") == 3
        assert value(got, finished, kind="unit_task", outcome="failed") == 1
        assert value(got, finished, kind="unit_task", outcome="lost") == 1
        assert value(got, "delidev_job_reassignments_total") == 1
        assert value(got, "delidev_job_queued_to_assigned_seconds_count") == 5
        assert value(got, "delidev_log_bytes_ingested_total") == stored > 0
        assert total(got, "delidev_jobs_queued") == 0
        assert value(got, "delidev_oldest_queued_job_age_seconds") == 0
        # The rescuer unregistered as it left; the killed worker stays, unhealthy.
        assert value(got, "delidev_workers", status="unhealthy") == 1
        assert total(got, "delidev_workers") == 1
        assert value(got, "delidev_database_up") == 1
        assert rpc_count(got, "TaskService", "CreateUnit", "ok") == 4
        assert rpc_count(got, "WorkerService", "ReportStatus", "ok") == 4
        assert rpc_count(got, "WorkerService", "GetTask", "not_found") == 1
        assert rpc_count(got, "WorkerService", "Register", "ok") == 2
        http = "http_server_request_duration_seconds_count"
        assert (
            value(
                got,
                http,
                http_request_method="GET",
                http_route="other",
                http_response_status_code="404",
            )
            == 1
        )
        assert total(got, http, http_route="/delidev.v1.TaskService/{method}") == total(
            got, "rpc_server_call_duration_seconds_count", rpc_service="delidev.v1.TaskService"
        )
        graphql = "delidev_graphql_operation_duration_seconds_count"
        assert (
            value(got, graphql, operation_type="query", operation_name="Board", outcome="ok") == 1
        )
        assert total(got, graphql, outcome="error") == 1
    finally:
        if doomed is not None:
            doomed.kill()
        await api.close()


async def test_live_gauges_follow_what_is_open_now(server: Server) -> None:
    api = Connect(server.base)
    worker = Worker(server.base)
    socket = GraphQLWs(server.base)
    follower: asyncio.Task[None] | None = None
    try:
        group = await api.group()
        task = await api.unit(group, "runs")
        session_id = await worker.claim(task["id"])
        await worker.write("first\n")
        await worker.api(
            "WorkerService/RequestTtyInput",
            {**worker.lease, "prompt": "go on?", "inputType": "TTY_INPUT_TYPE_TEXT"},
        )
        waiting = await api.unit(group, "no worker takes this")
        await socket.connect()
        await socket.subscribe(
            "subscription($t: ID!) { taskUpdated(taskId: $t) { taskId } }", {"t": waiting["id"]}
        )

        async def follow() -> None:
            async for _ in connect_stream(
                server.base, "SessionService/StreamLog", {"sessionId": session_id}
            ):
                pass

        follower = asyncio.create_task(follow())
        got = await eventually(
            lambda: scrape(server.base),
            lambda s: (
                value(s, "delidev_live_log_followers") == 1
                and value(s, "delidev_graphql_subscriptions_open", protocol="graphql-transport-ws")
                == 1
            ),
        )
        assert value(got, "delidev_tty_requests_pending") == 1
        assert total(got, "delidev_jobs_queued") == 1
        assert value(got, "delidev_oldest_queued_job_age_seconds") > 0
        assert value(got, "delidev_workers", status="busy") == 1

        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await socket.close()
        await eventually(
            lambda: scrape(server.base),
            lambda s: (
                value(s, "delidev_live_log_followers") == 0
                and value(s, "delidev_graphql_subscriptions_open", protocol="graphql-transport-ws")
                == 0
            ),
        )
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        await socket.close()
        await worker.close()
        await api.close()


@pytest.mark.postgres_only
async def test_several_worker_processes_are_summed(e2e_database_url: str, tmp_path: Path) -> None:
    """Two uvicorn worker processes with PROMETHEUS_MULTIPROC_DIR: whichever answers the
    scrape, the counts are those of both."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    log = (tmp_path / "server.log").open("w")
    proc = _two_processes(port, e2e_database_url, multiproc, log)
    try:

        async def ready() -> int:
            try:
                async with httpx.AsyncClient() as client:
                    return (await client.get(f"{base}/readyz")).status_code
            except httpx.HTTPError:
                return 0

        await eventually(ready, lambda status: status == 200, within=60)
        ws = await _post(base, "WorkspaceService/Create", {"name": "multi"})
        calls = 0
        # A new connection per call, until both processes have served some.
        while len(_processes_that_served(multiproc)) < 2:
            assert calls < 200, "one process took every connection"
            got = await _post(base, "WorkspaceService/Get", {"workspaceId": ws["workspace"]["id"]})
            assert got["workspace"]["name"] == "multi"
            calls += 1
        counts = []
        for _ in range(8):  # whichever process answers, it shows both processes' calls
            async with httpx.AsyncClient() as client:
                response = await client.get(f"{base}/metrics")
            counts.append(_sample(response.text, "WorkspaceService", "Get"))
        assert counts == [float(calls)] * 8, (counts, calls)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(GUARD_S)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _two_processes(
    port: int, database_url: str, multiproc: Path, log: Any
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "delidev.app:from_env",
         "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
        env=clean_env(
            DATABASE_URL=database_url, DELIDEV_SINGLE_USER_MODE="true",
            PROMETHEUS_MULTIPROC_DIR=str(multiproc), PYTHONPATH=str(REPO),
        ),
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
    )  # fmt: skip


def _processes_that_served(multiproc: Path) -> set[str]:
    """The processes whose own files hold calls of WorkspaceService/Get."""
    from prometheus_client.mmap_dict import MmapedDict

    served = set()
    for path in multiproc.glob("histogram_*.db"):
        values = MmapedDict(str(path))
        try:
            if any(
                "WorkspaceService" in key and '"Get"' in key for key, *_ in values.read_all_values()
            ):
                served.add(path.stem.rsplit("_", 1)[1])
        finally:
            values.close()
    return served


async def _post(base: str, method: str, body: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base}/delidev.v1.{method}", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _sample(text: str, service: str, method: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "rpc_server_call_duration_seconds_count"
                and sample.labels.get("rpc_service") == f"delidev.v1.{service}"
                and sample.labels.get("rpc_method") == method
                and sample.labels.get("rpc_response_status_code") == "ok"
            ):
                return sample.value
    return 0.0
