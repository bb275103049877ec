"""Usage reports: the tokens and money each run used, as its worker reported it."""

from __future__ import annotations

from uuid import uuid4

from tortoise import fields
from tortoise.models import Model

from delidev.models.enums import AiAgentType
from delidev.models.tasks import AgentSession, CompositeTask, UnitTask
from delidev.models.workspaces import Workspace


class UsageRecord(Model):
    """One usage report of a run.

    Whom it counts for (the unit task, the composite task, the workspace) is resolved when
    it is stored, so every total is one indexed sum."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    session: fields.ForeignKeyRelation[AgentSession] = fields.ForeignKeyField(
        "models.AgentSession", related_name="usage_records", on_delete=fields.CASCADE
    )
    # The worker's id for the report: a report sent twice is stored once.
    report_id = fields.CharField(max_length=64)
    workspace: fields.ForeignKeyRelation[Workspace] = fields.ForeignKeyField(
        "models.Workspace", related_name="usage_records", on_delete=fields.CASCADE
    )
    # The unit task the run belongs to (its own runs and its auto-fix runs); none for a
    # composite's planning run.
    unit_task: fields.ForeignKeyNullableRelation[UnitTask] = fields.ForeignKeyField(
        "models.UnitTask",
        related_name="usage_records",
        null=True,
        on_delete=fields.CASCADE,
    )
    # The composite task the run belongs to (its planning run, or a node's run).
    composite_task: fields.ForeignKeyNullableRelation[CompositeTask] = fields.ForeignKeyField(
        "models.CompositeTask",
        related_name="usage_records",
        null=True,
        on_delete=fields.CASCADE,
    )
    ai_agent_type = fields.CharEnumField(AiAgentType, max_length=50)
    model = fields.CharField(max_length=255)
    input_tokens = fields.BigIntField(default=0)
    output_tokens = fields.BigIntField(default=0)
    cache_read_tokens = fields.BigIntField(default=0)
    cache_write_tokens = fields.BigIntField(default=0)
    # Millionths of the currency unit (USD): money is never a float.
    cost_micros = fields.BigIntField(default=0)
    created_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "usage_records"
        unique_together = (("session", "report_id"),)
        indexes = (("workspace_id", "created_at"), ("unit_task_id",), ("composite_task_id",))
