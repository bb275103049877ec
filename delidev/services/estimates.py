"""What a plan waiting for approval will likely cost, and how long it will run: from the
history of comparable runs — finished runs of unit tasks in the same repository group with
the same agent type — the median and the 90th percentile per node, scaled to the plan (its
node count for money, its longest dependency chain for time), with the number of runs it
rests on. No comparable run: no estimate ("no history"), never a guess."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

from delidev import models as m
from delidev.services import plans
from delidev.services import usage as usage_service

MAX_SAMPLES = 200  # the latest comparable runs; older history says less about today
PERCENTILE = 90
_FINISHED = (
    m.AgentSessionStatus.SUCCEEDED,
    m.AgentSessionStatus.FAILED,
    m.AgentSessionStatus.STOPPED,
)


@dataclass(frozen=True, slots=True)
class Spread:
    median: int
    high: int
    """The 90th percentile."""


@dataclass(frozen=True, slots=True)
class PlanEstimate:
    samples: int
    """Comparable runs the figures rest on (0: no history, and no figures)."""
    nodes: int
    chain: int
    """Nodes on the plan's longest dependency chain (what bounds its run time)."""
    node_cost_micros: Spread | None
    node_seconds: Spread | None
    cost_micros: Spread | None
    """The plan: per-node figures times its node count."""
    seconds: Spread | None
    """The plan: per-node figures times its longest chain (nodes in parallel otherwise)."""


def _percentile(values: Sequence[int], percent: int) -> int:
    """Nearest-rank percentile of sorted ``values``."""
    rank = max(1, math.ceil(percent / 100 * len(values)))
    return values[rank - 1]


def _spread(values: list[int]) -> Spread:
    values.sort()
    return Spread(median=_percentile(values, 50), high=_percentile(values, PERCENTILE))


def _chain(tasks: Sequence[plans.PlanTask]) -> int:
    depth: dict[str, int] = {}
    by_id = {t.id: t for t in tasks}

    def depth_of(task_id: str, seen: frozenset[str] = frozenset()) -> int:
        if task_id in depth:
            return depth[task_id]
        if task_id in seen or task_id not in by_id:
            return 0  # parse_plan refuses cycles and unknown ids; never loop on one
        deps = by_id[task_id].depends_on
        d = 1 + max((depth_of(x, seen | {task_id}) for x in deps), default=0)
        depth[task_id] = d
        return d

    return max((depth_of(t.id) for t in tasks), default=0)


# Plans' (nodes, longest chain), by the digest of their text: a plan does not change while
# it waits for approval, and parsing one of 1,000 tasks takes ~0.14 s.
_SHAPES: collections.OrderedDict[bytes, tuple[int, int] | None] = collections.OrderedDict()
_SHAPES_KEPT = 256


async def _plan_shape(plan_yaml: str) -> tuple[int, int] | None:
    """A plan's number of tasks and longest dependency chain (None: not a valid plan),
    worked out in a thread (it would hold the event loop) and kept for the next read."""
    key = hashlib.sha256(plan_yaml.encode()).digest()
    if key in _SHAPES:
        _SHAPES.move_to_end(key)
        return _SHAPES[key]
    shape = await asyncio.to_thread(_shape, plan_yaml)
    _SHAPES[key] = shape
    while len(_SHAPES) > _SHAPES_KEPT:
        _SHAPES.popitem(last=False)
    return shape


def _shape(plan_yaml: str) -> tuple[int, int] | None:
    try:
        tasks = plans.parse_plan(plan_yaml)
    except plans.InvalidPlan:
        return None
    return len(tasks), _chain(tasks)


async def estimate_plan(composite: m.CompositeTask) -> PlanEstimate | None:
    """The estimate of a composite's plan while it waits for approval; None otherwise (or
    when it has no valid plan)."""
    if composite.status != m.CompositeTaskStatus.PENDING_APPROVAL or not composite.plan_yaml:
        return None
    shape = await _plan_shape(composite.plan_yaml)
    if shape is None:
        return None
    nodes, chain = shape
    agent = composite.execution_agent_type
    comparable = m.AgentSession.filter(
        kind=m.JobKind.UNIT_TASK,
        status__in=_FINISHED,
        started_at__isnull=False,
        completed_at__isnull=False,
        agent_task__unit_task__repository_group_id=composite.repository_group_id,
    )
    if agent is not None:
        comparable = comparable.filter(ai_agent_type=agent)
    runs = (
        await comparable.order_by("-completed_at")
        .limit(MAX_SAMPLES)
        .values_list("id", "started_at", "completed_at")
    )
    if not runs:
        return PlanEstimate(0, nodes, chain, None, None, None, None)
    used = await usage_service.session_usage([UUID(str(r[0])) for r in runs])
    costs = [used.get(UUID(str(r[0])), usage_service.NONE).cost_micros for r in runs]
    seconds = [max(0, int((_utc(r[2]) - _utc(r[1])).total_seconds())) for r in runs]
    cost, time = _spread(costs), _spread(seconds)
    return PlanEstimate(
        samples=len(runs),
        nodes=nodes,
        chain=chain,
        node_cost_micros=cost,
        node_seconds=time,
        cost_micros=Spread(cost.median * nodes, cost.high * nodes),
        seconds=Spread(time.median * chain, time.high * chain),
    )


def _utc(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
