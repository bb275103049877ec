"""Connect against hostile requests: deep nesting, plain gRPC, odd methods and media types.

Each answer is a clean Connect (or HTTP) error, never a crash, a 5xx or a traceback in
the log. The process-level proof (a real server that stays alive) is in
``tests/e2e/test_connect_hardening.py``.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tortoise.context import TortoiseContext

from delidev import events
from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.nesting import MAX_JSON_DEPTH
from delidev.services import tasks
from delidev.settings import Settings
from tests.factories import make_group, make_repository, make_workspace

JSON = {"content-type": "application/json"}
DEEP = b"[" * 15_000 + b"]" * 15_000
# Field 1 as a start-group tag, 15,000 times over: groups nested past protobuf-py's limit.
DEEP_GROUPS = b"\x0b" * 15_000 + b"\x0c" * 15_000
UNARY = "/delidev.v1.AuthService/GetCurrentUser"  # anonymous, and on the fast unary path
STREAM = "/delidev.v1.SessionService/StreamLog"


def _envelope(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def _end_of_stream(body: bytes) -> dict[str, Any]:
    """The end-of-stream message of a Connect streaming response."""
    while body:
        flags, size = body[0], int.from_bytes(body[1:5], "big")
        payload, body = body[5 : 5 + size], body[5 + size :]
        if flags & 0x02:
            end: dict[str, Any] = json.loads(payload)
            return end
    raise AssertionError("no end-of-stream message")


def _no_errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not bad, [r.getMessage() for r in bad]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param(UNARY, JSON, id="fast-unary"),
        # A deadline sends the call through the runtime's own path.
        pytest.param(UNARY, {**JSON, "connect-timeout-ms": "5000"}, id="runtime-unary"),
        # WorkerService never takes the fast path (long polls).
        pytest.param("/delidev.v1.WorkerService/Heartbeat", JSON, id="worker-unary"),
    ],
)
async def test_deep_json_is_refused_before_parsing(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, headers: Any
) -> None:
    response = await http.post(path, content=DEEP, headers=headers)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert body["message"] == (
        f"request body nests arrays and objects deeper than {MAX_JSON_DEPTH} levels"
    )
    _no_errors_logged(caplog)


async def test_deep_json_behind_compression_is_refused(http: httpx.AsyncClient) -> None:
    """Decompressed first (within the 4 MiB read limit), then checked like any body."""
    response = await http.post(
        UNARY,
        content=gzip.compress(b"[" * 2_000_000),
        headers={**JSON, "content-encoding": "gzip"},
    )
    assert response.status_code == 400
    # Two million brackets: refused by their count, which comes before the depth check.
    assert "holds more than" in response.json()["message"]
    response = await http.post(
        UNARY,
        content=gzip.compress(b"[" * 10_000),
        headers={**JSON, "content-encoding": "gzip"},
    )
    assert response.status_code == 400
    assert "deeper than" in response.json()["message"]


async def test_deep_json_in_a_server_stream_is_refused(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await http.post(
        STREAM,
        content=_envelope(b'{"sessionId": ' + DEEP + b"}"),
        headers={"content-type": "application/connect+json", "connect-protocol-version": "1"},
    )
    end = _end_of_stream(response.content)
    assert end["error"]["code"] == "invalid_argument"
    assert "deeper than" in end["error"]["message"]
    _no_errors_logged(caplog)


async def test_deep_json_over_grpc_web_is_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(
        UNARY,
        content=_envelope(DEEP),
        headers={"content-type": "application/grpc-web+json", "x-grpc-web": "1"},
    )
    assert response.status_code == 200  # gRPC-Web: the status travels in the trailer frame
    assert b"grpc-status: 3" in response.content
    assert b"deeper%20than" in response.content


@pytest.mark.parametrize(
    ("path", "body", "content_type"),
    [
        pytest.param(UNARY, DEEP_GROUPS, "application/proto", id="unary"),
        pytest.param(STREAM, _envelope(DEEP_GROUPS), "application/connect+proto", id="stream"),
    ],
)
async def test_deeply_nested_binary_groups_are_invalid_argument(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    path: str,
    body: bytes,
    content_type: str,
) -> None:
    response = await http.post(
        path, content=body, headers={"content-type": content_type, "connect-protocol-version": "1"}
    )
    if content_type == "application/proto":
        assert response.status_code == 400
        error = response.json()
    else:
        error = _end_of_stream(response.content)["error"]
    assert error["code"] == "invalid_argument"
    # 30,000 group tags: refused by their count before the decoder sees them (when the
    # body is a large one), else by the decoder.
    assert "not a valid protobuf" in error["message"] or "holds more than" in error["message"]
    _no_errors_logged(caplog)


async def test_nesting_up_to_the_limit_is_parsed(http: httpx.AsyncClient) -> None:
    """The limit refuses only what is deeper: at the limit the parser answers itself."""
    at_limit = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    response = await http.post(UNARY, content=at_limit, headers=JSON)
    assert response.json()["message"] == (
        "request body is not a valid JSON delidev.v1.GetCurrentUserRequest"
    )
    # Brackets inside strings are text, not nesting.
    quoted = json.dumps({"unknown": "[{" * 5_000 + '\\"' + "]}" * 5_000})
    response = await http.post(UNARY, content=quoted, headers=JSON)
    assert response.json()["message"] == "unknown field 'unknown'"


LIMIT = 6


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    return 0


# Text with brackets, quotes and backslashes, to mislead a scanner that counts brackets.
_text = st.text(alphabet='[]{}"\\ab:,', max_size=6)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=40,
)


@pytest.fixture
async def shallow_http(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    """A client of an app that accepts JSON nested at most LIMIT levels."""
    app = create_app(settings.replace(max_json_depth=LIMIT))
    token = events.bind(app.state.events)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            yield client
    finally:
        events.unbind(token)


@settings(
    max_examples=150,
    derandomize=True,  # the same inputs on every run; explore with --hypothesis-seed
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(value=_json, wrap=st.booleans())
async def test_any_nesting_gets_a_clean_answer(shallow_http: Any, value: Any, wrap: bool) -> None:
    """Whatever the shape, the answer is 200 or invalid_argument, and the nesting message
    comes exactly when the body is deeper than the limit."""
    body = {"unknown": value} if wrap else value
    response = await shallow_http.post(UNARY, content=json.dumps(body), headers=JSON)
    if response.status_code == 200:
        assert body == {}
        return
    error = response.json()
    assert response.status_code == 400, error
    assert error["code"] == "invalid_argument"
    too_deep = f"deeper than {LIMIT} levels" in error["message"]
    assert too_deep == (_depth(body) > LIMIT), (error, _depth(body))


# Plain gRPC needs HTTP/2 trailers, which uvicorn (and httpx's ASGI transport) lack.
@pytest.mark.parametrize(
    "content_type", ["application/grpc", "application/grpc+proto", "application/grpc+json"]
)
async def test_plain_grpc_is_refused_cleanly(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, content_type: str
) -> None:
    response = await http.post(
        UNARY, content=_envelope(b""), headers={"content-type": content_type, "te": "trailers"}
    )
    assert response.status_code == 415
    assert response.headers["grpc-status"] == "12"  # unimplemented, for a gRPC client
    assert "Connect" in response.headers["grpc-message"]
    assert response.text == "gRPC is not served here: use the Connect protocol or gRPC-Web"
    _no_errors_logged(caplog)


@pytest.mark.parametrize(
    ("method", "content_type", "status"),
    [
        ("GET", None, 405),
        ("PUT", "application/json", 405),
        ("DELETE", None, 405),
        ("PATCH", "application/json", 405),
        ("HEAD", None, 405),
        ("OPTIONS", None, 405),  # no Origin: not a CORS preflight
        ("POST", "text/plain", 415),
        ("POST", "application/xml", 415),
        ("POST", None, 415),
        ("POST", "application/connect+json", 415),  # a streaming type on a unary method
    ],
)
async def test_other_methods_and_media_types_get_clean_answers(
    http: httpx.AsyncClient,
    caplog: pytest.LogCaptureFixture,
    method: str,
    content_type: str | None,
    status: int,
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    paths = [UNARY, "/delidev.v1.WorkerService/GetTask"]
    if content_type != "application/connect+json":  # which a stream does take
        paths.append(STREAM)
    for path in paths:
        response = await http.request(method, path, content=b"{}", headers=headers)
        assert response.status_code == status, (path, response.text)
    _no_errors_logged(caplog)


async def _connect(http: httpx.AsyncClient, method: str, body: dict[str, Any]) -> Any:
    response = await http.post(f"/delidev.v1.{method}", json=body)
    return response.json()


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        # Six levels of aliases: half a million strings once the title is made text.
        (
            "l0: &l0 [x, x, x, x, x, x, x, x, x]\n"
            + "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 6))
            + "tasks: [{id: a, prompt: go, title: *l5}]",
            "YAML alias at line 2",
        ),
        ("tasks: " + "[" * 5_000, "not valid YAML"),
        ("tasks: [{id: a, prompt: go, x: " + "[" * 20 + "]" * 20 + "}]", "deeper than 16"),
    ],
)
async def test_a_hostile_plan_is_refused_through_report_status(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, plan: str, fragment: str
) -> None:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="plan it"
    )
    worker = await _connect(
        http, "WorkerService/Register", {"name": "planner", "endpointUrl": "http://127.0.0.1:1"}
    )
    job = (await _connect(http, "WorkerService/GetTask", {"workerId": worker["workerId"]}))["job"]
    lease = {
        "workerId": worker["workerId"],
        "sessionId": job["sessionId"],
        "leaseToken": job["leaseToken"],
    }
    # The run itself succeeded; the plan is refused and kept as the composite's plan error.
    reported = await _connect(
        http,
        "WorkerService/ReportStatus",
        {**lease, "status": "AGENT_SESSION_STATUS_SUCCEEDED", "planYaml": plan},
    )
    assert reported["session"]["status"] == "AGENT_SESSION_STATUS_SUCCEEDED", reported
    stored = await m.CompositeTask.get(id=composite.id)
    assert stored.status == m.CompositeTaskStatus.PLANNING
    assert stored.plan_error is not None
    assert stored.plan_error.startswith("Malformed: ")
    assert fragment in stored.plan_error
    _no_errors_logged(caplog)


async def test_tty_options_and_todo_data_are_bounded(http: httpx.AsyncClient) -> None:
    """The other JSON the server stores from outside: typed by the proto (no nesting),
    bounded in count and length, refused with the field named."""
    ws = await make_workspace()
    repo = await make_repository(ws)
    group = await make_group(ws, [repo])
    await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="ask", title="T"
    )
    worker = await _connect(
        http, "WorkerService/Register", {"name": "asker", "endpointUrl": "http://127.0.0.1:1"}
    )
    job = (await _connect(http, "WorkerService/GetTask", {"workerId": worker["workerId"]}))["job"]
    lease = {
        "workerId": worker["workerId"],
        "sessionId": job["sessionId"],
        "leaseToken": job["leaseToken"],
    }
    for options in (["o"] * 101, ["o" * 1_001]):
        error = await _connect(
            http,
            "WorkerService/RequestTtyInput",
            {**lease, "prompt": "pick", "inputType": "TTY_INPUT_TYPE_SELECT", "options": options},
        )
        assert error["code"] == "invalid_argument", error
    for labels in (["l"] * 101, ["l" * 1_001]):
        error = await _connect(
            http,
            "TodoService/Create",
            {
                "repositoryId": str(repo.id),
                "issueTriage": {
                    "issueUrl": "https://github.com/a/b/issues/1",
                    "issueTitle": "t",
                    "suggestedLabels": labels,
                },
            },
        )
        assert error["code"] == "invalid_argument", error
        assert "suggested_labels" in error["message"]
    assert await m.TodoItem.all().count() == 0
    assert await m.TtyInputRequest.all().count() == 0


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param(UNARY, JSON, id="fast-unary"),
        pytest.param(UNARY, {**JSON, "connect-timeout-ms": "5000"}, id="runtime-unary"),
        pytest.param("/delidev.v1.WorkerService/Heartbeat", JSON, id="worker-unary"),
        pytest.param(
            STREAM,
            {"content-type": "application/connect+json", "connect-protocol-version": "1"},
            id="stream",
        ),
    ],
)
async def test_a_header_that_is_not_utf8_is_invalid_argument(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, path: str, headers: Any
) -> None:
    """Regression: the Connect runtime decoded it strictly and answered 500 (with the
    decoder's message, or a plain-text error) and a traceback in the log."""
    response = await http.post(
        path, content=b"{}", headers=[*headers.items(), ("x-odd", b"\xff\xfe")]
    )
    assert response.status_code == 400
    assert response.json() == {
        "code": "invalid_argument",
        "message": "header x-odd is not valid UTF-8",
    }
    _no_errors_logged(caplog)
    # UTF-8 beyond ASCII is a valid value.
    fine = await http.post(
        UNARY, content=b"{}", headers=[*JSON.items(), ("x-name", "café".encode())]
    )
    assert fine.status_code == 200


async def test_an_unknown_key_or_enum_value_is_repeated_cut_short(http: httpx.AsyncClient) -> None:
    """Regression: a 3 MiB unknown key came back three times over (10 MiB answer)."""
    key = "k" * 300_000
    response = await http.post(UNARY, content=json.dumps({key: 1}), headers=JSON)
    assert response.status_code == 400
    assert len(response.content) < 2_000
    assert response.json()["message"] == f"unknown field {'k' * 100 + '…'!r}"
    value = "V" * 300_000
    response = await http.post(
        "/delidev.v1.WorkerService/Register",
        content=json.dumps({"name": "w", "endpointUrl": "http://w:1", "agentTypes": [value]}),
        headers=JSON,
    )
    assert response.status_code == 400
    assert len(response.content) < 2_000, response.content[:300]
    assert response.json()["message"] == f"agent_types has an unknown value {'V' * 100 + '…'!r}"
    # A list of enum values names its field too (it was a generic "not a valid JSON").
    response = await http.post(
        "/delidev.v1.WorkerService/Register",
        content=json.dumps({"name": "w", "endpointUrl": "http://w:1", "agentTypes": ["NOPE"]}),
        headers=JSON,
    )
    assert response.json()["message"] == "agent_types has an unknown value 'NOPE'"
    assert response.json()["details"]
