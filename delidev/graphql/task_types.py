"""GraphQL types of tasks, agent runs and TTY questions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import Enum
from typing import Annotated, TypeVar
from uuid import UUID

import strawberry
from strawberry.dataloader import DataLoader
from strawberry.types.nodes import SelectedField, Selection

from delidev import models as m
from delidev.errors import NotFound
from delidev.graphql.context import Missing, loaded, prefetch
from delidev.graphql.enums import AiAgentType
from delidev.graphql.limits import LogReadBudget
from delidev.graphql.types import GqlInfo
from delidev.graphql.usage_types import Usage
from delidev.services import estimates as estimate_service
from delidev.services import sessions as session_service
from delidev.services import tasks as task_service
from delidev.services import usage as usage_service
from delidev.services.scheduling.waits import Wait

UnitTaskStatus = strawberry.enum(m.UnitTaskStatus, name="UnitTaskStatus")
CompositeTaskStatus = strawberry.enum(m.CompositeTaskStatus, name="CompositeTaskStatus")
AgentSessionStatus = strawberry.enum(m.AgentSessionStatus, name="AgentSessionStatus")
JobKind = strawberry.enum(m.JobKind, name="JobKind")
NodeState = strawberry.enum(task_service.NodeState, name="CompositeNodeState")
TaskPriority = strawberry.enum(
    m.TaskPriority,
    name="TaskPriority",
    description="How soon a task's jobs are handed out: higher first, first come first "
    "served within one priority, round-robin across workspaces among equals.",
)
WaitReason = strawberry.enum(m.WaitReason, name="WaitReason")
PullRequestState = strawberry.enum(
    m.PullRequestState,
    name="PullRequestState",
    description="A unit task's linked pull request, as repository events report it (CLOSED:"
    " closed without being merged).",
)
TtyInputType = strawberry.enum(m.TtyInputType, name="TtyInputType")
TtyInputStatus = strawberry.enum(m.TtyInputStatus, name="TtyInputStatus")


@strawberry.enum
class TaskKind(Enum):
    UNIT = "unit"
    COMPOSITE = "composite"


@strawberry.type
class BaseRemote:
    git_remote_dir_path: str
    git_branch_name: str


@strawberry.type(
    description="Part of a session's log. Offsets count Unicode code points (not UTF-16 "
    "units: an emoji is 1); read on from `nextOffset`, never from a count of your own."
)
class SessionLog:
    content: str = strawberry.field(
        description="Output from `offset`; where output was dropped because the log outgrew "
        "its cap, one marker line says how much."
    )
    offset: int = strawberry.field(description="Offset of `content` in the log (code points).")
    next_offset: int = strawberry.field(
        description="Offset to read next: the end of `content`, or past a dropped range."
    )
    complete: bool = strawberry.field(
        description="The session ended and `content` reaches the end of its log."
    )


@strawberry.type(description="Why a task's job is not running, and since when.")
class JobWait:
    reason: WaitReason  # type: ignore[valid-type]  # strawberry.enum result
    since: datetime
    detail: str = strawberry.field(
        description="For people: the agent type or labels no worker offers, the cap, the "
        "failure retried..."
    )
    until: datetime | None = strawberry.field(
        description="BACKOFF: the job is not handed out before this time."
    )
    position: int | None = strawberry.field(
        description="QUEUED: claimable jobs ahead of it (0 = next)."
    )

    @classmethod
    def from_wait(cls, wait: Wait | None) -> JobWait | None:
        if wait is None:
            return None
        return cls(
            reason=wait.reason,
            since=wait.since,
            detail=wait.detail,
            until=wait.until,
            position=wait.position,
        )


@strawberry.type
class AgentSession:
    id: strawberry.ID
    agent_task_id: strawberry.ID
    ai_agent_type: AiAgentType  # type: ignore[valid-type]  # strawberry.enum result
    ai_agent_model: str | None
    status: AgentSessionStatus  # type: ignore[valid-type]  # strawberry.enum result
    kind: JobKind  # type: ignore[valid-type]  # strawberry.enum result
    attempt: int
    error: str | None
    worker_id: strawberry.ID | None
    stop_requested: bool
    log_size: int = strawberry.field(
        description="End offset of the output log (code points; dropped output still counts)."
    )
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    auto_retries: int = strawberry.field(
        description="Automatic retries (after infrastructure failures) that led to this run."
    )
    failure_kind: str | None = strawberry.field(
        description='Why it failed ("timeout", "out_of_memory", ...).'
    )
    deadline_at: datetime | None = strawberry.field(
        description="A running job past this time is asked to stop and fails with a timeout."
    )

    @classmethod
    def from_model(cls, s: m.AgentSession) -> AgentSession:
        return cls(
            id=strawberry.ID(str(s.id)),
            agent_task_id=strawberry.ID(str(s.agent_task_id)),
            ai_agent_type=s.ai_agent_type,
            ai_agent_model=s.ai_agent_model,
            status=s.status,
            kind=s.kind,
            attempt=s.attempt,
            error=s.error,
            worker_id=None if s.worker_id is None else strawberry.ID(str(s.worker_id)),
            stop_requested=s.stop_requested,
            log_size=s.log_size,
            created_at=s.created_at,
            started_at=s.started_at,
            completed_at=s.completed_at,
            auto_retries=s.auto_retries,
            failure_kind=s.failure_kind,
            deadline_at=s.deadline_at,
        )

    @strawberry.field(extensions=[LogReadBudget()])  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
    async def log(
        self,
        info: GqlInfo,
        offset: Annotated[
            int, strawberry.argument(description="Offset (code points) to read from.")
        ] = 0,
        limit: Annotated[
            int,
            strawberry.argument(
                description="At most about this many code points (0: all, capped)."
            ),
        ] = 0,
    ) -> SessionLog:
        read = await session_service.read_log(
            actor=await info.context.actor(),
            session_id=UUID(self.id),
            offset=offset,
            limit=limit,
        )
        return SessionLog(
            content=read.content,
            offset=read.offset,
            next_offset=read.next_offset,
            complete=read.complete,
        )

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="What this run used so far."
    )
    async def usage(self, info: GqlInfo) -> Usage:
        return Usage.from_usage(await info.context.loaders.tasks.session_usage.load(UUID(self.id)))


@strawberry.type
class AgentTask:
    id: strawberry.ID
    ai_agent_type: AiAgentType | None  # type: ignore[valid-type]  # strawberry.enum result
    ai_agent_model: str | None
    created_at: datetime

    @classmethod
    def from_model(cls, a: m.AgentTask) -> AgentTask:
        return cls(
            id=strawberry.ID(str(a.id)),
            ai_agent_type=a.ai_agent_type,
            ai_agent_model=a.ai_agent_model,
            created_at=a.created_at,
        )

    @strawberry.field
    async def sessions(self, info: GqlInfo) -> list[AgentSession]:
        runs = await info.context.loaders.tasks.sessions.load(UUID(self.id))
        return [AgentSession.from_model(s) for s in runs]

    @strawberry.field
    async def base_remotes(self, info: GqlInfo) -> list[BaseRemote]:
        remotes = await info.context.loaders.tasks.remotes.load(UUID(self.id))
        return [
            BaseRemote(git_remote_dir_path=r.git_remote_dir_path, git_branch_name=r.git_branch_name)
            for r in remotes
        ]


async def _agent_task(info: GqlInfo, agent_id: UUID) -> AgentTask:
    agent = await info.context.loaders.tasks.agent_task.load(agent_id)
    if agent is None:  # the task was deleted since the query read it (a concurrent delete)
        raise NotFound("the task was deleted", field="id")
    return AgentTask.from_model(agent)


async def _latest(info: GqlInfo, agent_id: UUID) -> AgentSession | None:
    runs = await info.context.loaders.tasks.sessions.load(agent_id)
    return AgentSession.from_model(runs[-1]) if runs else None


async def _scheduling(info: GqlInfo, agent_id: UUID) -> m.AgentTask:
    agent = await info.context.loaders.tasks.agent_task.load(agent_id)
    if agent is None:  # the task was deleted since the query read it (a concurrent delete)
        raise NotFound("the task was deleted", field="id")
    return agent


A = TypeVar("A")
R = TypeVar("R")


async def _then(value: Awaitable[A], finish: Callable[[A], R]) -> R:
    return finish(await value)


def _from_scheduling(
    info: GqlInfo, agent_id: UUID, finish: Callable[[m.AgentTask], R]
) -> R | Awaitable[R]:
    """``finish`` of the AgentTask holding a task's scheduling fields: at once when a list
    prefetched it (see ``context.prefetch``), else once its loader has it."""
    agent = loaded(info.context.loaders.tasks.agent_task, agent_id)
    if isinstance(agent, Missing):
        return _then(_scheduling(info, agent_id), finish)
    if agent is None:  # the task was deleted since the query read it (a concurrent delete)
        raise NotFound("the task was deleted", field="id")
    return finish(agent)


def _latest_now(
    info: GqlInfo, agent_id: UUID
) -> AgentSession | Awaitable[AgentSession | None] | None:
    runs = loaded(info.context.loaders.tasks.sessions, agent_id)
    if isinstance(runs, Missing):
        return _latest(info, agent_id)
    return AgentSession.from_model(runs[-1]) if runs else None


def _usage_now(
    loader: DataLoader[UUID, usage_service.Usage], key: UUID
) -> Usage | Awaitable[Usage]:
    found = loaded(loader, key)
    if isinstance(found, Missing):
        return _then(loader.load(key), Usage.from_usage)
    return Usage.from_usage(found)


@strawberry.type
class Scheduled:
    """The scheduling fields of a unit or composite task (those of its AgentTask)."""

    scheduled_by: strawberry.Private[UUID]
    """The AgentTask holding them (a composite's: its planning task)."""
    model: strawberry.Private[task_service.Task]

    # These resolvers answer at once when a list prefetched what they read (see
    # ``context.prefetch``), else they return an awaitable: graphql-core takes both.
    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Of a composite: also of its nodes.", graphql_type=TaskPriority
    )
    def priority(self, info: GqlInfo) -> m.TaskPriority | Awaitable[m.TaskPriority]:
        return _from_scheduling(
            info, self.scheduled_by, lambda a: m.TaskPriority.from_rank(a.priority)
        )

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description='"key=value" labels a worker must have to run its jobs.',
        graphql_type=list[str],
    )
    def required_labels(self, info: GqlInfo) -> list[str] | Awaitable[list[str]]:
        return _from_scheduling(info, self.scheduled_by, lambda a: list(a.required_labels or []))

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Run time limit of each run; null = the server's DELIDEV_MAX_RUN_SECONDS.",
        graphql_type=int | None,
    )
    def max_run_seconds(self, info: GqlInfo) -> int | Awaitable[int | None] | None:
        return _from_scheduling(info, self.scheduled_by, lambda a: a.max_run_seconds)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Set while its job (a composite: its planning job) is queued, or while a "
        "composite's node waits for its dependencies.",
        graphql_type=JobWait | None,
    )
    def wait(self, info: GqlInfo) -> JobWait | Awaitable[JobWait | None] | None:
        waits = info.context.loaders.tasks.waits
        found = loaded(waits, self.model)
        if isinstance(found, Missing):
            return _then(waits.load(self.model), JobWait.from_wait)
        return JobWait.from_wait(found)


