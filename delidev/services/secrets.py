"""Per-task secrets: held in the server processes' memory only, relayed from a task's owner to
the worker that holds the task's current lease.

Values never reach the database, a log line, an error message or a metric. A client sends
them for a unit task (that task's runs) or for a composite task (its planning run and every
node's runs). They are dropped on Clear, when a unit task's run ends, when the task is gone
or finished (the periodic prune), and after ``SECRET_TTL`` at the latest. A job whose task
expects secrets is not handed out until they are here (see ``ready_agent_task_ids``).

With several replicas, each keeps a copy: ``services.secret_relay`` carries every change,
sealed, to the other replicas' stores. Changes carry versions so that a late copy never
undoes a newer change: a drop leaves a tombstone that an older set cannot cross.

What they may hold is bounded (``SecretLimits``: names, and bytes per task and per user);
values never hold NUL.

Everything a worker sends is masked with the values (and their encoded forms) before it is
stored: ``services.secret_masking`` (``mask``, ``OutputMasker``), re-exported here.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from cachetools import LRUCache

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument
from delidev.services import tasks as task_service
from delidev.services.secret_masking import MASK, MIN_MASKED_LENGTH, OutputMasker, mask

__all__ = [
    "MASK",
    "MAX_KEY_LENGTH",
    "MAX_SECRETS",
    "MAX_TASK_BYTES",
    "MAX_USER_BYTES",
    "MAX_VALUE_BYTES",
    "MIN_MASKED_LENGTH",
    "RELAY_WAIT_S",
    "SECRET_TTL",
    "TOMBSTONE_TTL_S",
    "OutputMasker",
    "Relay",
    "SecretLimits",
    "SecretStore",
    "clear_secrets",
    "expects_secrets",
    "job_secrets",
    "mask",
    "output_secrets",
    "prune_secrets",
    "ready_agent_task_ids",
    "run_ended",
    "send_secrets",
]

MAX_SECRETS = 64
MAX_KEY_LENGTH = 128
MAX_TASK_BYTES = 64 * 1024
MAX_VALUE_BYTES = MAX_TASK_BYTES  # a value alone may fill its task's share
MAX_USER_BYTES = 1024 * 1024
SECRET_TTL = dt.timedelta(hours=24)
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_ENCODABLE = re.compile(r"[^\ud800-\udfff]*")  # UTF-8 cannot encode a lone surrogate
# How long a drop is remembered, so that a copy of older values relayed late cannot revive it.
TOMBSTONE_TTL_S = 600.0
# How long GetSecrets waits for values that another replica holds but this one has not heard of.
RELAY_WAIT_S = 3.0

_FINISHED_UNITS = {
    m.UnitTaskStatus.APPROVED,
    m.UnitTaskStatus.PR_OPEN,
    m.UnitTaskStatus.DONE,
    m.UnitTaskStatus.REJECTED,
}
_FINISHED_COMPOSITES = {m.CompositeTaskStatus.DONE, m.CompositeTaskStatus.REJECTED}


@dataclass(frozen=True, slots=True)
class SecretLimits:
    """What one store holds at most (the settings ``secrets_max_*``)."""

    keys_per_task: int = MAX_SECRETS
    bytes_per_task: int = MAX_TASK_BYTES
    """Names and values of one task, in UTF-8."""
    bytes_per_user: int = MAX_USER_BYTES
    """Names and values of all of one user's tasks, in UTF-8 (every replica holds a copy)."""


def _size(values: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in values.items())


@dataclass(slots=True)
class _Entry:
    values: dict[str, str]
    version: int
    owner: str  # the user who sent them ("" for the local user of single-user mode)
    size: int = 0
    stored_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.size = _size(self.values)

    def __repr__(self) -> str:  # never print values, even in a debugger or a traceback
        return f"_Entry(keys={sorted(self.values)}, version={self.version})"


class Relay(Protocol):
    """Carries a store's changes to the other replicas (``services.secret_relay``)."""

    def relay_set(
        self, task_id: UUID, values: Mapping[str, str], version: int, owner: str
    ) -> None: ...

    def relay_drop(self, task_id: UUID, version: int) -> None: ...

    def request_sync(self) -> None: ...


