"""Conversions between models / service dataclasses and protobuf messages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Generic, Literal, TypeVar
from uuid import UUID

from protobuf import Enum, Oneof, enum_is_unknown
from protobuf.wkt.google.protobuf.timestamp_pb import Timestamp

from delidev import models as m
from delidev.connect.gen.delidev.v1 import (
    auth_pb,
    common_pb,
    repository_pb,
    session_pb,
    task_pb,
    todo_pb,
    worker_pb,
    workspace_pb,
)
from delidev.errors import InvalidArgument
from delidev.services import auth as auth_service
from delidev.services import estimates as estimate_service
from delidev.services import live as live_service
from delidev.services import repository_settings
from delidev.services import sessions as session_service
from delidev.services import tasks as task_service
from delidev.services import todos as todo_service
from delidev.services import usage as usage_service
from delidev.services import workers as worker_service
from delidev.services.scheduling import waits as wait_service
from delidev.services.workers import push

D = TypeVar("D", bound=StrEnum)
P = TypeVar("P", bound=Enum)


class EnumMap(Generic[D, P]):
    """Maps a domain enum to its protobuf enum by member name (UNSPECIFIED = not given)."""

    def __init__(self, domain: type[D], proto: type[P]) -> None:
        self._proto = proto
        self._to_proto: dict[D, P] = {d: proto[d.name] for d in domain}
        self._to_domain: dict[int, D] = {int(proto[d.name]): d for d in domain}

    def to_proto(self, value: D | None) -> P:
        if value is None:
            return self._proto(0)
        return self._to_proto[value]

    def to_domain(self, value: P, field: str) -> D | None:
        """None for UNSPECIFIED; InvalidArgument names the field for unknown values."""
        if enum_is_unknown(value) or (int(value) != 0 and int(value) not in self._to_domain):
            raise InvalidArgument(f"{field} has an unknown value {int(value)}", field=field)
        if int(value) == 0:
            return None
        return self._to_domain[int(value)]


VCS_TYPE = EnumMap(m.VcsType, common_pb.VcsType)
VCS_PROVIDER = EnumMap(m.VcsProviderType, common_pb.VcsProviderType)
AGENT_TYPE = EnumMap(m.AiAgentType, common_pb.AiAgentType)
TODO_TYPE = EnumMap(m.TodoItemType, todo_pb.TodoItemType)
TODO_STATUS = EnumMap(m.TodoItemStatus, todo_pb.TodoItemStatus)
TODO_SOURCE = EnumMap(m.TodoItemSource, todo_pb.TodoItemSource)
REVIEW_COMMENT_FILTER = EnumMap(m.ReviewCommentFilter, repository_pb.ReviewCommentFilter)


def timestamp(value: datetime) -> Timestamp:
    return Timestamp.from_datetime(value)


def optional_timestamp(value: datetime | None) -> Timestamp | None:
    return None if value is None else Timestamp.from_datetime(value)


def workspace(ws: m.Workspace) -> workspace_pb.Workspace:
    return workspace_pb.Workspace(
        id=str(ws.id),
        name=ws.name,
        description=ws.description,
        user_id=None if ws.user_id is None else str(ws.user_id),
        max_concurrent_jobs=ws.max_concurrent_jobs,
        created_at=timestamp(ws.created_at),
        updated_at=timestamp(ws.updated_at),
        monthly_budget_micros=ws.monthly_budget_micros,
        budget_period=BUDGET_PERIOD.to_proto(ws.budget_period),
        task_budget_micros=ws.task_budget_micros,
        budget_warning_percent=ws.budget_warning_percent,
        budget_warned_at=optional_timestamp(ws.budget_warned_at),
        budget_blocked_until=optional_timestamp(ws.budget_blocked_until),
    )


def repository(repo: m.Repository) -> repository_pb.Repository:
    return repository_pb.Repository(
        id=str(repo.id),
        workspace_id=str(repo.workspace_id),
        name=repo.name,
        local_path=repo.local_path,
        remote_url=repo.remote_url,
        default_branch=repo.default_branch,
        vcs_type=VCS_TYPE.to_proto(repo.vcs_type),
        vcs_provider_type=VCS_PROVIDER.to_proto(repo.vcs_provider_type),
        branch_name_template=repo.branch_name_template,
        created_at=timestamp(repo.created_at),
        updated_at=timestamp(repo.updated_at),
        settings=repository_pb.RepositorySettings(
            auto_triage=repo.auto_triage,
            auto_fix_review_comments=repo.auto_fix_review_comments,
            review_comment_filter=REVIEW_COMMENT_FILTER.to_proto(repo.review_comment_filter),
            auto_fix_ci_failures=repo.auto_fix_ci_failures,
        ),
        webhook_secret_set=repo.webhook_secret is not None,
        webhook_path=repository_settings.webhook_path(repo) or "",
    )


def repository_group(
    group: m.RepositoryGroup, member_ids: Sequence[UUID]
) -> repository_pb.RepositoryGroup:
    return repository_pb.RepositoryGroup(
        id=str(group.id),
        workspace_id=str(group.workspace_id),
        name=group.name,
        repository_ids=[str(r) for r in member_ids],
        default_required_labels=list(group.default_required_labels or []),
        created_at=timestamp(group.created_at),
        updated_at=timestamp(group.updated_at),
    )


def todo_item(item: m.TodoItem, workspace_ids: Mapping[UUID, UUID]) -> todo_pb.TodoItem:
    data = todo_service.todo_data(item)
    message = todo_pb.TodoItem(
        id=str(item.id),
        type=TODO_TYPE.to_proto(item.type),
        source=TODO_SOURCE.to_proto(item.source),
        status=TODO_STATUS.to_proto(item.status),
        repository_id=str(item.repository_id),
        workspace_id=str(workspace_ids.get(item.repository_id, "")),
        created_at=timestamp(item.created_at),
        updated_at=timestamp(item.updated_at),
    )
    if isinstance(data, todo_service.IssueTriageData):
        message.data = Oneof[Literal["issue_triage"], todo_pb.IssueTriageData](
            "issue_triage",
            todo_pb.IssueTriageData(
                issue_url=data.issue_url,
                issue_title=data.issue_title,
                suggested_labels=list(data.suggested_labels),
                suggested_assignees=list(data.suggested_assignees),
            ),
        )
    else:
        message.data = Oneof[Literal["pr_review"], todo_pb.PrReviewData](
            "pr_review",
            todo_pb.PrReviewData(
                pr_url=data.pr_url,
                pr_title=data.pr_title,
                changed_files_count=data.changed_files_count,
                ai_summary=data.ai_summary,
            ),
        )
    return message


def todo_data_from_request(data: object) -> todo_service.TodoData:
    match data:
        case Oneof(field="issue_triage", value=todo_pb.IssueTriageData() as issue):
            return todo_service.IssueTriageData(
                issue_url=issue.issue_url,
                issue_title=issue.issue_title,
                suggested_labels=list(issue.suggested_labels),
                suggested_assignees=list(issue.suggested_assignees),
            )
        case Oneof(field="pr_review", value=todo_pb.PrReviewData() as pr):
            return todo_service.PrReviewData(
                pr_url=pr.pr_url,
                pr_title=pr.pr_title,
                changed_files_count=pr.changed_files_count,
                ai_summary=pr.ai_summary if pr.has_field("ai_summary") else None,
            )
    raise InvalidArgument("one of issue_triage or pr_review is required", field="data")


# Users and sign-ins ---------------------------------------------------------------------


def user(u: m.User) -> auth_pb.User:
    return auth_pb.User(
        id=str(u.id),
        email=u.email,
        name=u.name,
        created_at=timestamp(u.created_at),
        updated_at=timestamp(u.updated_at),
    )


def signed_in(pair: auth_service.TokenPair) -> auth_pb.HandleCallbackResponse:
    return auth_pb.HandleCallbackResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_at=timestamp(pair.expires_at),
        user=user(pair.user),
    )


def refreshed(pair: auth_service.TokenPair) -> auth_pb.RefreshTokenResponse:
    return auth_pb.RefreshTokenResponse(
        access_token=pair.access_token,
        refresh_token=pair.refresh_token,
        expires_at=timestamp(pair.expires_at),
    )


# Tasks and sessions ---------------------------------------------------------------------

UNIT_STATUS = EnumMap(m.UnitTaskStatus, task_pb.UnitTaskStatus)
COMPOSITE_STATUS = EnumMap(m.CompositeTaskStatus, task_pb.CompositeTaskStatus)
SESSION_STATUS = EnumMap(m.AgentSessionStatus, task_pb.AgentSessionStatus)
JOB_KIND = EnumMap(m.JobKind, task_pb.JobKind)
NODE_STATE = EnumMap(task_service.NodeState, task_pb.CompositeNodeState)
TTY_TYPE = EnumMap(m.TtyInputType, session_pb.TtyInputType)
TTY_STATUS = EnumMap(m.TtyInputStatus, session_pb.TtyInputStatus)
PRIORITY = EnumMap(m.TaskPriority, task_pb.TaskPriority)
WAIT_REASON = EnumMap(m.WaitReason, task_pb.WaitReason)
PR_STATE = EnumMap(m.PullRequestState, task_pb.PullRequestState)
BUDGET_PERIOD = EnumMap(m.BudgetPeriod, workspace_pb.BudgetPeriod)
# The kinds ``tasks.list_tasks`` filters by (a plain string there, not a domain enum).
_TASK_KINDS = {task_pb.TaskKind.UNIT: "unit", task_pb.TaskKind.COMPOSITE: "composite"}


def task_kind(value: task_pb.TaskKind) -> str | None:
    """None for UNSPECIFIED; InvalidArgument for unknown values."""
    kind = task_pb.TaskKind(value) if int(value) else None
    if kind is not None and kind not in _TASK_KINDS:
        raise InvalidArgument(f"kind has an unknown value {int(value)}", field="kind")
    return _TASK_KINDS[kind] if kind is not None else None


def usage(u: usage_service.Usage) -> common_pb.Usage:
    return common_pb.Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_read_tokens=u.cache_read_tokens,
        cache_write_tokens=u.cache_write_tokens,
        cost_micros=u.cost_micros,
        reports=u.reports,
    )


def agent_session(
    s: m.AgentSession, used: usage_service.Usage | None = None
) -> task_pb.AgentSession:
    """``used``: the run's usage, where the caller read it (left out otherwise)."""
    return task_pb.AgentSession(
        usage=None if used is None else usage(used),
        id=str(s.id),
        agent_task_id=str(s.agent_task_id),
        ai_agent_type=AGENT_TYPE.to_proto(s.ai_agent_type),
        ai_agent_model=s.ai_agent_model,
        status=SESSION_STATUS.to_proto(s.status),
        kind=JOB_KIND.to_proto(s.kind),
        attempt=s.attempt,
        error=s.error,
        worker_id=None if s.worker_id is None else str(s.worker_id),
        stop_requested=s.stop_requested,
        log_size=s.log_size,
        created_at=timestamp(s.created_at),
        started_at=optional_timestamp(s.started_at),
        completed_at=optional_timestamp(s.completed_at),
        auto_retries=s.auto_retries,
        failure_kind=s.failure_kind,
        deadline_at=optional_timestamp(s.deadline_at),
    )


