"""Connect handlers: parse, authenticate, call one service function, convert.

Every method of the user-facing services is implemented here; WorkerService, which
takes worker credentials instead, lives in ``worker_handler``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from connectrpc.request import RequestContext
from protobuf import Message

from delidev import models as m
from delidev.auth.authenticator import Authenticator
from delidev.auth.principal import Principal
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import (
    auth_pb,
    repository_pb,
    secrets_pb,
    session_pb,
    task_pb,
    todo_pb,
    workspace_pb,
)
from delidev.connect.gen.delidev.v1.auth_connect import AuthService
from delidev.connect.gen.delidev.v1.repository_connect import (
    RepositoryGroupService,
    RepositoryService,
)
from delidev.connect.gen.delidev.v1.secrets_connect import SecretsService
from delidev.connect.gen.delidev.v1.session_connect import SessionService
from delidev.connect.gen.delidev.v1.task_connect import TaskService
from delidev.connect.gen.delidev.v1.todo_connect import TodoService
from delidev.connect.gen.delidev.v1.workspace_connect import WorkspaceService
from delidev.errors import InvalidArgument
from delidev.services import (
    auth,
    live,
    oidc,
    repositories,
    secrets,
    sessions,
    tasks,
    todos,
    workspaces,
)
from delidev.services.common import (
    next_page_cursor,
    page_start,
    parse_id,
    parse_optional_id,
)
from delidev.settings import Settings

Ctx = RequestContext[Any, Any]


def optional(message: Message[Any], field: str) -> Any:
    """The value of a proto3 ``optional`` field, or None when it is unset."""
    return getattr(message, field) if message.has_field(field) else None


class _Handler:
    def __init__(self, authenticator: Authenticator) -> None:
        self._auth = authenticator

    async def actor(self, ctx: Ctx) -> Principal:
        return await self._auth.authenticate(ctx.request_headers.get("authorization"))


class WorkspaceHandler(_Handler, WorkspaceService):
    async def create(
        self, request: workspace_pb.CreateWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.CreateWorkspaceResponse:
        ws = await workspaces.create_workspace(
            actor=await self.actor(ctx),
            name=request.name,
            description=optional(request, "description"),
        )
        return workspace_pb.CreateWorkspaceResponse(workspace=convert.workspace(ws))

    async def list(
        self, request: workspace_pb.ListWorkspacesRequest, ctx: Ctx
    ) -> workspace_pb.ListWorkspacesResponse:
        page = await workspaces.list_workspaces(
            actor=await self.actor(ctx), limit=request.limit, offset=request.offset
        )
        return workspace_pb.ListWorkspacesResponse(
            workspaces=[convert.workspace(w) for w in page.items], total_count=page.total_count
        )

    async def get(
        self, request: workspace_pb.GetWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.GetWorkspaceResponse:
        ws = await workspaces.get_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
        )
        return workspace_pb.GetWorkspaceResponse(workspace=convert.workspace(ws))

    async def update(
        self, request: workspace_pb.UpdateWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.UpdateWorkspaceResponse:
        ws = await workspaces.update_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            name=optional(request, "name"),
            description=optional(request, "description"),
        )
        return workspace_pb.UpdateWorkspaceResponse(workspace=convert.workspace(ws))

    async def delete(
        self, request: workspace_pb.DeleteWorkspaceRequest, ctx: Ctx
    ) -> workspace_pb.DeleteWorkspaceResponse:
        await workspaces.delete_workspace(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
        )
        return workspace_pb.DeleteWorkspaceResponse()


class RepositoryHandler(_Handler, RepositoryService):
    async def add(
        self, request: repository_pb.AddRepositoryRequest, ctx: Ctx
    ) -> repository_pb.AddRepositoryResponse:
        repo = await repositories.add_repository(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            remote_url=request.remote_url,
            name=optional(request, "name"),
            local_path=optional(request, "local_path"),
            default_branch=optional(request, "default_branch"),
            vcs_provider_type=convert.VCS_PROVIDER.to_domain(
                request.vcs_provider_type, "vcs_provider_type"
            ),
            branch_name_template=optional(request, "branch_name_template"),
        )
        return repository_pb.AddRepositoryResponse(repository=convert.repository(repo))

    async def list(
        self, request: repository_pb.ListRepositoriesRequest, ctx: Ctx
    ) -> repository_pb.ListRepositoriesResponse:
        page = await repositories.list_repositories(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            limit=request.limit,
            offset=request.offset,
        )
        return repository_pb.ListRepositoriesResponse(
            repositories=[convert.repository(r) for r in page.items],
            total_count=page.total_count,
        )

    async def get(
        self, request: repository_pb.GetRepositoryRequest, ctx: Ctx
    ) -> repository_pb.GetRepositoryResponse:
        repo = await repositories.get_repository(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
        )
        return repository_pb.GetRepositoryResponse(repository=convert.repository(repo))

    async def remove(
        self, request: repository_pb.RemoveRepositoryRequest, ctx: Ctx
    ) -> repository_pb.RemoveRepositoryResponse:
        await repositories.remove_repository(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
        )
        return repository_pb.RemoveRepositoryResponse()


class RepositoryGroupHandler(_Handler, RepositoryGroupService):
    async def _group(self, group: m.RepositoryGroup) -> repository_pb.RepositoryGroup:
        members = await repositories.group_member_ids([group.id])
        return convert.repository_group(group, members[group.id])

    async def create(
        self, request: repository_pb.CreateRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.CreateRepositoryGroupResponse:
        group = await repositories.create_repository_group(
            actor=await self.actor(ctx),
            workspace_id=parse_id(request.workspace_id, "workspace_id"),
            name=optional(request, "name"),
            repository_ids=list(request.repository_ids),
        )
        return repository_pb.CreateRepositoryGroupResponse(group=await self._group(group))

    async def list(
        self, request: repository_pb.ListRepositoryGroupsRequest, ctx: Ctx
    ) -> repository_pb.ListRepositoryGroupsResponse:
        page = await repositories.list_repository_groups(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            limit=request.limit,
            offset=request.offset,
        )
        members = await repositories.group_member_ids([g.id for g in page.items])
        return repository_pb.ListRepositoryGroupsResponse(
            groups=[convert.repository_group(g, members[g.id]) for g in page.items],
            total_count=page.total_count,
        )

    async def update(
        self, request: repository_pb.UpdateRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.UpdateRepositoryGroupResponse:
        group = await repositories.update_repository_group(
            actor=await self.actor(ctx),
            group_id=parse_id(request.group_id, "group_id"),
            name=optional(request, "name"),
            add_repository_ids=list(request.add_repository_ids),
            remove_repository_ids=list(request.remove_repository_ids),
        )
        return repository_pb.UpdateRepositoryGroupResponse(group=await self._group(group))

    async def delete(
        self, request: repository_pb.DeleteRepositoryGroupRequest, ctx: Ctx
    ) -> repository_pb.DeleteRepositoryGroupResponse:
        await repositories.delete_repository_group(
            actor=await self.actor(ctx), group_id=parse_id(request.group_id, "group_id")
        )
        return repository_pb.DeleteRepositoryGroupResponse()


class TodoHandler(_Handler, TodoService):
    async def _items(self, items: list[m.TodoItem]) -> list[todo_pb.TodoItem]:
        workspace_ids = await todos.workspace_ids_of_repositories(
            list({i.repository_id for i in items})
        )
        return [convert.todo_item(i, workspace_ids) for i in items]

    async def create(
        self, request: todo_pb.CreateTodoItemRequest, ctx: Ctx
    ) -> todo_pb.CreateTodoItemResponse:
        source = convert.TODO_SOURCE.to_domain(request.source, "source")
        item = await todos.create_todo_item(
            actor=await self.actor(ctx),
            repository_id=parse_id(request.repository_id, "repository_id"),
            data=convert.todo_data_from_request(request.data),
            source=source,
        )
        return todo_pb.CreateTodoItemResponse(item=(await self._items([item]))[0])

    async def list(
        self, request: todo_pb.ListTodoItemsRequest, ctx: Ctx
    ) -> todo_pb.ListTodoItemsResponse:
        page = await todos.list_todo_items(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            repository_id=parse_optional_id(request.repository_id, "repository_id"),
            status=convert.TODO_STATUS.to_domain(request.status, "status"),
            item_type=convert.TODO_TYPE.to_domain(request.type, "type"),
            limit=request.limit,
            offset=request.offset,
        )
        return todo_pb.ListTodoItemsResponse(
            items=await self._items(list(page.items)), total_count=page.total_count
        )

    async def get(
        self, request: todo_pb.GetTodoItemRequest, ctx: Ctx
    ) -> todo_pb.GetTodoItemResponse:
        item = await todos.get_todo_item(
            actor=await self.actor(ctx), item_id=parse_id(request.item_id, "item_id")
        )
        return todo_pb.GetTodoItemResponse(item=(await self._items([item]))[0])

    async def update_status(
        self, request: todo_pb.UpdateTodoStatusRequest, ctx: Ctx
    ) -> todo_pb.UpdateTodoStatusResponse:
        status = convert.TODO_STATUS.to_domain(request.status, "status")
        if status is None:
            raise InvalidArgument("status is required", field="status")
        item = await todos.update_todo_status(
            actor=await self.actor(ctx),
            item_id=parse_id(request.item_id, "item_id"),
            status=status,
        )
        return todo_pb.UpdateTodoStatusResponse(item=(await self._items([item]))[0])

    async def dismiss(
        self, request: todo_pb.DismissTodoRequest, ctx: Ctx
    ) -> todo_pb.DismissTodoResponse:
        item = await todos.dismiss_todo(
            actor=await self.actor(ctx), item_id=parse_id(request.item_id, "item_id")
        )
        return todo_pb.DismissTodoResponse(item=(await self._items([item]))[0])


_KINDS = {task_pb.TaskKind.UNIT: "unit", task_pb.TaskKind.COMPOSITE: "composite"}


class TaskHandler(_Handler, TaskService):
    async def _task(self, task: tasks.Task) -> task_pb.Task:
        bundle = await tasks.load_task_view(task)
        return convert.task(task, bundle)

    async def create_unit(
        self, request: task_pb.CreateUnitTaskRequest, ctx: Ctx
    ) -> task_pb.CreateUnitTaskResponse:
        task = await tasks.create_unit_task(
            actor=await self.actor(ctx),
            repository_group_id=parse_id(request.repository_group_id, "repository_group_id"),
            prompt=request.prompt,
            title=optional(request, "title"),
            branch_name=optional(request, "branch_name"),
            ai_agent_type=convert.AGENT_TYPE.to_domain(request.ai_agent_type, "ai_agent_type"),
            ai_agent_model=optional(request, "ai_agent_model"),
            expects_secrets=request.expects_secrets,
        )
        return task_pb.CreateUnitTaskResponse(task=await self._task(task))

    async def create_composite(
        self, request: task_pb.CreateCompositeTaskRequest, ctx: Ctx
    ) -> task_pb.CreateCompositeTaskResponse:
        task = await tasks.create_composite_task(
            actor=await self.actor(ctx),
            repository_group_id=parse_id(request.repository_group_id, "repository_group_id"),
            prompt=request.prompt,
            title=optional(request, "title"),
            execution_agent_type=convert.AGENT_TYPE.to_domain(
                request.execution_agent_type, "execution_agent_type"
            ),
            planning_agent_type=convert.AGENT_TYPE.to_domain(
                request.planning_agent_type, "planning_agent_type"
            ),
            ai_agent_model=optional(request, "ai_agent_model"),
            expects_secrets=request.expects_secrets,
        )
        return task_pb.CreateCompositeTaskResponse(task=await self._task(task))

    async def get(self, request: task_pb.GetTaskRequest, ctx: Ctx) -> task_pb.GetTaskResponse:
        task = await tasks.get_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.GetTaskResponse(task=await self._task(task))

    async def list(self, request: task_pb.ListTasksRequest, ctx: Ctx) -> task_pb.ListTasksResponse:
        kind = task_pb.TaskKind(request.kind) if int(request.kind) else None
        if kind is not None and kind not in _KINDS:
            raise InvalidArgument(f"kind has an unknown value {int(request.kind)}", field="kind")
        start = page_start(request.page_token, "page_token")
        offset = request.offset if start is None else start
        page = await tasks.list_tasks(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            repository_group_id=parse_optional_id(
                request.repository_group_id, "repository_group_id"
            ),
            kind=_KINDS[kind] if kind is not None else None,
            unit_status=convert.UNIT_STATUS.to_domain(request.unit_status, "unit_status"),
            composite_status=convert.COMPOSITE_STATUS.to_domain(
                request.composite_status, "composite_status"
            ),
            limit=request.limit,
            offset=offset,
        )
        bundle = await tasks.load_task_bundle(page.items)
        return task_pb.ListTasksResponse(
            tasks=[convert.task(t, bundle) for t in bundle.shown(page.items)],
            total_count=page.total_count,
            next_page_token=next_page_cursor(offset, len(page.items), page.total_count) or "",
        )

    async def update_status(
        self, request: task_pb.UpdateTaskStatusRequest, ctx: Ctx
    ) -> task_pb.UpdateTaskStatusResponse:
        status = convert.UNIT_STATUS.to_domain(request.status, "status")
        if status is None:
            raise InvalidArgument("status is required", field="status")
        task = await tasks.update_task_status(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            status=status,
            linked_pr_url=optional(request, "linked_pr_url"),
        )
        return task_pb.UpdateTaskStatusResponse(task=await self._task(task))

    async def delete(
        self, request: task_pb.DeleteTaskRequest, ctx: Ctx
    ) -> task_pb.DeleteTaskResponse:
        await tasks.delete_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.DeleteTaskResponse()

    async def retry(self, request: task_pb.RetryTaskRequest, ctx: Ctx) -> task_pb.RetryTaskResponse:
        task = await tasks.retry_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.RetryTaskResponse(task=await self._task(task))

    async def approve(
        self, request: task_pb.ApproveTaskRequest, ctx: Ctx
    ) -> task_pb.ApproveTaskResponse:
        task = await tasks.approve_task(
            actor=await self.actor(ctx), task_id=parse_id(request.task_id, "task_id")
        )
        return task_pb.ApproveTaskResponse(task=await self._task(task))

    async def reject(
        self, request: task_pb.RejectTaskRequest, ctx: Ctx
    ) -> task_pb.RejectTaskResponse:
        task = await tasks.reject_task(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            reason=optional(request, "reason"),
        )
        return task_pb.RejectTaskResponse(task=await self._task(task))

    async def request_changes(
        self, request: task_pb.RequestChangesRequest, ctx: Ctx
    ) -> task_pb.RequestChangesResponse:
        task = await tasks.request_changes(
            actor=await self.actor(ctx),
            task_id=parse_id(request.task_id, "task_id"),
            feedback=request.feedback,
        )
        return task_pb.RequestChangesResponse(task=await self._task(task))


# How often StreamLog looks for new output until the event bus lands (Live issue).


class SessionHandler(_Handler, SessionService):
    def __init__(self, authenticator: Authenticator, feeds: live.LogFeeds) -> None:
        super().__init__(authenticator)
        self._feeds = feeds

    async def get(
        self, request: session_pb.GetSessionRequest, ctx: Ctx
    ) -> session_pb.GetSessionResponse:
        session = await sessions.get_session(
            actor=await self.actor(ctx), session_id=parse_id(request.session_id, "session_id")
        )
        return session_pb.GetSessionResponse(session=convert.agent_session(session))

    async def get_log(
        self, request: session_pb.GetLogRequest, ctx: Ctx
    ) -> session_pb.GetLogResponse:
        read = await sessions.read_log(
            actor=await self.actor(ctx),
            session_id=parse_id(request.session_id, "session_id"),
            offset=request.offset,
            limit=request.limit,
        )
        return session_pb.GetLogResponse(
            content=read.content,
            offset=read.offset,
            next_offset=read.next_offset,
            complete=read.complete,
            status=convert.SESSION_STATUS.to_proto(read.status),
        )

    async def stream_log(
        self, request: session_pb.StreamLogRequest, ctx: Ctx
    ) -> AsyncIterator[session_pb.StreamLogResponse]:
        async for piece in self._feeds.follow(
            actor=await self.actor(ctx),
            session_id=parse_id(request.session_id, "session_id"),
            from_offset=request.from_offset,
        ):
            # The last message (empty data) carries the status the session ended with.
            yield session_pb.StreamLogResponse(
                offset=piece.offset,
                data=piece.data,
                status=convert.SESSION_STATUS.to_proto(piece.status),
                next_offset=piece.next_offset,
            )

    async def stop(
        self, request: session_pb.StopSessionRequest, ctx: Ctx
    ) -> session_pb.StopSessionResponse:
        session = await sessions.stop_session(
            actor=await self.actor(ctx), session_id=parse_id(request.session_id, "session_id")
        )
        return session_pb.StopSessionResponse(session=convert.agent_session(session))

    async def submit_tty_input(
        self, request: session_pb.SubmitTtyInputRequest, ctx: Ctx
    ) -> session_pb.SubmitTtyInputResponse:
        answered = await sessions.submit_tty_input(
            actor=await self.actor(ctx),
            request_id=parse_id(request.request_id, "request_id"),
            response=request.response,
        )
        return session_pb.SubmitTtyInputResponse(request=convert.tty_request(answered))

    async def list_tty_input_requests(
        self, request: session_pb.ListTtyInputRequestsRequest, ctx: Ctx
    ) -> session_pb.ListTtyInputRequestsResponse:
        page = await sessions.list_tty_requests(
            actor=await self.actor(ctx),
            workspace_id=parse_optional_id(request.workspace_id, "workspace_id"),
            task_id=parse_optional_id(request.task_id, "task_id"),
            session_id=parse_optional_id(request.session_id, "session_id"),
            status=convert.TTY_STATUS.to_domain(request.status, "status"),
            limit=request.limit,
            offset=request.offset,
        )
        return session_pb.ListTtyInputRequestsResponse(
            requests=[convert.tty_request(r) for r in page.items], total_count=page.total_count
        )


class SecretsHandler(_Handler, SecretsService):
    def __init__(self, authenticator: Authenticator, store: secrets.SecretStore) -> None:
        super().__init__(authenticator)
        self._store = store

    async def send(
        self, request: secrets_pb.SendSecretsRequest, ctx: Ctx
    ) -> secrets_pb.SendSecretsResponse:
        keys = await secrets.send_secrets(
            actor=await self.actor(ctx),
            store=self._store,
            task_id=parse_id(request.task_id, "task_id"),
            values=dict(request.secrets),
        )
        return secrets_pb.SendSecretsResponse(keys=keys)

    async def clear(
        self, request: secrets_pb.ClearSecretsRequest, ctx: Ctx
    ) -> secrets_pb.ClearSecretsResponse:
        await secrets.clear_secrets(
            actor=await self.actor(ctx),
            store=self._store,
            task_id=parse_id(request.task_id, "task_id"),
        )
        return secrets_pb.ClearSecretsResponse()


def _user_message(user: m.User) -> auth_pb.User:
    return auth_pb.User(
        id=str(user.id),
        email=user.email,
        name=user.name,
        created_at=convert.timestamp(user.created_at),
        updated_at=convert.timestamp(user.updated_at),
    )


class AuthHandler(_Handler, AuthService):
    """Sign-in (OIDC) and sessions of multi-user mode; the login methods need no token."""

    def __init__(self, authenticator: Authenticator, settings: Settings) -> None:
        super().__init__(authenticator)
        self._settings = settings
        self._oidc = oidc.OidcClient(settings)

    def _multi_user(self) -> None:
        auth.ensure_sign_in_enabled(settings=self._settings)

    async def get_login_url(
        self, request: auth_pb.GetLoginUrlRequest, ctx: Ctx
    ) -> auth_pb.GetLoginUrlResponse:
        self._multi_user()
        url, state = await self._oidc.login_url(redirect_uri=request.redirect_uri)
        return auth_pb.GetLoginUrlResponse(url=url, state=state)

    async def handle_callback(
        self, request: auth_pb.HandleCallbackRequest, ctx: Ctx
    ) -> auth_pb.HandleCallbackResponse:
        self._multi_user()
        pair = await self._oidc.complete_login(code=request.code, state=request.state)
        return auth_pb.HandleCallbackResponse(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_at=convert.timestamp(pair.expires_at),
            user=_user_message(pair.user),
        )

    async def refresh_token(
        self, request: auth_pb.RefreshTokenRequest, ctx: Ctx
    ) -> auth_pb.RefreshTokenResponse:
        pair = await auth.refresh_tokens(
            settings=self._settings, refresh_token=request.refresh_token
        )
        return auth_pb.RefreshTokenResponse(
            access_token=pair.access_token,
            refresh_token=pair.refresh_token,
            expires_at=convert.timestamp(pair.expires_at),
        )

    async def get_current_user(
        self, request: auth_pb.GetCurrentUserRequest, ctx: Ctx
    ) -> auth_pb.GetCurrentUserResponse:
        user = await auth.get_current_user(actor=await self.actor(ctx))
        return auth_pb.GetCurrentUserResponse(user=_user_message(user))

    async def logout(self, request: auth_pb.LogoutRequest, ctx: Ctx) -> auth_pb.LogoutResponse:
        await auth.logout(
            settings=self._settings,
            actor=await self.actor(ctx),
            refresh_token=request.refresh_token or None,
        )
        return auth_pb.LogoutResponse()
