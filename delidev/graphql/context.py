"""The GraphQL context: the caller (authenticated once per request or WebSocket), the event
bus and log feeds the subscriptions follow, and the data loaders of the object types.

A list resolver may ``prefetch`` what its items' fields will ask the loaders for (one batch
per loader, as the loaders would make). A field then finds its value ``loaded`` and returns
it as a plain value: graphql-core completes it at once, instead of creating and awaiting a
future, a coroutine and a task for each field of each item (most of a 500-task board's time
went there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar
from uuid import UUID

from strawberry.dataloader import DataLoader

from delidev import models as m
from delidev.auth.authenticator import Authenticator
from delidev.auth.principal import Principal
from delidev.events import EventBus
from delidev.services import repositories, sessions, tasks, usage, workspaces
from delidev.services.live import LogFeeds
from delidev.services.scheduling.waits import Wait

K = TypeVar("K")
V = TypeVar("V")


class Missing:
    """What ``loaded`` gives for a key its loader does not hold yet."""


MISSING = Missing()


def loaded(loader: DataLoader[K, V], key: K) -> V | Missing:
    """The value ``loader`` holds for ``key`` (prefetched, primed or loaded earlier in the
    request), or ``MISSING``."""
    future = loader.cache_map.get(key)
    if future is None or not future.done() or future.cancelled() or future.exception():
        return MISSING
    return future.result()


async def prefetch(loader: DataLoader[K, V], keys: Iterable[K]) -> None:
    """Loads the keys ``loader`` does not hold yet in one batch, with its own batch function,
    and keeps the values in its cache."""
    missing = [k for k in dict.fromkeys(keys) if loader.cache_map.get(k) is None]
    if not missing:
        return
    values = await loader.load_fn(missing)
    loader.prime_many(
        {k: v for k, v in zip(missing, values, strict=True) if not isinstance(v, BaseException)}
    )


def _ordered(keys: list[UUID], found: dict[UUID, Any], default: Any = None) -> list[Any]:
    return [found.get(k, default) for k in keys]


async def _load_workspaces(keys: list[UUID]) -> list[m.Workspace | None]:
    return _ordered(keys, await workspaces.workspaces_by_id(keys))


async def _load_repositories(keys: list[UUID]) -> list[m.Repository | None]:
    return _ordered(keys, await repositories.repositories_by_id(keys))


async def _load_workspace_repositories(keys: list[UUID]) -> list[list[m.Repository]]:
    return _ordered(keys, await repositories.repositories_by_workspace(keys), [])


async def _load_workspace_groups(keys: list[UUID]) -> list[list[m.RepositoryGroup]]:
    return _ordered(keys, await repositories.groups_by_workspace(keys), [])


async def _load_group_members(keys: list[UUID]) -> list[list[UUID]]:
    return _ordered(keys, await repositories.group_member_ids(keys), [])


class Loaders:
    """Fresh per request (and per subscription event): their cache must not go stale.

    Each loader is built on first use: most requests need none or one of them.
    """

    @cached_property
    def workspace(self) -> DataLoader[UUID, m.Workspace | None]:
        return DataLoader(_load_workspaces)

    @cached_property
    def repository(self) -> DataLoader[UUID, m.Repository | None]:
        return DataLoader(_load_repositories)

    @cached_property
    def workspace_repositories(self) -> DataLoader[UUID, list[m.Repository]]:
        return DataLoader(_load_workspace_repositories)

    @cached_property
    def workspace_groups(self) -> DataLoader[UUID, list[m.RepositoryGroup]]:
        return DataLoader(_load_workspace_groups)

    @cached_property
    def group_members(self) -> DataLoader[UUID, list[UUID]]:
        return DataLoader(_load_group_members)

    @cached_property
    def workspace_usage(self) -> DataLoader[tuple[UUID, int], usage.WorkspaceUsage]:
        """By (workspace id, days): the workspaces of a list in two statements."""
        return DataLoader(_load_workspace_usage)

    @cached_property
    def tasks(self) -> TaskLoaders:
        return TaskLoaders()


@dataclass
class Context:
    authenticator: Authenticator
    authorization: str | None
    bus: EventBus
    feeds: LogFeeds
    request: Any = None
    response: Any = None
    connection_params: dict[str, Any] | None = None
    loaders: Loaders = field(default_factory=Loaders)
    _actor: Principal | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the caller was authenticated (a resolver asked who calls)."""
        return self._actor is not None

    async def actor(self) -> Principal:
        """The caller, authenticated once per request. Raises: Unauthenticated."""
        if self._actor is None:
            self._actor = await self.authenticator.authenticate(self.authorization)
        return self._actor


