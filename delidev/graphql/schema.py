"""Queries and mutations: each resolver parses, calls one service function, converts."""

from __future__ import annotations

import logging

import strawberry
from graphql import ASTValidationRule, NoSchemaIntrospectionCustomRule
from graphql.error import GraphQLError
from strawberry.types import ExecutionContext

from delidev.errors import InvalidArgument
from delidev.graphql.errors import Guard
from delidev.graphql.limits import DocumentLimits
from delidev.graphql.subscriptions import Subscription
from delidev.graphql.task_types import (
    AgentSession,
    AiAgentType,
    CompositeTask,
    CompositeTaskStatus,
    PageInfo,
    Task,
    TaskConnection,
    TaskEdge,
    TaskKind,
    TtyInputRequest,
    TtyInputRequestList,
    TtyInputStatus,
    UnitTask,
    UnitTaskStatus,
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
    TodoItemSource,
    TodoItemStatus,
    TodoItemType,
    VcsProviderType,
    Workspace,
    WorkspaceList,
)
from delidev.services import repositories, sessions, tasks, todos, workspaces
from delidev.services.common import (
    encode_cursor,
    page_start,
    parse_id,
    parse_optional_id,
)
from delidev.settings import Settings

log = logging.getLogger(__name__)


@strawberry.input
class CreateWorkspaceInput:
    name: str
    description: str | None = None


@strawberry.input
class UpdateWorkspaceInput:
    id: strawberry.ID
    name: str | None = None
    description: str | None = strawberry.field(
        default=None, description="An empty string clears the description."
    )


@strawberry.input
class AddRepositoryInput:
    workspace_id: strawberry.ID
    remote_url: str
    name: str | None = None
    local_path: str | None = None
    default_branch: str | None = None
    vcs_provider_type: VcsProviderType | None = None  # type: ignore[valid-type]  # enum
    branch_name_template: str | None = None


@strawberry.input
class CreateRepositoryGroupInput:
    workspace_id: strawberry.ID
    repository_ids: list[strawberry.ID]
    name: str | None = None


@strawberry.input
class UpdateRepositoryGroupInput:
    id: strawberry.ID
    name: str | None = strawberry.field(
        default=None, description="An empty string clears the name."
    )
    add_repository_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    remove_repository_ids: list[strawberry.ID] = strawberry.field(default_factory=list)


@strawberry.input
class IssueTriageInput:
    issue_url: str
    issue_title: str
    suggested_labels: list[str] = strawberry.field(default_factory=list)
    suggested_assignees: list[str] = strawberry.field(default_factory=list)


@strawberry.input
class PrReviewInput:
    pr_url: str
    pr_title: str
    changed_files_count: int = 0
    ai_summary: str | None = None


@strawberry.input(description="Exactly one of issueTriage and prReview.")
class CreateTodoItemInput:
    repository_id: strawberry.ID
    source: TodoItemSource | None = strawberry.field(  # type: ignore[valid-type]  # enum
        default=None, description="Where the item came from; AUTO when left out or null."
    )
    issue_triage: IssueTriageInput | None = None
    pr_review: PrReviewInput | None = None


@strawberry.input
class CreateUnitTaskInput:
    repository_group_id: strawberry.ID
    prompt: str
    title: str | None = None
    branch_name: str | None = None
    ai_agent_type: AiAgentType | None = None  # type: ignore[valid-type]  # enum
    ai_agent_model: str | None = None
    expects_secrets: bool = False


@strawberry.input
class CreateCompositeTaskInput:
    repository_group_id: strawberry.ID
    prompt: str
    title: str | None = None
    execution_agent_type: AiAgentType | None = None  # type: ignore[valid-type]  # enum
    planning_agent_type: AiAgentType | None = None  # type: ignore[valid-type]  # enum
    ai_agent_model: str | None = None
    expects_secrets: bool = False


def _todo_data(payload: CreateTodoItemInput) -> todos.TodoData:
    if (payload.issue_triage is None) == (payload.pr_review is None):
        raise InvalidArgument("give exactly one of issueTriage and prReview", field="data")
    if payload.issue_triage is not None:
        issue = payload.issue_triage
        return todos.IssueTriageData(
            issue_url=issue.issue_url,
            issue_title=issue.issue_title,
            suggested_labels=list(issue.suggested_labels),
            suggested_assignees=list(issue.suggested_assignees),
        )
    pr = payload.pr_review
    assert pr is not None  # checked above
    return todos.PrReviewData(
        pr_url=pr.pr_url,
        pr_title=pr.pr_title,
        changed_files_count=pr.changed_files_count,
        ai_summary=pr.ai_summary,
    )


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


