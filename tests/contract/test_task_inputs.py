"""Bad input to TaskService / SessionService and their GraphQL mutations, on the wire.

Each case is sent as raw JSON over Connect and as a GraphQL document with variables, and
must be refused with the same code, the field at fault named (the Connect request field;
in GraphQL the argument, or the variable when graphql-core refuses the variable itself),
and nothing changed in the database. Then: listing pending TTY questions per task and per
workspace on both transports, and a password answer never shown back.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1 import task_pb
from delidev.connect.gen.delidev.v1.common_pb import AiAgentType, ErrorInfo
from delidev.services import sessions, tasks
from delidev.services.common import encode_cursor
from tests.factories import make_group, make_repository, make_workspace, start_latest

pytestmark = pytest.mark.usefixtures("database")

JSON = {"Content-Type": "application/json"}
PROTO = {"Content-Type": "application/proto"}
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "NOT_FOUND": 404}
SPEC_CODE = {"INVALID_ARGUMENT": -32602, "NOT_FOUND": -32003}
UNKNOWN_ID = "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"


@dataclass(frozen=True)
class World:
    """What the cases point at: a group, a task with a running session, a pending question."""

    group_id: str
    task_id: str
    session_id: str
    tty_request_id: str


@dataclass(frozen=True)
class Refusal:
    code: str
    delidev_code: int
    field: str
    message: str


async def _world() -> World:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    question = await sessions.create_tty_request(
        session_id=session.id,
        prompt="Branch?",
        input_type=m.TtyInputType.TEXT,
        expires_in=dt.timedelta(minutes=5),
    )
    return World(str(group.id), str(task.id), str(session.id), str(question.id))


async def _database_state() -> dict[str, Any]:
    """Every row the cases could touch, as plain values."""
    return {
        "workspaces": await m.Workspace.all().count(),
        "groups": await m.RepositoryGroup.all().count(),
        "unit_tasks": sorted(
            await m.UnitTask.all().values_list("id", "status", "prompt", "title", "updated_at")
        ),
        "composite_tasks": await m.CompositeTask.all().count(),
        "agent_tasks": await m.AgentTask.all().count(),
        "sessions": sorted(await m.AgentSession.all().values_list("id", "status", "attempt")),
        "tty_requests": sorted(
            await m.TtyInputRequest.all().values_list("id", "status", "response")
        ),
    }


def _error_info(body: dict[str, Any]) -> ErrorInfo:
    detail = body["details"][0]
    assert detail["type"] == "delidev.v1.ErrorInfo"
    raw = detail["value"]
    return ErrorInfo.from_binary(base64.b64decode(raw + "=" * (-len(raw) % 4)))


async def _connect(
    http: httpx.AsyncClient, method: str, body: bytes, headers: dict[str, str] = JSON
) -> Refusal:
    response = await http.post(f"/delidev.v1.{method}", content=body, headers=headers)
    assert "Traceback" not in response.text
    payload = response.json()
    code = str(payload["code"]).upper()
    assert response.status_code == HTTP_STATUS[code], response.text
    info = _error_info(payload)
    return Refusal(code, info.delidev_code, info.field, payload["message"])


async def _graphql(http: httpx.AsyncClient, query: str, variables: dict[str, Any]) -> Refusal:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    assert response.status_code == 200, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert body.get("data") is None, body
    assert len(body["errors"]) == 1, body["errors"]
    error = body["errors"][0]
    ext = error["extensions"]
    return Refusal(ext["code"], ext["delidevCode"], ext.get("field", ""), error["message"])


# The cases --------------------------------------------------------------------------------

Build = Callable[[World], dict[str, Any]]

CREATE_UNIT = "mutation($i: CreateUnitTaskInput!) { createUnitTask(input: $i) { id } }"
CREATE_COMPOSITE = (
    "mutation($i: CreateCompositeTaskInput!) { createCompositeTask(input: $i) { id } }"
)
UPDATE_STATUS = (
    "mutation($id: ID!, $s: UnitTaskStatus!) { updateTaskStatus(id: $id, status: $s) { id } }"
)
LIST_TASKS = "query($s: UnitTaskStatus) { tasks(unitStatus: $s) { totalCount } }"
LIST_TTY = "query($s: TtyInputStatus) { ttyInputRequests(status: $s) { totalCount } }"
AFTER = "query($a: String) { tasks(after: $a) { totalCount } }"
GET_LOG = "query($id: ID!) { session(id: $id) { log { content } } }"
SUBMIT_TTY = 'mutation($id: ID!) { submitTtyInput(requestId: $id, response: "main") { status } }'


@dataclass(frozen=True)
class Side:
    """One transport's request and what its refusal must say."""

    request: str  # Connect method, or GraphQL document
    build: Build  # JSON body, or GraphQL variables
    field: str
    mentions: str  # a fragment of the message
    xfail: str | None = None


