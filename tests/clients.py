"""One API, two transports: the same calls over Connect (generated Python client) and GraphQL.

Results come back as plain dicts with snake_case keys; errors as ApiError carrying the
transport's code (upper-cased Connect code / GraphQL extensions.code), the spec's numeric
code and the field at fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
from connectrpc.codec import Codec
from connectrpc.errors import ConnectError
from httpx_ws import AsyncWebSocketSession, aconnect_ws
from httpx_ws.transport import ASGIWebSocketTransport
from pyqwest import Client, HTTPVersion
from pyqwest.testing import ASGITransport

from delidev.connect.codecs import BinaryCodec, StrictJSONCodec
from delidev.connect.gen.delidev.v1 import repository_pb, todo_pb, workspace_pb
from delidev.connect.gen.delidev.v1.common_pb import ErrorInfo
from delidev.connect.gen.delidev.v1.repository_connect import (
    RepositoryGroupServiceClient,
    RepositoryServiceClient,
)
from delidev.connect.gen.delidev.v1.todo_connect import TodoServiceClient
from delidev.connect.gen.delidev.v1.workspace_connect import WorkspaceServiceClient


@dataclass
class ApiError(Exception):  # named like the errors it stands for
    code: str
    delidev_code: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.code} ({self.delidev_code}, field {self.field!r}): {self.message}"


def _camel_to_snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name)


def _graphql_field(extensions: dict[str, Any]) -> str:
    """``extensions.field`` in the proto's spelling (GraphQL names the argument in
    camelCase, Connect the request field in snake_case), so one assertion fits both."""
    return _camel_to_snake(extensions.get("field", ""))


def _snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {_camel_to_snake(k): _snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_snake(v) for v in value]
    return value


@dataclass(frozen=True)
class LogFollowed:
    """A followed log, through any transport: its text, the offset after it, and the status
    the session ended with (``SUCCEEDED``...)."""

    data: str
    end: int
    status: str


WS_PROTOCOL = "graphql-transport-ws"
FOLLOW_LOG = (
    "subscription($id: ID!, $o: Float!) { sessionLog(sessionId: $id, fromOffset: $o) "
    "{ offset data status final nextOffset } }"
)


class ConnectApi:
    name = "connect"

    def __init__(self, app: Any, codec: Codec[Any, Any]) -> None:
        self._http = Client(ASGITransport(app, http_version=HTTPVersion.HTTP1))
        base = "http://test"
        self.workspaces = WorkspaceServiceClient(base, http_client=self._http, codec=codec)
        self.repositories = RepositoryServiceClient(base, http_client=self._http, codec=codec)
        self.groups = RepositoryGroupServiceClient(base, http_client=self._http, codec=codec)
        self.todos = TodoServiceClient(base, http_client=self._http, codec=codec)

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except ConnectError as exc:
            infos = [d.value(ErrorInfo) for d in exc.details]
            info = next((i for i in infos if isinstance(i, ErrorInfo)), None)
            raise ApiError(
                code=exc.code.name,
                delidev_code=info.delidev_code if info else 0,
                field=info.field if info else "",
                message=exc.message,
            ) from None

    @staticmethod
    def _dict(message: Any) -> dict[str, Any]:
        return _snake(message.to_json_value() if hasattr(message, "to_json_value") else {})

    async def create_workspace(self, name: str, description: str | None = None) -> dict[str, Any]:
        res = await self._call(
            self.workspaces.create(
                workspace_pb.CreateWorkspaceRequest(name=name, description=description)
            )
        )
        return _workspace(res.workspace)

    async def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        res = await self._call(
            self.workspaces.get(workspace_pb.GetWorkspaceRequest(workspace_id=workspace_id))
        )
        return _workspace(res.workspace)

    async def list_workspaces(self, limit: int = 0, offset: int = 0) -> tuple[list[str], int]:
        res = await self._call(
            self.workspaces.list(workspace_pb.ListWorkspacesRequest(limit=limit, offset=offset))
        )
        return [w.id for w in res.workspaces], res.total_count

    async def update_workspace(
        self, workspace_id: str, name: str | None = None, description: str | None = None
    ) -> dict[str, Any]:
        res = await self._call(
            self.workspaces.update(
                workspace_pb.UpdateWorkspaceRequest(
                    workspace_id=workspace_id, name=name, description=description
                )
            )
        )
        return _workspace(res.workspace)

    async def delete_workspace(self, workspace_id: str) -> None:
        await self._call(
            self.workspaces.delete(workspace_pb.DeleteWorkspaceRequest(workspace_id=workspace_id))
        )

    async def add_repository(
        self, workspace_id: str, remote_url: str, **extra: Any
    ) -> dict[str, Any]:
        res = await self._call(
            self.repositories.add(
                repository_pb.AddRepositoryRequest(
                    workspace_id=workspace_id, remote_url=remote_url, **extra
                )
            )
        )
        return _repository(res.repository)

    async def get_repository(self, repository_id: str) -> dict[str, Any]:
        res = await self._call(
            self.repositories.get(repository_pb.GetRepositoryRequest(repository_id=repository_id))
        )
        return _repository(res.repository)

    async def list_repositories(self, workspace_id: str = "") -> tuple[list[str], int]:
        res = await self._call(
            self.repositories.list(repository_pb.ListRepositoriesRequest(workspace_id=workspace_id))
        )
        return [r.id for r in res.repositories], res.total_count

    async def remove_repository(self, repository_id: str) -> None:
        await self._call(
            self.repositories.remove(
                repository_pb.RemoveRepositoryRequest(repository_id=repository_id)
            )
        )

    async def create_group(
        self, workspace_id: str, repository_ids: list[str], name: str | None = None
    ) -> dict[str, Any]:
        res = await self._call(
            self.groups.create(
                repository_pb.CreateRepositoryGroupRequest(
                    workspace_id=workspace_id, repository_ids=repository_ids, name=name
                )
            )
        )
        return _group(res.group)

    async def list_groups(self, workspace_id: str) -> tuple[list[dict[str, Any]], int]:
        res = await self._call(
            self.groups.list(repository_pb.ListRepositoryGroupsRequest(workspace_id=workspace_id))
        )
        return [_group(g) for g in res.groups], res.total_count

    async def update_group(
        self,
        group_id: str,
        name: str | None = None,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> dict[str, Any]:
        res = await self._call(
            self.groups.update(
                repository_pb.UpdateRepositoryGroupRequest(
                    group_id=group_id,
                    name=name,
                    add_repository_ids=add or [],
                    remove_repository_ids=remove or [],
                )
            )
        )
        return _group(res.group)

    async def delete_group(self, group_id: str) -> None:
        await self._call(
            self.groups.delete(repository_pb.DeleteRepositoryGroupRequest(group_id=group_id))
        )

    async def create_issue_todo(
        self,
        repository_id: str,
        issue_url: str,
        issue_title: str,
        labels: list[str] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        from protobuf import Oneof

        res = await self._call(
            self.todos.create(
                todo_pb.CreateTodoItemRequest(
                    repository_id=repository_id,
                    source=todo_pb.TodoItemSource[source or "UNSPECIFIED"],
                    data=Oneof(
                        "issue_triage",
                        todo_pb.IssueTriageData(
                            issue_url=issue_url,
                            issue_title=issue_title,
                            suggested_labels=labels or [],
                        ),
                    ),
                )
            )
        )
        return _todo(res.item)

    async def get_todo(self, item_id: str) -> dict[str, Any]:
        res = await self._call(self.todos.get(todo_pb.GetTodoItemRequest(item_id=item_id)))
        return _todo(res.item)

    async def list_todos(self, **filters: Any) -> tuple[list[str], int]:
        request = todo_pb.ListTodoItemsRequest(
            workspace_id=filters.get("workspace_id", ""),
            repository_id=filters.get("repository_id", ""),
            status=todo_pb.TodoItemStatus[filters["status"]] if "status" in filters else 0,
        )
        res = await self._call(self.todos.list(request))
        return [i.id for i in res.items], res.total_count

    async def update_todo_status(self, item_id: str, status: str) -> dict[str, Any]:
        res = await self._call(
            self.todos.update_status(
                todo_pb.UpdateTodoStatusRequest(
                    item_id=item_id, status=todo_pb.TodoItemStatus[status]
                )
            )
        )
        return _todo(res.item)

    async def dismiss_todo(self, item_id: str) -> dict[str, Any]:
        res = await self._call(self.todos.dismiss(todo_pb.DismissTodoRequest(item_id=item_id)))
        return _todo(res.item)

    async def close(self) -> None:
        for client in (self.workspaces, self.repositories, self.groups, self.todos):
            await client.close()


def _workspace(ws: workspace_pb.Workspace) -> dict[str, Any]:
    return {
        "id": ws.id,
        "name": ws.name,
        "description": ws.description if ws.has_field("description") else None,
    }


def _repository(r: repository_pb.Repository) -> dict[str, Any]:
    return {
        "id": r.id,
        "workspace_id": r.workspace_id,
        "name": r.name,
        "remote_url": r.remote_url,
        "default_branch": r.default_branch,
        "vcs_provider_type": r.vcs_provider_type.name,
    }


def _group(g: repository_pb.RepositoryGroup) -> dict[str, Any]:
    return {
        "id": g.id,
        "workspace_id": g.workspace_id,
        "name": g.name if g.has_field("name") else None,
        "repository_ids": list(g.repository_ids),
    }


def _todo(item: todo_pb.TodoItem) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if item.data is not None and item.data.field == "issue_triage":
        d = item.data.value
        data = {
            "issue_url": d.issue_url,
            "issue_title": d.issue_title,
            "suggested_labels": list(d.suggested_labels),
        }
    return {
        "id": item.id,
        "type": item.type.name,
        "status": item.status.name,
        "source": item.source.name,
        "repository_id": item.repository_id,
        "data": data,
    }


WS_FIELDS = "id name description"
REPO_FIELDS = "id workspaceId name remoteUrl defaultBranch vcsProviderType"
GROUP_FIELDS = "id workspaceId name repositoryIds"
TODO_FIELDS = (
    "id type status source repositoryId "
    "data { ... on IssueTriageData { issueUrl issueTitle suggestedLabels } }"
)


class GraphQLApi:
    name = "graphql"

    def __init__(self, app: Any) -> None:
        self._app = app
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        )

    async def execute(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self._http.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body = response.json()
        if body.get("errors"):
            error = body["errors"][0]
            ext = error.get("extensions") or {}
            raise ApiError(
                code=ext.get("code", ""),
                delidev_code=ext.get("delidevCode", 0),
                field=_graphql_field(ext),
                message=error["message"],
            )
        return body["data"]

    async def create_workspace(self, name: str, description: str | None = None) -> dict[str, Any]:
        data = await self.execute(
            "mutation($i: CreateWorkspaceInput!) "
            f"{{ createWorkspace(input: $i) {{ {WS_FIELDS} }} }}",
            i={"name": name, "description": description},
        )
        return _snake(data["createWorkspace"])

    async def get_workspace(self, workspace_id: str) -> dict[str, Any]:
        data = await self.execute(
            f"query($id: ID!) {{ workspace(id: $id) {{ {WS_FIELDS} }} }}", id=workspace_id
        )
        return _snake(data["workspace"])

    async def list_workspaces(self, limit: int = 0, offset: int = 0) -> tuple[list[str], int]:
        data = await self.execute(
            "query($l: Int, $o: Int) { workspaces(limit: $l, offset: $o) "
            "{ totalCount items { id } } }",
            l=limit,
            o=offset,
        )
        page = data["workspaces"]
        return [w["id"] for w in page["items"]], page["totalCount"]

    async def update_workspace(
        self, workspace_id: str, name: str | None = None, description: str | None = None
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {"id": workspace_id}
        if name is not None:
            payload["name"] = name
        if description is not None:
            payload["description"] = description
        data = await self.execute(
            "mutation($i: UpdateWorkspaceInput!) "
            f"{{ updateWorkspace(input: $i) {{ {WS_FIELDS} }} }}",
            i=payload,
        )
        return _snake(data["updateWorkspace"])

    async def delete_workspace(self, workspace_id: str) -> None:
        await self.execute("mutation($id: ID!) { deleteWorkspace(id: $id) }", id=workspace_id)

    async def add_repository(
        self, workspace_id: str, remote_url: str, **extra: Any
    ) -> dict[str, Any]:
        payload = {"workspaceId": workspace_id, "remoteUrl": remote_url}
        for key, value in extra.items():
            parts = key.split("_")
            camel = parts[0] + "".join(p.title() for p in parts[1:])
            payload[camel] = value.name if hasattr(value, "name") else value
        data = await self.execute(
            f"mutation($i: AddRepositoryInput!) {{ addRepository(input: $i) {{ {REPO_FIELDS} }} }}",
            i=payload,
        )
        return _snake(data["addRepository"])

    async def get_repository(self, repository_id: str) -> dict[str, Any]:
        data = await self.execute(
            f"query($id: ID!) {{ repository(id: $id) {{ {REPO_FIELDS} }} }}", id=repository_id
        )
        return _snake(data["repository"])

    async def list_repositories(self, workspace_id: str = "") -> tuple[list[str], int]:
        data = await self.execute(
            "query($w: ID) { repositories(workspaceId: $w) { totalCount items { id } } }",
            w=workspace_id or None,
        )
        page = data["repositories"]
        return [r["id"] for r in page["items"]], page["totalCount"]

    async def remove_repository(self, repository_id: str) -> None:
        await self.execute("mutation($id: ID!) { removeRepository(id: $id) }", id=repository_id)

    async def create_group(
        self, workspace_id: str, repository_ids: list[str], name: str | None = None
    ) -> dict[str, Any]:
        data = await self.execute(
            "mutation($i: CreateRepositoryGroupInput!) "
            f"{{ createRepositoryGroup(input: $i) {{ {GROUP_FIELDS} }} }}",
            i={"workspaceId": workspace_id, "repositoryIds": repository_ids, "name": name},
        )
        return _snake(data["createRepositoryGroup"])

    async def list_groups(self, workspace_id: str) -> tuple[list[dict[str, Any]], int]:
        data = await self.execute(
            f"query($w: ID) {{ repositoryGroups(workspaceId: $w) {{ totalCount items "
            f"{{ {GROUP_FIELDS} }} }} }}",
            w=workspace_id,
        )
        page = data["repositoryGroups"]
        return [_snake(g) for g in page["items"]], page["totalCount"]

    async def update_group(
        self,
        group_id: str,
        name: str | None = None,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": group_id,
            "addRepositoryIds": add or [],
            "removeRepositoryIds": remove or [],
        }
        if name is not None:
            payload["name"] = name
        data = await self.execute(
            "mutation($i: UpdateRepositoryGroupInput!) "
            f"{{ updateRepositoryGroup(input: $i) {{ {GROUP_FIELDS} }} }}",
            i=payload,
        )
        return _snake(data["updateRepositoryGroup"])

    async def delete_group(self, group_id: str) -> None:
        await self.execute("mutation($id: ID!) { deleteRepositoryGroup(id: $id) }", id=group_id)

    async def create_issue_todo(
        self,
        repository_id: str,
        issue_url: str,
        issue_title: str,
        labels: list[str] | None = None,
        source: str | None = None,
    ) -> dict[str, Any]:
        data = await self.execute(
            "mutation($i: CreateTodoItemInput!) "
            f"{{ createTodoItem(input: $i) {{ {TODO_FIELDS} }} }}",
            i={
                "repositoryId": repository_id,
                "issueTriage": {
                    "issueUrl": issue_url,
                    "issueTitle": issue_title,
                    "suggestedLabels": labels or [],
                },
                **({} if source is None else {"source": source}),
            },
        )
        return _gql_todo(data["createTodoItem"])

    async def get_todo(self, item_id: str) -> dict[str, Any]:
        data = await self.execute(
            f"query($id: ID!) {{ todoItem(id: $id) {{ {TODO_FIELDS} }} }}", id=item_id
        )
        return _gql_todo(data["todoItem"])

    async def list_todos(self, **filters: Any) -> tuple[list[str], int]:
        data = await self.execute(
            "query($w: ID, $r: ID, $s: TodoItemStatus) { todoItems(workspaceId: $w, "
            "repositoryId: $r, status: $s) { totalCount items { id } } }",
            w=filters.get("workspace_id"),
            r=filters.get("repository_id"),
            s=filters.get("status"),
        )
        page = data["todoItems"]
        return [i["id"] for i in page["items"]], page["totalCount"]

    async def update_todo_status(self, item_id: str, status: str) -> dict[str, Any]:
        data = await self.execute(
            "mutation($id: ID!, $s: TodoItemStatus!) { updateTodoStatus(id: $id, status: $s) "
            f"{{ {TODO_FIELDS} }} }}",
            id=item_id,
            s=status,
        )
        return _gql_todo(data["updateTodoStatus"])

    async def dismiss_todo(self, item_id: str) -> dict[str, Any]:
        data = await self.execute(
            f"mutation($id: ID!) {{ dismissTodo(id: $id) {{ {TODO_FIELDS} }} }}", id=item_id
        )
        return _gql_todo(data["dismissTodo"])

    async def close(self) -> None:
        await self._http.aclose()


def _gql_todo(item: dict[str, Any]) -> dict[str, Any]:
    result = _snake(item)
    result["data"] = _snake(item["data"])
    return result


def connect_codecs() -> dict[str, Codec[Any, Any]]:
    return {"json": StrictJSONCodec(), "binary": BinaryCodec()}


# Tasks and sessions -----------------------------------------------------------------------

from delidev.connect.gen.delidev.v1 import session_pb, task_pb  # noqa: E402
from delidev.connect.gen.delidev.v1.session_connect import SessionServiceClient  # noqa: E402
from delidev.connect.gen.delidev.v1.task_connect import TaskServiceClient  # noqa: E402


def _unit(task: task_pb.Task) -> dict[str, Any]:
    assert task.task is not None
    value = task.task.value
    if task.task.field == "composite_task":
        return {"id": value.id, "kind": "composite", "status": value.status.name}
    latest = value.latest_session
    return {
        "id": value.id,
        "kind": "unit",
        "status": value.status.name,
        "prompt": value.prompt,
        "linked_pr_url": value.linked_pr_url if value.has_field("linked_pr_url") else None,
        "latest_session": None
        if latest is None
        else {
            "id": latest.id,
            "status": latest.status.name,
            "attempt": latest.attempt,
            "error": latest.error if latest.has_field("error") else None,
        },
    }


class ConnectTaskApi(ConnectApi):
    def __init__(self, app: Any, codec: Codec[Any, Any]) -> None:
        super().__init__(app, codec)
        self.tasks = TaskServiceClient("http://test", http_client=self._http, codec=codec)
        self.sessions = SessionServiceClient("http://test", http_client=self._http, codec=codec)

    async def create_unit(self, group_id: str, prompt: str) -> dict[str, Any]:
        res = await self._call(
            self.tasks.create_unit(
                task_pb.CreateUnitTaskRequest(repository_group_id=group_id, prompt=prompt)
            )
        )
        return _unit(res.task)

    async def get_task(self, task_id: str) -> dict[str, Any]:
        res = await self._call(self.tasks.get(task_pb.GetTaskRequest(task_id=task_id)))
        return _unit(res.task)

    async def list_tasks(self, workspace_id: str) -> tuple[list[str], int]:
        res = await self._call(self.tasks.list(task_pb.ListTasksRequest(workspace_id=workspace_id)))
        return [_unit(t)["id"] for t in res.tasks], res.total_count

    async def list_tasks_page(
        self, workspace_id: str, limit: int, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """One page of tasks after cursor ``after``, and the cursor to ask for the next
        page with (None at the end): TaskService.List's page_token / next_page_token."""
        request = task_pb.ListTasksRequest(
            workspace_id=workspace_id, limit=limit, page_token=after or ""
        )
        res = await self._call(self.tasks.list(request))
        return [_unit(t)["id"] for t in res.tasks], res.next_page_token or None

    async def approve(self, task_id: str) -> dict[str, Any]:
        res = await self._call(self.tasks.approve(task_pb.ApproveTaskRequest(task_id=task_id)))
        return _unit(res.task)

    async def reject(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        res = await self._call(
            self.tasks.reject(task_pb.RejectTaskRequest(task_id=task_id, reason=reason))
        )
        return _unit(res.task)

    async def request_changes(self, task_id: str, feedback: str) -> dict[str, Any]:
        res = await self._call(
            self.tasks.request_changes(
                task_pb.RequestChangesRequest(task_id=task_id, feedback=feedback)
            )
        )
        return _unit(res.task)

    async def update_status(
        self, task_id: str, status: str, url: str | None = None
    ) -> dict[str, Any]:
        res = await self._call(
            self.tasks.update_status(
                task_pb.UpdateTaskStatusRequest(
                    task_id=task_id, status=task_pb.UnitTaskStatus[status], linked_pr_url=url
                )
            )
        )
        return _unit(res.task)

    async def retry(self, task_id: str) -> dict[str, Any]:
        res = await self._call(self.tasks.retry(task_pb.RetryTaskRequest(task_id=task_id)))
        return _unit(res.task)

    async def delete_task(self, task_id: str) -> None:
        await self._call(self.tasks.delete(task_pb.DeleteTaskRequest(task_id=task_id)))

    async def stop_session(self, session_id: str) -> str:
        res = await self._call(
            self.sessions.stop(session_pb.StopSessionRequest(session_id=session_id))
        )
        return str(res.session.status.name)

    async def get_log(self, session_id: str, offset: int = 0, limit: int = 0) -> tuple[str, int]:
        res = await self._call(
            self.sessions.get_log(
                session_pb.GetLogRequest(session_id=session_id, offset=offset, limit=limit)
            )
        )
        return res.content, res.next_offset

    async def follow_log(self, session_id: str, from_offset: int = 0) -> LogFollowed:
        """SessionService.StreamLog to its end (the session must end for it to return)."""

        async def read() -> LogFollowed:
            data, end, status = [], from_offset, ""
            request = session_pb.StreamLogRequest(session_id=session_id, from_offset=from_offset)
            async for piece in self.sessions.stream_log(request):
                data.append(piece.data)
                end = piece.next_offset
                status = piece.status.name.removeprefix("AGENT_SESSION_STATUS_")
            return LogFollowed("".join(data), end, status)

        result: LogFollowed = await self._call(read())
        return result

    async def submit_tty(self, request_id: str, response: str) -> dict[str, Any]:
        res = await self._call(
            self.sessions.submit_tty_input(
                session_pb.SubmitTtyInputRequest(request_id=request_id, response=response)
            )
        )
        r = res.request
        return {
            "status": r.status.name,
            "response": r.response if r.has_field("response") else None,
        }

    async def create_composite(self, group_id: str, prompt: str) -> dict[str, Any]:
        res = await self._call(
            self.tasks.create_composite(
                task_pb.CreateCompositeTaskRequest(repository_group_id=group_id, prompt=prompt)
            )
        )
        return _unit(res.task)

    async def composite_nodes(self, task_id: str) -> dict[str, Any]:
        res = await self._call(self.tasks.get(task_pb.GetTaskRequest(task_id=task_id)))
        c = res.task.task.value
        by_id = {n.id: n.plan_id for n in c.nodes}
        return {
            "status": c.status.name,
            "plan_error": c.plan_error if c.has_field("plan_error") else None,
            "nodes": {
                n.plan_id: (
                    n.state.name,
                    sorted(by_id[d] for d in n.depends_on_node_ids),
                    n.unit_task.id,
                )
                for n in c.nodes
            },
        }

    async def close(self) -> None:
        await super().close()
        await self.tasks.close()
        await self.sessions.close()


UNIT_ONLY = "__typename id status prompt linkedPrUrl latestSession { id status attempt error }"
UNIT_FIELDS = (
    "__typename id ... on UnitTask { status prompt linkedPrUrl "
    "latestSession { id status attempt error } } ... on CompositeTask { compositeStatus: status }"
)


def _gql_task(node: dict[str, Any]) -> dict[str, Any]:
    if node["__typename"] == "CompositeTask":
        return {"id": node["id"], "kind": "composite", "status": node["compositeStatus"]}
    return {
        "id": node["id"],
        "kind": "unit",
        "status": node["status"],
        "prompt": node["prompt"],
        "linked_pr_url": node["linkedPrUrl"],
        "latest_session": node["latestSession"],
    }


class GraphQLTaskApi(GraphQLApi):
    async def create_unit(self, group_id: str, prompt: str) -> dict[str, Any]:
        data = await self.execute(
            f"mutation($i: CreateUnitTaskInput!) {{ createUnitTask(input: $i) {{ {UNIT_ONLY} }} }}",
            i={"repositoryGroupId": group_id, "prompt": prompt},
        )
        return _gql_task(data["createUnitTask"])

    async def get_task(self, task_id: str) -> dict[str, Any]:
        data = await self.execute(
            f"query($id: ID!) {{ task(id: $id) {{ {UNIT_FIELDS} }} }}", id=task_id
        )
        return _gql_task(data["task"])

    async def list_tasks(self, workspace_id: str) -> tuple[list[str], int]:
        data = await self.execute(
            "query($w: ID) { tasks(workspaceId: $w) { totalCount edges { node { id } } } }",
            w=workspace_id,
        )
        page = data["tasks"]
        return [e["node"]["id"] for e in page["edges"]], page["totalCount"]

    async def list_tasks_page(
        self, workspace_id: str, limit: int, after: str | None = None
    ) -> tuple[list[str], str | None]:
        """One page of tasks after cursor ``after``, and the cursor to ask for the next
        page with (None at the end): ``tasks(first:, after:)`` and its ``pageInfo``."""
        data = await self.execute(
            "query($w: ID, $f: Int, $a: String) { tasks(workspaceId: $w, first: $f, after: $a) "
            "{ pageInfo { hasNextPage endCursor } edges { node { id } } } }",
            w=workspace_id,
            f=limit,
            a=after,
        )
        page = data["tasks"]
        info = page["pageInfo"]
        ids = [e["node"]["id"] for e in page["edges"]]
        return ids, info["endCursor"] if info["hasNextPage"] else None

    async def _mutate(self, name: str, args: str, **variables: Any) -> dict[str, Any]:
        fields = UNIT_ONLY if name in ("requestChanges", "updateTaskStatus") else UNIT_FIELDS
        call = ", ".join(f"{k}: ${k}" for k in variables)
        data = await self.execute(
            f"mutation({args}) {{ {name}({call}) {{ {fields} }} }}",
            **variables,
        )
        return _gql_task(data[name])

    async def approve(self, task_id: str) -> dict[str, Any]:
        return await self._mutate("approveTask", "$id: ID!", id=task_id)

    async def reject(self, task_id: str, reason: str | None = None) -> dict[str, Any]:
        return await self._mutate(
            "rejectTask", "$id: ID!, $reason: String", id=task_id, reason=reason
        )

    async def request_changes(self, task_id: str, feedback: str) -> dict[str, Any]:
        return await self._mutate(
            "requestChanges", "$id: ID!, $feedback: String!", id=task_id, feedback=feedback
        )

    async def update_status(
        self, task_id: str, status: str, url: str | None = None
    ) -> dict[str, Any]:
        return await self._mutate(
            "updateTaskStatus",
            "$id: ID!, $status: UnitTaskStatus!, $linkedPrUrl: String",
            id=task_id,
            status=status,
            linkedPrUrl=url,
        )

    async def retry(self, task_id: str) -> dict[str, Any]:
        return await self._mutate("retryTask", "$id: ID!", id=task_id)

    async def delete_task(self, task_id: str) -> None:
        await self.execute("mutation($id: ID!) { deleteTask(id: $id) }", id=task_id)

    async def create_composite(self, group_id: str, prompt: str) -> dict[str, Any]:
        data = await self.execute(
            "mutation($i: CreateCompositeTaskInput!) { createCompositeTask(input: $i) "
            "{ __typename id compositeStatus: status } }",
            i={"repositoryGroupId": group_id, "prompt": prompt},
        )
        return _gql_task(data["createCompositeTask"])

    async def composite_nodes(self, task_id: str) -> dict[str, Any]:
        data = await self.execute(
            "query($id: ID!) { task(id: $id) { ... on CompositeTask { status planError "
            "nodes { id planId state dependsOnNodeIds unitTask { id } } } } }",
            id=task_id,
        )
        c = data["task"]
        by_id = {n["id"]: n["planId"] for n in c["nodes"]}
        return {
            "status": c["status"],
            "plan_error": c["planError"],
            "nodes": {
                n["planId"]: (
                    n["state"],
                    sorted(by_id[d] for d in n["dependsOnNodeIds"]),
                    n["unitTask"]["id"],
                )
                for n in c["nodes"]
            },
        }

    async def stop_session(self, session_id: str) -> str:
        data = await self.execute(
            "mutation($id: ID!) { stopSession(id: $id) { status } }", id=session_id
        )
        return str(data["stopSession"]["status"])

    async def get_log(self, session_id: str, offset: int = 0, limit: int = 0) -> tuple[str, int]:
        data = await self.execute(
            "query($id: ID!, $o: Int!, $l: Int!) { session(id: $id) { log(offset: $o, limit: $l) "
            "{ content nextOffset } } }",
            id=session_id,
            o=offset,
            l=limit,
        )
        log = data["session"]["log"]
        return log["content"], log["nextOffset"]

    async def follow_log(self, session_id: str, from_offset: int = 0) -> LogFollowed:
        """The ``sessionLog`` subscription over the GraphQL WebSocket (graphql-transport-ws)
        to its end (the session must end for it to return)."""
        transport = ASGIWebSocketTransport(self._app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ws: AsyncWebSocketSession
            async with aconnect_ws("/graphql", client, subprotocols=[WS_PROTOCOL]) as ws:
                outcome = await self._follow(ws, session_id, from_offset)
        # Raised outside the socket's task group, which would wrap it in an ExceptionGroup.
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome

    @staticmethod
    async def _follow(
        ws: AsyncWebSocketSession, session_id: str, from_offset: int
    ) -> LogFollowed | ApiError:
        await ws.send_json({"type": "connection_init", "payload": {}})
        ack = await ws.receive_json()
        assert ack["type"] == "connection_ack", ack
        variables = {"id": session_id, "o": from_offset}
        payload = {"query": FOLLOW_LOG, "variables": variables}
        await ws.send_json({"id": "1", "type": "subscribe", "payload": payload})
        data, end, status = [], from_offset, ""
        while True:
            message = await ws.receive_json()
            if message["type"] == "ping":
                await ws.send_json({"type": "pong"})
                continue
            if message["type"] == "complete":
                return LogFollowed("".join(data), end, status)
            body = message["payload"]
            if message["type"] == "error" or body.get("errors"):
                error = (body if isinstance(body, list) else body["errors"])[0]
                ext = error.get("extensions") or {}
                return ApiError(
                    code=ext.get("code", ""),
                    delidev_code=ext.get("delidevCode", 0),
                    field=_graphql_field(ext),
                    message=error["message"],
                )
            piece = body["data"]["sessionLog"]
            data.append(piece["data"])
            end = int(piece["nextOffset"])
            status = piece["status"]

    async def submit_tty(self, request_id: str, response: str) -> dict[str, Any]:
        data = await self.execute(
            "mutation($id: ID!, $r: String!) { submitTtyInput(requestId: $id, response: $r) "
            "{ status response } }",
            id=request_id,
            r=response,
        )
        return dict(data["submitTtyInput"])
