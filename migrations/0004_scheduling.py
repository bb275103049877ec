from tortoise import migrations
from tortoise.migrations import operations as ops
import functools
from json import dumps, loads
from tortoise import fields
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [("models", "0003_drop_revoked_tokens")]

    initial = False

    operations = [
        ops.AddField(
            model_name="AgentSession",
            name="auto_retries",
            field=fields.IntField(default=0),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="deadline_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="not_before",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="stop_requested_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="stop_reason",
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="wait_detail",
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="wait_reason",
            field=fields.CharField(null=True, max_length=32),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="waiting_since",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name="AgentSession",
            index=Index(fields=["status", "deadline_at"]),
        ),
        ops.AddField(
            model_name="AgentTask",
            name="max_run_seconds",
            field=fields.IntField(null=True),
        ),
        ops.AddField(
            model_name="AgentTask",
            name="priority",
            field=fields.SmallIntField(default=1),
        ),
        ops.AddField(
            model_name="AgentTask",
            name="required_labels",
            field=fields.JSONField(
                default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
            ),
        ),
        ops.AddField(
            model_name="AgentTask",
            name="workspace_id",
            field=fields.UUIDField(null=True),
        ),
        ops.AddIndex(
            model_name="AgentTask",
            index=Index(fields=["workspace_id"]),
        ),
        ops.AddField(
            model_name="RepositoryGroup",
            name="default_required_labels",
            field=fields.JSONField(
                default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
            ),
        ),
        ops.AddField(
            model_name="Worker",
            name="agent_types",
            field=fields.JSONField(
                default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
            ),
        ),
        ops.AddField(
            model_name="Worker",
            name="draining",
            field=fields.BooleanField(default=False),
        ),
        ops.AddField(
            model_name="Worker",
            name="labels",
            field=fields.JSONField(
                default=list, encoder=functools.partial(dumps, separators=(",", ":")), decoder=loads
            ),
        ),
        ops.AddField(
            model_name="Workspace",
            name="last_dispatch_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Workspace",
            name="max_concurrent_jobs",
            field=fields.IntField(null=True),
        ),
        # Existing tasks get the workspace of the unit task, composite task or auto-fixed unit
        # task their AgentTask runs for (new ones are written with it).
        ops.RunSQL(
            """
            UPDATE agent_tasks SET workspace_id = COALESCE(
                (SELECT u.workspace_id FROM unit_tasks u WHERE u.agent_task_id = agent_tasks.id),
                (SELECT c.workspace_id FROM composite_tasks c
                 WHERE c.planning_task_id = agent_tasks.id),
                (SELECT u.workspace_id FROM unit_task_auto_fix_tasks f
                 JOIN unit_tasks u ON u.id = f.unit_task_id
                 WHERE f.agent_task_id = agent_tasks.id)
            )
            WHERE workspace_id IS NULL
            """
        ),
    ]