def job_wait(wait: wait_service.Wait | None) -> task_pb.JobWait | None:
    if wait is None:
        return None
    return task_pb.JobWait(
        reason=WAIT_REASON.to_proto(wait.reason),
        since=timestamp(wait.since),
        detail=wait.detail,
        until=optional_timestamp(wait.until),
        position=wait.position,
    )


def log_read(read: session_service.LogRead) -> session_pb.GetLogResponse:
    return session_pb.GetLogResponse(
        content=read.content,
        offset=read.offset,
        next_offset=read.next_offset,
        complete=read.complete,
        status=SESSION_STATUS.to_proto(read.status),
    )


def log_piece(piece: live_service.LogPiece) -> session_pb.StreamLogResponse:
    """The last piece (empty data) carries the status the session ended with."""
    return session_pb.StreamLogResponse(
        offset=piece.offset,
        data=piece.data,
        status=SESSION_STATUS.to_proto(piece.status),
        next_offset=piece.next_offset,
    )


def agent_task(agent_id: UUID, bundle: task_service.TaskBundle) -> task_pb.AgentTask:
    agent = bundle.agents[agent_id]
    return task_pb.AgentTask(
        id=str(agent.id),
        base_remotes=[
            task_pb.BaseRemote(
                git_remote_dir_path=r.git_remote_dir_path, git_branch_name=r.git_branch_name
            )
            for r in bundle.remotes.get(agent_id, [])
        ],
        ai_agent_type=AGENT_TYPE.to_proto(agent.ai_agent_type),
        ai_agent_model=agent.ai_agent_model,
        sessions=[
            agent_session(s, bundle.usage_of(s.id)) for s in bundle.sessions.get(agent_id, [])
        ],
        created_at=timestamp(agent.created_at),
    )


