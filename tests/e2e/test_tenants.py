"""Multi-user mode end to end: two users sign in through a real OpenID provider (npm
``oidc-provider``) against a real server process, and one of them (mallory) tries every
Connect method, every GraphQL root field, every mutation, every subscription and
``StreamLog`` with the other's (alice's) ids. Each attempt must answer not_found, lists and
nested fields must never show the other's objects, and the stored data must stay as it was.

The suite checks its own coverage: a Connect method or a GraphQL field added later without an
isolation case here fails ``test_every_method_and_field_has_an_isolation_case``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import pytest
import websockets
from graphql import (
    GraphQLEnumType,
    GraphQLInterfaceType,
    GraphQLNamedType,
    GraphQLObjectType,
    GraphQLScalarType,
    GraphQLUnionType,
    get_named_type,
    is_required_argument,
)

from delidev.graphql.schema import build_schema
from delidev.settings import Settings
from tests.e2e.harness import KEEPALIVE_S, GraphQLWs, Server, fresh_database
from tests.oidc import CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, browse, openid_provider
from tests.waiting import GUARD_S

SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
REGISTRATION = "worker-registration-token-for-tests"
# Tables whose rows a refused call must leave as they were (the auth and fleet tables change
# by design: sign-ins, heartbeats).
VOLATILE_TABLES = {"users", "refresh_tokens", "revoked_tokens", "auth_states", "workers"}
# Why a queued run waits is worked out by a background pass (the wait reconciler) whenever
# the fleet changes, at any moment of a test: not something a refused call could change.
VOLATILE_COLUMNS = {"agent_sessions": frozenset({"wait_reason", "wait_detail", "waiting_since"})}


# -- clients --------------------------------------------------------------------------------


class Api:
    """Connect JSON and GraphQL over real HTTP, as one signed-in user."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base = base
        self.token = token
        self.http = httpx.AsyncClient(
            base_url=base, timeout=30, limits=httpx.Limits(keepalive_expiry=KEEPALIVE_S)
        )

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        return headers

    async def call(self, method: str, body: dict[str, Any] | None = None) -> httpx.Response:
        return await self.http.post(
            f"/delidev.v1.{method}", content=json.dumps(body or {}), headers=self._headers()
        )

    async def ok(self, method: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.call(method, body)
        assert response.status_code == 200, f"{method}: {response.text}"
        return dict(response.json())

    async def gql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = await self.http.post(
            "/graphql",
            json={"query": query, "variables": variables or {}},
            headers=self._headers(),
        )
        return dict(response.json())

    async def stream(self, method: str, body: dict[str, Any]) -> tuple[list[Any], Any]:
        """A Connect server stream: its messages and its end-of-stream error (or None)."""
        data = json.dumps(body).encode()
        envelope = bytes([0]) + len(data).to_bytes(4, "big") + data
        headers = {"content-type": "application/connect+json", "connect-protocol-version": "1"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        raw = await self.http.post(f"/delidev.v1.{method}", content=envelope, headers=headers)
        assert raw.status_code == 200, raw.text
        messages: list[Any] = []
        end: Any = None
        buffer = raw.content
        while buffer:
            flags, size = buffer[0], int.from_bytes(buffer[1:5], "big")
            payload = json.loads(buffer[5 : 5 + size])
            buffer = buffer[5 + size :]
            if flags & 0x02:
                end = payload.get("error")
            else:
                messages.append(payload)
        return messages, end

    async def close(self) -> None:
        await self.http.aclose()


async def sign_in(base: str, login: str) -> dict[str, Any]:
    """The whole browser-less OIDC sign-in: GetLoginUrl, the provider, HandleCallback."""
    anonymous = Api(base, None)
    try:
        started = await anonymous.ok("AuthService/GetLoginUrl", {"redirectUri": REDIRECT_URI})
        assert parse_qs(urlsplit(started["url"]).query)["code_challenge_method"] == ["S256"]
        back = await browse(started["url"], login=login)
        return await anonymous.ok(
            "AuthService/HandleCallback", {"code": back["code"], "state": back["state"]}
        )
    finally:
        await anonymous.close()


# -- the world: one server, two tenants ------------------------------------------------------


@dataclass
class Tenant:
    api: Api
    session: dict[str, Any]  # HandleCallback's answer
    ids: dict[str, str] = field(default_factory=dict)


@dataclass
class World:
    server: Server
    database_url: str
    alice: Tenant
    mallory: Tenant
    workers: dict[str, dict[str, Any]]  # by login: the worker running that tenant's unit task

    @property
    def worker(self) -> dict[str, Any]:
        return self.workers["alice"]


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    with openid_provider() as issuer:
        yield issuer


@pytest.fixture(scope="module")
async def tenant_database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    async with fresh_database(tmp_path_factory.mktemp("tenants")) as url:
        yield url


async def _build(api: Api, tag: str) -> dict[str, str]:
    ids: dict[str, str] = {}
    ids["workspace"] = (await api.ok("WorkspaceService/Create", {"name": f"{tag}-ws"}))[
        "workspace"
    ]["id"]
    for n in (1, 2):
        ids[f"repo{n}"] = (
            await api.ok(
                "RepositoryService/Add",
                {"workspaceId": ids["workspace"], "remoteUrl": f"https://github.com/{tag}/r{n}"},
            )
        )["repository"]["id"]
    ids["group"] = (
        await api.ok(
            "RepositoryGroupService/Create",
            {"workspaceId": ids["workspace"], "repositoryIds": [ids["repo1"], ids["repo2"]]},
        )
    )["group"]["id"]
    ids["todo"] = (
        await api.ok(
            "TodoService/Create",
            {
                "repositoryId": ids["repo1"],
                "issueTriage": {
                    "issueUrl": f"https://github.com/{tag}/r1/issues/1",
                    "issueTitle": f"{tag} issue",
                },
            },
        )
    )["item"]["id"]
    unit = (
        await api.ok(
            "TaskService/CreateUnit",
            {"repositoryGroupId": ids["group"], "prompt": f"{tag} unit", "expectsSecrets": True},
        )
    )["task"]["unitTask"]
    ids["unit"] = unit["id"]
    ids["unit_agent"] = unit["agentTask"]["id"]
    composite = (
        await api.ok(
            "TaskService/CreateComposite",
            {"repositoryGroupId": ids["group"], "prompt": f"{tag} composite"},
        )
    )["task"]["compositeTask"]
    ids["composite"] = composite["id"]
    ids["planning_agent"] = composite["planningTask"]["id"]
    return ids


@pytest.fixture(scope="module")
async def world(
    provider: str, tenant_database: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    server = Server(
        tenant_database,
        tmp_path_factory.mktemp("tenants-log") / "server.log",
        DELIDEV_SINGLE_USER_MODE="false",
        DELIDEV_JWT_SECRET=SECRET,
        DELIDEV_OIDC_ISSUER_URL=provider,
        DELIDEV_OIDC_CLIENT_ID=CLIENT_ID,
        DELIDEV_OIDC_CLIENT_SECRET=CLIENT_SECRET,
        DELIDEV_OIDC_REDIRECT_URL=REDIRECT_URI,
        DELIDEV_WORKER_REGISTRATION_TOKEN=REGISTRATION,
        # The worker below does not heartbeat: it must not be declared lost mid-test.
        DELIDEV_HEARTBEAT_INTERVAL_MS="600000",
        # The walk below selects every field at once; the limits are tested elsewhere.
        DELIDEV_GRAPHQL_MAX_DEPTH="40",
        DELIDEV_GRAPHQL_MAX_TOKENS="100000",
        DELIDEV_GRAPHQL_MAX_ALIASES="1000",
        # Each ping also re-checks the connection's token: a logout closes it quickly.
        DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS="300",
    )
    tenants: list[Tenant] = []
    try:
        await server.ready()
        for login in ("alice", "mallory"):
            session = await sign_in(server.base, login)
            tenant = Tenant(api=Api(server.base, session["accessToken"]), session=session)
            tenants.append(tenant)
            tenant.ids = await _build(tenant.api, login)
        alice, mallory = tenants
        workers: dict[str, dict[str, Any]] = {}
        for tenant in tenants:
            login = tenant.session["user"]["email"].split("@")[0]
            await tenant.api.ok(
                "SecretsService/Send",
                {"taskId": tenant.ids["unit"], "secrets": {"API_KEY": f"{login}-api-key-0123"}},
            )
            # A worker runs the unit task: a session with output and a pending TTY question.
            worker = await claim_for(server.base, tenant.ids["unit"])
            workers[login] = worker
            tenant.ids["session"] = worker["sessionId"]
            await worker["api"].ok(
                "WorkerService/AppendLog",
                {**_lease(worker), "chunks": [{"sequence": 0, "data": f"{login}'s output\n"}]},
            )
            asked = await worker["api"].ok(
                "WorkerService/RequestTtyInput",
                {
                    **_lease(worker),
                    "prompt": "Deploy?",
                    "inputType": "TTY_INPUT_TYPE_CONFIRM",
                    "timeoutMs": 600_000,
                },
            )
            tenant.ids["tty"] = asked["request"]["id"]
            # Usage under a model name of the tenant's own: the other must never see it.
            tenant.ids["usage_model"] = f"{login}-model"
            await worker["api"].ok(
                "WorkerService/ReportUsage",
                {**_lease(worker), **USAGE[login], "model": tenant.ids["usage_model"]},
            )
        alice, mallory = tenants
        yield World(server, tenant_database, alice, mallory, workers)
    finally:
        for tenant in tenants:
            await tenant.api.close()
        for api in FLEET:
            await api.close()
        FLEET.clear()
        server.stop()


# What each tenant's run reports (int64 fields are strings in Connect JSON).
USAGE = {
    "alice": {"reportId": "r1", "inputTokens": "1000", "costMicros": "1234567"},
    "mallory": {"reportId": "r1", "inputTokens": "20", "costMicros": "7654321"},
}


def _lease(worker: dict[str, Any]) -> dict[str, Any]:
    return {k: worker[k] for k in ("workerId", "sessionId", "leaseToken")}


FLEET: list[Api] = []  # every worker client opened, closed with the world


async def claim_for(base: str, task_id: str) -> dict[str, Any]:
    """A new worker that runs ``task_id``. Jobs queued before it go to further new workers,
    which keep them (a worker runs one job at a time)."""
    for n in range(8):
        api = Api(base, REGISTRATION)
        FLEET.append(api)
        registered = await api.ok(
            "WorkerService/Register",
            {"name": f"w-{task_id[:8]}-{n}", "endpointUrl": "http://127.0.0.1:9"},
        )
        api.token = registered["credential"]
        claimed = await api.ok(
            "WorkerService/GetTask", {"workerId": registered["workerId"], "waitMs": 5000}
        )
        job = claimed.get("job")
        assert job is not None, f"no job for {task_id}"
        if job["taskId"] == task_id:
            return {
                "api": api,
                "workerId": registered["workerId"],
                "credential": registered["credential"],
                "sessionId": job["sessionId"],
                "leaseToken": job["leaseToken"],
            }
    raise AssertionError(f"task {task_id} was never handed out")


async def snapshot(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table a refused call could touch (less the columns background
    passes keep up to date, ``VOLATILE_COLUMNS``)."""

    def kept(table: str, columns: list[str], rows: list[Any]) -> list[tuple[Any, ...]]:
        skip = VOLATILE_COLUMNS.get(table, frozenset())
        return sorted(
            (tuple(v for c, v in zip(columns, row, strict=True) if c not in skip) for row in rows),
            key=repr,
        )

    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as db:
            tables = [
                r[0]
                for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                if r[0] not in VOLATILE_TABLES and not r[0].startswith(("sqlite_", "tortoise"))
            ]
            result = {}
            for t in tables:
                cursor = db.execute(f'SELECT * FROM "{t}"')
                columns = [d[0] for d in cursor.description]
                result[t] = kept(t, columns, cursor.fetchall())
            return result
    conn = await asyncpg.connect(database_url)
    try:
        names = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
        )
        tables = [
            r[0] for r in names if r[0] not in VOLATILE_TABLES and not r[0].startswith("tortoise")
        ]
        result = {}
        for t in tables:
            rows = await conn.fetch(f'SELECT * FROM "{t}"')
            columns = list(rows[0].keys()) if rows else []
            result[t] = kept(t, columns, [tuple(r) for r in rows])
        return result
    finally:
        await conn.close()


# -- Connect ---------------------------------------------------------------------------------

# Methods with nothing of another tenant to name: the login flow and the caller's own account
# (each has its own cases below), and the worker protocol (worker credentials, not users').
CONNECT_EXEMPT = {
    "AuthService/GetLoginUrl": "login flow, before any user",
    "AuthService/HandleCallback": "login flow, before any user",
    "WorkspaceService/Create": "creates in the caller's own tenant",
}
# The worker protocol: worker credentials, not a tenant's (tests/test_multi_user.py checks
# that a user's token is refused there).
CONNECT_EXEMPT_SERVICES = {"WorkerService"}


def connect_refusals(a: dict[str, str], own: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """(method, body naming alice's objects): each must answer not_found to mallory.
    ``own`` holds mallory's ids, for calls that mix her objects with alice's."""
    return [
        ("WorkspaceService/Get", {"workspaceId": a["workspace"]}),
        ("WorkspaceService/GetUsage", {"workspaceId": a["workspace"]}),
        ("WorkspaceService/GetUsage", {"workspaceId": a["workspace"], "days": 366}),
        ("WorkspaceService/Update", {"workspaceId": a["workspace"], "name": "stolen"}),
        ("WorkspaceService/Delete", {"workspaceId": a["workspace"]}),
        (
            "RepositoryService/Add",
            {"workspaceId": a["workspace"], "remoteUrl": "https://github.com/m/stolen"},
        ),
        ("RepositoryService/List", {"workspaceId": a["workspace"]}),
        ("RepositoryService/Get", {"repositoryId": a["repo1"]}),
        ("RepositoryService/Remove", {"repositoryId": a["repo1"]}),
        (
            "RepositoryService/SetWebhookSecret",
            {"repositoryId": a["repo1"], "secret": "mallory-secret-0123456789"},
        ),
        ("RepositoryService/SetWebhookSecret", {"repositoryId": a["repo1"], "secret": ""}),
        ("RepositoryService/UpdateSettings", {"repositoryId": a["repo1"], "autoTriage": False}),
        ("RepositoryGroupService/Create", {"workspaceId": a["workspace"], "repositoryIds": []}),
        (
            "RepositoryGroupService/Create",
            {"workspaceId": own["workspace"], "repositoryIds": [own["repo1"], a["repo1"]]},
        ),
        ("RepositoryGroupService/List", {"workspaceId": a["workspace"]}),
        ("RepositoryGroupService/Update", {"groupId": a["group"], "name": "stolen"}),
        (
            "RepositoryGroupService/Update",
            {"groupId": own["group"], "addRepositoryIds": [a["repo1"]]},
        ),
        (
            "RepositoryGroupService/Update",
            {"groupId": a["group"], "removeRepositoryIds": [a["repo2"]]},
        ),
        ("RepositoryGroupService/Delete", {"groupId": a["group"]}),
        ("TodoService/List", {"workspaceId": a["workspace"]}),
        ("TodoService/List", {"repositoryId": a["repo1"]}),
        ("TodoService/Get", {"itemId": a["todo"]}),
        ("TodoService/UpdateStatus", {"itemId": a["todo"], "status": "TODO_ITEM_STATUS_COMPLETED"}),
        ("TodoService/Dismiss", {"itemId": a["todo"]}),
        (
            "TodoService/Create",
            {
                "repositoryId": a["repo1"],
                "issueTriage": {"issueUrl": "https://x/1", "issueTitle": "t"},
            },
        ),
        ("TaskService/CreateUnit", {"repositoryGroupId": a["group"], "prompt": "p"}),
        ("TaskService/CreateComposite", {"repositoryGroupId": a["group"], "prompt": "p"}),
        ("TaskService/Get", {"taskId": a["unit"]}),
        ("TaskService/Get", {"taskId": a["composite"]}),
        ("TaskService/List", {"workspaceId": a["workspace"]}),
        ("TaskService/List", {"repositoryGroupId": a["group"]}),
        ("TaskService/UpdateStatus", {"taskId": a["unit"], "status": "UNIT_TASK_STATUS_DONE"}),
        ("TaskService/Delete", {"taskId": a["unit"]}),
        ("TaskService/Delete", {"taskId": a["composite"]}),
        ("TaskService/Retry", {"taskId": a["unit"]}),
        ("TaskService/SetPriority", {"taskId": a["unit"], "priority": "TASK_PRIORITY_HIGH"}),
        ("TaskService/SetPriority", {"taskId": a["composite"], "priority": "TASK_PRIORITY_LOW"}),
        ("TaskService/Approve", {"taskId": a["unit"]}),
        ("TaskService/Approve", {"taskId": a["composite"]}),
        ("TaskService/Reject", {"taskId": a["unit"], "reason": "r"}),
        ("TaskService/RequestChanges", {"taskId": a["unit"], "feedback": "f"}),
        ("SessionService/GetLog", {"sessionId": a["session"]}),
        ("SessionService/Stop", {"sessionId": a["session"]}),
        ("SessionService/SubmitTtyInput", {"requestId": a["tty"], "response": "yes"}),
        ("SessionService/Get", {"sessionId": a["session"]}),
        ("SessionService/ListTtyInputRequests", {"workspaceId": a["workspace"]}),
        ("SessionService/ListTtyInputRequests", {"taskId": a["unit"]}),
        ("SessionService/ListTtyInputRequests", {"sessionId": a["session"]}),
        ("SecretsService/Send", {"taskId": a["unit"], "secrets": {"API_KEY": "mallory's"}}),
        ("SecretsService/Clear", {"taskId": a["unit"]}),
    ]


# Lists without a filter: each must show the caller's objects and nothing of the other's.
CONNECT_LISTS = [
    ("WorkspaceService/List", "workspaces"),
    ("RepositoryService/List", "repositories"),
    ("RepositoryGroupService/List", "groups"),
    ("TodoService/List", "items"),
    ("TaskService/List", "tasks"),
    ("SessionService/ListTtyInputRequests", "requests"),
]
# Called by their own cases in the tests below.
CONNECT_SELF = {
    "SessionService/StreamLog",
    "AuthService/GetCurrentUser",
    "AuthService/RefreshToken",
    "AuthService/Logout",
}


def all_connect_methods() -> set[str]:
    """Service/Method for every rpc of the contract (proto/delidev/v1)."""
    names = set()
    for proto in (Path(__file__).parents[2] / "proto" / "delidev" / "v1").glob("*.proto"):
        text = proto.read_text()
        for service, body in re.findall(r"service (\w+) \{(.*?)\n\}", text, re.S):
            names.update(f"{service}/{rpc}" for rpc in re.findall(r"rpc (\w+)\(", body))
    assert len(names) > 40, names
    return names


def _not_found(response: httpx.Response) -> bool:
    return response.status_code == 404 and response.json().get("code") == "not_found"


async def test_every_connect_method_refuses_the_other_tenants_ids(world: World) -> None:
    alice, mallory = world.alice, world.mallory
    before = await snapshot(world.database_url)
    for method, body in connect_refusals(alice.ids, mallory.ids):
        response = await mallory.api.call(method, body)
        assert _not_found(response), f"{method} {body}: {response.status_code} {response.text}"
        # An error may name the id the caller sent, never anything stored under it.
        assert "alice" not in response.text.lower(), response.text
    messages, end = await mallory.api.stream(
        "SessionService/StreamLog", {"sessionId": alice.ids["session"]}
    )
    assert messages == []
    assert end is not None
    assert end["code"] == "not_found", end
    assert await snapshot(world.database_url) == before
    # The owner's calls still work, and see what mallory could not change.
    got = await alice.api.ok("WorkspaceService/Get", {"workspaceId": alice.ids["workspace"]})
    assert got["workspace"]["name"] == "alice-ws"
    log = await alice.api.ok("SessionService/GetLog", {"sessionId": alice.ids["session"]})
    assert log["content"] == "alice's output\n"
    secrets = await world.worker["api"].ok("WorkerService/GetSecrets", _lease(world.worker))
    assert secrets["secrets"] == {"API_KEY": "alice-api-key-0123"}


async def test_connect_lists_show_only_ones_own(world: World) -> None:
    for me, other in ((world.mallory, world.alice), (world.alice, world.mallory)):
        for method, key in CONNECT_LISTS:
            listed = await me.api.ok(method, {})
            text = json.dumps(listed)
            assert listed.get(key), f"{method}: the owner sees nothing: {listed}"
            leaked = [name for name, v in other.ids.items() if v in text]
            assert not leaked, f"{method} shows {leaked} of the other tenant"
    me = await world.mallory.api.ok("AuthService/GetCurrentUser")
    assert me["user"]["email"] == "mallory@example.com"


# -- GraphQL ---------------------------------------------------------------------------------


def graphql_refusals(a: dict[str, str], own: dict[str, str]) -> list[tuple[str, str]]:
    """(root field, document naming alice's objects): NOT_FOUND for mallory."""
    ws, repo, group, todo = a["workspace"], a["repo1"], a["group"], a["todo"]
    unit, composite, session, tty = a["unit"], a["composite"], a["session"], a["tty"]
    triage = '{issueUrl: "https://x/1", issueTitle: "t"}'
    q = [
        ("workspace", f'{{ workspace(id: "{ws}") {{ id }} }}'),
        ("repositories", f'{{ repositories(workspaceId: "{ws}") {{ totalCount }} }}'),
        ("repository", f'{{ repository(id: "{repo}") {{ id }} }}'),
        ("repositoryGroups", f'{{ repositoryGroups(workspaceId: "{ws}") {{ totalCount }} }}'),
        ("todoItems", f'{{ todoItems(workspaceId: "{ws}") {{ totalCount }} }}'),
        ("todoItems", f'{{ todoItems(repositoryId: "{repo}") {{ totalCount }} }}'),
        ("todoItem", f'{{ todoItem(id: "{todo}") {{ id }} }}'),
        ("tasks", f'{{ tasks(workspaceId: "{ws}") {{ totalCount }} }}'),
        ("tasks", f'{{ tasks(repositoryGroupId: "{group}") {{ totalCount }} }}'),
        ("task", f'{{ task(id: "{unit}") {{ __typename }} }}'),
        ("task", f'{{ task(id: "{composite}") {{ __typename }} }}'),
        ("session", f'{{ session(id: "{session}") {{ id }} }}'),
        ("workspace", f'{{ workspace(id: "{ws}") {{ usage {{ total {{ costMicros }} }} }} }}'),
        (
            "workspace",
            f'{{ workspace(id: "{ws}") {{ usage(days: 366) {{ models {{ model }} }} }} }}',
        ),
        ("task", f'{{ task(id: "{unit}") {{ usage {{ costMicros }} }} }}'),
        ("task", f'{{ task(id: "{composite}") {{ usage {{ costMicros }} }} }}'),
        ("session", f'{{ session(id: "{session}") {{ usage {{ costMicros }} }} }}'),
        ("ttyInputRequests", f'{{ ttyInputRequests(workspaceId: "{ws}") {{ totalCount }} }}'),
        ("ttyInputRequests", f'{{ ttyInputRequests(taskId: "{unit}") {{ totalCount }} }}'),
        ("ttyInputRequests", f'{{ ttyInputRequests(sessionId: "{session}") {{ totalCount }} }}'),
    ]
    mutations = [
        ("updateWorkspace", f'updateWorkspace(input: {{id: "{ws}", name: "stolen"}}) {{ id }}'),
        ("deleteWorkspace", f'deleteWorkspace(id: "{ws}")'),
        (
            "addRepository",
            f'addRepository(input: {{workspaceId: "{ws}", '
            'remoteUrl: "https://github.com/m/stolen"}) { id }',
        ),
        ("removeRepository", f'removeRepository(id: "{repo}")'),
        (
            "setRepositoryWebhookSecret",
            f'setRepositoryWebhookSecret(id: "{repo}", secret: "mallory-secret-0123456789")'
            " { id }",
        ),
        (
            "updateRepositorySettings",
            f'updateRepositorySettings(input: {{repositoryId: "{repo}", autoFixCiFailures: true}})'
            " { id }",
        ),
        (
            "createRepositoryGroup",
            f'createRepositoryGroup(input: {{workspaceId: "{ws}", repositoryIds: []}}) {{ id }}',
        ),
        (
            "createRepositoryGroup",
            f'createRepositoryGroup(input: {{workspaceId: "{own["workspace"]}", '
            f'repositoryIds: ["{own["repo1"]}", "{repo}"]}}) {{ id }}',
        ),
        (
            "updateRepositoryGroup",
            f'updateRepositoryGroup(input: {{id: "{group}", name: "stolen"}}) {{ id }}',
        ),
        (
            "updateRepositoryGroup",
            f'updateRepositoryGroup(input: {{id: "{own["group"]}", '
            f'addRepositoryIds: ["{repo}"]}}) {{ id }}',
        ),
        ("deleteRepositoryGroup", f'deleteRepositoryGroup(id: "{group}")'),
        (
            "createTodoItem",
            f'createTodoItem(input: {{repositoryId: "{repo}", issueTriage: {triage}}}) {{ id }}',
        ),
        ("updateTodoStatus", f'updateTodoStatus(id: "{todo}", status: COMPLETED) {{ id }}'),
        ("dismissTodo", f'dismissTodo(id: "{todo}") {{ id }}'),
        (
            "createUnitTask",
            f'createUnitTask(input: {{repositoryGroupId: "{group}", prompt: "p"}}) {{ id }}',
        ),
        (
            "createCompositeTask",
            f'createCompositeTask(input: {{repositoryGroupId: "{group}", prompt: "p"}}) {{ id }}',
        ),
        ("updateTaskStatus", f'updateTaskStatus(id: "{unit}", status: DONE) {{ __typename }}'),
        ("deleteTask", f'deleteTask(id: "{unit}")'),
        ("deleteTask", f'deleteTask(id: "{composite}")'),
        ("retryTask", f'retryTask(id: "{unit}") {{ __typename }}'),
        (
            "setTaskPriority",
            f'setTaskPriority(taskId: "{unit}", priority: HIGH) {{ __typename }}',
        ),
        (
            "setTaskPriority",
            f'setTaskPriority(taskId: "{composite}", priority: LOW) {{ __typename }}',
        ),
        ("approveTask", f'approveTask(id: "{unit}") {{ __typename }}'),
        ("approveTask", f'approveTask(id: "{composite}") {{ __typename }}'),
        ("rejectTask", f'rejectTask(id: "{unit}", reason: "r") {{ __typename }}'),
        ("requestChanges", f'requestChanges(id: "{unit}", feedback: "f") {{ id }}'),
        ("stopSession", f'stopSession(id: "{session}") {{ id }}'),
        ("submitTtyInput", f'submitTtyInput(requestId: "{tty}", response: "yes") {{ id }}'),
    ]
    return q + [(name, f"mutation {{ {body} }}") for name, body in mutations]


def subscription_refusals(a: dict[str, str]) -> list[tuple[str, str]]:
    return [
        ("sessionLog", f'subscription {{ sessionLog(sessionId: "{a["session"]}") {{ offset }} }}'),
        ("taskUpdated", f'subscription {{ taskUpdated(taskId: "{a["unit"]}") {{ taskId }} }}'),
        (
            "taskUpdated",
            f'subscription {{ taskUpdated(taskId: "{a["composite"]}") {{ taskId }} }}',
        ),
        (
            "taskUpdated",
            f'subscription {{ taskUpdated(workspaceId: "{a["workspace"]}") {{ taskId }} }}',
        ),
        (
            "ttyInputRequested",
            f'subscription {{ ttyInputRequested(workspaceId: "{a["workspace"]}") {{ id }} }}',
        ),
        (
            "budgetWarnings",
            f'subscription {{ budgetWarnings(workspaceId: "{a["workspace"]}") {{ spentMicros }} }}',
        ),
    ]


# Root fields without another tenant's id to name: the lists (walked in full below, the
# fleet's too), creating in one's own tenant, and the fleet's events (their per-tenant view
# is tested below).
GRAPHQL_SELF = {
    "Query.workspaces",
    "Query.repositories",
    "Query.repositoryGroups",
    "Query.todoItems",
    "Query.tasks",
    "Query.ttyInputRequests",
    "Query.workers",
    "Mutation.createWorkspace",
    "Subscription.workerUpdated",
}


# Types only subscriptions return (tested with the subscriptions below).
SUBSCRIPTION_ONLY_TYPES = {"BudgetWarning", "LogChunk", "TaskUpdate", "WorkerUpdate"}


def _schema() -> Any:
    return build_schema(Settings())._schema


def selection(
    schema: Any, named: GraphQLNamedType, path: frozenset[str], seen: set[str], alias: str = ""
) -> str:
    """Every field reachable from ``named`` without arguments it must be given (and every
    implementation of an interface or member of a union), each type at most once on a path,
    so a cycle such as Repository.workspace.repositories ends. Fields in a type condition get
    an alias (``UnitTask_status``), as two implementations may type one name differently."""
    if isinstance(named, GraphQLScalarType | GraphQLEnumType):
        return ""
    seen.add(named.name)
    fields = ["__typename"]
    if isinstance(named, GraphQLObjectType | GraphQLInterfaceType):
        for name, f in named.fields.items():
            if any(is_required_argument(arg) for arg in f.args.values()):
                continue
            inner = get_named_type(f.type)
            key = f"{alias}{name}: {name}" if alias else name
            if isinstance(inner, GraphQLScalarType | GraphQLEnumType):
                fields.append(key)
            elif inner.name not in path:
                fields.append(f"{key} {selection(schema, inner, path | {inner.name}, seen)}")
    if isinstance(named, GraphQLUnionType | GraphQLInterfaceType):
        for t in schema.get_possible_types(named):
            below = selection(schema, t, path | {t.name}, seen, alias=f"{t.name}_")
            fields.append(f"... on {t.name} {below}")
    return "{ " + " ".join(fields) + " }"


def walk_documents(seen: set[str] | None = None) -> dict[str, str]:
    """For each list root field, a query selecting everything below it."""
    seen = set() if seen is None else seen
    schema = _schema()
    query = schema.query_type
    documents = {}
    for root in sorted(GRAPHQL_SELF):
        kind, name = root.split(".")
        if kind == "Query":
            root = get_named_type(query.fields[name].type)
            below = selection(schema, root, frozenset({"Query"}), seen)
            documents[name] = f"{{ {name} {below} }}"
    return documents


def test_every_method_and_field_has_an_isolation_case() -> None:
    ids = dict.fromkeys(
        ("workspace", "repo1", "repo2", "group", "todo", "unit", "composite", "session", "tty"),
        "00000000-0000-0000-0000-000000000000",
    )
    covered = {m for m, _ in connect_refusals(ids, ids)} | {m for m, _ in CONNECT_LISTS}
    covered |= CONNECT_SELF | set(CONNECT_EXEMPT)
    covered |= {m for m in all_connect_methods() if m.split("/")[0] in CONNECT_EXEMPT_SERVICES}
    assert all_connect_methods() - covered == set()
    schema = _schema()
    fields = {
        f"{kind}.{name}"
        for kind, t in (
            ("Query", schema.query_type),
            ("Mutation", schema.mutation_type),
            ("Subscription", schema.subscription_type),
        )
        for name in t.fields
    }
    named = {
        f"Query.{n}" for n, doc in graphql_refusals(ids, ids) if not doc.startswith("mutation")
    }
    named |= {
        f"Mutation.{n}" for n, doc in graphql_refusals(ids, ids) if doc.startswith("mutation")
    }
    named |= {f"Subscription.{n}" for n, _ in subscription_refusals(ids)}
    assert fields - (named | GRAPHQL_SELF) == set()
    # The walk of the lists reaches every object type a query can return.
    seen: set[str] = set()
    walk_documents(seen)
    query_types = {
        t.name
        for t in schema.type_map.values()
        if isinstance(t, GraphQLObjectType)
        and not t.name.startswith("__")
        and t.name not in SUBSCRIPTION_ONLY_TYPES | {"Query", "Mutation", "Subscription"}
    }
    assert query_types - seen == set()


def _code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors") or []
    return errors[0]["extensions"]["code"] if errors else None


async def test_every_graphql_field_refuses_the_other_tenants_ids(world: World) -> None:
    alice, mallory = world.alice, world.mallory
    before = await snapshot(world.database_url)
    for name, document in graphql_refusals(alice.ids, mallory.ids):
        body = await mallory.api.gql(document)
        assert _code(body) == "NOT_FOUND", f"{name}: {document}\n{body}"
        assert body.get("data") is None, body
        assert "alice" not in json.dumps(body).lower(), body
    assert await snapshot(world.database_url) == before
    # The same reads as the owner succeed.
    for name, document in graphql_refusals(alice.ids, alice.ids):
        if not document.startswith("mutation"):
            body = await alice.api.gql(document)
            assert "errors" not in body, f"{name}: {body}"


async def test_lists_and_every_nested_field_show_only_ones_own(world: World) -> None:
    documents = walk_documents()
    for me, other in ((world.alice, world.mallory), (world.mallory, world.alice)):
        seen = ""
        for name, document in documents.items():
            body = await me.api.gql(document)
            assert "errors" not in body, f"{name}: {body}"
            text = json.dumps(body)
            leaked = [k for k, v in other.ids.items() if v in text]
            assert not leaked, f"{name} shows the other tenant's {leaked}"
            seen += text
        # The walk does reach everything the owner has (so the check above can fail).
        missing = [k for k, v in me.ids.items() if v not in seen]
        assert not missing, f"the walk never reached {missing}"


async def test_usage_counts_and_shows_only_for_ones_own_runs(world: World) -> None:
    """A worker reports usage only into the run it holds: naming another tenant's run, or
    another worker's lease, is refused and counts nowhere. Each tenant's totals, on both
    APIs, are its own."""
    alice, mallory = world.alice, world.mallory
    theirs = world.workers["mallory"]
    report = {"reportId": "stolen", "model": "m", "costMicros": "1"}
    before = await snapshot(world.database_url)
    # Its own worker id and lease, alice's run: the lease does not hold that run.
    stolen = await theirs["api"].call(
        "WorkerService/ReportUsage",
        {**_lease(theirs), "sessionId": alice.ids["session"], **report},
    )
    assert (stolen.status_code, stolen.json()["code"]) == (409, "aborted"), stolen.text
    # Alice's worker id and lease, under its own credential.
    borrowed = await theirs["api"].call(
        "WorkerService/ReportUsage", {**_lease(world.workers["alice"]), **report}
    )
    assert (borrowed.status_code, borrowed.json()["code"]) == (401, "unauthenticated")
    assert "alice" not in (stolen.text + borrowed.text).lower()
    assert await snapshot(world.database_url) == before

    for me in (alice, mallory):
        sent = USAGE[me.ids["usage_model"].removesuffix("-model")]
        got = await me.api.ok("WorkspaceService/GetUsage", {"workspaceId": me.ids["workspace"]})
        assert got["total"] == {
            "inputTokens": sent["inputTokens"],
            "costMicros": sent["costMicros"],
            "reports": "1",
        }
        assert [u["model"] for u in got["models"]] == [me.ids["usage_model"]]
        body = await me.api.gql(
            "query($w: ID!, $t: ID!, $s: ID!) { workspace(id: $w) { usage { total { costMicros }"
            " models { model } } } task(id: $t) { usage { costMicros } }"
            " session(id: $s) { usage { costMicros } } }",
            {"w": me.ids["workspace"], "t": me.ids["unit"], "s": me.ids["session"]},
        )
        cost = int(sent["costMicros"])
        assert body == {
            "data": {
                "workspace": {
                    "usage": {
                        "total": {"costMicros": cost},
                        "models": [{"model": me.ids["usage_model"]}],
                    }
                },
                "task": {"usage": {"costMicros": cost}},
                "session": {"usage": {"costMicros": cost}},
            }
        }, body


# -- subscriptions ---------------------------------------------------------------------------


async def _ws(world: World, tenant: Tenant) -> GraphQLWs:
    client = GraphQLWs(world.server.base)
    await client.connect({"authorization": f"Bearer {tenant.api.token}"})
    return client


async def _next(client: GraphQLWs, within: float = 15) -> dict[str, Any]:
    """The next message that is not a keep-alive."""
    while True:
        message = await client.receive(within)
        if message["type"] == "ping":
            await client.send({"type": "pong"})
            continue
        return message


async def _until_live(
    client: GraphQLWs, probes: dict[str, Callable[[], Awaitable[object]]]
) -> dict[str, dict[str, Any]]:
    """Returns once every subscription in ``probes`` (operation id -> a call that makes an
    event it must hear) has heard an event: each probe is fired again every second until its
    subscription hears one, so no fixed wait guesses how long the set-up takes. Returns the
    first message each heard; the rest heard meanwhile is consumed, and probes fired twice may
    still be heard later."""
    waiting = dict(probes)
    heard: dict[str, dict[str, Any]] = {}
    deadline = asyncio.get_running_loop().time() + GUARD_S
    while waiting:
        assert asyncio.get_running_loop().time() < deadline, f"never heard {sorted(waiting)}"
        for probe in waiting.values():
            await probe()
        with contextlib.suppress(TimeoutError):
            while waiting:
                message = await _next(client, within=1)
                if waiting.pop(message["id"], None) is not None:
                    heard[message["id"]] = message
    return heard


async def _drain(client: GraphQLWs) -> None:
    """Reads (and answers pings) until the server closes the connection."""
    while True:
        await _next(client, within=10)


async def test_subscriptions_refuse_the_other_tenants_ids(world: World) -> None:
    client = await _ws(world, world.mallory)
    try:
        for name, document in subscription_refusals(world.alice.ids):
            op = await client.subscribe(document)
            message = await _next(client)
            assert message["id"] == op, message
            assert message["type"] == "next", message
            errors = message["payload"]["errors"]
            assert errors[0]["extensions"]["code"] == "NOT_FOUND", (name, message)
            assert "alice" not in json.dumps(message).lower()
            done = await _next(client)
            assert (done["id"], done["type"]) == (op, "complete"), done
        # The connection is still good for mallory's own objects.
        own = world.mallory.ids["session"]
        await client.subscribe(
            "subscription($s: ID!) { sessionLog(sessionId: $s) { data } }", {"s": own}
        )
        first = await _next(client)
        assert first["payload"]["data"]["sessionLog"]["data"] == "mallory's output\n", first
    finally:
        await client.close()


async def test_events_reach_only_their_tenant(world: World) -> None:
    """Subscriptions on one's own workspace get one's own events only, and the shared fleet
    shows each tenant only its own tasks."""
    alice, mallory = world.alice, world.mallory
    watcher = await _ws(world, mallory)
    owner = await _ws(world, alice)
    try:
        tasks_op = await watcher.subscribe(
            "subscription($w: ID!) { taskUpdated(workspaceId: $w) { taskId } }",
            {"w": mallory.ids["workspace"]},
        )
        tty_op = await watcher.subscribe(
            "subscription($w: ID!) { ttyInputRequested(workspaceId: $w) { id prompt } }",
            {"w": mallory.ids["workspace"]},
        )
        fleet_op = await watcher.subscribe(
            "subscription { workerUpdated { workerId worker { status currentTaskId } } }"
        )
        owners_fleet = await owner.subscribe(
            "subscription { workerUpdated { workerId worker { status currentTaskId } } }"
        )
        probe_tasks: list[str] = []
        probe_workers: list[str] = []

        async def probe_task() -> None:
            created = await mallory.api.ok(
                "TaskService/CreateUnit",
                {"repositoryGroupId": mallory.ids["group"], "prompt": "mallory probe"},
            )
            probe_tasks.append(created["task"]["unitTask"]["id"])

        async def probe_tty() -> None:
            await world.workers["mallory"]["api"].ok(
                "WorkerService/RequestTtyInput",
                {
                    **_lease(world.workers["mallory"]),
                    "prompt": "mallory probe",
                    "inputType": "TTY_INPUT_TYPE_TEXT",
                    "timeoutMs": 600_000,
                },
            )

        async def probe_fleet() -> None:
            api = Api(world.server.base, REGISTRATION)
            FLEET.append(api)
            registered = await api.ok(
                "WorkerService/Register",
                {"name": f"probe-{len(probe_workers)}", "endpointUrl": "http://127.0.0.1:9"},
            )
            probe_workers.append(registered["workerId"])

        await _until_live(watcher, {tasks_op: probe_task, tty_op: probe_tty, fleet_op: probe_fleet})
        await _until_live(owner, {owners_fleet: probe_fleet})
        # Alice's events first, then mallory's own as markers.
        extra = (
            await alice.api.ok(
                "TaskService/CreateUnit",
                {"repositoryGroupId": alice.ids["group"], "prompt": "alice extra"},
            )
        )["task"]["unitTask"]["id"]
        await world.workers["alice"]["api"].ok(
            "WorkerService/RequestTtyInput",
            {
                **_lease(world.workers["alice"]),
                "prompt": "alice asks",
                "inputType": "TTY_INPUT_TYPE_TEXT",
                "timeoutMs": 600_000,
            },
        )
        marker = (
            await mallory.api.ok(
                "TaskService/CreateUnit",
                {"repositoryGroupId": mallory.ids["group"], "prompt": "mallory marker"},
            )
        )["task"]["unitTask"]["id"]
        await world.workers["mallory"]["api"].ok(
            "WorkerService/RequestTtyInput",
            {
                **_lease(world.workers["mallory"]),
                "prompt": "mallory asks",
                "inputType": "TTY_INPUT_TYPE_TEXT",
                "timeoutMs": 600_000,
            },
        )
        runner = await claim_for(world.server.base, extra)

        seen: dict[str, list[Any]] = {tasks_op: [], tty_op: [], fleet_op: []}
        while not (
            any(t["taskUpdated"]["taskId"] == marker for t in seen[tasks_op])
            and seen[tty_op]
            and any(
                w["workerUpdated"]["workerId"] == runner["workerId"]
                and (w["workerUpdated"]["worker"] or {}).get("status") == "BUSY"
                for w in seen[fleet_op]
            )
        ):
            message = await _next(watcher)
            assert message["type"] == "next", message
            seen[message["id"]].append(message["payload"]["data"])
        mallorys = {mallory.ids["unit"], mallory.ids["composite"], marker, None, *probe_tasks}
        # Her own events only (her composite may be updated too, when a worker claims it).
        assert {t["taskUpdated"]["taskId"] for t in seen[tasks_op]} <= mallorys
        prompts = [t["ttyInputRequested"]["prompt"] for t in seen[tty_op]]
        assert [p for p in prompts if p != "mallory probe"] == ["mallory asks"], prompts
        shown = {(w["workerUpdated"]["worker"] or {}).get("currentTaskId") for w in seen[fleet_op]}
        assert shown <= mallorys, shown

        # The owner does see her task on the same worker.
        while True:
            message = await _next(owner)
            update = message["payload"]["data"]["workerUpdated"]
            current = (update["worker"] or {}).get("currentTaskId")
            assert current in {alice.ids["unit"], alice.ids["composite"], extra, None}
            if update["workerId"] == runner["workerId"] and current == extra:
                break
    finally:
        await watcher.close()
        await owner.close()


async def test_a_user_signed_in_through_oidc_uses_subscriptions_refreshes_and_logs_out(
    world: World,
) -> None:
    base = world.server.base
    session = await sign_in(base, "carol")
    assert session["user"]["email"] == "carol@example.com"
    carol = Tenant(api=Api(base, session["accessToken"]), session=session)
    try:
        ws = (await carol.api.ok("WorkspaceService/Create", {"name": "carol-ws"}))["workspace"]
        listed = await carol.api.gql("{ workspaces { items { id name } } }")
        assert listed == {"data": {"workspaces": {"items": [{"id": ws["id"], "name": "carol-ws"}]}}}
        repo = (
            await carol.api.ok(
                "RepositoryService/Add",
                {"workspaceId": ws["id"], "remoteUrl": "https://github.com/carol/app"},
            )
        )["repository"]["id"]
        group = (
            await carol.api.ok(
                "RepositoryGroupService/Create",
                {"workspaceId": ws["id"], "repositoryIds": [repo]},
            )
        )["group"]["id"]
        client = await _ws(world, carol)
        try:
            op = await client.subscribe(
                "subscription($w: ID!) { taskUpdated(workspaceId: $w) { taskId } }",
                {"w": ws["id"]},
            )
            created: list[str] = []

            async def create_task() -> None:
                task = await carol.api.ok(
                    "TaskService/CreateUnit", {"repositoryGroupId": group, "prompt": "carol's"}
                )
                created.append(task["task"]["unitTask"]["id"])

            # Her new task's event reaches her socket (tasks are created until the
            # subscription, set up in the background, hears one).
            heard = await _until_live(client, {op: create_task})
            assert heard[op]["payload"]["data"]["taskUpdated"]["taskId"] in created, heard
        finally:
            await client.close()

        # Refresh: a new pair; the new access token opens both APIs and the WebSocket.
        refreshed = await carol.api.ok(
            "AuthService/RefreshToken", {"refreshToken": session["refreshToken"]}
        )
        assert refreshed["refreshToken"] != session["refreshToken"]
        carol.api.token = refreshed["accessToken"]
        me = await carol.api.ok("AuthService/GetCurrentUser")
        assert me["user"]["id"] == session["user"]["id"]
        again = await _ws(world, carol)
        await again.close()

        # Logout: the access token and the refresh token stop working everywhere, and the
        # WebSockets opened with it (both protocols) are closed.
        open_sockets = [await _ws(world, carol)]
        await open_sockets[0].subscribe(
            "subscription($w: ID!) { taskUpdated(workspaceId: $w) { taskId } }", {"w": ws["id"]}
        )
        legacy = GraphQLWs(base, protocol="graphql-ws")
        await legacy.connect({"authorization": f"Bearer {carol.api.token}"})
        open_sockets.append(legacy)
        await carol.api.ok("AuthService/Logout", {"refreshToken": refreshed["refreshToken"]})
        for socket in open_sockets:
            with pytest.raises(websockets.ConnectionClosed) as ended:
                await _drain(socket)
            assert ended.value.rcvd is not None
            assert ended.value.rcvd.code == 4403, ended.value.rcvd
            assert "revoked" in ended.value.rcvd.reason
        refused = await carol.api.call("WorkspaceService/List")
        assert (refused.status_code, refused.json()["code"]) == (401, "unauthenticated")
        gql = await carol.api.gql("{ workspaces { totalCount } }")
        assert gql["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        stale = await carol.api.call(
            "AuthService/RefreshToken", {"refreshToken": refreshed["refreshToken"]}
        )
        assert stale.json()["code"] == "unauthenticated"
        closed_out = GraphQLWs(base)
        await closed_out.connect(init=False)
        await closed_out.send(
            {"type": "connection_init", "payload": {"authorization": f"Bearer {carol.api.token}"}}
        )
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await closed_out.receive(5)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 4403
        # Mallory cannot log alice out with alice's refresh token either.
        second = await sign_in(base, "mallory")
        intruder = Api(base, second["accessToken"])
        try:
            await intruder.ok(
                "AuthService/Logout", {"refreshToken": world.alice.session["refreshToken"]}
            )
        finally:
            await intruder.close()
        anonymous = Api(base, None)
        try:
            survived = await anonymous.call(
                "AuthService/RefreshToken", {"refreshToken": world.alice.session["refreshToken"]}
            )
        finally:
            await anonymous.close()
        assert survived.status_code == 200, survived.text
        world.alice.api.token = survived.json()["accessToken"]
        world.alice.session = survived.json() | {"user": world.alice.session["user"]}
    finally:
        await carol.api.close()


async def test_every_method_and_field_refuses_a_request_without_a_valid_token(
    world: World,
) -> None:
    """Enforcement everywhere: each Connect method but the login ones, each GraphQL query,
    mutation and subscription, StreamLog. (Each kind of bad token, on one method:
    tests/test_multi_user.py.)"""
    base = world.server.base
    a, own = world.alice.ids, world.mallory.ids
    header, payload, signature = str(world.alice.api.token).split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    before = await snapshot(world.database_url)
    calls = connect_refusals(a, own) + [(m, {}) for m, _ in CONNECT_LISTS]
    calls += [
        ("WorkspaceService/Create", {"name": "anonymous"}),
        ("AuthService/GetCurrentUser", {}),
    ]
    calls += [("AuthService/Logout", {"refreshToken": world.alice.session["refreshToken"]})]
    calls += [
        (f"WorkerService/{method.split('/')[1]}", {"workerId": world.worker["workerId"]})
        for method in sorted(all_connect_methods())
        if method.startswith("WorkerService/")
        and method not in ("WorkerService/Register", "WorkerService/Watch")  # Watch: a stream
    ]
    for token in (None, tampered):
        client = Api(base, token)
        try:
            for method, body in calls:
                response = await client.call(method, body)
                assert response.status_code == 401, f"{method}: {response.text}"
                assert response.json()["code"] == "unauthenticated", method
            messages, end = await client.stream(
                "SessionService/StreamLog", {"sessionId": a["session"]}
            )
            assert messages == []
            assert end is not None
            assert end["code"] == "unauthenticated", end
            messages, end = await client.stream(
                "WorkerService/Watch", {"workerId": world.worker["workerId"]}
            )
            assert messages == []
            assert end is not None
            assert end["code"] == "unauthenticated", end
            documents = graphql_refusals(a, own) + [
                (name, doc) for name, doc in walk_documents().items()
            ]
            documents += [
                ("createWorkspace", 'mutation { createWorkspace(input: {name: "x"}) { id } }')
            ]
            for name, document in documents:
                body = await client.gql(document)
                assert _code(body) == "UNAUTHENTICATED", f"{name}: {body}"
                assert body.get("data") is None, body
            refused = GraphQLWs(base)
            await refused.connect(init=False)
            await refused.send(
                {
                    "type": "connection_init",
                    "payload": {"authorization": f"Bearer {token}"} if token else {},
                }
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await refused.receive(5)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 4403
        finally:
            await client.close()
    assert await snapshot(world.database_url) == before
    # Alice's refresh token survived the anonymous Logout attempts.
    assert (await world.alice.api.call("AuthService/GetCurrentUser")).status_code == 200
