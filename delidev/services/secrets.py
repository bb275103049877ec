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

Worker output is masked with the values (and their base64 forms) before it is stored.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from delidev import events
from delidev import models as m
from delidev.auth.principal import Principal
from delidev.errors import InvalidArgument
from delidev.services import tasks as task_service

MAX_SECRETS = 64
MAX_KEY_LENGTH = 128
MAX_VALUE_BYTES = 64 * 1024
SECRET_TTL = dt.timedelta(hours=24)
MASK = "********"
# Shorter values are not masked: masking "a" or "42" would mangle ordinary output and
# reveal the value by where the masks land.
MIN_MASKED_LENGTH = 4
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
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


@dataclass(slots=True)
class _Entry:
    values: dict[str, str]
    version: int
    stored_at: float = field(default_factory=time.monotonic)

    def __repr__(self) -> str:  # never print values, even in a debugger or a traceback
        return f"_Entry(keys={sorted(self.values)}, version={self.version})"


class Relay(Protocol):
    """Carries a store's changes to the other replicas (``services.secret_relay``)."""

    def relay_set(self, task_id: UUID, values: Mapping[str, str], version: int) -> None: ...

    def relay_drop(self, task_id: UUID, version: int) -> None: ...

    def request_sync(self) -> None: ...


class SecretStore:
    """Secrets by task id (unit or composite), in memory."""

    def __init__(self, ttl: dt.timedelta = SECRET_TTL) -> None:
        self._entries: dict[UUID, _Entry] = {}
        self._tombstones: dict[UUID, tuple[int, float]] = {}  # version, when
        self._ttl = ttl.total_seconds()
        self._arrived: asyncio.Event | None = None
        self.relay: Relay | None = None

    def __repr__(self) -> str:
        return f"SecretStore(tasks={len(self._entries)})"

    def put(self, task_id: UUID, values: Mapping[str, str]) -> list[str]:
        """Adds values for a task (here and on the other replicas); returns the names held."""
        entry = self._entries.get(task_id)
        merged = {**(entry.values if entry else {}), **values}
        if len(merged) > MAX_SECRETS:
            raise InvalidArgument(f"at most {MAX_SECRETS} secrets per task", field="secrets")
        version = max(time.time_ns(), entry.version + 1 if entry else 0)
        self.apply_set(task_id, merged, version)
        if self.relay is not None:
            self.relay.relay_set(task_id, merged, version)
        return sorted(merged)

    def drop(self, task_id: UUID) -> None:
        """Forgets a task's secrets, here and on the other replicas."""
        version = time.time_ns()
        self.apply_drop(task_id, version)
        if self.relay is not None:
            self.relay.relay_drop(task_id, version)

    def discard(self, task_id: UUID) -> None:
        """Forgets a task's secrets here only (every replica prunes on its own)."""
        self._entries.pop(task_id, None)

    def apply_set(self, task_id: UUID, values: Mapping[str, str], version: int) -> None:
        """Holds ``values`` unless a newer set or a drop of the task is already known."""
        tombstone = self._tombstones.get(task_id)
        entry = self._entries.get(task_id)
        if (tombstone is not None and tombstone[0] >= version) or (
            entry is not None and entry.version >= version
        ):
            return
        self._entries[task_id] = _Entry(dict(values), version)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def apply_drop(self, task_id: UUID, version: int) -> None:
        entry = self._entries.get(task_id)
        if entry is not None and entry.version <= version:
            del self._entries[task_id]
        known = self._tombstones.get(task_id)
        if known is None or known[0] < version:
            self._tombstones[task_id] = (version, time.monotonic())

    def get(self, task_id: UUID) -> dict[str, str]:
        entry = self._entries.get(task_id)
        if entry is None:
            return {}
        if time.monotonic() - entry.stored_at > self._ttl:
            del self._entries[task_id]
            return {}
        return dict(entry.values)

    def snapshot(self) -> list[tuple[UUID, dict[str, str], int]]:
        """Every task's values with their version, for a replica that asks to catch up."""
        return [(t, dict(e.values), e.version) for t, e in self._entries.items()]

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


def _check(values: Mapping[str, str]) -> dict[str, str]:
    if not values:
        raise InvalidArgument("secrets must not be empty", field="secrets")
    if len(values) > MAX_SECRETS:
        raise InvalidArgument(f"at most {MAX_SECRETS} secrets per task", field="secrets")
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
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise InvalidArgument(
                f"secret {key} is larger than {MAX_VALUE_BYTES} bytes", field="secrets"
            )
    return dict(values)


async def send_secrets(
    *, actor: Principal, store: SecretStore, task_id: UUID, values: Mapping[str, str]
) -> list[str]:
    """Holds secrets for the actor's task; returns the names now held.

    Raises: InvalidArgument, NotFound.
    """
    checked = _check(values)
    await task_service.get_task(actor=actor, task_id=task_id)
    keys = store.put(task_id, checked)
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


def _forms(value: str) -> list[str]:
    raw = value.encode()
    forms = {value, base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()}
    forms |= {f.rstrip("=") for f in list(forms)}
    return sorted((f for f in forms if len(f) >= MIN_MASKED_LENGTH), key=len, reverse=True)


def mask(text: str, values: Mapping[str, str]) -> str:
    """The text with every secret value (plain or base64) replaced by a mask."""
    if not values or not text:
        return text
    for value in values.values():
        if len(value) < MIN_MASKED_LENGTH:
            continue
        for form in _forms(value):
            if form in text:
                text = text.replace(form, MASK)
    return text


def mask_seam(before: str, after: str, values: Mapping[str, str]) -> tuple[str, str]:
    """Masks the secret values (plain or base64) that straddle two consecutive pieces of
    output, each masked on its own already. Lengths stay as they are (the first piece sits
    at fixed offsets): every character of a straddling value becomes ``*``."""
    if not values or not before or not after:
        return before, after
    for value in values.values():
        if len(value) < MIN_MASKED_LENGTH:
            continue
        for form in _forms(value):
            reach = len(form) - 1
            while True:
                head = before[-reach:]
                window = head + after[:reach]
                start = window.find(form)
                while start != -1 and not start < len(head) < start + len(form):
                    start = window.find(form, start + 1)
                if start == -1:
                    break
                in_before = len(head) - start
                in_after = len(form) - in_before
                before = before[: len(before) - in_before] + "*" * in_before
                after = "*" * in_after + after[in_after:]
    return before, after
