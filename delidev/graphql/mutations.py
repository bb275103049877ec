"""The root ``Mutation`` type: each resolver parses, calls one service function, converts."""

from __future__ import annotations

import strawberry

from delidev.errors import InvalidArgument
from delidev.graphql.inputs import (
    AddRepositoryInput,
    CreateCompositeTaskInput,
    CreateRepositoryGroupInput,
    CreateTodoItemInput,
    CreateUnitTaskInput,
    CreateWorkspaceInput,
    UpdateRepositoryGroupInput,
    UpdateRepositorySettingsInput,
    UpdateWorkspaceInput,
)
from delidev.graphql.task_types import (
    AgentSession,
    CompositeTask,
    Task,
    TaskPriority,
    TtyInputRequest,
    UnitTask,
    UnitTaskStatus,
    task_from_model,
)
from delidev.graphql.types import (
    GqlInfo,
    Repository,
    RepositoryGroup,
    TodoItem,
    TodoItemStatus,
    Workspace,
)
from delidev.services import (
    repositories,
    repository_settings,
    sessions,
    tasks,
    todos,
    workspaces,
)
from delidev.services.common import parse_id

_EXACT = 2**53  # the largest integer every Float (and a JavaScript number) holds exactly


def micros(value: float | None, field: str) -> int | None:
    """A money amount given as a Float: it must hold an integer. Raises: InvalidArgument."""
    if value is None:
        return None
    if not float(value).is_integer() or abs(value) > _EXACT:
        raise InvalidArgument(
            f"{field} must be a whole number of micros (at most 2^53)", field=field
        )
    return int(value)


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
class Mutation:
    @strawberry.mutation
    async def create_workspace(self, info: GqlInfo, input: CreateWorkspaceInput) -> Workspace:
        ws = await workspaces.create_workspace(
            actor=await info.context.actor(),
            name=input.name,
            description=input.description,
            max_concurrent_jobs=input.max_concurrent_jobs,
            monthly_budget_micros=micros(input.monthly_budget_micros, "monthlyBudgetMicros"),
            budget_period=input.budget_period,
            task_budget_micros=micros(input.task_budget_micros, "taskBudgetMicros"),
            budget_warning_percent=input.budget_warning_percent,
        )
        return Workspace.from_model(ws)

    @strawberry.mutation
    async def update_workspace(self, info: GqlInfo, input: UpdateWorkspaceInput) -> Workspace:
        ws = await workspaces.update_workspace(
            actor=await info.context.actor(),
            workspace_id=parse_id(input.id, "id"),
            name=input.name,
            description=input.description,
            max_concurrent_jobs=input.max_concurrent_jobs,
            monthly_budget_micros=micros(input.monthly_budget_micros, "monthlyBudgetMicros"),
            budget_period=input.budget_period,
            task_budget_micros=micros(input.task_budget_micros, "taskBudgetMicros"),
            budget_warning_percent=input.budget_warning_percent,
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

    @strawberry.mutation(  # type: ignore[untyped-decorator]  # strawberry.mutation(...) is typed Any
        description="Sets the secret webhook deliveries are checked against (16 to 256"
        " printable ASCII characters); null or empty clears it. Never returned."
    )
    async def set_repository_webhook_secret(
        self, info: GqlInfo, id: strawberry.ID, secret: str | None
    ) -> Repository:
        repo = await repository_settings.set_webhook_secret(
            actor=await info.context.actor(), repository_id=parse_id(id, "id"), secret=secret
        )
        return Repository.from_model(repo)

    @strawberry.mutation
    async def update_repository_settings(
        self, info: GqlInfo, input: UpdateRepositorySettingsInput
    ) -> Repository:
        repo = await repository_settings.update_repository_settings(
            actor=await info.context.actor(),
            repository_id=parse_id(input.repository_id, "repositoryId"),
            auto_triage=input.auto_triage,
            auto_fix_review_comments=input.auto_fix_review_comments,
            review_comment_filter=input.review_comment_filter,
            auto_fix_ci_failures=input.auto_fix_ci_failures,
        )
        return Repository.from_model(repo)

    @strawberry.mutation
    async def create_repository_group(
        self, info: GqlInfo, input: CreateRepositoryGroupInput
    ) -> RepositoryGroup:
        group = await repositories.create_repository_group(
            actor=await info.context.actor(),
            workspace_id=parse_id(input.workspace_id, "workspaceId"),
            repository_ids=[str(r) for r in input.repository_ids],
            name=input.name,
            default_required_labels=list(input.default_required_labels),
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
            default_required_labels=input.default_required_labels,
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
            priority=input.priority,
            required_labels=input.required_labels,
            max_run_seconds=input.max_run_seconds,
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
            priority=input.priority,
            required_labels=input.required_labels,
            max_run_seconds=input.max_run_seconds,
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

    @strawberry.mutation(  # type: ignore[untyped-decorator]  # strawberry.mutation(...) is typed Any
        description="How soon its jobs are handed out (of a composite: also its nodes'); "
        "refused once the task is done or rejected."
    )
    async def set_task_priority(
        self,
        info: GqlInfo,
        task_id: strawberry.ID,
        priority: TaskPriority,  # type: ignore[valid-type]  # strawberry.enum result
    ) -> Task:
        task = await tasks.set_task_priority(
            actor=await info.context.actor(),
            task_id=parse_id(task_id, "taskId"),
            priority=priority,
        )
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
