from tortoise import migrations
from tortoise.migrations import operations as ops
from delidev.models.enums import ReviewCommentFilter
from tortoise.fields.base import OnDelete
from uuid import uuid4
from tortoise import fields
from tortoise.migrations.constraints import UniqueConstraint


class Migration(migrations.Migration):
    dependencies = [("models", "0010_pr_state")]

    initial = False

    operations = [
        ops.CreateModel(
            name="WebhookDelivery",
            fields=[
                (
                    "id",
                    fields.UUIDField(primary_key=True, default=uuid4, unique=True, db_index=True),
                ),
                (
                    "repository",
                    fields.ForeignKeyField(
                        "models.Repository",
                        source_field="repository_id",
                        db_constraint=True,
                        to_field="id",
                        related_name="webhook_deliveries",
                        on_delete=OnDelete.CASCADE,
                    ),
                ),
                ("delivery_id", fields.CharField(max_length=200)),
                ("event", fields.CharField(max_length=100)),
                (
                    "received_at",
                    fields.DatetimeField(db_index=True, auto_now=False, auto_now_add=True),
                ),
            ],
            options={
                "table": "webhook_deliveries",
                "app": "models",
                "unique_together": (("repository", "delivery_id"),),
                "pk_attr": "id",
                "table_description": "A webhook delivery accepted for a repository: a redelivery of the same id is",
            },
            bases=["Model"],
        ),
        ops.AddField(
            model_name="Repository",
            name="auto_fix_ci_failures",
            field=fields.BooleanField(default=False, db_default=False),
        ),
        ops.AddField(
            model_name="Repository",
            name="auto_fix_review_comments",
            field=fields.BooleanField(default=False, db_default=False),
        ),
        ops.AddField(
            model_name="Repository",
            name="auto_triage",
            field=fields.BooleanField(default=True, db_default=True),
        ),
        ops.AddField(
            model_name="Repository",
            name="review_comment_filter",
            field=fields.CharEnumField(
                default=ReviewCommentFilter.WRITE_ACCESS_ONLY,
                description="WRITE_ACCESS_ONLY: write_access_only\nALL: all",
                db_default="write_access_only",
                enum_type=ReviewCommentFilter,
                max_length=30,
            ),
        ),
        ops.AddField(
            model_name="Repository",
            name="webhook_secret",
            field=fields.CharField(null=True, max_length=256),
        ),
        ops.AddField(
            model_name="TodoItem",
            name="external_url",
            field=fields.CharField(null=True, max_length=2048),
        ),
        ops.AddConstraint(
            model_name="TodoItem",
            constraint=UniqueConstraint(fields=("repository", "external_url"), name=None),
        ),
    ]