@dataclass(frozen=True)
class Case:
    id: str
    code: str
    connect: Side
    graphql: Side


def _unit(**fields: Any) -> Build:
    return lambda w: {"repositoryGroupId": w.group_id, "prompt": "p", **fields}


def _without_group(**fields: Any) -> Build:
    return lambda w: {"prompt": "p", **fields}


def _cursor_case(name: str, cursor: str) -> Case:
    return Case(
        f"cursor-offset-{name}",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/List",
            lambda w: {"pageToken": cursor},
            "page_token",
            "not a cursor this server issued",
        ),
        Side(AFTER, lambda w: {"a": cursor}, "after", "not a cursor"),
    )


CASES = [
    Case(
        "unknown-agent-type",
        "INVALID_ARGUMENT",
        Side("TaskService/CreateUnit", _unit(aiAgentType="NOPE"), "ai_agent_type", "'NOPE'"),
        Side(
            CREATE_UNIT,
            lambda w: {"i": _unit(aiAgentType="NOPE")(w)},
            "i",
            "aiAgentType: Value 'NOPE' does not exist",
        ),
    ),
    Case(
        "agent-type-as-unknown-number",
        "INVALID_ARGUMENT",
        Side("TaskService/CreateUnit", _unit(aiAgentType=42), "ai_agent_type", "42"),
        Side(CREATE_UNIT, lambda w: {"i": _unit(aiAgentType=42)(w)}, "i", "AiAgentType"),
    ),
    Case(
        "unknown-execution-agent-type",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/CreateComposite",
            _unit(executionAgentType="NOPE"),
            "execution_agent_type",
            "'NOPE'",
        ),
        Side(
            CREATE_COMPOSITE,
            lambda w: {"i": _unit(executionAgentType="NOPE")(w)},
            "i",
            "executionAgentType",
        ),
    ),
    Case(
        "unknown-planning-agent-type",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/CreateComposite",
            _unit(planningAgentType="NOPE"),
            "planning_agent_type",
            "planning_agent_type",
        ),
        Side(
            CREATE_COMPOSITE,
            lambda w: {"i": _unit(planningAgentType="NOPE")(w)},
            "i",
            "planningAgentType",
        ),
    ),
    Case(
        "unknown-status",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/UpdateStatus",
            lambda w: {"taskId": w.task_id, "status": "NOPE"},
            "status",
            "'NOPE'",
        ),
        Side(UPDATE_STATUS, lambda w: {"id": w.task_id, "s": "NOPE"}, "s", "UnitTaskStatus"),
    ),
    Case(
        "unknown-status-filter",
        "INVALID_ARGUMENT",
        Side("TaskService/List", lambda w: {"unitStatus": "NOPE"}, "unit_status", "'NOPE'"),
        Side(LIST_TASKS, lambda w: {"s": "NOPE"}, "s", "UnitTaskStatus"),
    ),
    # Past what a 64-bit integer holds, SQLite and PostgreSQL would overflow.
    *[
        _cursor_case(name, cursor)
        for name, cursor in [
            ("2^63", encode_cursor(2**63)),
            ("2^31", encode_cursor(2**31)),
            ("negative", encode_cursor(-1)),
            ("overlong", encode_cursor(1) + "A" * 100),
        ]
    ],
    Case(
        "unknown-tty-status-filter",
        "INVALID_ARGUMENT",
        Side("SessionService/ListTtyInputRequests", lambda w: {"status": "NOPE"}, "status", "NOPE"),
        Side(LIST_TTY, lambda w: {"s": "NOPE"}, "s", "TtyInputStatus"),
    ),
    Case(
        "title-too-long",
        "INVALID_ARGUMENT",
        Side("TaskService/CreateUnit", _unit(title="t" * 256), "title", "at most 255"),
        Side(CREATE_UNIT, lambda w: {"i": _unit(title="t" * 256)(w)}, "title", "at most 255"),
    ),
    Case(
        "prompt-too-long",
        "INVALID_ARGUMENT",
        Side("TaskService/CreateUnit", _unit(prompt="p" * 100_001), "prompt", "at most 100000"),
        Side(
            CREATE_UNIT,
            lambda w: {"i": _unit(prompt="p" * 100_001)(w)},
            "prompt",
            "at most 100000",
        ),
    ),
    Case(
        "composite-title-too-long",
        "INVALID_ARGUMENT",
        Side("TaskService/CreateComposite", _unit(title="t" * 256), "title", "at most 255"),
        Side(CREATE_COMPOSITE, lambda w: {"i": _unit(title="t" * 256)(w)}, "title", "at most 255"),
    ),
    Case(
        "missing-group",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/CreateUnit",
            _without_group(),
            "repository_group_id",
            "repository_group_id is required",
        ),
        Side(
            CREATE_UNIT,
            lambda w: {"i": _without_group()(w)},
            "i",
            "required field 'repositoryGroupId'",
        ),
    ),
    Case(
        "blank-group",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/CreateUnit",
            _without_group(repositoryGroupId="  "),
            "repository_group_id",
            "is required",
        ),
        Side(
            CREATE_UNIT,
            lambda w: {"i": _without_group(repositoryGroupId="  ")(w)},
            "repositoryGroupId",
            "is required",
        ),
    ),
    Case(
        "malformed-group",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/CreateComposite",
            _without_group(repositoryGroupId="group-1"),
            "repository_group_id",
            "not a valid id",
        ),
        Side(
            CREATE_COMPOSITE,
            lambda w: {"i": _without_group(repositoryGroupId="group-1")(w)},
            "repositoryGroupId",
            "not a valid id",
        ),
    ),
    # NotFound names the request's field for the group on both transports (each in its
    # own spelling, as for the InvalidArgument cases above).
    Case(
        "unknown-group",
        "NOT_FOUND",
        Side(
            "TaskService/CreateUnit",
            _without_group(repositoryGroupId=UNKNOWN_ID),
            "repository_group_id",
            UNKNOWN_ID,
        ),
        Side(
            CREATE_UNIT,
            lambda w: {"i": _without_group(repositoryGroupId=UNKNOWN_ID)(w)},
            "repositoryGroupId",
            UNKNOWN_ID,
        ),
    ),
    Case(
        "composite-unknown-group",
        "NOT_FOUND",
        Side(
            "TaskService/CreateComposite",
            _without_group(repositoryGroupId=UNKNOWN_ID),
            "repository_group_id",
            UNKNOWN_ID,
        ),
        Side(
            CREATE_COMPOSITE,
            lambda w: {"i": _without_group(repositoryGroupId=UNKNOWN_ID)(w)},
            "repositoryGroupId",
            UNKNOWN_ID,
        ),
    ),
    Case(
        "malformed-task-id",
        "INVALID_ARGUMENT",
        Side(
            "TaskService/UpdateStatus",
            lambda w: {"taskId": "task-1", "status": "UNIT_TASK_STATUS_DONE"},
            "task_id",
            "not a valid id",
        ),
        Side(UPDATE_STATUS, lambda w: {"id": "task-1", "s": "DONE"}, "id", "not a valid id"),
    ),
    Case(
        "malformed-session-id",
        "INVALID_ARGUMENT",
        Side(
            "SessionService/GetLog",
            lambda w: {"sessionId": w.session_id[:-1] + "x"},
            "session_id",
            "not a valid id",
        ),
        Side(GET_LOG, lambda w: {"id": w.session_id[:-1] + "x"}, "id", "not a valid id"),
    ),
    Case(
        "missing-session-id",
        "INVALID_ARGUMENT",
        Side("SessionService/GetLog", lambda w: {}, "session_id", "session_id is required"),
        Side(GET_LOG, lambda w: {"id": ""}, "id", "id is required"),
    ),
    Case(
        "malformed-tty-request-id",
        "INVALID_ARGUMENT",
        Side(
            "SessionService/SubmitTtyInput",
            lambda w: {"requestId": w.tty_request_id + "0", "response": "main"},
            "request_id",
            "not a valid id",
        ),
        Side(
            SUBMIT_TTY,
            lambda w: {"id": w.tty_request_id + "0"},
            "requestId",
            "not a valid id",
        ),
    ),
    Case(
        "unknown-tty-request-id",
        "NOT_FOUND",
        Side(
            "SessionService/SubmitTtyInput",
            lambda w: {"requestId": UNKNOWN_ID, "response": "main"},
            "request_id",
            UNKNOWN_ID,
        ),
        Side(SUBMIT_TTY, lambda w: {"id": UNKNOWN_ID}, "requestId", UNKNOWN_ID),
    ),
]


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for transport, side in (("connect", case.connect), ("graphql", case.graphql)):
            marks = [pytest.mark.xfail(reason=side.xfail, strict=True)] if side.xfail else []
            params.append(pytest.param(case, transport, id=f"{case.id}-{transport}", marks=marks))
    return params


