"""Connect over raw HTTP: bad bodies, unknown methods, masking of unexpected errors."""

from __future__ import annotations

import base64
import logging
from typing import Any

import httpx
import pytest

from delidev import models as m
from delidev.connect.gen.delidev.v1 import workspace_pb
from delidev.connect.gen.delidev.v1.common_pb import ErrorInfo
from delidev.services import workspaces

JSON = {"Content-Type": "application/json"}
PROTO = {"Content-Type": "application/proto"}


def _info(body: dict[str, Any]) -> ErrorInfo:
    detail = body["details"][0]
    assert detail["type"] == "delidev.v1.ErrorInfo"
    raw = detail["value"]
    return ErrorInfo.from_binary(base64.b64decode(raw + "=" * (-len(raw) % 4)))


async def _post(
    http: httpx.AsyncClient, method: str, body: bytes | str, headers: Any = None
) -> Any:
    return await http.post(f"/delidev.v1.{method}", content=body, headers=headers or JSON)


@pytest.mark.parametrize(
    ("method", "body", "field", "fragment"),
    [
        ("WorkspaceService/Create", '{"name":', "", "not a valid JSON"),
        ("WorkspaceService/Create", "[1, 2]", "", "not a valid JSON"),
        ("WorkspaceService/Create", '{"name": 5}', "name", "name is of the wrong type"),
        ("WorkspaceService/Create", '{"nmae": "typo"}', "nmae", "unknown field"),
        ("WorkspaceService/Create", '{"name": ""}', "name", "name must not be empty"),
        ("WorkspaceService/Create", '{"name": "' + "x" * 300 + '"}', "name", "too long"),
        ("WorkspaceService/List", '{"limit": "many"}', "limit", "limit is of the wrong type"),
        ("WorkspaceService/List", '{"limit": 1e20}', "limit", "out of range"),
        ("WorkspaceService/List", '{"limit": 100000}', "limit", "limit must be between"),
        ("WorkspaceService/Get", '{"workspaceId": "abc"}', "workspace_id", "not a valid id"),
        ("WorkspaceService/Get", "{}", "workspace_id", "workspace_id is required"),
        ("TodoService/List", '{"status": "BOGUS"}', "status", "status has an unknown value"),
        (
            "TodoService/Create",
            '{"repositoryId": "00000000-0000-0000-0000-000000000000"}',
            "data",
            "issue_triage or pr_review",
        ),
        (
            "RepositoryService/Add",
            '{"workspaceId": "00000000-0000-0000-0000-000000000000",'
            ' "remoteUrl": "https://github.com/a/b", "vcsProviderType": 42}',
            "vcs_provider_type",
            "unknown value 42",
        ),
    ],
)
async def test_bad_json_is_invalid_argument_naming_the_field(
    http: httpx.AsyncClient, method: str, body: str, field: str, fragment: str
) -> None:
    response = await _post(http, method, body)
    assert response.status_code == 400, response.text
    payload = response.json()
    assert payload["code"] == "invalid_argument"
    assert fragment in payload["message"]
    info = _info(payload)
    assert (info.delidev_code, info.field) == (-32602, field)
    assert await m.Workspace.all().count() == 0


async def test_malformed_protobuf(http: httpx.AsyncClient) -> None:
    response = await _post(http, "WorkspaceService/Create", b"\xff\xff\xff", PROTO)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_argument"
    assert "not a valid protobuf delidev.v1.CreateWorkspaceRequest" in response.json()["message"]
    assert await m.Workspace.all().count() == 0


async def test_unknown_enum_number_in_binary(http: httpx.AsyncClient) -> None:
    from delidev.connect.gen.delidev.v1 import todo_pb

    body = todo_pb.ListTodoItemsRequest(status=todo_pb.TodoItemStatus(77)).to_binary()
    response = await _post(http, "TodoService/List", body, PROTO)
    assert response.status_code == 400
    assert _info(response.json()).field == "status"


async def test_binary_round_trip(http: httpx.AsyncClient) -> None:
    body = workspace_pb.CreateWorkspaceRequest(name="bin").to_binary()
    response = await _post(http, "WorkspaceService/Create", body, PROTO)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/proto"
    created = workspace_pb.CreateWorkspaceResponse.from_binary(response.content)
    assert created.workspace is not None
    assert created.workspace.name == "bin"


async def test_sign_in_is_refused_in_single_user_mode(http: httpx.AsyncClient) -> None:
    response = await _post(http, "AuthService/GetLoginUrl", "{}")
    assert response.status_code == 400
    payload = response.json()
    assert payload["code"] == "failed_precondition"
    assert "single-user mode" in payload["message"]
    assert _info(payload).delidev_code == -32005


async def test_unknown_method_is_not_found(http: httpx.AsyncClient) -> None:
    response = await _post(http, "WorkspaceService/Explode", "{}")
    assert response.status_code == 404


async def test_unexpected_errors_are_masked_and_logged(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(**_: Any) -> None:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(workspaces, "list_workspaces", boom)
    with caplog.at_level(logging.ERROR, logger="delidev"):
        response = await _post(http, "WorkspaceService/List", "{}")
    assert response.status_code == 500
    assert response.json()["message"] == "internal error"
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    assert _info(response.json()).delidev_code == -32603
    assert any("WorkspaceService/List" in r.getMessage() for r in caplog.records)


async def test_unary_responses_have_a_content_length(http: httpx.AsyncClient) -> None:
    response = await _post(http, "WorkspaceService/Create", '{"name": "sized"}')
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == response.num_bytes_downloaded
    error = await _post(http, "WorkspaceService/Get", '{"workspaceId": "x"}')
    assert int(error.headers["content-length"]) == error.num_bytes_downloaded
