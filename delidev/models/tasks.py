"""Tasks, agent runs and their output.

An AgentTask is the retryable unit; each run of it is an AgentSession (the job a
worker claims). Log output is stored as numbered chunks so that appending costs
O(chunk) and a tail can be read without loading the whole log.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from tortoise import fields
from tortoise.models import Model

from delidev.models.enums import (
    AgentSessionStatus,
    AiAgentType,
    AutoFixTrigger,
    CompositeTaskStatus,
    JobKind,
    PullRequestState,
    TtyInputStatus,
    TtyInputType,
    UnitTaskStatus,
)

if TYPE_CHECKING:
    from delidev.models.workers import Worker
    from delidev.models.workspaces import RepositoryGroup, Workspace


class AgentTask(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    ai_agent_type = fields.CharEnumField(AiAgentType, max_length=50, null=True)
    ai_agent_model = fields.CharField(max_length=255, null=True)
    expects_secrets = fields.BooleanField(default=False)
    workspace_id = fields.UUIDField(null=True)
    """The workspace of the task it runs for (fairness and concurrency caps)."""
    priority = fields.SmallIntField(default=1)
    """``TaskPriority.rank``: higher runs first."""
    required_labels: list[str] = fields.JSONField(default=list)
    """Sorted ``key=value`` labels a worker must have to run it."""
    max_run_seconds = fields.IntField(null=True)
    """Run time limit of each run; None = the server's ``DELIDEV_MAX_RUN_SECONDS``."""
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "agent_tasks"
        indexes = (("workspace_id",),)


