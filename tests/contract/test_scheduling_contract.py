"""Scheduling through both APIs (Connect JSON on the wire, GraphQL): creating tasks with a
priority, required labels and a run time limit, the repository group's default labels, the
workspace's job cap, SetPriority / setTaskPriority, and why a job waits (reason, detail,
position) — the same answers and the same refusals (code and field) on each transport."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.connect.gen.delidev.v1.common_pb import ErrorInfo
from delidev.services import tasks, workers
from delidev.services.scheduling import waits
from tests.factories import finish_latest, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

JSON = {"Content-Type": "application/json"}
TASK_FIELDS = "id priority requiredLabels maxRunSeconds wait { reason since detail until position }"
ANY_TASK = f"... on UnitTask {{ {TASK_FIELDS} }} ... on CompositeTask {{ {TASK_FIELDS} }}"
PREFIXES = ("TASK_PRIORITY_", "WAIT_REASON_")


@dataclass
class Refused(Exception):
    code: str
    field: str
    message: str


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _enum(value: str) -> str:
    for prefix in PREFIXES:
        value = value.removeprefix(prefix)
    return value


def _task_view(raw: dict[str, Any]) -> dict[str, Any]:
    """A task as both transports show it: enum names without their proto prefix."""
    wait = raw.get("wait")
    return {
        "id": raw["id"],
        "priority": _enum(raw["priority"]),
        "required_labels": raw.get("requiredLabels") or [],
        "max_run_seconds": raw.get("maxRunSeconds"),
        "wait": None
        if wait is None
        else {
            "reason": _enum(wait["reason"]),
            "detail": wait["detail"],
            "position": wait.get("position"),
            "since": wait["since"],
        },
    }


class Api:
    def __init__(self, http: httpx.AsyncClient, transport: str) -> None:
        self.http = http
        self.transport = transport

    async def _connect(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        response = await self.http.post(f"/delidev.v1.{method}", json=body, headers=JSON)
        payload: dict[str, Any] = response.json()
        if response.status_code != 200:
            detail = payload["details"][0]["value"]
            info = ErrorInfo.from_binary(base64.b64decode(detail + "=" * (-len(detail) % 4)))
            raise Refused(str(payload["code"]).upper(), info.field, payload["message"])
        return payload

    async def _graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body = response.json()
        if body.get("errors"):
            error = body["errors"][0]
            ext = error.get("extensions") or {}
            raise Refused(ext.get("code", ""), _snake(ext.get("field", "")), error["message"])
        data: dict[str, Any] = body["data"]
        return data

    # Workspaces and groups

    async def create_workspace(self, cap: int | None) -> dict[str, Any]:
        if self.transport == "connect":
            body = {"name": "ws", **({} if cap is None else {"maxConcurrentJobs": cap})}
            ws = (await self._connect("WorkspaceService/Create", body))["workspace"]
        else:
            data = await self._graphql(
                "mutation($i: CreateWorkspaceInput!) "
                "{ createWorkspace(input: $i) { id maxConcurrentJobs } }",
                i={"name": "ws", "maxConcurrentJobs": cap},
            )
            ws = data["createWorkspace"]
        return {"id": ws["id"], "cap": ws.get("maxConcurrentJobs")}

    async def set_cap(self, workspace_id: str, cap: int) -> dict[str, Any]:
        if self.transport == "connect":
            body = {"workspaceId": workspace_id, "maxConcurrentJobs": cap}
            ws = (await self._connect("WorkspaceService/Update", body))["workspace"]
        else:
            data = await self._graphql(
                "mutation($i: UpdateWorkspaceInput!) "
                "{ updateWorkspace(input: $i) { id maxConcurrentJobs } }",
                i={"id": workspace_id, "maxConcurrentJobs": cap},
            )
            ws = data["updateWorkspace"]
        return {"id": ws["id"], "cap": ws.get("maxConcurrentJobs")}

    async def create_group(self, workspace_id: str, repo_id: str, labels: list[str]) -> str:
        if self.transport == "connect":
            body = {
                "workspaceId": workspace_id,
                "repositoryIds": [repo_id],
                "defaultRequiredLabels": labels,
            }
            group = (await self._connect("RepositoryGroupService/Create", body))["group"]
        else:
            data = await self._graphql(
                "mutation($i: CreateRepositoryGroupInput!) "
                "{ createRepositoryGroup(input: $i) { id defaultRequiredLabels } }",
                i={
                    "workspaceId": workspace_id,
                    "repositoryIds": [repo_id],
                    "defaultRequiredLabels": labels,
                },
            )
            group = data["createRepositoryGroup"]
        assert (group.get("defaultRequiredLabels") or []) == sorted(labels)
        return str(group["id"])

    async def update_group(self, group_id: str, labels: list[str] | None) -> list[str]:
        """Sets the default labels; None: a call that leaves them unchanged (a rename)."""
        if self.transport == "connect":
            body: dict[str, Any] = {"groupId": group_id, "name": "renamed"}
            if labels is not None:
                body["defaultRequiredLabels"] = {"labels": labels}
            group = (await self._connect("RepositoryGroupService/Update", body))["group"]
        else:
            data = await self._graphql(
                "mutation($i: UpdateRepositoryGroupInput!) "
                "{ updateRepositoryGroup(input: $i) { id defaultRequiredLabels } }",
                i={"id": group_id, "name": "renamed", "defaultRequiredLabels": labels},
            )
            group = data["updateRepositoryGroup"]
        return list(group.get("defaultRequiredLabels") or [])

    # Tasks

    async def create(self, kind: str, group_id: str, **attrs: Any) -> dict[str, Any]:
        """``attrs``: priority (e.g. "HIGH"), required_labels, max_run_seconds, or raw
        values under their transport's names (``raw``)."""
        fields: dict[str, Any] = {"repositoryGroupId": group_id, "prompt": "p"}
        if "priority" in attrs:
            priority = attrs["priority"]
            connect = self.transport == "connect" and isinstance(priority, str)
            fields["priority"] = f"TASK_PRIORITY_{priority}" if connect else priority
        if "required_labels" in attrs:
            fields["requiredLabels"] = attrs["required_labels"]
        if "max_run_seconds" in attrs:
            fields["maxRunSeconds"] = attrs["max_run_seconds"]
        if self.transport == "connect":
            method = "TaskService/CreateUnit" if kind == "unit" else "TaskService/CreateComposite"
            task = (await self._connect(method, fields))["task"]
            return _task_view(task.get("unitTask") or task["compositeTask"])
        name = "createUnitTask" if kind == "unit" else "createCompositeTask"
        kind_input = "CreateUnitTaskInput" if kind == "unit" else "CreateCompositeTaskInput"
        data = await self._graphql(
            f"mutation($i: {kind_input}!) {{ {name}(input: $i) {{ {TASK_FIELDS} }} }}", i=fields
        )
        return _task_view(data[name])

    async def get(self, task_id: str) -> dict[str, Any]:
        if self.transport == "connect":
            task = (await self._connect("TaskService/Get", {"taskId": task_id}))["task"]
            return _task_view(task.get("unitTask") or task["compositeTask"])
        data = await self._graphql(
            f"query($id: ID!) {{ task(id: $id) {{ {ANY_TASK} }} }}", id=task_id
        )
        return _task_view(data["task"])

    async def set_priority(self, task_id: str, priority: str) -> dict[str, Any]:
        if self.transport == "connect":
            body = {"taskId": task_id, "priority": f"TASK_PRIORITY_{priority}"}
            task = (await self._connect("TaskService/SetPriority", body))["task"]
            return _task_view(task.get("unitTask") or task["compositeTask"])
        data = await self._graphql(
            "mutation($id: ID!, $p: TaskPriority!) "
            f"{{ setTaskPriority(taskId: $id, priority: $p) {{ {ANY_TASK} }} }}",
            id=task_id,
            p=priority,
        )
        return _task_view(data["setTaskPriority"])


