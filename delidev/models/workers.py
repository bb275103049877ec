from __future__ import annotations

from typing import TYPE_CHECKING
from uuid import UUID, uuid4

from tortoise import fields
from tortoise.models import Model

from delidev.models.enums import WorkerStatus

if TYPE_CHECKING:
    from delidev.models.tasks import UnitTask


class Worker(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    name = fields.CharField(max_length=255)
    endpoint_url = fields.TextField()
    status = fields.CharEnumField(WorkerStatus, max_length=50, default=WorkerStatus.IDLE)
    last_heartbeat = fields.DatetimeField(auto_now_add=True)
    current_task: fields.ForeignKeyNullableRelation[UnitTask] = fields.ForeignKeyField(
        "models.UnitTask", related_name="workers", null=True, on_delete=fields.SET_NULL
    )
    # A plain column, not a foreign key: agent_sessions already references workers, and
    # Tortoise's migration writer drops the columns of a foreign-key cycle.
    current_session_id = fields.UUIDField(null=True)
    credential_hash = fields.CharField(max_length=64, null=True, unique=True)
    agent_types: list[str] = fields.JSONField(default=list)
    """The AiAgentType values it can run, sorted; empty = every type."""
    labels: list[str] = fields.JSONField(default=list)
    """Its ``key=value`` labels, sorted (a job's required labels must all be here)."""
    draining = fields.BooleanField(default=False)
    """Finishes the job it holds and takes no new one."""
    registered_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    current_task_id: UUID | None

    class Meta:
        table = "workers"
        # The health sweep finds silent workers by range on last_heartbeat.
        indexes = (("current_task_id",), ("last_heartbeat",))
