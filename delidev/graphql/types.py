"""GraphQL object types. Each wraps a model and resolves nested fields through loaders."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import strawberry
from strawberry.types import Info

from delidev import models as m
from delidev.graphql.context import Context
from delidev.graphql.enums import BudgetPeriod
from delidev.graphql.usage_types import WorkspaceUsage
from delidev.services import repository_settings
from delidev.services import todos as todo_service
from delidev.services import usage as usage_service

VcsType = strawberry.enum(m.VcsType, name="VcsType")
VcsProviderType = strawberry.enum(m.VcsProviderType, name="VcsProviderType")
ReviewCommentFilter = strawberry.enum(
    m.ReviewCommentFilter,
    name="ReviewCommentFilter",
    description="Whose review comments auto-fix acts on: GitHub authors with write access"
    " (OWNER, MEMBER, COLLABORATOR) and GitLab notes on private projects, or everyone.",
)
TodoItemType = strawberry.enum(m.TodoItemType, name="TodoItemType")
TodoItemStatus = strawberry.enum(m.TodoItemStatus, name="TodoItemStatus")
TodoItemSource = strawberry.enum(m.TodoItemSource, name="TodoItemSource")

GqlInfo = Info[Context, None]


@strawberry.type
class Workspace:
    id: strawberry.ID
    name: str
    description: str | None
    user_id: strawberry.ID | None
    max_concurrent_jobs: int | None = strawberry.field(
        description="At most this many of its jobs run at once; null = no cap."
    )
    created_at: datetime
    updated_at: datetime
    monthly_budget_micros: float | None = strawberry.field(
        description="What its runs may spend per budget period (micros of USD; a Float holding"
        " an integer); null = no budget. Once spent, no new run starts until it is raised or"
        " the period turns."
    )
    budget_period: BudgetPeriod  # type: ignore[valid-type]  # a strawberry enum
    task_budget_micros: float | None = strawberry.field(
        description="What one task may spend (a composite with its nodes); null = no limit."
        " The runs of a task over it are asked to stop."
    )
    budget_warning_percent: int = strawberry.field(
        description="A warning is raised once per period when spending reaches this share."
    )
    budget_warned_at: datetime | None = strawberry.field(
        description="When the period's budget warning was raised."
    )
    budget_blocked_until: datetime | None = strawberry.field(
        description="Set while over budget: no new run starts before this."
    )

    @classmethod
    def from_model(cls, ws: m.Workspace) -> Workspace:
        return cls(
            id=strawberry.ID(str(ws.id)),
            name=ws.name,
            description=ws.description,
            user_id=None if ws.user_id is None else strawberry.ID(str(ws.user_id)),
            max_concurrent_jobs=ws.max_concurrent_jobs,
            created_at=ws.created_at,
            updated_at=ws.updated_at,
            monthly_budget_micros=ws.monthly_budget_micros,
            budget_period=ws.budget_period,
            task_budget_micros=ws.task_budget_micros,
            budget_warning_percent=ws.budget_warning_percent,
            budget_warned_at=ws.budget_warned_at,
            budget_blocked_until=ws.budget_blocked_until,
        )

    @strawberry.field
    async def repositories(self, info: GqlInfo) -> list[Repository]:
        repos = await info.context.loaders.workspace_repositories.load(UUID(self.id))
        return [Repository.from_model(r) for r in repos]

    @strawberry.field
    async def repository_groups(self, info: GqlInfo) -> list[RepositoryGroup]:
        groups = await info.context.loaders.workspace_groups.load(UUID(self.id))
        return [RepositoryGroup.from_model(g) for g in groups]

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Tokens and money its runs used: in all, per day and per agent type and model."
    )
    async def usage(
        self,
        info: GqlInfo,
        days: Annotated[
            int,
            strawberry.argument(
                description=f"The last this many days (UTC), today included: 1 to "
                f"{usage_service.MAX_DAYS}."
            ),
        ] = usage_service.DEFAULT_DAYS,
    ) -> WorkspaceUsage:
        # The workspace was shown to this caller already (owned): a list of them is read in
        # two statements through the loader.
        key = (UUID(self.id), usage_service.check_days(days))
        return WorkspaceUsage.from_usage(await info.context.loaders.workspace_usage.load(key))


@strawberry.type(description="What webhook deliveries may do for a repository.")
class RepositorySettings:
    auto_triage: bool
    auto_fix_review_comments: bool
    review_comment_filter: ReviewCommentFilter  # type: ignore[valid-type]  # strawberry.enum
    auto_fix_ci_failures: bool


@strawberry.type
class Repository:
    id: strawberry.ID
    workspace_id: strawberry.ID
    name: str
    local_path: str
    remote_url: str
    default_branch: str
    vcs_type: VcsType  # type: ignore[valid-type]  # strawberry.enum result
    vcs_provider_type: VcsProviderType  # type: ignore[valid-type]  # strawberry.enum result
    branch_name_template: str | None
    created_at: datetime
    updated_at: datetime
    settings: RepositorySettings
    webhook_secret_set: bool = strawberry.field(
        description="Whether a webhook secret is set (the secret is never returned)."
    )
    webhook_path: str | None = strawberry.field(
        description="Where GitHub / GitLab post deliveries, relative to the server's URL;"
        " null for a provider without webhooks."
    )

    @classmethod
    def from_model(cls, repo: m.Repository) -> Repository:
        return cls(
            id=strawberry.ID(str(repo.id)),
            workspace_id=strawberry.ID(str(repo.workspace_id)),
            name=repo.name,
            local_path=repo.local_path,
            remote_url=repo.remote_url,
            default_branch=repo.default_branch,
            vcs_type=repo.vcs_type,
            vcs_provider_type=repo.vcs_provider_type,
            branch_name_template=repo.branch_name_template,
            created_at=repo.created_at,
            updated_at=repo.updated_at,
            settings=RepositorySettings(
                auto_triage=repo.auto_triage,
                auto_fix_review_comments=repo.auto_fix_review_comments,
                review_comment_filter=repo.review_comment_filter,
                auto_fix_ci_failures=repo.auto_fix_ci_failures,
            ),
            webhook_secret_set=repo.webhook_secret is not None,
            webhook_path=repository_settings.webhook_path(repo),
        )

    @strawberry.field
    async def workspace(self, info: GqlInfo) -> Workspace | None:
        ws = await info.context.loaders.workspace.load(UUID(self.workspace_id))
        return None if ws is None else Workspace.from_model(ws)


@strawberry.type
class RepositoryGroup:
    id: strawberry.ID
    workspace_id: strawberry.ID
    name: str | None
    default_required_labels: list[str] = strawberry.field(
        description='"key=value" labels a task of this group requires when it names none.'
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, group: m.RepositoryGroup) -> RepositoryGroup:
        return cls(
            id=strawberry.ID(str(group.id)),
            workspace_id=strawberry.ID(str(group.workspace_id)),
            name=group.name,
            default_required_labels=list(group.default_required_labels or []),
            created_at=group.created_at,
            updated_at=group.updated_at,
        )

    @strawberry.field
    async def repository_ids(self, info: GqlInfo) -> list[strawberry.ID]:
        ids = await info.context.loaders.group_members.load(UUID(self.id))
        return [strawberry.ID(str(i)) for i in ids]

    @strawberry.field
    async def repositories(self, info: GqlInfo) -> list[Repository]:
        ids = await info.context.loaders.group_members.load(UUID(self.id))
        repos = await info.context.loaders.repository.load_many(ids)
        return [Repository.from_model(r) for r in repos if r is not None]


@strawberry.type
class IssueTriageData:
    issue_url: str
    issue_title: str
    suggested_labels: list[str]
    suggested_assignees: list[str]


@strawberry.type
class PrReviewData:
    pr_url: str
    pr_title: str
    changed_files_count: int
    ai_summary: str | None


TodoData = Annotated[IssueTriageData | PrReviewData, strawberry.union("TodoData")]


@strawberry.type
class TodoItem:
    id: strawberry.ID
    type: TodoItemType  # type: ignore[valid-type]  # strawberry.enum result
    source: TodoItemSource  # type: ignore[valid-type]  # strawberry.enum result
    status: TodoItemStatus  # type: ignore[valid-type]  # strawberry.enum result
    repository_id: strawberry.ID
    data: TodoData
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_model(cls, item: m.TodoItem) -> TodoItem:
        raw = todo_service.todo_data(item)
        data: IssueTriageData | PrReviewData
        if isinstance(raw, todo_service.IssueTriageData):
            data = IssueTriageData(
                issue_url=raw.issue_url,
                issue_title=raw.issue_title,
                suggested_labels=list(raw.suggested_labels),
                suggested_assignees=list(raw.suggested_assignees),
            )
        else:
            data = PrReviewData(
                pr_url=raw.pr_url,
                pr_title=raw.pr_title,
                changed_files_count=raw.changed_files_count,
                ai_summary=raw.ai_summary,
            )
        return cls(
            id=strawberry.ID(str(item.id)),
            type=item.type,
            source=item.source,
            status=item.status,
            repository_id=strawberry.ID(str(item.repository_id)),
            data=data,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )

    @strawberry.field
    async def repository(self, info: GqlInfo) -> Repository | None:
        repo = await info.context.loaders.repository.load(UUID(self.repository_id))
        return None if repo is None else Repository.from_model(repo)


@strawberry.type
class WorkspaceList:
    items: list[Workspace]
    total_count: int


@strawberry.type
class RepositoryList:
    items: list[Repository]
    total_count: int


@strawberry.type
class RepositoryGroupList:
    items: list[RepositoryGroup]
    total_count: int


@strawberry.type
class TodoItemList:
    items: list[TodoItem]
    total_count: int
