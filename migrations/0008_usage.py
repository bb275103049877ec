from tortoise import migrations
from tortoise.migrations import operations as ops
from delidev.models.enums import AiAgentType
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.indexes import Index


class Migration(migrations.Migration):
    dependencies = [("models", "0007_trace_context")]

    initial = False

    operations = [
        ops.CreateModel(
            name="UsageRecord",
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
                        related_name="usage_records",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("report_id", fields.CharField(max_length=64)),
                (
                    "workspace",
                    fields.ForeignKeyField(
                        "models.Workspace",
                        source_field="workspace_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="usage_records",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                (
                    "unit_task",
                    fields.ForeignKeyField(
                        "models.UnitTask",
                        source_field="unit_task_id",
                        null=True,
                        db_constraint=True,
                        to_field="id",
                        related_name="usage_records",
                        on_delete=OnDelete.CASCADE,
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
                        related_name="usage_records",
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
                ("model", fields.CharField(max_length=255)),
                ("input_tokens", fields.BigIntField(default=0)),
                ("output_tokens", fields.BigIntField(default=0)),
                ("cache_read_tokens", fields.BigIntField(default=0)),
                ("cache_write_tokens", fields.BigIntField(default=0)),
                ("cost_micros", fields.BigIntField(default=0)),
                ("created_at", fields.DatetimeField(auto_now=False, auto_now_add=True)),
            ],
            options={
                "table": "usage_records",
                "app": "models",
                "unique_together": (("session", "report_id"),),
                "indexes": [
                    Index(fields=["workspace_id", "created_at"]),
                    Index(fields=["unit_task_id"]),
                    Index(fields=["composite_task_id"]),
                ],
                "pk_attr": "id",
                "table_description": "One usage report of a run.",
            },
            bases=["Model"],
        ),
    ]
