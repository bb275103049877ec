"""End to end: usage reported by reference workers (``--usage``) as their runs go, through
real server processes: the totals on tasks and workspaces, a worker killed between reports,
reports from two replicas at once, and the Prometheus counters."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from delidev import worker_sim
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from tests.e2e.harness import (
    Connect,
    ConnectFailure,
    Server,
    Sim,
    Worker,
    eventually,
    server_pair,
)
from tests.e2e.test_metrics import scrape, value

FAST = ("--lines-per-second", "0", "--chunk-interval", "0")
FIELDS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_micros",
    "reports",
)
KINDS = ("input", "output", "cache_read", "cache_write")


@pytest.fixture
async def server(e2e_database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    # A killed worker is found out 1.5 s after its last beat; at 150 ms (as test_fleet) a
    # machine busy enough to delay a live worker's beats took its run away mid-report.
    srv = Server(e2e_database_url, tmp_path / "server.log", DELIDEV_HEARTBEAT_INTERVAL_MS="500")
    try:
        yield await srv.ready()
    finally:
        srv.stop()


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Connect]:
    client = Connect(server.base)
    yield client
    await client.close()


def usage(message: dict[str, Any] | None) -> dict[str, int]:
    """A Connect JSON ``Usage`` as the sim's report spells it (int64 comes as a string,
    zero fields are left out)."""
    got = message or {}
    return {name: int(got.get(_camel(name), 0)) for name in FIELDS}


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def summed(*usages: dict[str, int]) -> dict[str, int]:
    return {name: sum(u[name] for u in usages) for name in FIELDS}


def _sessions(task: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(task["agentTask"].get("sessions", []), key=lambda s: s.get("attempt", 0))


async def test_a_run_reports_as_it_goes_and_the_total_is_what_the_worker_sent(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    task = await api.unit(group, "steady work [sim:lines=40]")
    sim = Sim(
        server.base,
        tmp_path,
        "meter",
        "--usage",
        "--usage-every",
        "5",
        "--lines-per-second",
        "20",  # two seconds of output: reports arrive while the test watches
        "--chunk-interval",
        "0.05",
        "--max-jobs",
        "1",
    )
    seen: list[int] = []  # the task's usage reports counted, while its run was live
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = await api.task(task["id"])
            status = [s["status"] for s in _sessions(current)]
            if status == ["AGENT_SESSION_STATUS_RUNNING"]:
                seen.append(usage(current.get("usage"))["reports"])
            elif status and status != ["AGENT_SESSION_STATUS_QUEUED"]:
                break
            await asyncio.sleep(0.05)
        report = await asyncio.to_thread(sim.wait, 60)
    finally:
        sim.kill()
    assert seen == sorted(seen), "usage went down"
    assert len({n for n in seen if n}) >= 2, f"usage did not grow during the run: {seen}"
    done = await api.task(task["id"])
    (run,) = _sessions(done)
    # 2 lines of its own, then 40: a report every 5 lines, and the last 2 before it ends.
    assert report["usage"]["reports"] == 9
    assert usage(done["usage"]) == report["usage"]
    assert usage(run["usage"]) == report["usage_by_session"][run["id"]] == report["usage"]
    assert report["usage"]["cost_micros"] > 0
    spent = await api("WorkspaceService/GetUsage", {"workspaceId": done["workspaceId"]})
    assert usage(spent["total"]) == report["usage"]
    (model,) = spent["models"]
    assert model["aiAgentType"] == "AI_AGENT_TYPE_CLAUDE_CODE"
    assert model["model"] == "claude-sonnet-4"
    assert usage(model["usage"]) == report["usage"]
    assert [usage(day["usage"]) for day in spent["days"]] == [report["usage"]]


async def test_a_killed_worker_keeps_what_it_reported_and_the_next_run_counts_its_own(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    task = await api.unit(group, "long work [sim:hang-first] [sim:lines=8]")
    doomed = Sim(
        server.base, tmp_path, "doomed", "--usage", "--usage-every", "3", "--max-jobs", "1", *FAST
    )
    try:
        # 2 + 8 lines: reports after lines 3, 6 and 9, and one for the last line before it
        # hangs. Killed then, between reports.
        first = await eventually(
            lambda: api.task(task["id"]),
            lambda t: usage(t.get("usage"))["reports"] == 4,
        )
        doomed.kill()  # SIGKILL: no report, no unregister, heartbeats stop
    finally:
        doomed.kill()
    (lost,) = _sessions(first)
    kept = usage(lost["usage"])
    assert kept["reports"] == 4
    assert kept["cost_micros"] > 0
    await eventually(
        lambda: api.task(task["id"]),
        lambda t: (
            [s["status"] for s in _sessions(t)]
            == ["AGENT_SESSION_STATUS_LOST", "AGENT_SESSION_STATUS_QUEUED"]
        ),
    )
    rescuer = Sim(
        server.base,
        tmp_path,
        "rescuer",
        "--usage",
        "--usage-every",
        "3",
        "--idle-exit",
        "2",
        "--wait-ms",
        "300",
        *FAST,
    )
    report = await asyncio.to_thread(rescuer.wait, 60)
    done = await api.task(task["id"])
    runs = _sessions(done)
    assert [(r["attempt"], r["status"]) for r in runs] == [
        (1, "AGENT_SESSION_STATUS_LOST"),
        (2, "AGENT_SESSION_STATUS_SUCCEEDED"),
    ]
    assert usage(runs[0]["usage"]) == kept  # the lost run's usage stays, and only its own
    assert list(report["usage_by_session"]) == [runs[1]["id"]]
    assert usage(runs[1]["usage"]) == report["usage"]
    assert usage(done["usage"]) == summed(kept, report["usage"])


async def test_the_usage_directive_turns_usage_on_for_one_job(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    metered = await api.unit(group, "metered [sim:usage=3] [sim:lines=4]")
    plain = await api.unit(group, "plain [sim:lines=4]")
    sim = Sim(server.base, tmp_path, "plain", "--idle-exit", "2", "--wait-ms", "300", *FAST)
    report = await asyncio.to_thread(sim.wait, 60)
    assert report["succeeded"] == 2
    (run,) = _sessions(await api.task(metered["id"]))
    # 2 + 4 lines, a report every 3.
    assert list(report["usage_by_session"]) == [run["id"]]
    assert usage(run["usage"]) == report["usage"]
    assert report["usage"]["reports"] == 2
    assert usage((await api.task(plain["id"])).get("usage")) == usage(None)


class _LosingAnswers(WorkerServiceClient):
    """The generated client, over real HTTP; the first answer of each of the first
    ``lose`` usage reports is lost on the way back (the server did count the report)."""

    def __init__(self, base: str, lose: int) -> None:
        super().__init__(base, timeout_ms=30_000)
        self.lose = lose
        self.sent: list[str] = []

    async def report_usage(self, request: Any, **kwargs: Any) -> Any:
        answer = await super().report_usage(request, **kwargs)
        self.sent.append(request.report_id)
        if self.lose and self.sent.count(request.report_id) == 1:
            self.lose -= 1
            raise ConnectError(Code.UNAVAILABLE, "the connection dropped")
        return answer


async def test_a_report_whose_answer_was_lost_is_sent_again_and_counted_once(
    server: Server, api: Connect
) -> None:
    group = await api.group()
    task = await api.unit(group, "work [sim:lines=10]")
    options = worker_sim.Options(
        server=server.base,
        lines_per_second=0.0,
        chunk_interval=0.0,
        wait_ms=300,
        max_jobs=1,
        retry_base=0.01,
        retry_max=0.05,
        usage=True,
        usage_every=4,
    )
    client = _LosingAnswers(server.base, lose=2)
    sim = worker_sim.SimWorker(options, client)
    try:
        stats = await sim.run()
    finally:
        await sim.close()
    (session,) = stats.sessions
    # 12 lines: reports after 4 and 8, and one for the last 4; the first two sent twice.
    assert client.sent == [f"{session}-{n}" for n in (1, 1, 2, 2, 3)]
    sent = stats.usage[session].as_dict()
    assert sent["reports"] == 3
    done = await api.task(task["id"])
    assert usage(done["usage"]) == sent
    got = await scrape(server.base)
    labels = {"agent_type": "claude_code", "model": "claude-sonnet-4"}
    for kind in KINDS:
        counted = value(got, "delidev_usage_tokens_total", kind=kind, **labels)
        assert counted == sent[f"{kind}_tokens"]


async def test_the_metrics_count_usage_by_agent_type_and_model(
    server: Server, api: Connect, tmp_path: Path
) -> None:
    group = await api.group()
    created = [
        await api.unit(group, "default model [sim:lines=7]"),
        await api.unit(group, "named model [sim:lines=5]", aiAgentModel="claude-opus-4"),
        await api.unit(group, "other agent [sim:lines=9]", aiAgentType="AI_AGENT_TYPE_GEMINI_CLI"),
        await api.unit(group, "no usage [sim:lines=4] [sim:usage=off]"),
    ]
    sim = Sim(
        server.base,
        tmp_path,
        "metered",
        "--usage",
        "--usage-every",
        "4",
        "--idle-exit",
        "2",
        "--wait-ms",
        "300",
        *FAST,
    )
    report = await asyncio.to_thread(sim.wait, 60)
    assert report["succeeded"] == 4
    expected = {
        ("claude_code", "claude-sonnet-4"): created[0],
        ("claude_code", "claude-opus-4"): created[1],
        ("gemini_cli", "gemini-2.5-pro"): created[2],
    }
    got = await scrape(server.base)
    for (agent_type, model), task in expected.items():
        (run,) = _sessions(await api.task(task["id"]))
        sent = report["usage_by_session"][run["id"]]
        assert usage(run["usage"]) == sent
        labels = {"agent_type": agent_type, "model": model}
        for kind in KINDS:
            counted = value(got, "delidev_usage_tokens_total", kind=kind, **labels)
            assert counted == sent[f"{kind}_tokens"], (labels, kind)
        cost = value(got, "delidev_usage_cost_usd_total", **labels)
        assert cost == pytest.approx(sent["cost_micros"] / 1_000_000, rel=1e-12, abs=0)
    (quiet,) = _sessions(await api.task(created[3]["id"]))
    assert usage(quiet.get("usage")) == usage(None)
    assert quiet["id"] not in report["usage_by_session"]
    counted_series = {
        (labels["agent_type"], labels["model"])
        for (name, label_set), _ in got.items()
        if name == "delidev_usage_cost_usd_total"
        for labels in [dict(label_set)]
    }
    assert counted_series == set(expected)


@pytest.mark.postgres_only
async def test_two_replicas_count_concurrent_reports_once_each(
    e2e_database_url: str, tmp_path: Path
) -> None:
    """Reference workers on two server processes (one database) report for their runs while
    a test-driven worker sends each of its reports to both replicas at once."""
    async with server_pair(e2e_database_url, tmp_path, two=True) as (a, b):
        api, api_b = Connect(a.base), Connect(b.base)
        direct = Worker(a.base)
        other = Connect(b.base)  # the direct worker's calls through replica B
        sims: list[Sim] = []
        try:
            group = await api.group()
            # Claimed first, while it is the only job queued.
            held = await api.unit(group, "driven by the test")
            session_id = await direct.claim(held["id"])
            other.token = direct.api.token
            tasks = [await api.unit(group, f"job {i} [sim:lines={10 + i}]") for i in range(12)]
            sims = [
                Sim(
                    srv.base,
                    tmp_path,
                    f"on-{name}",
                    "--usage",
                    "--usage-every",
                    "2",
                    "--workers",
                    "2",
                    "--idle-exit",
                    "3",
                    "--wait-ms",
                    "300",
                    "--lines-per-second",
                    "20",
                    "--chunk-interval",
                    "0",
                )
                for name, srv in (("a", a), ("b", b))
            ]

            async def send(n: int) -> list[bool]:
                body = {
                    **direct.lease,
                    "reportId": f"direct-{n}",
                    "model": "claude-sonnet-4",
                    "inputTokens": 1_000 + n,
                    "outputTokens": 200 + n,
                    "cacheReadTokens": 5_000,
                    "cacheWriteTokens": 300,
                    "costMicros": 12_345 + n,
                }
                answers = await asyncio.gather(
                    direct.api("WorkerService/ReportUsage", body),
                    other("WorkerService/ReportUsage", body),
                )
                return [bool(answer.get("counted")) for answer in answers]

            # The reference workers are reporting too by now.
            await eventually(
                lambda: api.task(tasks[0]["id"]), lambda t: usage(t.get("usage"))["reports"] > 0
            )
            counted = await asyncio.gather(*(send(n) for n in range(20)))
            # Each report counted by exactly one of the two replicas.
            assert all(sorted(pair) == [False, True] for pair in counted), counted
            await direct.finish()
            with pytest.raises(ConnectFailure) as stale:  # the lease ended with the run
                await other(
                    "WorkerService/ReportUsage",
                    {**direct.lease, "reportId": "direct-late", "model": "m", "inputTokens": 1},
                )
            assert stale.value.code == "aborted"
            reports = [await asyncio.to_thread(sim.wait, 120) for sim in sims]
            assert all(r["sessions"] for r in reports), "a replica's worker ran no job"
            assert sum(r["succeeded"] for r in reports) == len(tasks)
            direct_sent = {
                "input_tokens": sum(1_000 + n for n in range(20)),
                "output_tokens": sum(200 + n for n in range(20)),
                "cache_read_tokens": 5_000 * 20,
                "cache_write_tokens": 300 * 20,
                "cost_micros": sum(12_345 + n for n in range(20)),
                "reports": 20,
            }
            held_task = await api.task(held["id"])
            assert usage(held_task["usage"]) == direct_sent
            assert [(s["id"], usage(s["usage"])) for s in _sessions(held_task)] == [
                (session_id, direct_sent)
            ]
            everything = summed(direct_sent, *(r["usage"] for r in reports))
            for replica in (api, api_b):
                spent = await replica(
                    "WorkspaceService/GetUsage", {"workspaceId": held_task["workspaceId"]}
                )
                assert usage(spent["total"]) == everything
            by_session = {s: u for r in reports for s, u in r["usage_by_session"].items()}
            for task in tasks:
                current = await api.task(task["id"])
                (run,) = _sessions(current)
                assert usage(current["usage"]) == usage(run["usage"]) == by_session[run["id"]]
        finally:
            for sim in sims:
                sim.kill()
            await direct.close()
            for client in (api, api_b, other):
                await client.close()


# The reference worker's usage arithmetic, without a server ------------------------------------


def test_report_costs_add_up_to_the_cost_of_their_sum_and_input_grows_with_the_context() -> None:
    meter = worker_sim.Meter(
        session_id="s", model="claude-opus-4", agent_type="claude_code", prompt="x", every=1
    )
    reports = []
    for i in range(200):
        meter.wrote(f"line {i}\n")
        if meter.due:
            report = meter.next_report()
            assert report is not None
            reports.append(report)
    assert meter.next_report() is None  # nothing written since the last report
    assert [r.report_id for r in reports] == [f"s-{n}" for n in range(1, 201)]
    sent = sum((r.spent for r in reports), worker_sim.Spent())
    price = worker_sim.PRICES["claude-opus-4"]
    # Each report rounds down its share only: no micro lost or gained over 200 reports.
    assert sent.cost_micros == worker_sim.usage.cost_micros(sent, price)
    later = [r.spent.input_tokens for r in reports[1:]]
    assert later == sorted(later)
    assert later[-1] > later[0]
    per_million = [dataclasses.astuple(p) for p in worker_sim.PRICES.values()]
    assert all(type(n) is int for prices in per_million for n in prices)  # no floats for money


def test_the_usage_options() -> None:
    options, _, _ = worker_sim.parse_args(
        ["--usage", "--usage-model", "claude-opus-4", "--usage-every", "3"]
    )
    assert (options.usage, options.usage_model, options.usage_every) == (True, "claude-opus-4", 3)
    options, _, _ = worker_sim.parse_args([])
    assert (options.usage, options.usage_model) == (False, None)
    with pytest.raises(SystemExit):
        worker_sim.parse_args(["--usage-every", "0"])
