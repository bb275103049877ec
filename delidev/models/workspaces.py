from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from tortoise import fields
from tortoise.models import Model

from delidev.models.enums import BudgetPeriod, ReviewCommentFilter, VcsProviderType, VcsType

if TYPE_CHECKING:
    from delidev.models.users import User


class Workspace(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    name = fields.CharField(max_length=255)
    description = fields.TextField(null=True)
    max_concurrent_jobs = fields.IntField(null=True)
    """At most this many of its jobs run at once; None = no cap."""
    monthly_budget_micros = fields.BigIntField(null=True)
    """What its runs may spend per budget period (micros of USD); None = no budget."""
    budget_period = fields.CharEnumField(
        BudgetPeriod, max_length=20, default=BudgetPeriod.MONTH, db_default="month"
    )
    task_budget_micros = fields.BigIntField(null=True)
    """What one task (all its runs; a composite with its nodes) may spend; None = no limit."""
    budget_warning_percent = fields.IntField(default=80, db_default=80)
    """A warning is raised once per period when spending reaches this share of the budget."""
    budget_warned_at = fields.DatetimeField(null=True)
    """When the last warning was raised (one per period)."""
    budget_blocked_until = fields.DatetimeField(null=True)
    """Over budget: no new runs start before this (the period turns) unless raised."""
    fair_round = fields.BigIntField(default=0, db_default=0)
    """The round given to its latest queued run (see ``AgentSession.fair_round``)."""
    user: fields.ForeignKeyNullableRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="workspaces", null=True, on_delete=fields.CASCADE
    )
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)

    user_id: UUID | None

    class Meta:
        table = "workspaces"
        indexes = (("user_id", "created_at"),)


class Repository(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="repositories", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=255)
    local_path = fields.TextField()
    remote_url = fields.TextField()
    default_branch = fields.CharField(max_length=255, default="main")
    vcs_type = fields.CharEnumField(VcsType, max_length=50, default=VcsType.GIT)
    vcs_provider_type = fields.CharEnumField(VcsProviderType, max_length=50)
    branch_name_template = fields.CharField(max_length=255, null=True)
    auto_triage = fields.BooleanField(default=True, db_default=True)
    """Webhook events about issues and pull requests file and complete todo items."""
    auto_fix_review_comments = fields.BooleanField(default=False, db_default=False)
    """Review comments on a task's pull request queue an auto-fix run."""
    review_comment_filter = fields.CharEnumField(
        ReviewCommentFilter,
        max_length=30,
        default=ReviewCommentFilter.WRITE_ACCESS_ONLY,
        db_default="write_access_only",
    )
    """Whose review comments count (``auto_fix_review_comments``)."""
    auto_fix_ci_failures = fields.BooleanField(default=False, db_default=False)
    """A failed check run / pipeline on a task's pull request queues an auto-fix run."""
    webhook_secret = fields.CharField(max_length=256, null=True)
    """GitHub: the shared secret itself (HMAC needs it); GitLab: SHA-256 hex of the token.
    Never returned by any API, never logged; None = webhooks refused."""
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    workspace_id: UUID

    class Meta:
        table = "repositories"
        unique_together = (("workspace", "remote_url"),)


class RepositoryGroup(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="repository_groups", on_delete=fields.CASCADE
    )
    name = fields.CharField(max_length=255, null=True)
    default_required_labels: list[str] = fields.JSONField(default=list)
    """Labels a task of this group requires when it names none."""
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    workspace_id: UUID

    class Meta:
        table = "repository_groups"
        indexes = (("workspace_id",),)


class RepositoryGroupMember(Model):
    """Link table of the specification - the pair (group, repository) is unique."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    group: fields.ForeignKeyRelation[RepositoryGroup] = fields.ForeignKeyField(
        "models.RepositoryGroup", related_name="members", on_delete=fields.CASCADE
    )
    repository: fields.ForeignKeyRelation[Repository] = fields.ForeignKeyField(
        "models.Repository", related_name="group_memberships", on_delete=fields.CASCADE
    )
    created_at = fields.DatetimeField(auto_now_add=True)

    group_id: UUID
    repository_id: UUID

    class Meta:
        table = "repository_group_members"
        unique_together = (("group", "repository"),)
        indexes = (("repository_id",),)


class WebhookDelivery(Model):
    """A webhook delivery accepted for a repository: a redelivery of the same id is
    acknowledged without acting again. Pruned by age (``webhook_delivery_retention_hours``)."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    repository: fields.ForeignKeyRelation[Repository] = fields.ForeignKeyField(
        "models.Repository", related_name="webhook_deliveries", on_delete=fields.CASCADE
    )
    delivery_id = fields.CharField(max_length=200)
    """``X-GitHub-Delivery``; GitLab ``Idempotency-Key`` or else ``X-Gitlab-Event-UUID``."""
    event = fields.CharField(max_length=100)
    received_at = fields.DatetimeField(auto_now_add=True, db_index=True)

    repository_id: UUID

    class Meta:
        table = "webhook_deliveries"
        unique_together = (("repository", "delivery_id"),)
