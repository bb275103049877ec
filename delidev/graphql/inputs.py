"""The input types of the mutations (``CreateWorkspaceInput``...)."""

from __future__ import annotations

import strawberry

from delidev.graphql.enums import AiAgentType, BudgetPeriod
from delidev.graphql.task_types import TaskPriority
from delidev.graphql.types import ReviewCommentFilter, TodoItemSource, VcsProviderType


@strawberry.input
class CreateWorkspaceInput:
    name: str
    description: str | None = None
    max_concurrent_jobs: int | None = strawberry.field(
        default=None, description="At most this many of its jobs run at once; null or 0: no cap."
    )
    monthly_budget_micros: float | None = strawberry.field(
        default=None, description="Micros of USD (an integer); null or 0: none."
    )
    budget_period: BudgetPeriod | None = strawberry.field(  # type: ignore[valid-type]  # enum
        default=None, description="null: the calendar month."
    )
    task_budget_micros: float | None = strawberry.field(
        default=None, description="Micros of USD (an integer); null or 0: none."
    )
    budget_warning_percent: int | None = strawberry.field(
        default=None, description="1 to 100; null: 80."
    )


@strawberry.input
class UpdateWorkspaceInput:
    id: strawberry.ID
    name: str | None = None
    description: str | None = strawberry.field(
        default=None, description="An empty string clears the description."
    )
    max_concurrent_jobs: int | None = strawberry.field(
        default=None, description="null: unchanged; 0: the cap is removed."
    )
    monthly_budget_micros: float | None = strawberry.field(
        default=None, description="Micros of USD (an integer); null: unchanged; 0: removed."
    )
    budget_period: BudgetPeriod | None = strawberry.field(  # type: ignore[valid-type]  # enum
        default=None, description="null: unchanged."
    )
    task_budget_micros: float | None = strawberry.field(
        default=None, description="Micros of USD (an integer); null: unchanged; 0: removed."
    )
    budget_warning_percent: int | None = strawberry.field(
        default=None, description="1 to 100; null: unchanged."
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


@strawberry.input(description="Settings to change; a field left out stays as it is.")
class UpdateRepositorySettingsInput:
    repository_id: strawberry.ID
    auto_triage: bool | None = None
    auto_fix_review_comments: bool | None = None
    review_comment_filter: ReviewCommentFilter | None = None  # type: ignore[valid-type]  # enum
    auto_fix_ci_failures: bool | None = None


@strawberry.input
class CreateRepositoryGroupInput:
    workspace_id: strawberry.ID
    repository_ids: list[strawberry.ID]
    name: str | None = None
    default_required_labels: list[str] = strawberry.field(
        default_factory=list,
        description='"key=value" labels a task of this group requires when it names none.',
    )


@strawberry.input
class UpdateRepositoryGroupInput:
    id: strawberry.ID
    name: str | None = strawberry.field(
        default=None, description="An empty string clears the name."
    )
    add_repository_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    remove_repository_ids: list[strawberry.ID] = strawberry.field(default_factory=list)
    default_required_labels: list[str] | None = strawberry.field(
        default=None, description="null: unchanged; a list (also empty) replaces them."
    )


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
    priority: TaskPriority | None = strawberry.field(  # type: ignore[valid-type]  # enum
        default=None, description="NORMAL when left out."
    )
    required_labels: list[str] | None = strawberry.field(
        default=None,
        description='"key=value" labels a worker must have; none: the group\'s default labels.',
    )
    max_run_seconds: int | None = strawberry.field(
        default=None, description="Run time limit; null: the server's DELIDEV_MAX_RUN_SECONDS."
    )


@strawberry.input
class CreateCompositeTaskInput:
    repository_group_id: strawberry.ID
    prompt: str
    title: str | None = None
    execution_agent_type: AiAgentType | None = None  # type: ignore[valid-type]  # enum
    planning_agent_type: AiAgentType | None = None  # type: ignore[valid-type]  # enum
    ai_agent_model: str | None = None
    expects_secrets: bool = False
    priority: TaskPriority | None = strawberry.field(  # type: ignore[valid-type]  # enum
        default=None, description="NORMAL when left out."
    )
    required_labels: list[str] | None = strawberry.field(
        default=None,
        description='"key=value" labels a worker must have; none: the group\'s default labels.',
    )
    max_run_seconds: int | None = strawberry.field(
        default=None, description="Run time limit; null: the server's DELIDEV_MAX_RUN_SECONDS."
    )