@pytest.fixture(params=["connect", "graphql"])
def api(request: pytest.FixtureRequest, http: httpx.AsyncClient) -> Api:
    return Api(http, request.param)


async def _group(api: Api, labels: list[str] | None = None) -> str:
    ws = await make_workspace()
    repo = await make_repository(ws)
    return await api.create_group(str(ws.id), str(repo.id), labels or [])


# Creation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["unit", "composite"])
async def test_created_with_each_attribute(api: Api, kind: str) -> None:
    group = await _group(api)
    task = await api.create(
        kind, group, priority="URGENT", required_labels=["os=linux", "GPU=true"], max_run_seconds=90
    )
    assert task["priority"] == "URGENT"
    assert task["required_labels"] == ["gpu=true", "os=linux"]
    assert task["max_run_seconds"] == 90
    assert task["wait"] is not None  # its job (a composite: its planning job) is queued
    assert await api.get(task["id"]) == task


async def test_defaults_normal_priority_the_servers_limit_and_the_groups_labels(api: Api) -> None:
    group = await _group(api, ["region=eu"])
    task = await api.create("unit", group)
    assert (task["priority"], task["required_labels"], task["max_run_seconds"]) == (
        "NORMAL",
        ["region=eu"],
        None,
    )
    # Unset leaves the default labels alone; a new set applies to tasks created after it.
    assert await api.update_group(group, None) == ["region=eu"]
    assert await api.update_group(group, ["os=mac"]) == ["os=mac"]
    assert (await api.create("unit", group))["required_labels"] == ["os=mac"]
    assert (await api.get(task["id"]))["required_labels"] == ["region=eu"]
    assert await api.update_group(group, []) == []
    assert (await api.create("unit", group))["required_labels"] == []


