"""Plain async factories with unique values."""

from __future__ import annotations

import itertools
from uuid import UUID

from delidev import models as m
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.services import repositories, todos, workspaces

_counter = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}"


async def make_user(name: str) -> Principal:
    """A signed-in user (multi-user mode) with its row stored, as the caller of services."""
    user = await m.User.create(email=f"{unique(name)}@example.com")
    return Principal(kind="user", user_id=user.id)


async def make_workspace(actor: Principal = LOCAL_USER, name: str | None = None) -> m.Workspace:
    return await workspaces.create_workspace(actor=actor, name=name or unique("ws"))


async def make_repository(
    workspace: m.Workspace, actor: Principal = LOCAL_USER, host: str = "github.com"
) -> m.Repository:
    return await repositories.add_repository(
        actor=actor,
        workspace_id=workspace.id,
        remote_url=f"https://{host}/acme/{unique('repo')}.git",
    )


async def make_group(
    workspace: m.Workspace,
    repos: list[m.Repository],
    actor: Principal = LOCAL_USER,
    name: str | None = None,
) -> m.RepositoryGroup:
    return await repositories.create_repository_group(
        actor=actor, workspace_id=workspace.id, repository_ids=[r.id for r in repos], name=name
    )


async def make_todo(repo: m.Repository, actor: Principal = LOCAL_USER) -> m.TodoItem:
    return await todos.create_todo_item(
        actor=actor,
        repository_id=repo.id,
        data=todos.IssueTriageData(
            issue_url=f"https://github.com/acme/x/issues/{next(_counter)}",
            issue_title=unique("issue"),
        ),
    )


async def make_unit_task(group: m.RepositoryGroup) -> m.UnitTask:
    """A task row as the Tasks issue will create it (no service exists yet)."""
    agent = await m.AgentTask.create(ai_agent_type=m.AiAgentType.CLAUDE_CODE)
    return await m.UnitTask.create(
        workspace_id=group.workspace_id,
        repository_group_id=group.id,
        agent_task_id=agent.id,
        prompt="do it",
    )


def ids(items: list[m.Workspace] | list[m.Repository] | list[m.TodoItem]) -> list[UUID]:
    return [i.id for i in items]


async def latest_session(agent_task_id: UUID) -> m.AgentSession:
    session = await m.AgentSession.filter(agent_task_id=agent_task_id).order_by("-attempt").first()
    assert session is not None
    return session


async def start_latest(agent_task_id: UUID) -> m.AgentSession:
    """What a worker's claim does to the newest queued session of an AgentTask."""
    from delidev.services import sessions

    session = await latest_session(agent_task_id)
    await sessions.start_session(session_id=session.id, worker_id=None, lease_token="lease")
    return await m.AgentSession.get(id=session.id)


async def finish_latest(
    agent_task_id: UUID,
    status: m.AgentSessionStatus = m.AgentSessionStatus.SUCCEEDED,
    **extra: object,
) -> m.AgentSession:
    """Claims and completes the newest session, as a worker would."""
    from delidev.services import sessions

    session = await start_latest(agent_task_id)
    return await sessions.complete_session(session_id=session.id, status=status, **extra)  # type: ignore[arg-type]