@strawberry.interface
class Task:
    id: strawberry.ID
    workspace_id: strawberry.ID
    repository_group_id: strawberry.ID
    prompt: str
    title: str | None
    created_at: datetime
    updated_at: datetime

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Tokens and money all its runs used (a composite's: planning and nodes)."
    )
    async def usage(self, info: GqlInfo) -> Usage:
        raise NotImplementedError  # each implementation resolves its own


@strawberry.type
class UnitTask(Task, Scheduled):
    status: UnitTaskStatus  # type: ignore[valid-type]  # strawberry.enum result
    branch_name: str | None
    linked_pr_url: str | None
    base_commit: str | None
    end_commit: str | None
    rejection_reason: str | None
    composite_task_id: strawberry.ID | None
    pr_state: PullRequestState | None = strawberry.field(  # type: ignore[valid-type]  # enum
        description="Of its linked PR: OPEN when linked, then MERGED or CLOSED as repository "
        "events report it; null without a PR."
    )
    pr_state_changed_at: datetime | None = strawberry.field(
        description="When prState last changed."
    )
    agent_task_id: strawberry.Private[UUID]

    @classmethod
    def from_model(cls, t: m.UnitTask) -> UnitTask:
        return cls(
            id=strawberry.ID(str(t.id)),
            workspace_id=strawberry.ID(str(t.workspace_id)),
            repository_group_id=strawberry.ID(str(t.repository_group_id)),
            prompt=t.prompt,
            title=t.title,
            created_at=t.created_at,
            updated_at=t.updated_at,
            status=t.status,
            branch_name=t.branch_name,
            linked_pr_url=t.linked_pr_url,
            base_commit=t.base_commit,
            end_commit=t.end_commit,
            rejection_reason=t.rejection_reason,
            composite_task_id=(
                None if t.composite_task_id is None else strawberry.ID(str(t.composite_task_id))
            ),
            pr_state=t.pr_state,
            pr_state_changed_at=t.pr_state_changed_at,
            agent_task_id=t.agent_task_id,
            scheduled_by=t.agent_task_id,
            model=t,
        )

    @strawberry.field
    async def agent_task(self, info: GqlInfo) -> AgentTask:
        return await _agent_task(info, self.agent_task_id)

    @strawberry.field(graphql_type=AgentSession | None)  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
    def latest_session(self, info: GqlInfo) -> AgentSession | Awaitable[AgentSession | None] | None:
        return _latest_now(info, self.agent_task_id)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="Auto-fix runs on its pull request (review comments, failed checks), "
        "oldest first: each its own AgentTask with sessions of kind AUTO_FIX."
    )
    async def auto_fix_tasks(self, info: GqlInfo) -> list[AgentTask]:
        ids = await info.context.loaders.tasks.auto_fix.load(UUID(self.id))
        agents = await info.context.loaders.tasks.agent_task.load_many(ids)
        if any(a is None for a in agents):  # deleted since the query read it
            raise NotFound("the task was deleted", field="id")
        return [AgentTask.from_model(a) for a in agents if a is not None]

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="All its runs: every attempt and auto-fix run.", graphql_type=Usage
    )
    def usage(self, info: GqlInfo) -> Usage | Awaitable[Usage]:
        return _usage_now(info.context.loaders.tasks.unit_usage, UUID(self.id))


