from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from delidev.models.enums import (
    AgentSessionStatus,
    AiAgentType,
    CompositeTaskStatus,
    JobKind,
    TodoItemSource,
    TodoItemStatus,
    TodoItemType,
    TtyInputStatus,
    TtyInputType,
    UnitTaskStatus,
    VcsProviderType,
    VcsType,
    WorkerStatus,
)
from json import dumps, loads
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index


class Migration(migrations.Migration):
    initial = True

    operations = [
        ops.CreateModel(
            name="AgentTask",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "ai_agent_type",
                    fields.CharEnumField(
                        null=True,
                        description="CLAUDE_CODE: claude_code\nOPEN_CODE: open_code\nGEMINI_CLI: gemini_cli\nCODEX_CLI: codex_cli\nAIDER: aider\nAMP: amp",
                        enum_type=AiAgentType,
                        max_length=50,
                    ),
                ),
                ("ai_agent_model", fields.CharField(null=True, max_length=255)),
                ("expects_secrets", fields.BooleanField(default=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={"table": "agent_tasks", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="AgentTaskBaseRemote",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "agent_task",
                    fields.ForeignKeyField(
                        "models.AgentTask",
                        source_field="agent_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="base_remotes",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("git_remote_dir_path", fields.TextField(unique=False)),
                ("git_branch_name", fields.CharField(max_length=255)),
            ],
            options={
                "table": "agent_task_base_remotes",
                "app": "models",
                "unique_together": (("agent_task", "git_remote_dir_path"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="AuthState",
            fields=[
                (
                    "state",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=255),
                ),
                ("code_verifier", fields.CharField(max_length=255)),
                ("nonce", fields.CharField(null=True, max_length=255)),
                ("redirect_uri", fields.TextField(unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "expires_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
            ],
            options={
                "table": "auth_states",
                "app": "models",
                "pk_attr": "state",
                "table_description": "One pending OIDC login: PKCE verifier, nonce and redirect, used once.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RevokedToken",
            fields=[
                (
                    "jti",
                    fields.CharField(primary_key=True, unique=True, db_index=True, max_length=64),
                ),
                (
                    "expires_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "revoked_tokens",
                "app": "models",
                "pk_attr": "jti",
                "table_description": "An access token revoked before its expiry (logout), by ``jti``.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="User",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("email", fields.CharField(unique=True, max_length=255)),
                ("name", fields.CharField(null=True, max_length=255)),
                ("oidc_issuer", fields.CharField(null=True, max_length=255)),
                ("oidc_subject", fields.CharField(null=True, max_length=255)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "users",
                "app": "models",
                "unique_together": (("oidc_issuer", "oidc_subject"),),
                "pk_attr": "id",
                "table_description": "A person signed in through OIDC (multi-user mode only).",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RefreshToken",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="refresh_tokens",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("token_hash", fields.CharField(unique=True, max_length=64)),
                ("family_id", fields.UUIDField(db_index=True)),
                ("access_jti", fields.CharField(null=True, max_length=64)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("expires_at", fields.DatetimeField(auto_now=False, auto_now_add=False)),
                ("used_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                ("revoked_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "refresh_tokens",
                "app": "models",
                "pk_attr": "id",
                "table_description": "An opaque refresh token, stored hashed - rotation keeps a family together.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Workspace",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("name", fields.CharField(max_length=255)),
                ("description", fields.TextField(null=True, unique=False)),
                (
                    "user",
                    fields.ForeignKeyField(
                        "models.User",
                        source_field="user_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="workspaces",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={"table": "workspaces", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Repository",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="repositories",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("name", fields.CharField(max_length=255)),
                ("local_path", fields.TextField(unique=False)),
                ("remote_url", fields.TextField(unique=False)),
                ("default_branch", fields.CharField(default="main", max_length=255)),
                (
                    "vcs_type",
                    fields.CharEnumField(
                        default=VcsType.GIT,
                        description="GIT: git",
                        enum_type=VcsType,
                        max_length=50,
                    ),
                ),
                (
                    "vcs_provider_type",
                    fields.CharEnumField(
                        description="GITHUB: github\nGITLAB: gitlab\nBITBUCKET: bitbucket",
                        enum_type=VcsProviderType,
                        max_length=50,
                    ),
                ),
                ("branch_name_template", fields.CharField(null=True, max_length=255)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "repositories",
                "app": "models",
                "unique_together": (("workspace", "remote_url"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RepositoryGroup",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="repository_groups",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("name", fields.CharField(null=True, max_length=255)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={"table": "repository_groups", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CompositeTask",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="composite_tasks",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "repository_group",
                    fields.ForeignKeyField(
                        "models.RepositoryGroup",
                        source_field="repository_group_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="composite_tasks",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "planning_task",
                    fields.OneToOneField(
                        "models.AgentTask",
                        source_field="planning_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="composite_task",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "status",
                    fields.CharEnumField(
                        default=CompositeTaskStatus.PLANNING,
                        description="PLANNING: planning\nPENDING_APPROVAL: pending_approval\nIN_PROGRESS: in_progress\nDONE: done\nREJECTED: rejected",
                        enum_type=CompositeTaskStatus,
                        max_length=50,
                    ),
                ),
                (
                    "execution_agent_type",
                    fields.CharEnumField(
                        null=True,
                        description="CLAUDE_CODE: claude_code\nOPEN_CODE: open_code\nGEMINI_CLI: gemini_cli\nCODEX_CLI: codex_cli\nAIDER: aider\nAMP: amp",
                        enum_type=AiAgentType,
                        max_length=50,
                    ),
                ),
                ("prompt", fields.TextField(unique=False)),
                ("title", fields.CharField(null=True, max_length=255)),
                ("plan_yaml", fields.TextField(null=True, unique=False)),
                ("plan_error", fields.TextField(null=True, unique=False)),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "composite_tasks",
                "app": "models",
                "indexes": [Index(fields=["workspace_id", "status"])],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="RepositoryGroupMember",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "group",
                    fields.ForeignKeyField(
                        "models.RepositoryGroup",
                        source_field="group_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="members",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "repository",
                    fields.ForeignKeyField(
                        "models.Repository",
                        source_field="repository_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="group_memberships",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "repository_group_members",
                "app": "models",
                "unique_together": (("group", "repository"),),
                "pk_attr": "id",
                "table_description": "Link table of the specification - the pair (group, repository) is unique.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TodoItem",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "type",
                    fields.CharEnumField(
                        description="ISSUE_TRIAGE: issue_triage\nPR_REVIEW: pr_review",
                        enum_type=TodoItemType,
                        max_length=50,
                    ),
                ),
                (
                    "source",
                    fields.CharEnumField(
                        default=TodoItemSource.AUTO,
                        description="AUTO: auto\nMANUAL: manual",
                        enum_type=TodoItemSource,
                        max_length=50,
                    ),
                ),
                (
                    "status",
                    fields.CharEnumField(
                        default=TodoItemStatus.PENDING,
                        description="PENDING: pending\nIN_PROGRESS: in_progress\nCOMPLETED: completed\nDISMISSED: dismissed",
                        enum_type=TodoItemStatus,
                        max_length=50,
                    ),
                ),
                (
                    "repository",
                    fields.ForeignKeyField(
                        "models.Repository",
                        source_field="repository_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="todo_items",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "data",
                    fields.JSONField(
                        encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "todo_items",
                "app": "models",
                "indexes": [Index(fields=["repository_id", "status"])],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="UnitTask",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="unit_tasks",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "repository_group",
                    fields.ForeignKeyField(
                        "models.RepositoryGroup",
                        source_field="repository_group_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="unit_tasks",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "agent_task",
                    fields.OneToOneField(
                        "models.AgentTask",
                        source_field="agent_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="unit_task",
                        on_delete=OnDelete.RESTRICT,
                    ),
                ),
                (
                    "composite_task",
                    fields.ForeignKeyField(
                        "models.CompositeTask",
                        source_field="composite_task_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="unit_tasks",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("branch_name", fields.CharField(null=True, max_length=255)),
                ("linked_pr_url", fields.TextField(null=True, unique=False)),
                ("base_commit", fields.CharField(null=True, max_length=40)),
                ("end_commit", fields.CharField(null=True, max_length=40)),
                (
                    "status",
                    fields.CharEnumField(
                        default=UnitTaskStatus.IN_PROGRESS,
                        description="IN_PROGRESS: in_progress\nIN_REVIEW: in_review\nAPPROVED: approved\nPR_OPEN: pr_open\nDONE: done\nREJECTED: rejected",
                        enum_type=UnitTaskStatus,
                        max_length=50,
                    ),
                ),
                ("prompt", fields.TextField(unique=False)),
                ("title", fields.CharField(null=True, max_length=255)),
                ("rejection_reason", fields.TextField(null=True, unique=False)),
                (
                    "created_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "unit_tasks",
                "app": "models",
                "indexes": [Index(fields=["workspace_id", "status"])],
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CompositeTaskNode",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "composite_task",
                    fields.ForeignKeyField(
                        "models.CompositeTask",
                        source_field="composite_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="nodes",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "unit_task",
                    fields.OneToOneField(
                        "models.UnitTask",
                        source_field="unit_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="node",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("plan_id", fields.CharField(max_length=255)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "composite_task_nodes",
                "app": "models",
                "unique_together": (("composite_task", "plan_id"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="CompositeTaskNodeDependency",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "node",
                    fields.ForeignKeyField(
                        "models.CompositeTaskNode",
                        source_field="node_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="dependencies",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "depends_on_node",
                    fields.ForeignKeyField(
                        "models.CompositeTaskNode",
                        source_field="depends_on_node_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="dependents",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
            ],
            options={
                "table": "composite_task_node_dependencies",
                "app": "models",
                "unique_together": (("node", "depends_on_node"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="UnitTaskAutoFixTask",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "unit_task",
                    fields.ForeignKeyField(
                        "models.UnitTask",
                        source_field="unit_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="auto_fix_tasks",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "agent_task",
                    fields.ForeignKeyField(
                        "models.AgentTask",
                        source_field="agent_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="auto_fix_of",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "unit_task_auto_fix_tasks",
                "app": "models",
                "unique_together": (("unit_task", "agent_task"),),
                "pk_attr": "id",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="Worker",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("name", fields.CharField(max_length=255)),
                ("endpoint_url", fields.TextField(unique=False)),
                (
                    "status",
                    fields.CharEnumField(
                        default=WorkerStatus.IDLE,
                        description="IDLE: idle\nBUSY: busy\nUNHEALTHY: unhealthy",
                        enum_type=WorkerStatus,
                        max_length=50,
                    ),
                ),
                ("last_heartbeat", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "current_task",
                    fields.ForeignKeyField(
                        "models.UnitTask",
                        source_field="current_task_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="workers",
                        on_delete=OnDelete.SET_NULL,
                    ),
                ),
                ("current_session_id", fields.UUIDField(null=True)),
                ("credential_hash", fields.CharField(null=True, unique=True, max_length=64)),
                ("registered_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={"table": "workers", "app": "models", "pk_attr": "id"},
            bases=["Model"],
        ),
        ops.CreateModel(
            name="AgentSession",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "agent_task",
                    fields.ForeignKeyField(
                        "models.AgentTask",
                        source_field="agent_task_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="sessions",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "ai_agent_type",
                    fields.CharEnumField(
                        description="CLAUDE_CODE: claude_code\nOPEN_CODE: open_code\nGEMINI_CLI: gemini_cli\nCODEX_CLI: codex_cli\nAIDER: aider\nAMP: amp",
                        enum_type=AiAgentType,
                        max_length=50,
                    ),
                ),
                ("ai_agent_model", fields.CharField(null=True, max_length=255)),
                (
                    "kind",
                    fields.CharEnumField(
                        default=JobKind.UNIT_TASK,
                        description="UNIT_TASK: unit_task\nPLANNING: planning\nAUTO_FIX: auto_fix",
                        enum_type=JobKind,
                        max_length=50,
                    ),
                ),
                (
                    "status",
                    fields.CharEnumField(
                        default=AgentSessionStatus.QUEUED,
                        description="QUEUED: queued\nRUNNING: running\nSUCCEEDED: succeeded\nFAILED: failed\nSTOPPED: stopped\nLOST: lost",
                        enum_type=AgentSessionStatus,
                        max_length=50,
                    ),
                ),
                ("attempt", fields.IntField(default=1)),
                ("error", fields.TextField(null=True, unique=False)),
                ("failure_kind", fields.CharField(null=True, max_length=50)),
                (
                    "worker",
                    fields.ForeignKeyField(
                        "models.Worker",
                        source_field="worker_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="sessions",
                        on_delete=OnDelete.SET_NULL,
                    ),
                ),
                ("lease_token", fields.CharField(null=True, max_length=64)),
                ("stop_requested", fields.BooleanField(default=False)),
                ("log_size", fields.BigIntField(default=0)),
                ("log_next_sequence", fields.BigIntField(default=0)),
                ("output_log", fields.TextField(null=True, unique=False)),
                ("started_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
                (
                    "completed_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                ("updated_at", fields.DatetimeField(auto_now=True, auto_now_add=False)),
            ],
            options={
                "table": "agent_sessions",
                "app": "models",
                "indexes": [Index(fields=["status", "created_at"])],
                "pk_attr": "id",
                "table_description": "One run of an AgentTask - also the unit of work handed to a worker.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="LogChunk",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "session",
                    fields.ForeignKeyField(
                        "models.AgentSession",
                        source_field="session_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="log_chunks",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("sequence", fields.BigIntField()),
                ("start_offset", fields.BigIntField()),
                ("data", fields.TextField(unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "agent_session_log_chunks",
                "app": "models",
                "unique_together": (("session", "sequence"),),
                "indexes": [Index(fields=["session_id", "start_offset"])],
                "pk_attr": "id",
                "table_description": "A numbered piece of a session's output - ``start_offset`` counts characters.",
            },
            bases=["Model"],
        ),
        ops.CreateModel(
            name="TtyInputRequest",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                ("task_id", fields.UUIDField(db_index=True)),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="tty_input_requests",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "session",
                    fields.ForeignKeyField(
                        "models.AgentSession",
                        source_field="session_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="tty_input_requests",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("prompt", fields.TextField(unique=False)),
                (
                    "input_type",
                    fields.CharEnumField(
                        description="TEXT: text\nSELECT: select\nCONFIRM: confirm\nPASSWORD: password",
                        enum_type=TtyInputType,
                        max_length=50,
                    ),
                ),
                (
                    "options",
                    fields.JSONField(
                        null=True,
                        encoder=functools.partial(dumps, separators=(",", ":")),
                        decoder=loads,
                    ),
                ),
                (
                    "status",
                    fields.CharEnumField(
                        default=TtyInputStatus.PENDING,
                        description="PENDING: pending\nRESPONDED: responded\nTIMEOUT: timeout\nCANCELLED: cancelled",
                        enum_type=TtyInputStatus,
                        max_length=50,
                    ),
                ),
                ("response", fields.TextField(null=True, unique=False)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
                (
                    "responded_at",
                    fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
                ),
                ("expires_at", fields.DatetimeField(null=True, auto_now=False, auto_now_add=False)),
            ],
            options={
                "table": "tty_input_requests",
                "app": "models",
                "indexes": [Index(fields=["workspace_id", "status"])],
                "pk_attr": "id",
                "table_description": "A question an agent asked - ``task_id`` is the UnitTask or CompositeTask it runs for.",
            },
            bases=["Model"],
        ),
    ]
