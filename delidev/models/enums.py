"""Enum values of the specification (FACTS.md), stored as their string values."""

from __future__ import annotations

from enum import StrEnum


class VcsType(StrEnum):
    GIT = "git"


class VcsProviderType(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"


class ReviewCommentFilter(StrEnum):
    """Whose review comments a repository's auto-fix acts on."""

    WRITE_ACCESS_ONLY = "write_access_only"
    ALL = "all"


class AiAgentType(StrEnum):
    CLAUDE_CODE = "claude_code"
    OPEN_CODE = "open_code"
    GEMINI_CLI = "gemini_cli"
    CODEX_CLI = "codex_cli"
    AIDER = "aider"
    AMP = "amp"


class UnitTaskStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    IN_REVIEW = "in_review"
    APPROVED = "approved"
    PR_OPEN = "pr_open"
    DONE = "done"
    REJECTED = "rejected"


class PullRequestState(StrEnum):
    """The state of a unit task's linked pull request, as repository events report it."""

    OPEN = "open"
    MERGED = "merged"
    CLOSED = "closed"
    """Closed without being merged."""


class AutoFixTrigger(StrEnum):
    """What queued an auto-fix run."""

    REVIEW_COMMENTS = "review_comments"
    CHECK_FAILED = "check_failed"


class CompositeTaskStatus(StrEnum):
    PLANNING = "planning"
    PENDING_APPROVAL = "pending_approval"
    IN_PROGRESS = "in_progress"
    DONE = "done"
    REJECTED = "rejected"


class AgentSessionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


class JobKind(StrEnum):
    UNIT_TASK = "unit_task"
    PLANNING = "planning"
    AUTO_FIX = "auto_fix"


class TtyInputType(StrEnum):
    TEXT = "text"
    SELECT = "select"
    CONFIRM = "confirm"
    PASSWORD = "password"


class TtyInputStatus(StrEnum):
    PENDING = "pending"
    RESPONDED = "responded"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class TaskPriority(StrEnum):
    """How soon a task's jobs are handed out: higher first, FIFO within one priority."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    URGENT = "urgent"

    @property
    def rank(self) -> int:
        """The stored, ordered value (``agent_tasks.priority``)."""
        return _PRIORITY_RANK[self]

    @classmethod
    def from_rank(cls, rank: int) -> TaskPriority:
        return _PRIORITY_BY_RANK[rank]


_PRIORITY_RANK = {
    TaskPriority.LOW: 0,
    TaskPriority.NORMAL: 1,
    TaskPriority.HIGH: 2,
    TaskPriority.URGENT: 3,
}
_PRIORITY_BY_RANK = {rank: priority for priority, rank in _PRIORITY_RANK.items()}


class WaitReason(StrEnum):
    """Why a queued job is not running (``agent_sessions.wait_reason``)."""

    QUEUED = "queued"
    """Claimable: it waits for a free worker, behind ``position`` others."""
    SECRETS = "secrets"
    """Its task expects secrets that have not been sent."""
    DEPENDENCIES = "dependencies"
    """A composite node whose dependencies have not all finished (no job yet)."""
    NO_CAPABLE_WORKER = "no_capable_worker"
    """No live worker can run its agent type or has every label it requires."""
    CONCURRENCY_CAP = "concurrency_cap"
    """Its workspace runs as many jobs as its cap allows."""
    BACKOFF = "backoff"
    """An automatic retry after an infrastructure failure, not before ``not_before``."""
    BUDGET = "budget"
    """Its workspace spent its budget for the period (until the budget is raised or the
    period turns)."""


class StopReason(StrEnum):
    """Why a running job was asked to stop (``agent_sessions.stop_reason``)."""

    USER = "user"
    TIMEOUT = "timeout"
    BUDGET = "budget"
    """Its task spent its budget."""


class WorkerStatus(StrEnum):
    IDLE = "idle"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"


class TodoItemType(StrEnum):
    ISSUE_TRIAGE = "issue_triage"
    PR_REVIEW = "pr_review"


class TodoItemStatus(StrEnum):
    PENDING = "pending"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    DISMISSED = "dismissed"


class TodoItemSource(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class BudgetPeriod(StrEnum):
    """What a workspace's budget covers: the calendar month (UTC), or the last 30 days."""

    MONTH = "month"
    ROLLING_30_DAYS = "rolling_30_days"