@strawberry.type(description="A figure's median and 90th percentile.")
class Spread:
    median: float
    high: float

    @classmethod
    def of(cls, spread: estimate_service.Spread | None) -> Spread | None:
        return None if spread is None else cls(median=spread.median, high=spread.high)


@strawberry.type(
    description="From the latest finished runs of unit tasks in the same repository group with"
    " the same agent type: per node, and the plan (node cost times its nodes; node run time"
    " times its longest dependency chain). samples = 0: no history, no figures."
)
class PlanEstimate:
    samples: int
    nodes: int
    chain: int
    node_cost_micros: Spread | None
    node_seconds: Spread | None
    cost_micros: Spread | None
    seconds: Spread | None

    @classmethod
    def from_estimate(cls, e: estimate_service.PlanEstimate) -> PlanEstimate:
        return cls(
            samples=e.samples,
            nodes=e.nodes,
            chain=e.chain,
            node_cost_micros=Spread.of(e.node_cost_micros),
            node_seconds=Spread.of(e.node_seconds),
            cost_micros=Spread.of(e.cost_micros),
            seconds=Spread.of(e.seconds),
        )


@strawberry.type
class CompositeTaskNode:
    id: strawberry.ID
    plan_id: str
    state: NodeState  # type: ignore[valid-type]  # strawberry.enum result
    depends_on_node_ids: list[strawberry.ID]
    unit_task: UnitTask


