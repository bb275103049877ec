"""The root ``Query`` type: each resolver parses, calls one service function, converts."""

from __future__ import annotations

import strawberry

from delidev.graphql.task_types import (
    AgentSession,
    CompositeTaskStatus,
    PageInfo,
    Task,
    TaskConnection,
    TaskEdge,
    TaskKind,
    TtyInputRequest,
    TtyInputRequestList,
    TtyInputStatus,
    UnitTaskStatus,
    prefetch_tasks,
    task_from_model,
)
from delidev.graphql.types import (
    GqlInfo,
    Repository,
    RepositoryGroup,
    RepositoryGroupList,
    RepositoryList,
    TodoItem,
    TodoItemList,
    TodoItemStatus,
    TodoItemType,
    Workspace,
    WorkspaceList,
)
from delidev.graphql.worker_types import Worker, WorkerList
from delidev.services import repositories, sessions, tasks, todos, workspaces
from delidev.services.common import (
    check_page_size,
    encode_cursor,
    page_start,
    parse_id,
    parse_optional_id,
)
from delidev.services.workers import registry


@strawberry.type
class Query:
    @strawberry.field
    async def workspaces(
        self, info: GqlInfo, limit: int | None = None, offset: int | None = None
    ) -> WorkspaceList:
        page = await workspaces.list_workspaces(
            actor=await info.context.actor(), limit=limit, offset=offset
        )
        return WorkspaceList(
            items=[Workspace.from_model(w) for w in page.items], total_count=page.total_count
        )

    @strawberry.field
    async def workspace(self, info: GqlInfo, id: strawberry.ID) -> Workspace:
        ws = await workspaces.get_workspace(
            actor=await info.context.actor(), workspace_id=parse_id(id, "id")
        )
        return Workspace.from_model(ws)

    @strawberry.field
    async def repositories(
        self,
        info: GqlInfo,
        workspace_id: strawberry.ID | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> RepositoryList:
        page = await repositories.list_repositories(
            actor=await info.context.actor(),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
            limit=limit,
            offset=offset,
        )
        return RepositoryList(
            items=[Repository.from_model(r) for r in page.items], total_count=page.total_count
        )

    @strawberry.field
    async def repository(self, info: GqlInfo, id: strawberry.ID) -> Repository:
        repo = await repositories.get_repository(
            actor=await info.context.actor(), repository_id=parse_id(id, "id")
        )
        return Repository.from_model(repo)

    @strawberry.field
    async def repository_groups(
        self,
        info: GqlInfo,
        workspace_id: strawberry.ID | None = None,
        limit: int | None = None,
        offset: int | None = None,
    ) -> RepositoryGroupList:
        page = await repositories.list_repository_groups(
            actor=await info.context.actor(),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
            limit=limit,
            offset=offset,
        )
        return RepositoryGroupList(
            items=[RepositoryGroup.from_model(g) for g in page.items],
            total_count=page.total_count,
        )

    @strawberry.field
    async def todo_items(
        self,
        info: GqlInfo,
        workspace_id: strawberry.ID | None = None,
        repository_id: strawberry.ID | None = None,
        status: TodoItemStatus | None = None,  # type: ignore[valid-type]  # enum
        type: TodoItemType | None = None,  # type: ignore[valid-type]  # enum
        limit: int | None = None,
        offset: int | None = None,
    ) -> TodoItemList:
        page = await todos.list_todo_items(
            actor=await info.context.actor(),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
            repository_id=parse_optional_id(repository_id, "repositoryId"),
            status=status,
            item_type=type,
            limit=limit,
            offset=offset,
        )
        return TodoItemList(
            items=[TodoItem.from_model(i) for i in page.items], total_count=page.total_count
        )

    @strawberry.field
    async def todo_item(self, info: GqlInfo, id: strawberry.ID) -> TodoItem:
        item = await todos.get_todo_item(
            actor=await info.context.actor(), item_id=parse_id(id, "id")
        )
        return TodoItem.from_model(item)

    @strawberry.field
    async def tasks(
        self,
        info: GqlInfo,
        first: int | None = None,
        after: str | None = None,
        workspace_id: strawberry.ID | None = None,
        repository_group_id: strawberry.ID | None = None,
        kind: TaskKind | None = None,
        unit_status: UnitTaskStatus | None = None,  # type: ignore[valid-type]  # enum
        composite_status: CompositeTaskStatus | None = None,  # type: ignore[valid-type]  # enum
    ) -> TaskConnection:
        check_page_size(first, "first")
        offset = page_start(after, "after") or 0
        page = await tasks.list_tasks(
            actor=await info.context.actor(),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
            repository_group_id=parse_optional_id(repository_group_id, "repositoryGroupId"),
            kind=kind.value if kind is not None else None,
            unit_status=unit_status,
            composite_status=composite_status,
            limit=first,
            offset=offset,
        )
        await prefetch_tasks(info, page.items, ("edges", "node"))
        edges = [
            TaskEdge(cursor=encode_cursor(offset + i), node=task_from_model(t))
            for i, t in enumerate(page.items)
        ]
        return TaskConnection(
            edges=edges,
            page_info=PageInfo(
                has_next_page=offset + len(edges) < page.total_count,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            total_count=page.total_count,
        )

    @strawberry.field
    async def task(self, info: GqlInfo, id: strawberry.ID) -> Task:
        found = await tasks.get_task(actor=await info.context.actor(), task_id=parse_id(id, "id"))
        return task_from_model(found)

    @strawberry.field
    async def session(self, info: GqlInfo, id: strawberry.ID) -> AgentSession:
        found = await sessions.get_session(
            actor=await info.context.actor(), session_id=parse_id(id, "id")
        )
        return AgentSession.from_model(found)

    @strawberry.field
    async def tty_input_requests(
        self,
        info: GqlInfo,
        workspace_id: strawberry.ID | None = None,
        task_id: strawberry.ID | None = None,
        session_id: strawberry.ID | None = None,
        status: TtyInputStatus | None = None,  # type: ignore[valid-type]  # enum
        limit: int | None = None,
        offset: int | None = None,
    ) -> TtyInputRequestList:
        page = await sessions.list_tty_requests(
            actor=await info.context.actor(),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
            task_id=parse_optional_id(task_id, "taskId"),
            session_id=parse_optional_id(session_id, "sessionId"),
            status=status,
            limit=limit,
            offset=offset,
        )
        return TtyInputRequestList(
            items=[TtyInputRequest.from_model(r) for r in page.items],
            total_count=page.total_count,
        )

    @strawberry.field
    async def workers(
        self, info: GqlInfo, limit: int | None = None, offset: int | None = None
    ) -> WorkerList:
        """The fleet by name; ``currentTaskId`` is given for one's own tasks only."""
        page = await registry.list_workers(
            actor=await info.context.actor(), limit=limit, offset=offset
        )
        return WorkerList(
            items=[Worker.from_model(v.worker, v.current_task_id) for v in page.items],
            total_count=page.total_count,
        )
