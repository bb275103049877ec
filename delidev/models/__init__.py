"""Tortoise models of the whole schema. Import as a module: ``from delidev import models as m``."""

from delidev.models.enums import (
    AgentSessionStatus,
    AiAgentType,
    CompositeTaskStatus,
    JobKind,
    TodoItemSource,
    TodoItemStatus,
    TodoItemType,
    TtyInputStatus,
    TtyInputType,
    UnitTaskStatus,
    VcsProviderType,
    VcsType,
    WorkerStatus,
)
from delidev.models.tasks import (
    AgentSession,
    AgentTask,
    AgentTaskBaseRemote,
    CompositeTask,
    CompositeTaskNode,
    CompositeTaskNodeDependency,
    LogChunk,
    TtyInputRequest,
    UnitTask,
    UnitTaskAutoFixTask,
)
from delidev.models.todos import TodoItem
from delidev.models.users import AuthState, RefreshToken, User
from delidev.models.workers import Worker
from delidev.models.workspaces import Repository, RepositoryGroup, RepositoryGroupMember, Workspace

__all__ = [
    "AgentSession",
    "AgentSessionStatus",
    "AgentTask",
    "AgentTaskBaseRemote",
    "AiAgentType",
    "AuthState",
    "CompositeTask",
    "CompositeTaskNode",
    "CompositeTaskNodeDependency",
    "CompositeTaskStatus",
    "JobKind",
    "LogChunk",
    "RefreshToken",
    "Repository",
    "RepositoryGroup",
    "RepositoryGroupMember",
    "TodoItem",
    "TodoItemSource",
    "TodoItemStatus",
    "TodoItemType",
    "TtyInputRequest",
    "TtyInputStatus",
    "TtyInputType",
    "UnitTask",
    "UnitTaskAutoFixTask",
    "UnitTaskStatus",
    "User",
    "VcsProviderType",
    "VcsType",
    "Worker",
    "WorkerStatus",
    "Workspace",
]