@pytest.mark.parametrize(("case", "transport"), _params())
async def test_bad_input_is_refused_naming_the_field(
    http: httpx.AsyncClient, case: Case, transport: str
) -> None:
    world = await _world()
    before = await _database_state()
    if transport == "connect":
        body = json.dumps(case.connect.build(world)).encode()
        refusal = await _connect(http, case.connect.request, body)
        side = case.connect
    else:
        refusal = await _graphql(http, case.graphql.request, case.graphql.build(world))
        side = case.graphql
    assert (refusal.code, refusal.delidev_code) == (case.code, SPEC_CODE[case.code]), refusal
    assert refusal.field == side.field, refusal
    assert side.mentions in refusal.message, refusal
    assert await _database_state() == before


# Binary protobuf -------------------------------------------------------------------------

_VALID = task_pb.CreateUnitTaskRequest(repository_group_id=UNKNOWN_ID, prompt="p").to_binary()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xff\xff", id="garbage"),
        pytest.param(_VALID[:-1], id="truncated"),
        pytest.param(b"\x0a\xff\xff\xff\xff\x0f", id="length-beyond-the-body"),
        pytest.param(b"\x12\x02\xc3\x28", id="prompt-not-utf8"),
        pytest.param(b"\x07", id="field-number-zero"),
    ],
)
async def test_malformed_protobuf_to_create_unit(http: httpx.AsyncClient, body: bytes) -> None:
    await _world()
    before = await _database_state()
    refusal = await _connect(http, "TaskService/CreateUnit", body, PROTO)
    assert (refusal.code, refusal.delidev_code, refusal.field) == ("INVALID_ARGUMENT", -32602, "")
    assert "not a valid protobuf delidev.v1.CreateUnitTaskRequest" in refusal.message
    assert await _database_state() == before


