"""The lean unary path answers exactly as the Connect runtime does.

A request with ``Connect-Timeout-Ms`` always takes the runtime's own path; the same request
without it takes ``fast_unary``. Both answers must match: status, headers, body. Every test
also runs with the fast path turned off (``DELIDEV_CONNECT_FAST_PATH``) and with it off
because an internal it uses is missing (a newer connectrpc, simulated).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from delidev import events
from delidev.app import create_app
from delidev.connect import fast_unary
from delidev.connect.codecs import StrictJSONCodec
from delidev.connect.gen.delidev.v1 import workspace_pb
from delidev.connect.routes import READ_MAX_BYTES
from delidev.settings import Settings, SettingsError
from tests.factories import make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

JSON = "application/json"
PROTO = "application/proto"
FAST, OFF, MISSING = "fast", "off", "missing"


def _missing(app: object) -> list[str]:
    return ["connectrpc._server_async._UnaryResponse"]


@pytest.fixture(params=[FAST, OFF, MISSING])
def mode(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == MISSING:
        monkeypatch.setattr(fast_unary, "missing_internals", _missing)
    return str(request.param)


@pytest.fixture
async def app(settings: Settings, database: object, mode: str) -> AsyncIterator[Any]:
    """The app, with the fast path on, turned off, or off for want of an internal."""
    application = create_app(settings.replace(connect_fast_path=mode != OFF))
    token = events.bind(application.state.events)
    try:
        yield application
    finally:
        events.unbind(token)


async def _both(
    http: httpx.AsyncClient, method: str, body: bytes, headers: dict[str, str]
) -> tuple[httpx.Response, httpx.Response]:
    url = f"/delidev.v1.{method}"
    fast = await http.post(url, content=body, headers=headers)
    runtime = await http.post(url, content=body, headers={**headers, "Connect-Timeout-Ms": "60000"})
    return fast, runtime


def _same(fast: httpx.Response, runtime: httpx.Response) -> None:
    assert fast.status_code == runtime.status_code
    # Each answer carries its own request id (delidev/request_context.py).
    assert _but_id(fast) == _but_id(runtime)
    assert fast.content == runtime.content


def _get(workspace_id: str) -> bytes:
    return workspace_pb.GetWorkspaceRequest(workspace_id=workspace_id).to_binary()


def _cases(wid: str) -> list[tuple[str, bytes, dict[str, str]]]:
    return [
        ("WorkspaceService/Get", json.dumps({"workspaceId": wid}).encode(), {}),
        ("WorkspaceService/Get", _get(wid), {"Content-Type": PROTO}),
        ("WorkspaceService/List", b"{}", {"Connect-Protocol-Version": "1"}),
        ("RepositoryService/List", json.dumps({"workspaceId": wid}).encode(), {}),
        # compressed answers (the list is large enough to be worth it) and requests
        (
            "RepositoryService/List",
            json.dumps({"workspaceId": wid}).encode(),
            {"Accept-Encoding": "gzip"},
        ),
        (
            "WorkspaceService/Get",
            gzip.compress(json.dumps({"workspaceId": wid}).encode()),
            {"Content-Encoding": "gzip"},
        ),
        ("WorkspaceService/Get", b"{}", {"Content-Encoding": "br-unknown"}),
        # errors: ours (through the interceptor) and the runtime's (decoding, limits)
        ("WorkspaceService/Get", b'{"workspaceId": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"}', {}),
        ("WorkspaceService/Get", b'{"workspaceId": "nope"}', {}),
        ("WorkspaceService/Get", b'{"workspaceId":', {}),
        ("WorkspaceService/Get", b'{"nmae": 1}', {}),
        ("WorkspaceService/Get", b"\xff\x00garbage", {"Content-Type": PROTO}),
        (
            "WorkspaceService/Update",
            b'{"workspaceId": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"}',
            {},
        ),
        ("WorkspaceService/Get", b"{}", {"Connect-Protocol-Version": "2"}),
        ("WorkspaceService/Create", b'{"name": "' + b"x" * READ_MAX_BYTES + b'"}', {}),
    ]


async def _workspace_with_repositories() -> str:
    ws = await make_workspace()
    for _ in range(30):
        await make_repository(ws)
    return str(ws.id)


async def test_answers_match_the_runtimes(http: httpx.AsyncClient) -> None:
    for method, body, extra in _cases(await _workspace_with_repositories()):
        headers = {"Content-Type": JSON, **extra}
        fast, runtime = await _both(http, method, body, headers)
        _same(fast, runtime)


def _but_id(response: httpx.Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in response.headers.multi_items() if k != "x-request-id"]


async def _post(app: Any, method: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.post(f"/delidev.v1.{method}", content=body, headers=headers)


async def test_a_missing_internal_means_the_ordinary_path_and_one_warning(
    settings: Settings,
    database: object,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wid = await _workspace_with_repositories()
    working = create_app(settings)
    # Starlette builds the middleware (and so makes the check) on the first call.
    assert (await _post(working, "WorkspaceService/List", b"{}", {"Content-Type": JSON})).is_success
    monkeypatch.setattr(fast_unary, "missing_internals", _missing)
    caplog.set_level(logging.WARNING)
    fallback = create_app(settings)
    served: list[str] = []
    original = fast_unary.UnaryFastPath.__call__

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> bool:
        served.append(scope["path"])
        return await original(self, scope, receive, send)

    monkeypatch.setattr(fast_unary.UnaryFastPath, "__call__", spy)
    cases = _cases(wid)
    for method, body, extra in cases:
        headers = {"Content-Type": JSON, **extra}
        # The same answers as those of an app whose fast path works.
        _same(
            await _post(fallback, method, body, headers),
            await _post(working, method, body, headers),
        )
    # Only the working app's calls were offered to the fast path.
    assert len(served) == len(cases)
    warnings = [r for r in caplog.records if r.name == "delidev.connect.routes"]
    assert len(warnings) == 1  # one, however many calls
    assert "Connect fast path off" in warnings[0].getMessage()
    assert "_UnaryResponse" in warnings[0].getMessage()


async def test_only_plain_calls_take_it(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    served: list[str] = []
    original = fast_unary.UnaryFastPath.__call__

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> bool:
        taken = await original(self, scope, receive, send)
        if taken:
            served.append(scope["path"])
        return taken

    monkeypatch.setattr(fast_unary.UnaryFastPath, "__call__", spy)
    ws = await make_workspace()
    body = json.dumps({"workspaceId": str(ws.id)}).encode()
    for headers in (
        {"Content-Type": JSON},
        {"Content-Type": PROTO},
        {"Content-Type": JSON, "Connect-Timeout-Ms": "1000"},  # a deadline: the runtime's
        {"Content-Type": "application/json; charset=utf-8"},  # unusual: the runtime's
    ):
        sent = _get(str(ws.id)) if headers["Content-Type"] == PROTO else body
        response = await http.post(
            "/delidev.v1.WorkspaceService/Get", content=sent, headers=headers
        )
        assert response.status_code == 200, response.text
    # Long polls keep the runtime's watch for a client that leaves.
    await http.post(
        "/delidev.v1.WorkerService/Heartbeat",
        content=b'{"workerId": "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11"}',
        headers={"Content-Type": JSON},
    )
    assert served == (["/delidev.v1.WorkspaceService/Get"] * 2 if mode == FAST else [])


# The fast path's own error handling: with it off, the runtime's path raises such an error
# to the server (which answers 500 and logs it).
@pytest.mark.parametrize("mode", [FAST], indirect=True)
async def test_an_unexpected_error_is_logged_and_masked(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    ws = await make_workspace()

    def broken(*_: object) -> bytes:
        raise RuntimeError("secret detail of a broken encoder")

    monkeypatch.setattr(StrictJSONCodec, "encode", broken)
    caplog.set_level(logging.ERROR)
    response = await http.post(
        "/delidev.v1.WorkspaceService/Get",
        content=json.dumps({"workspaceId": str(ws.id)}).encode(),
        headers={"Content-Type": JSON},
    )
    assert response.status_code == 500
    assert response.json()["code"] == "internal"
    assert "secret detail" not in response.text
    assert "secret detail of a broken encoder" in caplog.text


def test_the_setting_reads_from_the_environment() -> None:
    assert Settings.from_env({}).connect_fast_path is True
    assert Settings.from_env({"DELIDEV_CONNECT_FAST_PATH": "false"}).connect_fast_path is False
    with pytest.raises(SettingsError, match="DELIDEV_CONNECT_FAST_PATH must be true or false"):
        Settings.from_env({"DELIDEV_CONNECT_FAST_PATH": "sometimes"})