class SecretStore:
    """Secrets by task id (unit or composite), in memory."""

    def __init__(self, ttl: dt.timedelta = SECRET_TTL, limits: SecretLimits | None = None) -> None:
        self._entries: dict[UUID, _Entry] = {}
        self._tombstones: dict[UUID, tuple[int, float]] = {}  # version, when
        self._owned: dict[str, int] = {}  # bytes held per owner
        self._ttl = ttl.total_seconds()
        self.limits = limits or SecretLimits()
        self._arrived: asyncio.Event | None = None
        self.relay: Relay | None = None

    def __repr__(self) -> str:
        return f"SecretStore(tasks={len(self._entries)})"

    def put(self, task_id: UUID, values: Mapping[str, str], *, owner: str = "") -> list[str]:
        """Adds values for a task (here and on the other replicas); returns the names held.

        Raises: InvalidArgument (over a limit; then nothing changes).
        """
        self.get(task_id)  # drops them if expired: expired values are not merged again
        entry = self._entries.get(task_id)
        merged = {**(entry.values if entry else {}), **values}
        limits = self.limits
        if len(merged) > limits.keys_per_task:
            raise InvalidArgument(
                f"at most {limits.keys_per_task} secrets per task", field="secrets"
            )
        size = _size(merged)
        if size > limits.bytes_per_task:
            raise InvalidArgument(
                f"a task's secrets (names and values) hold at most {limits.bytes_per_task}"
                f" bytes; these would hold {size}",
                field="secrets",
            )
        others = self._owned.get(owner, 0) - (entry.size if entry and entry.owner == owner else 0)
        if others + size > limits.bytes_per_user:
            raise InvalidArgument(
                f"your tasks' secrets hold at most {limits.bytes_per_user} bytes in all"
                f" ({others} held for other tasks): clear some first",
                field="secrets",
            )
        version = max(time.time_ns(), entry.version + 1 if entry else 0)
        self.apply_set(task_id, merged, version, owner=owner)
        if self.relay is not None:
            self.relay.relay_set(task_id, merged, version, owner)
        return sorted(merged)

    def drop(self, task_id: UUID) -> None:
        """Forgets a task's secrets, here and on the other replicas."""
        version = time.time_ns()
        self.apply_drop(task_id, version)
        if self.relay is not None:
            self.relay.relay_drop(task_id, version)

    def discard(self, task_id: UUID) -> None:
        """Forgets a task's secrets here only (every replica prunes on its own)."""
        self._remove(task_id)

    def _remove(self, task_id: UUID) -> None:
        entry = self._entries.pop(task_id, None)
        if entry is not None:
            left = self._owned.get(entry.owner, 0) - entry.size
            if left > 0:
                self._owned[entry.owner] = left
            else:
                self._owned.pop(entry.owner, None)

    def apply_set(
        self, task_id: UUID, values: Mapping[str, str], version: int, *, owner: str = ""
    ) -> None:
        """Holds ``values`` unless a newer set or a drop of the task is already known."""
        tombstone = self._tombstones.get(task_id)
        entry = self._entries.get(task_id)
        if (tombstone is not None and tombstone[0] >= version) or (
            entry is not None and entry.version >= version
        ):
            return
        self._remove(task_id)
        held = self._entries[task_id] = _Entry(dict(values), version, owner)
        self._owned[owner] = self._owned.get(owner, 0) + held.size
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def apply_drop(self, task_id: UUID, version: int) -> None:
        entry = self._entries.get(task_id)
        if entry is not None and entry.version <= version:
            self._remove(task_id)
        known = self._tombstones.get(task_id)
        if known is None or known[0] < version:
            self._tombstones[task_id] = (version, time.monotonic())

    def get(self, task_id: UUID) -> dict[str, str]:
        entry = self._entries.get(task_id)
        if entry is None:
            return {}
        if time.monotonic() - entry.stored_at > self._ttl:
            self._remove(task_id)
            return {}
        return dict(entry.values)

    def snapshot(self) -> list[tuple[UUID, dict[str, str], int, str]]:
        """Every task's values with their version and owner, for a replica catching up."""
        return [(t, dict(e.values), e.version, e.owner) for t, e in self._entries.items()]

    def tombstones(self) -> list[tuple[UUID, int]]:
        """The drops still remembered (task, version), for a replica catching up: a copy of
        older values that reaches it late must not revive them there."""
        return [(t, version) for t, (version, _) in self._tombstones.items()]

    def dropped(self, task_id: UUID) -> bool:
        """Whether this replica remembers the task's secrets being dropped."""
        return task_id in self._tombstones

    def held_bytes(self, owner: str) -> int:
        """What one user's tasks hold here, names and values in UTF-8."""
        return self._owned.get(owner, 0)

    async def arrival(self, seconds: float) -> None:
        """Waits until some task's values arrive, or ``seconds`` pass."""
        if self._arrived is None:
            self._arrived = asyncio.Event()
        try:
            await asyncio.wait_for(self._arrived.wait(), seconds)
        except TimeoutError:
            return

    def forget_old_tombstones(self) -> None:
        horizon = time.monotonic() - TOMBSTONE_TTL_S
        for task_id in [t for t, (_, when) in self._tombstones.items() if when < horizon]:
            del self._tombstones[task_id]

    def task_ids(self) -> list[UUID]:
        return list(self._entries)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._entries