async def test_unknown_enum_number_in_binary_names_the_field(http: httpx.AsyncClient) -> None:
    world = await _world()
    before = await _database_state()
    body = task_pb.CreateUnitTaskRequest(
        repository_group_id=world.group_id, prompt="p", ai_agent_type=AiAgentType(42)
    ).to_binary()
    refusal = await _connect(http, "TaskService/CreateUnit", body, PROTO)
    assert (refusal.code, refusal.field) == ("INVALID_ARGUMENT", "ai_agent_type")
    status = task_pb.UpdateTaskStatusRequest(
        task_id=world.task_id, status=task_pb.UnitTaskStatus(42)
    ).to_binary()
    refusal = await _connect(http, "TaskService/UpdateStatus", status, PROTO)
    assert (refusal.code, refusal.field) == ("INVALID_ARGUMENT", "status")
    assert await _database_state() == before


# Listing TTY questions ---------------------------------------------------------------------


async def _running_task(group: m.RepositoryGroup) -> tuple[m.UnitTask, m.AgentSession]:
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    return task, await start_latest(task.agent_task_id)


async def _ask(session: m.AgentSession, kind: m.TtyInputType, prompt: str) -> str:
    question = await sessions.create_tty_request(
        session_id=session.id,
        prompt=prompt,
        input_type=kind,
        options=["yes", "no"] if kind == m.TtyInputType.SELECT else (),
        expires_in=dt.timedelta(minutes=5),
    )
    return str(question.id)


