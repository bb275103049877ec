"""GraphQL types of usage and cost (services/usage.py): a run's, a task's, a workspace's.

Every count is a ``Float``, as the log offsets are: Connect's int64 may outgrow GraphQL's
32-bit ``Int``, and a double holds integers exactly up to 2^53 (9e15 tokens; 9e15 micros
are nine billion dollars), which is as far as a JavaScript client can read a number anyway.
``costUsd`` spells the cost out exactly, however large.
"""

from __future__ import annotations

import datetime as dt

import strawberry

from delidev.graphql.enums import AiAgentType
from delidev.services import usage as usage_service

MICROS = 1_000_000


def usd(micros: int) -> str:
    """``12345678`` -> ``"12.345678"``: exact, always six decimals, no float in between."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{fraction:06d}"


@strawberry.type(
    description="Tokens and money used by one or more runs, as their workers reported it. "
    "Counts are Floats holding integers (exact up to 2^53; GraphQL's Int is 32-bit)."
)
class Usage:
    input_tokens: float
    output_tokens: float
    cache_read_tokens: float
    cache_write_tokens: float
    cost_micros: float = strawberry.field(
        description="Millionths of a US dollar (fixed-point: never summed as a float)."
    )
    cost_usd: str = strawberry.field(
        description='The cost in US dollars, exactly, with six decimals: "12.345678".'
    )
    reports: float = strawberry.field(
        description="Usage reports counted (a report a worker sent again counts once)."
    )

    @classmethod
    def from_usage(cls, u: usage_service.Usage) -> Usage:
        return cls(
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            cache_read_tokens=u.cache_read_tokens,
            cache_write_tokens=u.cache_write_tokens,
            cost_micros=u.cost_micros,
            cost_usd=usd(u.cost_micros),
            reports=u.reports,
        )


@strawberry.type
class UsageDay:
    date: dt.date = strawberry.field(description="The day (UTC).")
    usage: Usage


@strawberry.type
class ModelUsage:
    ai_agent_type: AiAgentType  # type: ignore[valid-type]  # strawberry.enum result
    model: str
    usage: Usage


@strawberry.type(description="A workspace's usage over a period of days (UTC, today included).")
class WorkspaceUsage:
    total: Usage
    days: list[UsageDay] = strawberry.field(description="Days with usage, oldest first.")
    models: list[ModelUsage] = strawberry.field(
        description="Per agent type and model, the most expensive first."
    )

    @classmethod
    def from_usage(cls, found: usage_service.WorkspaceUsage) -> WorkspaceUsage:
        return cls(
            total=Usage.from_usage(found.total),
            days=[UsageDay(date=day, usage=Usage.from_usage(u)) for day, u in found.days],
            models=[
                ModelUsage(
                    ai_agent_type=mu.ai_agent_type, model=mu.model, usage=Usage.from_usage(mu.usage)
                )
                for mu in found.models
            ],
        )