def unit_task(t: m.UnitTask, bundle: task_service.TaskBundle) -> task_pb.UnitTask:
    latest = bundle.latest(t.agent_task_id)
    scheduling = bundle.scheduling(t)
    return task_pb.UnitTask(
        id=str(t.id),
        workspace_id=str(t.workspace_id),
        repository_group_id=str(t.repository_group_id),
        agent_task=agent_task(t.agent_task_id, bundle),
        branch_name=t.branch_name,
        linked_pr_url=t.linked_pr_url,
        base_commit=t.base_commit,
        end_commit=t.end_commit,
        status=UNIT_STATUS.to_proto(t.status),
        prompt=t.prompt,
        title=t.title,
        auto_fix_tasks=[agent_task(a, bundle) for a in bundle.auto_fix.get(t.id, [])],
        latest_session=None
        if latest is None
        else agent_session(latest, bundle.usage_of(latest.id)),
        rejection_reason=t.rejection_reason,
        composite_task_id=None if t.composite_task_id is None else str(t.composite_task_id),
        created_at=timestamp(t.created_at),
        updated_at=timestamp(t.updated_at),
        wait=job_wait(bundle.waits.get(t.id)),
        priority=PRIORITY.to_proto(m.TaskPriority.from_rank(scheduling.priority)),
        required_labels=list(scheduling.required_labels or []),
        max_run_seconds=scheduling.max_run_seconds,
        usage=usage(bundle.usage_of(t.id)),
        pr_state=PR_STATE.to_proto(t.pr_state),
        pr_state_changed_at=optional_timestamp(t.pr_state_changed_at),
    )