class TtyClient:
    """ListTtyInputRequests / SubmitTtyInput on one transport, as plain dicts."""

    def __init__(self, http: httpx.AsyncClient, transport: str) -> None:
        self.http = http
        self.transport = transport
        self.raw: list[str] = []  # every response body, to look for leaked answers

    async def list(
        self, *, task_id: str | None = None, workspace_id: str | None = None, status: str = ""
    ) -> tuple[dict[str, dict[str, Any]], int]:
        if self.transport == "connect":
            body: dict[str, Any] = {"taskId": task_id or "", "workspaceId": workspace_id or ""}
            if status:
                body["status"] = f"TTY_INPUT_STATUS_{status}"
            payload = await self._connect("SessionService/ListTtyInputRequests", body)
            items = [self._from_connect(r) for r in payload.get("requests", [])]
            return {i["id"]: i for i in items}, int(payload.get("totalCount", 0))
        data = await self._graphql(
            "query($t: ID, $w: ID, $s: TtyInputStatus) { ttyInputRequests("
            "taskId: $t, workspaceId: $w, status: $s) "
            "{ totalCount items { id taskId status inputType response } } }",
            {"t": task_id, "w": workspace_id, "s": status or None},
        )
        page = data["ttyInputRequests"]
        return {i["id"]: i for i in page["items"]}, page["totalCount"]

    async def submit(self, request_id: str, response: str) -> dict[str, Any]:
        if self.transport == "connect":
            payload = await self._connect(
                "SessionService/SubmitTtyInput", {"requestId": request_id, "response": response}
            )
            return self._from_connect(payload["request"])
        data = await self._graphql(
            "mutation($id: ID!, $r: String!) { submitTtyInput(requestId: $id, response: $r) "
            "{ id taskId status inputType response } }",
            {"id": request_id, "r": response},
        )
        answered: dict[str, Any] = data["submitTtyInput"]
        return answered

    @staticmethod
    def _from_connect(r: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": r["id"],
            "taskId": r["taskId"],
            "status": r["status"].removeprefix("TTY_INPUT_STATUS_"),
            "inputType": r["inputType"].removeprefix("TTY_INPUT_TYPE_"),
            "response": r.get("response"),
        }

    async def _connect(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(f"/delidev.v1.{method}", json=body, headers=JSON)
        assert response.status_code == 200, response.text
        self.raw.append(response.text)
        payload: dict[str, Any] = response.json()
        return payload

    async def _graphql(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        self.raw.append(response.text)
        body = response.json()
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data


@pytest.mark.parametrize("transport", ["connect", "graphql"])
async def test_pending_tty_requests_per_task_and_workspace(
    http: httpx.AsyncClient, transport: str
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task_a, session_a = await _running_task(group)
    task_b, session_b = await _running_task(group)
    other_ws = await make_workspace()
    task_c, session_c = await _running_task(
        await make_group(other_ws, [await make_repository(other_ws)])
    )
    answered_text = await _ask(session_a, m.TtyInputType.TEXT, "Branch?")
    await sessions.submit_tty_input(
        actor=LOCAL_USER, request_id=uuid.UUID(answered_text), response="main"
    )
    question = await _ask(session_a, m.TtyInputType.TEXT, "Commit message?")
    password = await _ask(session_a, m.TtyInputType.PASSWORD, "Token?")
    select = await _ask(session_b, m.TtyInputType.SELECT, "Force push?")
    elsewhere = await _ask(session_c, m.TtyInputType.TEXT, "Name?")
    api = TtyClient(http, transport)

    by_task, total = await api.list(task_id=str(task_a.id), status="PENDING")
    assert (set(by_task), total) == ({question, password}, 2)
    assert {r["taskId"] for r in by_task.values()} == {str(task_a.id)}
    assert {r["status"] for r in by_task.values()} == {"PENDING"}
    every_state, total = await api.list(task_id=str(task_a.id))
    assert (set(every_state), total) == ({answered_text, question, password}, 3)
    by_workspace, total = await api.list(workspace_id=str(ws.id), status="PENDING")
    assert (set(by_workspace), total) == ({question, password, select}, 3)
    other, total = await api.list(workspace_id=str(other_ws.id), status="PENDING")
    assert (set(other), total) == ({elsewhere}, 1)
    assert (await api.list(task_id=str(task_b.id), status="PENDING"))[0].keys() == {select}
    assert (await api.list(task_id=str(task_c.id)))[0].keys() == {elsewhere}

    answered = await api.submit(password, "hunter2")
    assert (answered["status"], answered["inputType"], answered["response"]) == (
        "RESPONDED",
        "PASSWORD",
        None,
    )
    pending, total = await api.list(task_id=str(task_a.id), status="PENDING")
    assert (set(pending), total) == ({question}, 1)
    responded, _ = await api.list(task_id=str(task_a.id), status="RESPONDED")
    assert set(responded) == {answered_text, password}
    assert responded[password]["response"] is None
    assert responded[answered_text]["response"] == "main"  # a text answer is shown
    assert not any("hunter2" in body for body in api.raw)
    # Hidden from clients, kept for the worker that asked.
    stored = await m.TtyInputRequest.get(id=password)
    assert (stored.status, stored.response) == (m.TtyInputStatus.RESPONDED, "hunter2")