@strawberry.type
class CompositeTask(Task, Scheduled):
    status: CompositeTaskStatus  # type: ignore[valid-type]  # strawberry.enum result
    execution_agent_type: AiAgentType | None  # type: ignore[valid-type]  # strawberry.enum result
    plan_yaml: str | None
    plan_error: str | None
    planning_task_id: strawberry.Private[UUID]

    @classmethod
    def from_model(cls, t: m.CompositeTask) -> CompositeTask:
        return cls(
            id=strawberry.ID(str(t.id)),
            workspace_id=strawberry.ID(str(t.workspace_id)),
            repository_group_id=strawberry.ID(str(t.repository_group_id)),
            prompt=t.prompt,
            title=t.title,
            created_at=t.created_at,
            updated_at=t.updated_at,
            status=t.status,
            execution_agent_type=t.execution_agent_type,
            plan_yaml=t.plan_yaml,
            plan_error=t.plan_error,
            planning_task_id=t.planning_task_id,
            scheduled_by=t.planning_task_id,
            model=t,
        )

    @strawberry.field
    async def planning_task(self, info: GqlInfo) -> AgentTask:
        return await _agent_task(info, self.planning_task_id)

    @strawberry.field(graphql_type=AgentSession | None)  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
    def latest_session(self, info: GqlInfo) -> AgentSession | Awaitable[AgentSession | None] | None:
        return _latest_now(info, self.planning_task_id)

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="All its runs: planning and every node's.", graphql_type=Usage
    )
    def usage(self, info: GqlInfo) -> Usage | Awaitable[Usage]:
        return _usage_now(info.context.loaders.tasks.composite_usage, UUID(self.id))

    @strawberry.field(  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
        description="While its plan waits for approval: what it will likely cost and how long"
        " it will run, from comparable runs' history (null otherwise)."
    )
    async def estimate(self) -> PlanEstimate | None:
        composite = self.model
        assert isinstance(composite, m.CompositeTask)
        found = await estimate_service.estimate_plan(composite)
        return None if found is None else PlanEstimate.from_estimate(found)

    @strawberry.field(graphql_type=list[CompositeTaskNode])  # type: ignore[untyped-decorator]  # strawberry.field(...) is typed Any
    def nodes(self, info: GqlInfo) -> list[CompositeTaskNode] | Awaitable[list[CompositeTaskNode]]:
        loader = info.context.loaders.tasks.nodes
        views = loaded(loader, UUID(self.id))
        if isinstance(views, Missing):
            return _then(loader.load(UUID(self.id)), _node_list)
        return _node_list(views)