@strawberry.type
class Mutation:
    @strawberry.mutation
    async def create_workspace(self, info: GqlInfo, input: CreateWorkspaceInput) -> Workspace:
        ws = await workspaces.create_workspace(
            actor=await info.context.actor(), name=input.name, description=input.description
        )
        return Workspace.from_model(ws)

    @strawberry.mutation
    async def update_workspace(self, info: GqlInfo, input: UpdateWorkspaceInput) -> Workspace:
        ws = await workspaces.update_workspace(
            actor=await info.context.actor(),
            workspace_id=parse_id(input.id, "id"),
            name=input.name,
            description=input.description,
        )
        return Workspace.from_model(ws)

    @strawberry.mutation
    async def delete_workspace(self, info: GqlInfo, id: strawberry.ID) -> bool:
        await workspaces.delete_workspace(
            actor=await info.context.actor(), workspace_id=parse_id(id, "id")
        )
        return True

    @strawberry.mutation
    async def add_repository(self, info: GqlInfo, input: AddRepositoryInput) -> Repository:
        repo = await repositories.add_repository(
            actor=await info.context.actor(),
            workspace_id=parse_id(input.workspace_id, "workspaceId"),
            remote_url=input.remote_url,
            name=input.name,
            local_path=input.local_path,
            default_branch=input.default_branch,
            vcs_provider_type=input.vcs_provider_type,
            branch_name_template=input.branch_name_template,
        )
        return Repository.from_model(repo)

    @strawberry.mutation
    async def remove_repository(self, info: GqlInfo, id: strawberry.ID) -> bool:
        await repositories.remove_repository(
            actor=await info.context.actor(), repository_id=parse_id(id, "id")
        )
        return True

    @strawberry.mutation
    async def create_repository_group(
        self, info: GqlInfo, input: CreateRepositoryGroupInput
    ) -> RepositoryGroup:
        group = await repositories.create_repository_group(
            actor=await info.context.actor(),
            workspace_id=parse_id(input.workspace_id, "workspaceId"),
            repository_ids=[str(r) for r in input.repository_ids],
            name=input.name,
        )
        return RepositoryGroup.from_model(group)

    @strawberry.mutation
    async def update_repository_group(
        self, info: GqlInfo, input: UpdateRepositoryGroupInput
    ) -> RepositoryGroup:
        group = await repositories.update_repository_group(
            actor=await info.context.actor(),
            group_id=parse_id(input.id, "id"),
            name=input.name,
            add_repository_ids=[str(r) for r in input.add_repository_ids],
            remove_repository_ids=[str(r) for r in input.remove_repository_ids],
        )
        return RepositoryGroup.from_model(group)

    @strawberry.mutation
    async def delete_repository_group(self, info: GqlInfo, id: strawberry.ID) -> bool:
        await repositories.delete_repository_group(
            actor=await info.context.actor(), group_id=parse_id(id, "id")
        )
        return True

    @strawberry.mutation
    async def create_todo_item(self, info: GqlInfo, input: CreateTodoItemInput) -> TodoItem:
        item = await todos.create_todo_item(
            actor=await info.context.actor(),
            repository_id=parse_id(input.repository_id, "repositoryId"),
            data=_todo_data(input),
            source=input.source,
        )
        return TodoItem.from_model(item)

    @strawberry.mutation
    async def update_todo_status(
        self,
        info: GqlInfo,
        id: strawberry.ID,
        status: TodoItemStatus,  # type: ignore[valid-type]  # enum
    ) -> TodoItem:
        item = await todos.update_todo_status(
            actor=await info.context.actor(), item_id=parse_id(id, "id"), status=status
        )
        return TodoItem.from_model(item)

    @strawberry.mutation
    async def dismiss_todo(self, info: GqlInfo, id: strawberry.ID) -> TodoItem:
        item = await todos.dismiss_todo(
            actor=await info.context.actor(), item_id=parse_id(id, "id")
        )
        return TodoItem.from_model(item)

    @strawberry.mutation
    async def create_unit_task(self, info: GqlInfo, input: CreateUnitTaskInput) -> UnitTask:
        task = await tasks.create_unit_task(
            actor=await info.context.actor(),
            repository_group_id=parse_id(input.repository_group_id, "repositoryGroupId"),
            prompt=input.prompt,
            title=input.title,
            branch_name=input.branch_name,
            ai_agent_type=input.ai_agent_type,
            ai_agent_model=input.ai_agent_model,
            expects_secrets=input.expects_secrets,
        )
        return UnitTask.from_model(task)

    @strawberry.mutation
    async def create_composite_task(
        self, info: GqlInfo, input: CreateCompositeTaskInput
    ) -> CompositeTask:
        task = await tasks.create_composite_task(
            actor=await info.context.actor(),
            repository_group_id=parse_id(input.repository_group_id, "repositoryGroupId"),
            prompt=input.prompt,
            title=input.title,
            execution_agent_type=input.execution_agent_type,
            planning_agent_type=input.planning_agent_type,
            ai_agent_model=input.ai_agent_model,
            expects_secrets=input.expects_secrets,
        )
        return CompositeTask.from_model(task)

    @strawberry.mutation
    async def update_task_status(
        self,
        info: GqlInfo,
        id: strawberry.ID,
        status: UnitTaskStatus,  # type: ignore[valid-type]  # enum
        linked_pr_url: str | None = None,
    ) -> UnitTask:
        task = await tasks.update_task_status(
            actor=await info.context.actor(),
            task_id=parse_id(id, "id"),
            status=status,
            linked_pr_url=linked_pr_url,
        )
        return UnitTask.from_model(task)

    @strawberry.mutation
    async def delete_task(self, info: GqlInfo, id: strawberry.ID) -> bool:
        await tasks.delete_task(actor=await info.context.actor(), task_id=parse_id(id, "id"))
        return True

    @strawberry.mutation
    async def retry_task(self, info: GqlInfo, id: strawberry.ID) -> Task:
        task = await tasks.retry_task(actor=await info.context.actor(), task_id=parse_id(id, "id"))
        return task_from_model(task)

    @strawberry.mutation
    async def approve_task(self, info: GqlInfo, id: strawberry.ID) -> Task:
        task = await tasks.approve_task(
            actor=await info.context.actor(), task_id=parse_id(id, "id")
        )
        return task_from_model(task)

    @strawberry.mutation
    async def reject_task(
        self, info: GqlInfo, id: strawberry.ID, reason: str | None = None
    ) -> Task:
        task = await tasks.reject_task(
            actor=await info.context.actor(), task_id=parse_id(id, "id"), reason=reason
        )
        return task_from_model(task)

    @strawberry.mutation
    async def request_changes(self, info: GqlInfo, id: strawberry.ID, feedback: str) -> UnitTask:
        task = await tasks.request_changes(
            actor=await info.context.actor(), task_id=parse_id(id, "id"), feedback=feedback
        )
        return UnitTask.from_model(task)

    @strawberry.mutation
    async def stop_session(self, info: GqlInfo, id: strawberry.ID) -> AgentSession:
        session = await sessions.stop_session(
            actor=await info.context.actor(), session_id=parse_id(id, "id")
        )
        return AgentSession.from_model(session)

    @strawberry.mutation
    async def submit_tty_input(
        self, info: GqlInfo, request_id: strawberry.ID, response: str
    ) -> TtyInputRequest:
        answered = await sessions.submit_tty_input(
            actor=await info.context.actor(),
            request_id=parse_id(request_id, "requestId"),
            response=response,
        )
        return TtyInputRequest.from_model(answered)


