from tortoise import migrations
from tortoise.migrations import operations as ops
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("models", "0005_session_queue_order")]

    initial = False

    operations = [
        ops.AddField(
            model_name="AgentSession",
            name="fair_round",
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.AddField(
            model_name="Workspace",
            name="fair_round",
            field=fields.BigIntField(default=0, db_default=0),
        ),
        ops.RemoveField(model_name="Workspace", name="last_dispatch_at"),
        # SQLite drops a column by rebuilding the table, and the rebuild loses the table's
        # indexes: made again (on PostgreSQL they still exist, and these are no-ops).
        ops.RunSQL(
            'CREATE INDEX IF NOT EXISTS "idx_workspaces_created_4a39a0" '
            'ON "workspaces" ("created_at")'
        ),
        ops.RunSQL(
            'CREATE INDEX IF NOT EXISTS "idx_workspaces_user_id_2b7d81" '
            'ON "workspaces" ("user_id", "created_at")'
        ),
        # The claim orders by round now (db.EXTRA_INDEXES has its index); runs queued
        # before keep round 0, so they go first, oldest first, as before.
        ops.RunSQL("DROP INDEX IF EXISTS agent_sessions_queue_order"),
    ]