def _check(values: Mapping[str, str], limits: SecretLimits) -> dict[str, str]:
    if not values:
        raise InvalidArgument("secrets must not be empty", field="secrets")
    if len(values) > limits.keys_per_task:
        raise InvalidArgument(f"at most {limits.keys_per_task} secrets per task", field="secrets")
    for key, value in values.items():
        if len(key) > MAX_KEY_LENGTH or not _KEY.fullmatch(key):
            # The key is safe to name; the value never is.
            raise InvalidArgument(
                f"secret name {key[:MAX_KEY_LENGTH]!r} must be letters, digits, '_', '.' or '-'"
                " and start with a letter or '_'",
                field="secrets",
            )
        if not value:
            raise InvalidArgument(f"secret {key} has an empty value", field="secrets")
        if "\x00" in value:
            raise InvalidArgument(f"secret {key} must not contain NUL characters", field="secrets")
        if not _ENCODABLE.fullmatch(value):
            raise InvalidArgument(
                f"secret {key} is not valid Unicode text (it holds a lone surrogate)",
                field="secrets",
            )
        if len(value.encode()) > limits.bytes_per_task:
            raise InvalidArgument(
                f"secret {key} is larger than {limits.bytes_per_task} bytes", field="secrets"
            )
    return dict(values)


async def send_secrets(
    *, actor: Principal, store: SecretStore, task_id: UUID, values: Mapping[str, str]
) -> list[str]:
    """Holds secrets for the actor's task; returns the names now held.

    Raises: InvalidArgument, NotFound.
    """
    checked = _check(values, store.limits)
    await task_service.get_task(actor=actor, task_id=task_id)
    keys = store.put(task_id, checked, owner=str(actor.user_id or ""))
    events.publish(events.SecretsArrived(task_id=str(task_id)))
    return keys


async def clear_secrets(*, actor: Principal, store: SecretStore, task_id: UUID) -> None:
    """Raises: NotFound."""
    await task_service.get_task(actor=actor, task_id=task_id)
    store.drop(task_id)


async def _owners(agent_task_id: UUID) -> tuple[UUID | None, UUID | None]:
    """The (unit task, composite task) whose secrets apply to runs of this AgentTask."""
    unit = await m.UnitTask.get_or_none(agent_task_id=agent_task_id).only("id", "composite_task_id")
    if unit is not None:
        return unit.id, unit.composite_task_id
    composite = await m.CompositeTask.get_or_none(planning_task_id=agent_task_id).only("id")
    return None, composite.id if composite else None


async def secrets_for(store: SecretStore, agent_task_id: UUID) -> dict[str, str]:
    """What a run of this AgentTask sees: its composite's secrets, then its own on top."""
    if not store.task_ids():
        return {}
    unit_id, composite_id = await _owners(agent_task_id)
    values = store.get(composite_id) if composite_id else {}
    if unit_id is not None:
        values.update(store.get(unit_id))
    return values