@pytest.mark.parametrize(
    ("attrs", "field"),
    [
        ({"required_labels": ["not a label"]}, "required_labels"),
        ({"priority": 42}, "priority"),
        ({"max_run_seconds": 0}, "max_run_seconds"),
        ({"max_run_seconds": 7 * 24 * 3600 + 1}, "max_run_seconds"),
    ],
    ids=["bad-label", "bad-priority", "max-run-zero", "max-run-over-a-week"],
)
@pytest.mark.parametrize("kind", ["unit", "composite"])
async def test_bad_scheduling_is_refused(
    api: Api, kind: str, attrs: dict[str, Any], field: str
) -> None:
    group = await _group(api)
    with pytest.raises(Refused) as refused:
        await api.create(kind, group, **attrs)
    assert refused.value.code == "INVALID_ARGUMENT"
    # graphql-core refuses an enum value that does not coerce by naming the variable.
    expected = "i" if (api.transport, field) == ("graphql", "priority") else field
    assert refused.value.field == expected, refused.value
    assert await m.AgentTask.all().count() == 0


async def test_workspace_cap(api: Api) -> None:
    ws = await api.create_workspace(cap=2)
    assert ws["cap"] == 2
    assert (await api.set_cap(ws["id"], 0))["cap"] is None
    assert (await api.create_workspace(cap=None))["cap"] is None
    for bad in (-1, 10_001):
        with pytest.raises(Refused) as refused:
            await api.set_cap(ws["id"], bad)
        assert (refused.value.code, refused.value.field) == (
            "INVALID_ARGUMENT",
            "max_concurrent_jobs",
        )
    with pytest.raises(Refused) as refused:
        await api.create_workspace(cap=-3)
    assert (refused.value.code, refused.value.field) == ("INVALID_ARGUMENT", "max_concurrent_jobs")


# SetPriority ------------------------------------------------------------------------------


async def test_set_priority_while_queued_and_refused_once_done(api: Api) -> None:
    group = await _group(api)
    first = await api.create("unit", group)
    second = await api.create("unit", group)
    await workers.register_worker(name="w", endpoint_url="http://w:1")
    await waits.reconcile_waits()
    assert (await api.get(second["id"]))["wait"]["position"] == 1

    raised = await api.set_priority(second["id"], "HIGH")
    assert raised["priority"] == "HIGH"
    assert raised["wait"]["position"] == 0  # now ahead of the older task of lower priority
    assert (await api.get(first["id"]))["wait"]["position"] == 1

    unit = await m.UnitTask.get(id=first["id"])
    await finish_latest(unit.agent_task_id)
    await tasks.approve_task(actor=LOCAL_USER, task_id=unit.id)
    await tasks.update_task_status(actor=LOCAL_USER, task_id=unit.id, status=m.UnitTaskStatus.DONE)
    with pytest.raises(Refused) as refused:
        await api.set_priority(first["id"], "URGENT")
    assert refused.value.code == "FAILED_PRECONDITION"
    assert (await api.get(first["id"]))["priority"] == "NORMAL"


# Waits ------------------------------------------------------------------------------------


async def test_wait_reason_detail_and_position(api: Api) -> None:
    group = await _group(api)
    nobody = await api.create("unit", group)
    await waits.reconcile_waits()
    wait = (await api.get(nobody["id"]))["wait"]
    assert (wait["reason"], wait["position"]) == ("NO_CAPABLE_WORKER", None)
    assert "no registered worker" in wait["detail"]

    await workers.register_worker(name="w", endpoint_url="http://w:1")
    labelled = await api.create("unit", group, required_labels=["gpu=true"])
    await waits.reconcile_waits()
    queued = (await api.get(nobody["id"]))["wait"]
    assert (queued["reason"], queued["position"]) == ("QUEUED", 0)
    missing = (await api.get(labelled["id"]))["wait"]
    assert missing["reason"] == "NO_CAPABLE_WORKER"
    assert "gpu=true" in missing["detail"]
