"""The ``workers`` query (the console's Fleet page): workers registered over Connect, listed
by name in pages, each worker's task shown only to the task's owner, and a fixed number of
statements however large the page."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from delidev import events
from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.services import auth, tasks, workers
from delidev.settings import Settings
from tests.conftest import SqlCounter
from tests.factories import make_group, make_repository, make_workspace

SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
REGISTRATION = "registration-token"
LIST = (
    "query($limit: Int, $offset: Int) { workers(limit: $limit, offset: $offset) { "
    "totalCount items { id name endpointUrl status currentTaskId agentTypes labels draining "
    "lastHeartbeat registeredAt } } }"
)


async def _gql(
    http: httpx.AsyncClient, query: str, token: str | None = None, **variables: Any
) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    response = await http.post(
        "/graphql", json={"query": query, "variables": variables}, headers=headers
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def _connect(
    http: httpx.AsyncClient, method: str, body: dict[str, Any], token: str | None = None
) -> dict[str, Any]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    response = await http.post(
        f"/delidev.v1.WorkerService/{method}", content=json.dumps(body), headers=headers
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def _register(
    http: httpx.AsyncClient, name: str, token: str | None = None, **extra: Any
) -> dict[str, Any]:
    return await _connect(
        http, "Register", {"name": name, "endpointUrl": "http://127.0.0.1:9", **extra}, token
    )


async def _claim(http: httpx.AsyncClient, worker: dict[str, Any]) -> dict[str, Any]:
    """The worker's job (its task id), claimed over Connect with its credential."""
    claimed = await _connect(
        http, "GetTask", {"workerId": worker["workerId"]}, worker.get("credential")
    )
    job: dict[str, Any] = claimed["job"]
    return job


async def _group(actor: Principal = LOCAL_USER) -> m.RepositoryGroup:
    ws = await make_workspace(actor)
    return await make_group(ws, [await make_repository(ws, actor)], actor)


async def test_lists_the_workers_registered_over_connect(http: httpx.AsyncClient) -> None:
    registered = await _register(
        http, "gpu", agentTypes=["AI_AGENT_TYPE_CODEX_CLI"], labels=["gpu=true"]
    )
    body = await _gql(http, LIST)
    assert "errors" not in body, body
    listed = body["data"]["workers"]
    assert listed["totalCount"] == 1
    (worker,) = listed["items"]
    assert worker["id"] == registered["workerId"]
    assert (worker["name"], worker["endpointUrl"], worker["status"]) == (
        "gpu",
        "http://127.0.0.1:9",
        "IDLE",
    )
    assert (worker["agentTypes"], worker["labels"]) == (["CODEX_CLI"], ["gpu=true"])
    assert (worker["currentTaskId"], worker["draining"]) == (None, False)
    assert worker["lastHeartbeat"]
    assert worker["registeredAt"]


async def test_a_busy_worker_shows_its_task_unit_or_composite_being_planned(
    http: httpx.AsyncClient,
) -> None:
    group = await _group()
    unit = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    runner = await _register(http, "a-runner")
    assert (await _claim(http, runner))["taskId"] == str(unit.id)
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p"
    )
    planner = await _register(http, "b-planner")
    assert (await _claim(http, planner))["taskId"] == str(composite.id)
    await _register(http, "c-idle")

    items = (await _gql(http, LIST))["data"]["workers"]["items"]
    assert [(w["name"], w["status"], w["currentTaskId"]) for w in items] == [
        ("a-runner", "BUSY", str(unit.id)),
        ("b-planner", "BUSY", str(composite.id)),
        ("c-idle", "IDLE", None),
    ]


