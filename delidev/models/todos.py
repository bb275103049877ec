from __future__ import annotations

from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from tortoise import fields
from tortoise.models import Model

from delidev.models.enums import TodoItemSource, TodoItemStatus, TodoItemType

if TYPE_CHECKING:
    from delidev.models.workspaces import Repository


class TodoItem(Model):
    id = fields.UUIDField(primary_key=True, default=uuid4)
    type = fields.CharEnumField(TodoItemType, max_length=50)
    source = fields.CharEnumField(TodoItemSource, max_length=50, default=TodoItemSource.AUTO)
    status = fields.CharEnumField(TodoItemStatus, max_length=50, default=TodoItemStatus.PENDING)
    repository: fields.ForeignKeyRelation[Repository] = fields.ForeignKeyField(
        "models.Repository", related_name="todo_items", on_delete=fields.CASCADE
    )
    data: Any = fields.JSONField()
    external_url = fields.CharField(max_length=2048, null=True)
    """The issue / pull request URL of an item filed from a webhook: at most one such item
    per repository and URL. None for items filed through the API."""
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    repository_id: UUID

    class Meta:
        table = "todo_items"
        indexes = (("repository_id", "status"),)
        unique_together = (("repository", "external_url"),)
