"""The subscription resolvers and their types, thin over services/live.py.

Served over both WebSocket protocols (``ws_protocols``); ``sessionLog`` usually takes the
fast path (``log_fast_path``), which must answer as these resolvers do.

Loaders are rebuilt for every event: a WebSocket's context lives as long as the connection,
and a cached task would go stale between events.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator
from typing import Annotated

import strawberry

from delidev import errors
from delidev.graphql.context import Loaders
from delidev.graphql.task_types import (
    AgentSessionStatus,
    Task,
    TtyInputRequest,
    task_from_model,
)
from delidev.graphql.types import GqlInfo
from delidev.graphql.worker_types import Worker
from delidev.services import live
from delidev.services.common import parse_id, parse_optional_id


@strawberry.type(
    description="A piece of a session's log. Offsets count Unicode code points (not UTF-16 "
    "units: an emoji is 1); resume with `nextOffset`, never with a count of your own. The "
    "last event of a finished session has `final` set, empty `data` and the status the "
    "session ended with."
)
class LogChunk:
    # Float: a log's offsets may outgrow GraphQL's 32-bit Int.
    offset: float = strawberry.field(description="Offset of `data` in the log (code points).")
    data: str = strawberry.field(
        description="Output, or the marker line of a dropped range (see `nextOffset`)."
    )
    status: AgentSessionStatus  # type: ignore[valid-type]  # strawberry.enum result
    final: bool
    next_offset: float = strawberry.field(
        description="Offset to resume from (`fromOffset`) after this piece: `offset` plus the "
        "code points of `data`, or the end of a dropped range whose marker `data` holds."
    )


@strawberry.type
class TaskUpdate:
    task_id: strawberry.ID
    deleted: bool
    task: Task | None


@strawberry.type
class WorkerUpdate:
    worker_id: strawberry.ID
    deleted: bool
    worker: Worker | None


@strawberry.type(description="Spending of a workspace reached its warning threshold.")
class BudgetWarning:
    workspace_id: strawberry.ID
    spent_micros: float = strawberry.field(description="In the period so far (micros of USD).")
    budget_micros: float


def _fresh(info: GqlInfo) -> None:
    info.context.loaders = Loaders()


@strawberry.type
class Subscription:
    @strawberry.subscription
    async def session_log(
        self,
        info: GqlInfo,
        session_id: strawberry.ID,
        from_offset: Annotated[
            float,
            strawberry.argument(
                description="Offset (code points) to start from: 0, or the `nextOffset` of "
                "the last piece received."
            ),
        ] = 0,
    ) -> AsyncGenerator[LogChunk, None]:
        """The log from ``fromOffset`` (stored output first), then live, until it ends."""
        ctx = info.context
        if not math.isfinite(from_offset):
            raise errors.InvalidArgument("fromOffset must be a finite number", field="fromOffset")
        async for piece in ctx.feeds.follow(
            actor=await ctx.actor(),
            session_id=parse_id(session_id, "sessionId"),
            from_offset=int(from_offset),
        ):
            yield LogChunk(
                offset=piece.offset,
                data=piece.data,
                status=piece.status,
                final=piece.final,
                next_offset=piece.next_offset,
            )

    @strawberry.subscription
    async def task_updated(
        self,
        info: GqlInfo,
        task_id: strawberry.ID | None = None,
        workspace_id: strawberry.ID | None = None,
    ) -> AsyncGenerator[TaskUpdate, None]:
        """Changes of one task, or of every task of a workspace (status, sessions, nodes)."""
        ctx = info.context
        async for update in live.task_updates(
            actor=await ctx.actor(),
            bus=ctx.bus,
            task_id=parse_optional_id(task_id, "taskId"),
            workspace_id=parse_optional_id(workspace_id, "workspaceId"),
        ):
            _fresh(info)
            yield TaskUpdate(
                task_id=strawberry.ID(str(update.task_id)),
                deleted=update.task is None,
                task=None if update.task is None else task_from_model(update.task),
            )

    @strawberry.subscription
    async def tty_input_requested(
        self, info: GqlInfo, workspace_id: strawberry.ID
    ) -> AsyncGenerator[TtyInputRequest, None]:
        """Questions agents ask in the workspace, as they are asked."""
        ctx = info.context
        async for request in live.tty_requests(
            actor=await ctx.actor(),
            bus=ctx.bus,
            workspace_id=parse_id(workspace_id, "workspaceId"),
        ):
            _fresh(info)
            yield TtyInputRequest.from_model(request)

    @strawberry.subscription
    async def budget_warnings(
        self, info: GqlInfo, workspace_id: strawberry.ID
    ) -> AsyncGenerator[BudgetWarning, None]:
        """The workspace's spending reached its warning threshold (once per budget period)."""
        ctx = info.context
        async for warning in live.budget_warnings(
            actor=await ctx.actor(),
            bus=ctx.bus,
            workspace_id=parse_id(workspace_id, "workspaceId"),
        ):
            yield BudgetWarning(
                workspace_id=strawberry.ID(warning.workspace_id),
                spent_micros=warning.spent_micros,
                budget_micros=warning.budget_micros,
            )

    @strawberry.subscription
    async def worker_updated(self, info: GqlInfo) -> AsyncGenerator[WorkerUpdate, None]:
        """Workers registering, changing status (idle, busy, unhealthy) and leaving."""
        ctx = info.context
        async for update in live.worker_updates(actor=await ctx.actor(), bus=ctx.bus):
            w = update.worker
            yield WorkerUpdate(
                worker_id=strawberry.ID(str(update.worker_id)),
                deleted=w is None,
                worker=None if w is None else Worker.from_model(w, update.current_task_id),
            )