async def _load_agent_tasks(keys: list[UUID]) -> list[m.AgentTask | None]:
    return _ordered(keys, await tasks.agent_tasks_by_id(keys))


async def _load_sessions(keys: list[UUID]) -> list[list[m.AgentSession]]:
    return _ordered(keys, await sessions.sessions_of(keys), [])


async def _load_auto_fix(keys: list[UUID]) -> list[list[UUID]]:
    return _ordered(keys, await tasks.auto_fix_agent_task_ids(keys), [])


async def _load_remotes(keys: list[UUID]) -> list[list[m.AgentTaskBaseRemote]]:
    return _ordered(keys, await tasks.base_remotes_of(keys), [])


async def _load_waits(keys: list[tasks.Task]) -> list[Wait | None]:
    found = await tasks.task_waits(keys)
    return [found.get(k.id) for k in keys]


async def _load_nodes(keys: list[UUID]) -> list[list[tasks.NodeView]]:
    return _ordered(keys, await tasks.composite_nodes(keys), [])


async def _load_session_usage(keys: list[UUID]) -> list[usage.Usage]:
    return _ordered(keys, await usage.session_usage(keys), usage.NONE)


async def _load_workspace_usage(keys: list[tuple[UUID, int]]) -> list[usage.WorkspaceUsage]:
    found: dict[tuple[UUID, int], usage.WorkspaceUsage] = {}
    for days in {d for _, d in keys}:
        batch = await usage.workspaces_usage([w for w, d in keys if d == days], days)
        found |= {(w, days): u for w, u in batch.items()}
    return [found[key] for key in keys]


async def _load_unit_usage(keys: list[UUID]) -> list[usage.Usage]:
    return _ordered(keys, await usage.unit_task_usage(keys), usage.NONE)


async def _load_composite_usage(keys: list[UUID]) -> list[usage.Usage]:
    return _ordered(keys, await usage.composite_task_usage(keys), usage.NONE)


class TaskLoaders:
    @cached_property
    def agent_task(self) -> DataLoader[UUID, m.AgentTask | None]:
        return DataLoader(_load_agent_tasks)

    @cached_property
    def sessions(self) -> DataLoader[UUID, list[m.AgentSession]]:
        return DataLoader(_load_sessions)

    @cached_property
    def auto_fix(self) -> DataLoader[UUID, list[UUID]]:
        """Auto-fix AgentTask ids by unit task id."""
        return DataLoader(_load_auto_fix)

    @cached_property
    def remotes(self) -> DataLoader[UUID, list[m.AgentTaskBaseRemote]]:
        return DataLoader(_load_remotes)

    @cached_property
    def nodes(self) -> DataLoader[UUID, list[tasks.NodeView]]:
        return DataLoader(_load_nodes)

    # Usage by run, unit task and composite task: one grouped sum per kind for a whole list.
    @cached_property
    def session_usage(self) -> DataLoader[UUID, usage.Usage]:
        return DataLoader(_load_session_usage)

    @cached_property
    def unit_usage(self) -> DataLoader[UUID, usage.Usage]:
        return DataLoader(_load_unit_usage)

    @cached_property
    def composite_usage(self) -> DataLoader[UUID, usage.Usage]:
        return DataLoader(_load_composite_usage)

    @cached_property
    def waits(self) -> DataLoader[tasks.Task, Wait | None]:
        """Keyed by the task (its kind decides which run it waits by)."""
        return DataLoader(_load_waits)