def composite_task(t: m.CompositeTask, bundle: task_service.TaskBundle) -> task_pb.CompositeTask:
    latest = bundle.latest(t.planning_task_id)
    scheduling = bundle.scheduling(t)
    return task_pb.CompositeTask(
        id=str(t.id),
        workspace_id=str(t.workspace_id),
        repository_group_id=str(t.repository_group_id),
        planning_task=agent_task(t.planning_task_id, bundle),
        status=COMPOSITE_STATUS.to_proto(t.status),
        execution_agent_type=AGENT_TYPE.to_proto(t.execution_agent_type),
        prompt=t.prompt,
        title=t.title,
        plan_yaml=t.plan_yaml,
        plan_error=t.plan_error,
        nodes=[
            task_pb.CompositeTaskNode(
                id=str(v.node.id),
                plan_id=v.node.plan_id,
                unit_task=unit_task(v.unit_task, bundle),
                depends_on_node_ids=[str(d) for d in v.depends_on],
                state=NODE_STATE.to_proto(v.state),
            )
            for v in bundle.nodes.get(t.id, [])
        ],
        latest_session=None
        if latest is None
        else agent_session(latest, bundle.usage_of(latest.id)),
        created_at=timestamp(t.created_at),
        updated_at=timestamp(t.updated_at),
        wait=job_wait(bundle.waits.get(t.id)),
        priority=PRIORITY.to_proto(m.TaskPriority.from_rank(scheduling.priority)),
        required_labels=list(scheduling.required_labels or []),
        max_run_seconds=scheduling.max_run_seconds,
        usage=usage(bundle.usage_of(t.id)),
        estimate=plan_estimate(bundle.estimates.get(t.id)),
    )


def _spread(s: estimate_service.Spread | None) -> task_pb.Spread | None:
    return None if s is None else task_pb.Spread(median=s.median, high=s.high)