class AgentTaskBaseRemote(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    agent_task: fields.ForeignKeyRelation[AgentTask] = fields.ForeignKeyField(
        "models.AgentTask", related_name="base_remotes", on_delete=fields.CASCADE
    )
    git_remote_dir_path = fields.TextField()
    git_branch_name = fields.CharField(max_length=255)

    agent_task_id: UUID

    class Meta:
        table = "agent_task_base_remotes"
        unique_together = (("agent_task", "git_remote_dir_path"),)


class AgentSession(Model):
    """One run of an AgentTask - also the unit of work handed to a worker."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    agent_task: fields.ForeignKeyRelation[AgentTask] = fields.ForeignKeyField(
        "models.AgentTask", related_name="sessions", on_delete=fields.CASCADE
    )
    ai_agent_type = fields.CharEnumField(AiAgentType, max_length=50)
    ai_agent_model = fields.CharField(max_length=255, null=True)
    kind = fields.CharEnumField(JobKind, max_length=50, default=JobKind.UNIT_TASK)
    status = fields.CharEnumField(
        AgentSessionStatus, max_length=50, default=AgentSessionStatus.QUEUED
    )
    attempt = fields.IntField(default=1)
    error = fields.TextField(null=True)
    failure_kind = fields.CharField(max_length=50, null=True)
    worker: fields.ForeignKeyNullableRelation[Worker] = fields.ForeignKeyField(
        "models.Worker", related_name="sessions", null=True, on_delete=fields.SET_NULL
    )
    lease_token = fields.CharField(max_length=64, null=True)
    stop_requested = fields.BooleanField(default=False)
    log_size = fields.BigIntField(default=0)
    """Characters of output stored so far."""
    log_next_sequence = fields.BigIntField(default=0)
    """The lowest chunk sequence number not yet stored."""
    output_log = fields.TextField(null=True)
    """The whole output, written once when the session ends."""
    priority = fields.SmallIntField(default=1)
    """Copied from its AgentTask by a trigger (db.EXTRA_SQL), for the claim's index."""
    workspace_id = fields.UUIDField(null=True)
    """Copied from its AgentTask by a trigger (db.EXTRA_SQL), for the claim's index."""
    fair_round = fields.BigIntField(default=0, db_default=0)
    """Its turn among its workspace's queued runs, set by a trigger when it is queued
    (db.EXTRA_SQL): the claim hands out equal priorities round by round, so each workspace
    with work gets one run per round (see services/workers/claims.py)."""
    auto_retries = fields.IntField(default=0)
    """How many automatic retries (after infrastructure failures) led to this run."""
    not_before = fields.DatetimeField(null=True)
    """A retry in backoff is not handed out before this time."""
    deadline_at = fields.DatetimeField(null=True)
    """A running job past this time is asked to stop and ends as failed (timeout)."""
    traceparent = fields.CharField(max_length=55, null=True)
    """The W3C trace context of the request that queued it (delidev/tracing.py), handed to
    the worker with the job; None when tracing is off or the request was not sampled."""
    stop_reason = fields.CharField(max_length=32, null=True)
    """``StopReason`` of a stop request."""
    stop_requested_at = fields.DatetimeField(null=True)
    """When the stop was asked for: one the worker does not confirm within
    ``DELIDEV_STOP_GRACE_SECONDS`` is finalised by the server."""
    wait_reason = fields.CharField(max_length=32, null=True)
    """``WaitReason`` of a queued job, as last worked out by the scheduler."""
    wait_detail = fields.TextField(null=True)
    waiting_since = fields.DatetimeField(null=True)
    started_at = fields.DatetimeField(null=True)
    completed_at = fields.DatetimeField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    agent_task_id: UUID
    worker_id: UUID | None

    class Meta:
        table = "agent_sessions"
        indexes = (
            ("status", "created_at"),
            ("agent_task_id", "attempt"),
            ("worker_id", "status"),
            ("status", "deadline_at"),
        )


class LogChunk(Model):
    """A numbered piece of a session's output - ``start_offset`` counts characters."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    session: fields.ForeignKeyRelation[AgentSession] = fields.ForeignKeyField(
        "models.AgentSession", related_name="log_chunks", on_delete=fields.CASCADE
    )
    sequence = fields.BigIntField()
    start_offset = fields.BigIntField()
    data = fields.TextField()
    created_at = fields.DatetimeField(auto_now_add=True)

    session_id: UUID

    class Meta:
        table = "agent_session_log_chunks"
        unique_together = (("session", "sequence"),)
        indexes = (("session_id", "start_offset"),)


class UnitTask(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="unit_tasks", on_delete=fields.CASCADE
    )
    repository_group: fields.ForeignKeyRelation[RepositoryGroup] = fields.ForeignKeyField(
        "models.RepositoryGroup", related_name="unit_tasks", on_delete=fields.RESTRICT
    )
    agent_task: fields.OneToOneRelation[AgentTask] = fields.OneToOneField(
        "models.AgentTask", related_name="unit_task", on_delete=fields.RESTRICT
    )
    composite_task: fields.ForeignKeyNullableRelation[CompositeTask] = fields.ForeignKeyField(
        "models.CompositeTask", related_name="unit_tasks", null=True, on_delete=fields.CASCADE
    )
    branch_name = fields.CharField(max_length=255, null=True)
    linked_pr_url = fields.TextField(null=True)
    pr_key = fields.CharField(max_length=2048, null=True)
    """``linked_pr_url`` normalised (services/pr_urls.py): what repository events match on."""
    pr_state = fields.CharEnumField(PullRequestState, max_length=16, null=True)
    """Of the linked PR: open when linked, then merged or closed as repository events say."""
    pr_state_changed_at = fields.DatetimeField(null=True)
    base_commit = fields.CharField(max_length=40, null=True)
    end_commit = fields.CharField(max_length=40, null=True)
    status = fields.CharEnumField(UnitTaskStatus, max_length=50, default=UnitTaskStatus.IN_PROGRESS)
    prompt = fields.TextField()
    title = fields.CharField(max_length=255, null=True)
    rejection_reason = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)

    workspace_id: UUID
    repository_group_id: UUID
    agent_task_id: UUID
    composite_task_id: UUID | None

    class Meta:
        table = "unit_tasks"
        indexes = (
            ("workspace_id", "status"),
            ("composite_task_id",),
            ("repository_group_id",),
            ("pr_key", "workspace_id"),
        )


class UnitTaskAutoFixTask(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    unit_task: fields.ForeignKeyRelation[UnitTask] = fields.ForeignKeyField(
        "models.UnitTask", related_name="auto_fix_tasks", on_delete=fields.CASCADE
    )
    agent_task: fields.ForeignKeyRelation[AgentTask] = fields.ForeignKeyField(
        "models.AgentTask", related_name="auto_fix_of", on_delete=fields.CASCADE
    )
    trigger = fields.CharEnumField(AutoFixTrigger, max_length=32, null=True)
    prompt = fields.TextField(null=True)
    """What its runs are told to do (the job's prompt; the unit task's is not repeated)."""
    created_at = fields.DatetimeField(auto_now_add=True)

    unit_task_id: UUID
    agent_task_id: UUID

    class Meta:
        table = "unit_task_auto_fix_tasks"
        unique_together = (("unit_task", "agent_task"),)
        indexes = (("agent_task_id",),)


class CompositeTask(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="composite_tasks", on_delete=fields.CASCADE
    )
    repository_group: fields.ForeignKeyRelation[RepositoryGroup] = fields.ForeignKeyField(
        "models.RepositoryGroup", related_name="composite_tasks", on_delete=fields.RESTRICT
    )
    planning_task: fields.OneToOneRelation[AgentTask] = fields.OneToOneField(
        "models.AgentTask", related_name="composite_task", on_delete=fields.RESTRICT
    )
    status = fields.CharEnumField(
        CompositeTaskStatus, max_length=50, default=CompositeTaskStatus.PLANNING
    )
    execution_agent_type = fields.CharEnumField(AiAgentType, max_length=50, null=True)
    prompt = fields.TextField()
    title = fields.CharField(max_length=255, null=True)
    plan_yaml = fields.TextField(null=True)
    plan_error = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True, db_index=True)
    updated_at = fields.DatetimeField(auto_now=True)

    workspace_id: UUID
    repository_group_id: UUID
    planning_task_id: UUID

    class Meta:
        table = "composite_tasks"
        indexes = (("workspace_id", "status"), ("repository_group_id",))


class CompositeTaskNode(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    composite_task: fields.ForeignKeyRelation[CompositeTask] = fields.ForeignKeyField(
        "models.CompositeTask", related_name="nodes", on_delete=fields.CASCADE
    )
    unit_task: fields.OneToOneRelation[UnitTask] = fields.OneToOneField(
        "models.UnitTask", related_name="node", on_delete=fields.CASCADE
    )
    plan_id = fields.CharField(max_length=255)
    """The task's id in PLAN.yaml."""
    created_at = fields.DatetimeField(auto_now_add=True)

    composite_task_id: UUID
    unit_task_id: UUID

    class Meta:
        table = "composite_task_nodes"
        unique_together = (("composite_task", "plan_id"),)


class CompositeTaskNodeDependency(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    node: fields.ForeignKeyRelation[CompositeTaskNode] = fields.ForeignKeyField(
        "models.CompositeTaskNode", related_name="dependencies", on_delete=fields.CASCADE
    )
    depends_on_node: fields.ForeignKeyRelation[CompositeTaskNode] = fields.ForeignKeyField(
        "models.CompositeTaskNode", related_name="dependents", on_delete=fields.CASCADE
    )

    node_id: UUID
    depends_on_node_id: UUID

    class Meta:
        table = "composite_task_node_dependencies"
        unique_together = (("node", "depends_on_node"),)
        indexes = (("depends_on_node_id",),)


class TtyInputRequest(Model):
    """A question an agent asked - ``task_id`` is the UnitTask or CompositeTask it runs for."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    task_id = fields.UUIDField(db_index=True)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="tty_input_requests", on_delete=fields.CASCADE
    )
    session: fields.ForeignKeyRelation[AgentSession] = fields.ForeignKeyField(
        "models.AgentSession", related_name="tty_input_requests", on_delete=fields.CASCADE
    )
    prompt = fields.TextField()
    input_type = fields.CharEnumField(TtyInputType, max_length=50)
    options: Any = fields.JSONField(null=True)
    status = fields.CharEnumField(TtyInputStatus, max_length=50, default=TtyInputStatus.PENDING)
    response = fields.TextField(null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    responded_at = fields.DatetimeField(null=True)
    expires_at = fields.DatetimeField(null=True)

    workspace_id: UUID
    session_id: UUID

    class Meta:
        table = "tty_input_requests"
        indexes = (("workspace_id", "status"), ("session_id", "status"))