async def job_secrets(
    store: SecretStore, agent_task_id: UUID, *, expects_secrets: bool, wait: float = RELAY_WAIT_S
) -> dict[str, str]:
    """The secrets for a claimed run, for its worker.

    A replica other than the one the client sent them to may not have heard of them yet (the
    relay is a few milliseconds behind, or this replica started later): when the task expects
    secrets and none are here, ask the other replicas and wait up to ``wait`` seconds.
    """
    values = await secrets_for(store, agent_task_id)
    if values or not expects_secrets or store.relay is None:
        return values
    store.relay.request_sync()
    deadline = time.monotonic() + wait
    while (left := deadline - time.monotonic()) > 0:
        await store.arrival(left)
        values = await secrets_for(store, agent_task_id)
        if values:
            break
    return values


async def output_secrets(
    store: SecretStore, agent_task_id: UUID, *, wait: float = RELAY_WAIT_S
) -> dict[str, str]:
    """The secrets a run's output is masked with.

    A worker may send output to a replica that has not heard of the task's secrets yet (it
    claimed the job on another one): when the task expects secrets and this replica has
    neither them nor a record of their drop, they are waited for as ``job_secrets`` does,
    so that output is never stored unmasked for want of a relay message.
    """
    values = await secrets_for(store, agent_task_id)
    if values or store.relay is None:
        return values
    if not await expects_secrets(agent_task_id):
        return values
    unit_id, composite_id = await _owners(agent_task_id)
    if any(store.dropped(owner) for owner in (unit_id, composite_id) if owner is not None):
        return values
    return await job_secrets(store, agent_task_id, expects_secrets=True, wait=wait)


_expects: LRUCache[UUID, bool] = LRUCache(maxsize=10_000)


async def expects_secrets(agent_task_id: UUID) -> bool:
    """Whether the AgentTask's runs wait for secrets: fixed when it is created, so a process
    keeps the answer (asked at every output upload and report of a run; False when the task
    is gone)."""
    known = _expects.get(agent_task_id)
    if known is None:
        agent = await m.AgentTask.get_or_none(id=agent_task_id).only("id", "expects_secrets")
        if agent is None:
            return False
        known = _expects[agent_task_id] = agent.expects_secrets
    return known


async def ready_agent_task_ids(store: SecretStore) -> list[UUID]:
    """AgentTasks whose secrets have arrived, for the claim's "expects secrets" gate."""
    held = store.task_ids()
    if not held:
        return []
    units = await m.UnitTask.filter(id__in=held).values_list("agent_task_id", flat=True)
    nodes = await m.UnitTask.filter(composite_task_id__in=held).values_list(
        "agent_task_id", flat=True
    )
    planners = await m.CompositeTask.filter(id__in=held).values_list("planning_task_id", flat=True)
    return [UUID(str(a)) for a in [*units, *nodes, *planners]]


async def run_ended(store: SecretStore, agent_task_id: UUID) -> None:
    """A unit task's run ended: its own secrets go (a retry waits for them again).

    A composite's secrets stay for its other runs until the composite is finished.
    """
    if not store.task_ids():
        return
    unit_id, _ = await _owners(agent_task_id)
    if unit_id is not None:
        store.drop(unit_id)


async def prune_secrets(store: SecretStore) -> int:
    """Drops secrets of tasks that are gone or finished, and expired ones. Returns the count."""
    store.forget_old_tombstones()
    held = store.task_ids()
    if not held:
        return 0
    live_units = (
        await m.UnitTask.filter(id__in=held)
        .exclude(status__in=list(_FINISHED_UNITS))
        .values_list("id", flat=True)
    )
    live_composites = (
        await m.CompositeTask.filter(id__in=held)
        .exclude(status__in=list(_FINISHED_COMPOSITES))
        .values_list("id", flat=True)
    )
    live = {UUID(str(i)) for i in [*live_units, *live_composites]}
    dropped = 0
    for task_id in held:
        if task_id not in live or not store.get(task_id):
            store.discard(task_id)
            dropped += 1
    return dropped
