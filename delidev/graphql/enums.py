"""GraphQL enums that type modules on both sides of the ``types`` -> ``task_types`` import
need: ``task_types`` imports ``types``, so what ``types`` shows (a workspace's usage per
agent type) cannot take its enums from ``task_types``."""

from __future__ import annotations

import strawberry

from delidev import models as m

AiAgentType = strawberry.enum(m.AiAgentType, name="AiAgentType")
BudgetPeriod = strawberry.enum(
    m.BudgetPeriod,
    name="BudgetPeriod",
    description="What a workspace's budget covers: the calendar month (UTC) or the last 30 days.",
)
