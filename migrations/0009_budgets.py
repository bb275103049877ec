from tortoise import migrations
from tortoise.migrations import operations as ops
from delidev.models.enums import BudgetPeriod
from tortoise import fields


class Migration(migrations.Migration):
    dependencies = [("models", "0008_usage")]

    initial = False

    operations = [
        ops.AddField(
            model_name="Workspace",
            name="budget_blocked_until",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Workspace",
            name="budget_period",
            field=fields.CharEnumField(
                default=BudgetPeriod.MONTH,
                description="MONTH: month\nROLLING_30_DAYS: rolling_30_days",
                db_default="month",
                enum_type=BudgetPeriod,
                max_length=20,
            ),
        ),
        ops.AddField(
            model_name="Workspace",
            name="budget_warned_at",
            field=fields.DatetimeField(null=True, auto_now=False, auto_now_add=False),
        ),
        ops.AddField(
            model_name="Workspace",
            name="budget_warning_percent",
            field=fields.IntField(default=80, db_default=80),
        ),
        ops.AddField(
            model_name="Workspace",
            name="monthly_budget_micros",
            field=fields.BigIntField(null=True),
        ),
        ops.AddField(
            model_name="Workspace",
            name="task_budget_micros",
            field=fields.BigIntField(null=True),
        ),
    ]
