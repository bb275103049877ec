"""The fleet's GraphQL types, shared by the ``workers`` query and the ``workerUpdated``
subscription."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import strawberry

from delidev import models as m
from delidev.graphql.enums import AiAgentType

WorkerStatus = strawberry.enum(m.WorkerStatus, name="WorkerStatus")


@strawberry.type
class Worker:
    id: strawberry.ID
    name: str
    endpoint_url: str
    status: WorkerStatus  # type: ignore[valid-type]  # strawberry.enum result
    last_heartbeat: datetime
    current_task_id: strawberry.ID | None = strawberry.field(
        description="The task it runs, when it is one of yours; else null."
    )
    registered_at: datetime
    agent_types: list[AiAgentType] = strawberry.field(  # type: ignore[valid-type]  # enum
        description="Agent types it can run; empty = every type."
    )
    labels: list[str] = strawberry.field(description='Its "key=value" labels.')
    draining: bool = strawberry.field(
        description="It finishes the job it holds and is handed no new one."
    )

    @classmethod
    def from_model(cls, w: m.Worker, current_task_id: UUID | None) -> Worker:
        """``current_task_id``: the task as the caller may see it (the services decide),
        never the worker's own column, which names any tenant's task."""
        return cls(
            id=strawberry.ID(str(w.id)),
            name=w.name,
            endpoint_url=w.endpoint_url,
            status=w.status,
            last_heartbeat=w.last_heartbeat,
            current_task_id=None
            if current_task_id is None
            else strawberry.ID(str(current_task_id)),
            registered_at=w.registered_at,
            agent_types=[m.AiAgentType(t) for t in w.agent_types or []],
            labels=list(w.labels or []),
            draining=w.draining,
        )


@strawberry.type
class WorkerList:
    items: list[Worker]
    total_count: int