async def test_pages_by_name_then_id_with_the_total(http: httpx.AsyncClient) -> None:
    ids: dict[str, list[str]] = {}
    for name in ("delta", "alpha", "charlie", "bravo", "alpha"):
        ids.setdefault(name, []).append((await _register(http, name))["workerId"])
    order = [
        *(("alpha", i) for i in sorted(ids["alpha"])),
        *(("bravo", i) for i in ids["bravo"]),
        *(("charlie", i) for i in ids["charlie"]),
        *(("delta", i) for i in ids["delta"]),
    ]

    every = (await _gql(http, LIST))["data"]["workers"]
    assert every["totalCount"] == 5
    assert [(w["name"], w["id"]) for w in every["items"]] == order
    pages = []
    for offset in (0, 2, 4):
        page = (await _gql(http, LIST, limit=2, offset=offset))["data"]["workers"]
        assert page["totalCount"] == 5
        pages += [(w["name"], w["id"]) for w in page["items"]]
    assert pages == order
    beyond = (await _gql(http, LIST, limit=2, offset=10))["data"]["workers"]
    assert beyond == {"totalCount": 5, "items": []}


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize(
    ("limit", "offset", "field"), [(-1, None, "limit"), (501, None, "limit"), (1, -1, "offset")]
)
async def test_a_bad_page_is_refused_with_a_code(
    http: httpx.AsyncClient, limit: int, offset: int | None, field: str
) -> None:
    body = await _gql(http, LIST, limit=limit, offset=offset)
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["extensions"]["code"] == "INVALID_ARGUMENT"
    assert error["extensions"]["field"] == field


async def test_statements_do_not_grow_with_the_page(
    http: httpx.AsyncClient, sql_counter: SqlCounter
) -> None:
    group = await _group()

    async def busy(units: int, composites: int, idle: int) -> None:
        """Workers running ``units`` unit tasks, planning ``composites``, and ``idle`` more."""
        for _ in range(units):
            await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
        for _ in range(composites):
            await tasks.create_composite_task(
                actor=LOCAL_USER, repository_group_id=group.id, prompt="p"
            )
        for i in range(units + composites + idle):
            reg = await workers.register_worker(name=f"w{i}", endpoint_url="http://w:1")
            if i < units + composites:
                assert await workers.claim_job(worker_id=reg.worker.id) is not None

    async def statements() -> int:
        sql_counter.reset()
        body = await _gql(http, "{ workers(limit: 100) { totalCount items { currentTaskId } } }")
        assert "errors" not in body, body
        return len(sql_counter.statements)

    await busy(units=1, composites=1, idle=1)
    few = await statements()
    assert few > 0  # the counter sees this test's statements
    await busy(units=6, composites=4, idle=5)
    shown = (await _gql(http, "{ workers(limit: 100) { items { currentTaskId } } }"))["data"]
    assert sum(w["currentTaskId"] is not None for w in shown["workers"]["items"]) == 12
    assert await statements() == few, sql_counter.statements


# -- multi-user: the fleet is shared, the tasks on it are not ---------------------------------


@pytest.fixture
def multi(settings: Settings) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret=SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret="client-secret",
        worker_registration_token=REGISTRATION,
    )


@pytest.fixture
async def multi_http(multi: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(multi)
    token = events.bind(app.state.events)
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client
    finally:
        events.unbind(token)


async def test_a_workers_task_is_shown_to_its_owner_only(
    multi_http: httpx.AsyncClient, multi: Settings
) -> None:
    tokens = {}
    actors = {}
    for name in ("alice", "mallory"):
        user = await m.User.create(email=f"{name}@example.com", name=name)
        tokens[name] = (await auth.issue_tokens(settings=multi, user=user)).access_token
        actors[name] = Principal(kind="user", user_id=user.id)
    group = await _group(actors["alice"])
    unit = await tasks.create_unit_task(
        actor=actors["alice"], repository_group_id=group.id, prompt="alice's secret work"
    )
    composite = await tasks.create_composite_task(
        actor=actors["alice"], repository_group_id=group.id, prompt="alice's plan"
    )
    for name in ("a-runner", "b-planner"):
        worker = await _register(multi_http, name, REGISTRATION)
        await _claim(multi_http, worker)

    def shown(body: dict[str, Any]) -> list[tuple[str, str, str | None]]:
        assert "errors" not in body, body
        items = body["data"]["workers"]["items"]
        return [(w["name"], w["status"], w["currentTaskId"]) for w in items]

    assert shown(await _gql(multi_http, LIST, tokens["alice"])) == [
        ("a-runner", "BUSY", str(unit.id)),
        ("b-planner", "BUSY", str(composite.id)),
    ]
    mallorys = await _gql(multi_http, LIST, tokens["mallory"])
    assert shown(mallorys) == [("a-runner", "BUSY", None), ("b-planner", "BUSY", None)]
    assert str(unit.id) not in json.dumps(mallorys)
    assert str(composite.id) not in json.dumps(mallorys)

    anonymous = await _gql(multi_http, LIST)
    assert anonymous["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
