from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("models", "0004_scheduling")]

    initial = False

    operations = [
        ops.AddField(
            model_name="AgentSession",
            name="priority",
            field=fields.SmallIntField(default=1),
        ),
        ops.AddField(
            model_name="AgentSession",
            name="workspace_id",
            field=fields.UUIDField(null=True),
        ),
        # Existing runs take their AgentTask's (later ones get them from a trigger).
        ops.RunSQL(
            """
            UPDATE agent_sessions SET
                priority = (SELECT a.priority FROM agent_tasks a
                            WHERE a.id = agent_sessions.agent_task_id),
                workspace_id = (SELECT a.workspace_id FROM agent_tasks a
                                WHERE a.id = agent_sessions.agent_task_id)
            """
        ),
    ]