def _node_list(views: list[task_service.NodeView]) -> list[CompositeTaskNode]:
    return [
        CompositeTaskNode(
            id=strawberry.ID(str(v.node.id)),
            plan_id=v.node.plan_id,
            state=v.state,
            depends_on_node_ids=[strawberry.ID(str(d)) for d in v.depends_on],
            unit_task=UnitTask.from_model(v.unit_task),
        )
        for v in views
    ]


def _field_names(selections: list[Selection], path: tuple[str, ...]) -> set[str]:
    """The names of the fields asked at ``path`` below ``selections`` (fragments merged)."""
    names: set[str] = set()
    for sel in selections:
        if isinstance(sel, SelectedField):
            if not path:
                names.add(sel.name)
            elif sel.name == path[0]:
                names |= _field_names(sel.selections, path[1:])
        else:  # an inline fragment or a fragment spread: the same level
            names |= _field_names(sel.selections, path)
    return names


async def prefetch_tasks(
    info: GqlInfo, models: Sequence[task_service.Task], path: tuple[str, ...]
) -> None:
    """Loads, for a page of tasks, what the fields the query asks of each (at ``path`` below
    the list field) read through the loaders: one batch per loader, so those fields answer
    at once (``context.loaded``) instead of each awaiting its loader."""
    if not models:
        return
    asked = set()
    for field in info.selected_fields:
        asked |= _field_names(field.selections, path)
    loaders = info.context.loaders.tasks
    units = [t for t in models if isinstance(t, m.UnitTask)]
    composites = [t for t in models if isinstance(t, m.CompositeTask)]
    agents = [t.agent_task_id for t in units] + [t.planning_task_id for t in composites]
    if asked & {"priority", "requiredLabels", "maxRunSeconds"}:
        await prefetch(loaders.agent_task, agents)
    if "latestSession" in asked:
        await prefetch(loaders.sessions, agents)
    if "wait" in asked:
        await prefetch(loaders.waits, models)
    if "usage" in asked:
        await prefetch(loaders.unit_usage, [t.id for t in units])
        await prefetch(loaders.composite_usage, [t.id for t in composites])
    if "nodes" in asked:
        await prefetch(loaders.nodes, [t.id for t in composites])


def task_from_model(task: task_service.Task) -> UnitTask | CompositeTask:
    if isinstance(task, m.UnitTask):
        return UnitTask.from_model(task)
    return CompositeTask.from_model(task)


@strawberry.type
class TaskEdge:
    cursor: str
    node: Task


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


@strawberry.type
class TaskConnection:
    edges: list[TaskEdge]
    page_info: PageInfo
    total_count: int


@strawberry.type
class TtyInputRequest:
    id: strawberry.ID
    task_id: strawberry.ID
    session_id: strawberry.ID
    prompt: str
    input_type: TtyInputType  # type: ignore[valid-type]  # strawberry.enum result
    options: list[str]
    status: TtyInputStatus  # type: ignore[valid-type]  # strawberry.enum result
    response: str | None = strawberry.field(description="Never shown for PASSWORD questions.")
    created_at: datetime
    responded_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def from_model(cls, r: m.TtyInputRequest) -> TtyInputRequest:
        return cls(
            id=strawberry.ID(str(r.id)),
            task_id=strawberry.ID(str(r.task_id)),
            session_id=strawberry.ID(str(r.session_id)),
            prompt=r.prompt,
            input_type=r.input_type,
            options=list(r.options or []),
            status=r.status,
            response=session_service.visible_response(r),
            created_at=r.created_at,
            responded_at=r.responded_at,
            expires_at=r.expires_at,
        )


@strawberry.type
class TtyInputRequestList:
    items: list[TtyInputRequest]
    total_count: int
