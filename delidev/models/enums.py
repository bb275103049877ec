"""Enum values of the specification (FACTS.md), stored as their string values."""

from __future__ import annotations

from enum import StrEnum


class VcsType(StrEnum):
    GIT = "git"


class VcsProviderType(StrEnum):
    GITHUB = "github"
    GITLAB = "gitlab"
    BITBUCKET = "bitbucket"


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
