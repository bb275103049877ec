from tortoise import migrations
from tortoise.migrations import operations as ops
from delidev.models.enums import AutoFixTrigger, PullRequestState
from tortoise import fields
from tortoise.indexes import Index

from delidev.services.pr_urls import pr_key


async def backfill_pr_keys(apps: object, schema_editor: object) -> None:
    """Tasks linked to a PR before this migration: their matching key, and the PR state open
    for those still pr_open (a done task's PR may have been merged or not: unknown)."""
    client = schema_editor.client  # type: ignore[attr-defined]
    postgres = client.capabilities.dialect == "postgres"
    rows = await client.execute_query_dict(
        "SELECT id, linked_pr_url FROM unit_tasks WHERE linked_pr_url IS NOT NULL"
    )
    update = (
        "UPDATE unit_tasks SET pr_key = $1 WHERE id = $2"
        if postgres
        else "UPDATE unit_tasks SET pr_key = ? WHERE id = ?"
    )
    for row in rows:
        await client.execute_query(update, [pr_key(row["linked_pr_url"]), row["id"]])
    await client.execute_query(
        "UPDATE unit_tasks SET pr_state = 'open' WHERE status = 'pr_open' AND pr_state IS NULL"
    )


class Migration(migrations.Migration):
    dependencies = [("models", "0009_budgets")]

    initial = False

    operations = [
        ops.AddField(
            model_name="UnitTask",
            name="pr_key",
            field=fields.CharField(null=True, max_length=2048),
        ),
        ops.AddField(
            model_name="UnitTask",
            name="pr_state",
            field=fields.CharEnumField(
                null=True,
                description="OPEN: open\nMERGED: merged\nCLOSED: closed",
                enum_type=PullRequestState,
                max_length=16,
            ),
        ),
        ops.AddField(
            model_name="UnitTask",
            name="pr_state_changed_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddIndex(
            model_name="UnitTask",
            index=Index(fields=["pr_key", "workspace_id"]),
        ),
        ops.AddField(
            model_name="UnitTaskAutoFixTask",
            name="prompt",
            field=fields.TextField(null=True, unique=False),
        ),
        ops.AddField(
            model_name="UnitTaskAutoFixTask",
            name="trigger",
            field=fields.CharEnumField(
                null=True,
                description="REVIEW_COMMENTS: review_comments\nCHECK_FAILED: check_failed",
                enum_type=AutoFixTrigger,
                max_length=32,
            ),
        ),
        ops.RunPython(backfill_pr_keys, ops.RunPython.noop),
    ]
