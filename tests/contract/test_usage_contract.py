"""Usage through both APIs: a worker reports through WorkerService (the only way usage comes
in), and the same totals come out of Connect (JSON and binary: TaskService.Get,
WorkspaceService.GetUsage) and GraphQL (``task { usage }``, ``workspace { usage }``) — a
report sent again counted once, counts past 2^31 exact — with the same refusals."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import common_pb, task_pb, worker_pb, workspace_pb
from delidev.connect.gen.delidev.v1.task_connect import TaskServiceClient
from delidev.connect.gen.delidev.v1.worker_connect import WorkerServiceClient
from delidev.graphql.usage_types import usd
from delidev.services import tasks
from tests.clients import ApiError, ConnectApi, GraphQLApi, connect_codecs
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

COUNTS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_micros",
    "reports",
)
BIG = 3_000_000_000  # past 2^31


def _from_message(u: common_pb.Usage | None) -> dict[str, int]:
    assert u is not None
    return {name: int(getattr(u, name)) for name in COUNTS}


GQL_COUNTS = (
    "{ inputTokens outputTokens cacheReadTokens cacheWriteTokens costMicros costUsd reports }"
)
GQL_USAGE = f"usage {GQL_COUNTS}"


def _from_graphql(u: dict[str, Any]) -> dict[str, int]:
    values = {
        "input_tokens": u["inputTokens"],
        "output_tokens": u["outputTokens"],
        "cache_read_tokens": u["cacheReadTokens"],
        "cache_write_tokens": u["cacheWriteTokens"],
        "cost_micros": u["costMicros"],
        "reports": u["reports"],
    }
    assert all(float(v).is_integer() for v in values.values()), values
    counts = {k: int(v) for k, v in values.items()}
    assert u["costUsd"] == usd(counts["cost_micros"])  # the exact spelling agrees
    return counts


class ConnectUsage(ConnectApi):
    def __init__(self, app: Any, codec: Any) -> None:
        super().__init__(app, codec)
        self.tasks = TaskServiceClient("http://test", http_client=self._http, codec=codec)

    async def task_usage(self, task_id: str) -> dict[str, int]:
        res = await self._call(self.tasks.get(task_pb.GetTaskRequest(task_id=task_id)))
        assert res.task is not None
        assert res.task.task is not None
        return _from_message(res.task.task.value.usage)

    async def workspace_usage(self, workspace_id: str, days: int = 0) -> dict[str, Any]:
        res = await self._call(
            self.workspaces.get_usage(
                workspace_pb.GetWorkspaceUsageRequest(workspace_id=workspace_id, days=days)
            )
        )
        return {
            "total": _from_message(res.total),
            "days": [(d.date, _from_message(d.usage)) for d in res.days],
            "models": [
                (mu.ai_agent_type.name, mu.model, _from_message(mu.usage)) for mu in res.models
            ],
        }

    async def close(self) -> None:
        await super().close()
        await self.tasks.close()


class GraphQLUsage(GraphQLApi):
    async def task_usage(self, task_id: str) -> dict[str, int]:
        data = await self.execute(
            f"query($id: ID!) {{ task(id: $id) {{ {GQL_USAGE} }} }}", id=task_id
        )
        return _from_graphql(data["task"]["usage"])

    async def workspace_usage(self, workspace_id: str, days: int | None = None) -> dict[str, Any]:
        data = await self.execute(
            "query($id: ID!, $days: Int) { workspace(id: $id) { usage(days: $days) { "
            f"total {GQL_COUNTS} days {{ date {GQL_USAGE} }} "
            f"models {{ aiAgentType model {GQL_USAGE} }} }} }} }}",
            id=workspace_id,
            **({} if days is None else {"days": days}),
        )
        found = data["workspace"]["usage"]
        return {
            "total": _from_graphql(found["total"]),
            "days": [(d["date"], _from_graphql(d["usage"])) for d in found["days"]],
            "models": [
                (mu["aiAgentType"], mu["model"], _from_graphql(mu["usage"]))
                for mu in found["models"]
            ],
        }


@pytest.fixture(params=["connect-json", "connect-binary", "graphql"])
async def api(request: pytest.FixtureRequest, app: Any) -> AsyncIterator[Any]:
    client: ConnectUsage | GraphQLUsage
    if request.param == "graphql":
        client = GraphQLUsage(app)
    else:
        client = ConnectUsage(app, connect_codecs()[request.param.removeprefix("connect-")])
    try:
        yield client
    finally:
        await client.close()


class Worker:
    """A worker on the wire (Connect JSON, as the reference worker speaks it)."""

    def __init__(self, app: Any) -> None:
        http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
        self.client = WorkerServiceClient(
            "http://test", http_client=http, codec=connect_codecs()["json"]
        )

    async def run(self, name: str) -> worker_pb.Job:
        registered = await self.client.register(
            worker_pb.RegisterWorkerRequest(name=name, endpoint_url="http://127.0.0.1:54872")
        )
        claimed = await self.client.get_task(
            worker_pb.ClaimJobRequest(worker_id=registered.worker_id)
        )
        assert claimed.job is not None
        self.worker_id = registered.worker_id
        return claimed.job

    async def report(
        self, job: worker_pb.Job, report_id: str, model: str, **values: int
    ) -> worker_pb.ReportUsageResponse:
        return await self.client.report_usage(
            worker_pb.ReportUsageRequest(
                worker_id=self.worker_id,
                session_id=job.session_id,
                lease_token=job.lease_token,
                report_id=report_id,
                model=model,
                **values,
            )
        )


@pytest.fixture
async def worker(app: Any) -> AsyncIterator[Worker]:
    w = Worker(app)
    yield w
    await w.client.close()


def _usage(**values: int) -> dict[str, int]:
    return {name: values.get(name, 0) for name in COUNTS}


async def test_task_and_workspace_usage_after_reports_one_repeated(
    api: Any, worker: Worker
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="u")
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="c"
    )
    # Nothing reported yet: zeros, on both.
    assert await api.task_usage(str(unit.id)) == _usage()

    job = await worker.run("w1")
    assert job.task_id == str(unit.id)
    first = {"input_tokens": BIG, "output_tokens": 40, "cost_micros": 1_250_000}
    second = {"cache_read_tokens": 7, "cache_write_tokens": 5, "cost_micros": BIG}
    assert (await worker.report(job, "r1", "claude-sonnet-4", **first)).counted
    assert (await worker.report(job, "r2", "claude-opus-4", **second)).counted
    again = await worker.report(job, "r1", "claude-sonnet-4", **first)  # a retry
    assert not again.counted
    expected = _usage(
        input_tokens=BIG,
        output_tokens=40,
        cache_read_tokens=7,
        cache_write_tokens=5,
        cost_micros=BIG + 1_250_000,
        reports=2,
    )
    assert _from_message(again.session_usage) == expected
    assert await api.task_usage(str(unit.id)) == expected

    planning = await worker.run("w2")
    assert planning.task_id == str(composite.id)
    await worker.report(planning, "p1", "claude-sonnet-4", input_tokens=10, cost_micros=3)
    assert await api.task_usage(str(composite.id)) == _usage(
        input_tokens=10, cost_micros=3, reports=1
    )

    found = await api.workspace_usage(str(ws.id))
    total = _usage(
        input_tokens=BIG + 10,
        output_tokens=40,
        cache_read_tokens=7,
        cache_write_tokens=5,
        cost_micros=BIG + 1_250_003,
        reports=3,
    )
    assert found["total"] == total
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert found["days"] == [(today, total)]
    agent = (await m.AgentSession.get(id=job.session_id)).ai_agent_type
    assert found["models"] == [  # the most expensive first
        (agent.name, "claude-opus-4", _usage(**second, reports=1)),
        (
            agent.name,
            "claude-sonnet-4",
            _usage(input_tokens=BIG + 10, output_tokens=40, cost_micros=1_250_003, reports=2),
        ),
    ]
    assert (await api.workspace_usage(str(ws.id), days=1))["total"] == total


@pytest.mark.parametrize("days", [-1, 367])
async def test_a_period_out_of_range_is_refused_naming_days(api: Any, days: int) -> None:
    ws = await make_workspace()
    with pytest.raises(ApiError) as refused:
        await api.workspace_usage(str(ws.id), days=days)
    assert (refused.value.code, refused.value.field) == ("INVALID_ARGUMENT", "days")


async def test_an_unknown_workspace_or_task_is_not_found(api: Any) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for call in (api.workspace_usage(missing), api.task_usage(missing)):
        with pytest.raises(ApiError) as refused:
            await call
        assert refused.value.code == "NOT_FOUND"