def plan_estimate(e: estimate_service.PlanEstimate | None) -> task_pb.PlanEstimate | None:
    if e is None:
        return None
    return task_pb.PlanEstimate(
        samples=e.samples,
        nodes=e.nodes,
        chain=e.chain,
        node_cost_micros=_spread(e.node_cost_micros),
        node_seconds=_spread(e.node_seconds),
        cost_micros=_spread(e.cost_micros),
        seconds=_spread(e.seconds),
    )


def task(t: task_service.Task, bundle: task_service.TaskBundle) -> task_pb.Task:
    if isinstance(t, m.UnitTask):
        return task_pb.Task(
            task=Oneof[Literal["unit_task"], task_pb.UnitTask]("unit_task", unit_task(t, bundle))
        )
    return task_pb.Task(
        task=Oneof[Literal["composite_task"], task_pb.CompositeTask](
            "composite_task", composite_task(t, bundle)
        )
    )


def tty_request(r: m.TtyInputRequest) -> session_pb.TtyInputRequest:
    return session_pb.TtyInputRequest(
        id=str(r.id),
        task_id=str(r.task_id),
        session_id=str(r.session_id),
        prompt=r.prompt,
        input_type=TTY_TYPE.to_proto(r.input_type),
        options=list(r.options or []),
        status=TTY_STATUS.to_proto(r.status),
        response=session_service.visible_response(r),
        created_at=timestamp(r.created_at),
        responded_at=optional_timestamp(r.responded_at),
        expires_at=optional_timestamp(r.expires_at),
    )


# Workers ----------------------------------------------------------------------------------

WORKER_STATUS = EnumMap(m.WorkerStatus, worker_pb.WorkerStatus)
FAILURE_KIND = EnumMap(worker_service.FailureKind, worker_pb.FailureKind)


def worker_message(w: m.Worker) -> worker_pb.Worker:
    return worker_pb.Worker(
        id=str(w.id),
        name=w.name,
        endpoint_url=w.endpoint_url,
        status=WORKER_STATUS.to_proto(w.status),
        last_heartbeat=timestamp(w.last_heartbeat),
        current_task_id=None if w.current_task_id is None else str(w.current_task_id),
        registered_at=timestamp(w.registered_at),
        agent_types=[AGENT_TYPE.to_proto(m.AiAgentType(t)) for t in w.agent_types],
        labels=list(w.labels),
        draining=w.draining,
    )


def job_message(job: worker_service.Job) -> worker_pb.Job:
    s = job.session
    return worker_pb.Job(
        session_id=str(s.id),
        lease_token=job.lease_token,
        kind=JOB_KIND.to_proto(s.kind),
        task_id="" if job.task_id is None else str(job.task_id),
        agent_task_id=str(s.agent_task_id),
        prompt=job.prompt,
        title=job.title,
        branch_name=job.branch_name,
        ai_agent_type=AGENT_TYPE.to_proto(s.ai_agent_type),
        ai_agent_model=s.ai_agent_model,
        base_remotes=[
            task_pb.BaseRemote(
                git_remote_dir_path=r.git_remote_dir_path, git_branch_name=r.git_branch_name
            )
            for r in job.base_remotes
        ],
        attempt=s.attempt,
        has_secrets=job.expects_secrets,
        traceparent=s.traceparent or "",
    )


def watch_message(pushed: push.Push) -> worker_pb.WatchResponse:
    match pushed:
        case push.JobAssigned(job=job):
            return worker_pb.WatchResponse(
                event=Oneof[Literal["job_assigned"], worker_pb.Job](
                    "job_assigned", job_message(job)
                )
            )
        case push.StopSession(session_id=session_id, reason=reason):
            return worker_pb.WatchResponse(
                event=Oneof[Literal["stop_session"], worker_pb.StopSession](
                    "stop_session", worker_pb.StopSession(session_id=str(session_id), reason=reason)
                )
            )
        case push.DrainChanged(draining=draining):
            return worker_pb.WatchResponse(
                event=Oneof[Literal["drain"], worker_pb.DrainChanged](
                    "drain", worker_pb.DrainChanged(draining=draining)
                )
            )
        case push.KeepAlive(server_time=server_time):
            return worker_pb.WatchResponse(
                event=Oneof[Literal["keep_alive"], worker_pb.KeepAlive](
                    "keep_alive", worker_pb.KeepAlive(server_time=timestamp(server_time))
                )
            )