class Schema(strawberry.Schema):
    def process_errors(
        self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None
    ) -> None:
        # Domain errors and request errors are the caller's business, not the log's;
        # unexpected errors are logged by DomainErrors before being masked.
        return None


def introspection_enabled(settings: Settings) -> bool:
    """Schema introspection: on in single-user mode, off in multi-user mode (anyone may call
    /graphql there), unless DELIDEV_GRAPHQL_INTROSPECTION says otherwise."""
    if settings.graphql_introspection is None:
        return settings.single_user_mode
    return settings.graphql_introspection


def build_schema(settings: Settings) -> Schema:
    # The rules are built once: the validation cache keys on the rule classes.
    rules: tuple[type[ASTValidationRule], ...] = ()
    if not introspection_enabled(settings):
        rules = (NoSchemaIntrospectionCustomRule,)
    limits = DocumentLimits(
        max_depth=settings.graphql_max_depth,
        max_aliases=settings.graphql_max_aliases,
        max_fields=settings.graphql_max_fields,
        max_fragments=settings.graphql_max_fragments,
    )
    return Schema(
        query=Query,
        mutation=Mutation,
        subscription=Subscription,
        types=[UnitTask, CompositeTask],
        extensions=[
            lambda: Guard(
                max_tokens=settings.graphql_max_tokens,
                limits=limits,
                rules=rules,
                max_response_bytes=settings.graphql_max_response_bytes,
            ),
        ],
    )
