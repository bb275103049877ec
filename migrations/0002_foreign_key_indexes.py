from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [("models", "0001_initial")]

    initial = False

    operations = [
        ops.AddIndex(
            model_name="AgentSession",
            index=Index(fields=["agent_task_id", "attempt"]),
        ),
        ops.AddIndex(
            model_name="AgentSession",
            index=Index(fields=["worker_id", "status"]),
        ),
        ops.AddIndex(
            model_name="CompositeTask",
            index=Index(fields=["repository_group_id"]),
        ),
        ops.AddIndex(
            model_name="CompositeTaskNodeDependency",
            index=Index(fields=["depends_on_node_id"]),
        ),
        ops.AddIndex(
            model_name="RefreshToken",
            index=Index(fields=["user_id"]),
        ),
        ops.AddIndex(
            model_name="RepositoryGroup",
            index=Index(fields=["workspace_id"]),
        ),
        ops.AddIndex(
            model_name="RepositoryGroupMember",
            index=Index(fields=["repository_id"]),
        ),
        ops.AddIndex(
            model_name="TtyInputRequest",
            index=Index(fields=["session_id", "status"]),
        ),
        ops.AddIndex(
            model_name="UnitTask",
            index=Index(fields=["composite_task_id"]),
        ),
        ops.AddIndex(
            model_name="UnitTask",
            index=Index(fields=["repository_group_id"]),
        ),
        ops.AddIndex(
            model_name="UnitTaskAutoFixTask",
            index=Index(fields=["agent_task_id"]),
        ),
        ops.AddIndex(
            model_name="Worker",
            index=Index(fields=["current_task_id"]),
        ),
        ops.AddIndex(
            model_name="Workspace",
            index=Index(fields=["user_id", "created_at"]),
        ),
    ]
