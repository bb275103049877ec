"""Per-task secrets: held in the server processes' memory only, relayed from a task's owner to
the worker that holds the task's current lease.

Values never reach the database, a log line, an error message or a metric. A client sends
them for a unit task (that task's runs) or for a composite task (its planning run and every
node's runs). They are no longer handed out after Clear, when a unit task's run ends, when
the task is gone or finished (the periodic prune), and after ``SECRET_TTL`` at the latest.
A job whose task expects secrets is not handed out until they are here (see
``ready_agent_task_ids``).

With several replicas, each keeps a copy: ``services.secret_relay`` carries every change,
sealed, to the other replicas' stores. Changes carry versions so that a late copy never
undoes a newer change: a drop leaves a tombstone that an older set cannot cross.

What they may hold is bounded (``SecretLimits``: names, and bytes per task and per user);
values never hold NUL.

Everything a worker sends is masked with the values (and their encoded forms) before it is
stored: ``services.secret_masking`` (``mask``, ``OutputMasker``), re-exported here. Masking
outlives handing out: what Clear, the TTL or a new Send takes away is kept apart, for masking
only, while a run that may have been given it is open (a run lasts up to
``max_run_seconds``, longer than the TTL), then forgotten (``run_ended``, ``prune_secrets``).
Values shorter than ``MIN_MASKED_LENGTH`` cannot be masked, so they are refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from uuid import UUID

from cachetools import LRUCache
from tortoise.expressions import Q

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
    "output_masker",
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


def _bytes(values: Iterable[str]) -> int:
    return sum(len(v.encode()) for v in values)


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


@dataclass(slots=True)
class _Kept:
    """Values no longer handed out (cleared, expired or replaced) that a run still open may
    have been given: its output is masked with them until it ends."""

    values: set[str]
    version: int  # of the latest change that put values here
    owner: str

    @property
    def size(self) -> int:
        return _bytes(self.values)

    def __repr__(self) -> str:  # never print values
        return f"_Kept(count={len(self.values)}, version={self.version})"


class Relay(Protocol):
    """Carries a store's changes to the other replicas (``services.secret_relay``)."""

    def relay_set(
        self,
        task_id: UUID,
        values: Mapping[str, str],
        version: int,
        owner: str,
        *,
        keep_replaced: bool = True,
    ) -> None: ...

    def relay_drop(self, task_id: UUID, version: int, *, release: bool = False) -> None: ...

    def relay_release(self, task_id: UUID, version: int) -> None: ...

    def request_sync(self) -> None: ...


# Maskers kept per store, by the characters they hold (``OutputMasker.weight``): a few
# adversarial 64 KiB sets, or thousands of ordinary ones.
MASKER_CACHE_CHARS = 64 * 1024 * 1024
_MaskerKey = tuple[UUID | None, UUID | None]


class SecretStore:
    """Secrets by task id (unit or composite), in memory.

    Each task has the values handed out (``get``) and, apart, the values kept for masking
    only (``kept``): what was cleared, expired or replaced while a run that may have been
    given it could still be open. Masking uses both (``masking_values``); the kept ones go
    when the run ends (``release``, or the periodic prune once no run is open).
    """

    def __init__(self, ttl: dt.timedelta = SECRET_TTL, limits: SecretLimits | None = None) -> None:
        self._entries: dict[UUID, _Entry] = {}
        self._kept: dict[UUID, _Kept] = {}
        self._tombstones: dict[UUID, tuple[int, float]] = {}  # version, when
        # The latest release of a task's kept values (version, when): a copy of values kept
        # before it that reaches this replica late (a catching-up answer) must not revive
        # them.
        self._released: dict[UUID, tuple[int, float]] = {}
        self._owned: dict[str, int] = {}  # bytes held per owner (handed out and kept)
        self._ttl = ttl.total_seconds()
        self.limits = limits or SecretLimits()
        self._arrived: asyncio.Event | None = None
        self.relay: Relay | None = None
        self._stamps: dict[UUID, int] = {}  # changes to a task's masking values
        self._counter = itertools.count(1)
        self._maskers: LRUCache[_MaskerKey, tuple[tuple[int, int], OutputMasker]] = LRUCache(
            maxsize=MASKER_CACHE_CHARS, getsizeof=lambda held: held[1].weight
        )

    def __repr__(self) -> str:
        return f"SecretStore(tasks={len(self._entries)}, kept={len(self._kept)})"

    def put(
        self,
        task_id: UUID,
        values: Mapping[str, str],
        *,
        owner: str = "",
        keep_replaced: bool = True,
    ) -> list[str]:
        """Adds values for a task (here and on the other replicas); returns the names held.

        ``keep_replaced``: a run that may have the values replaced could be open, so they are
        kept for masking (``release`` forgets them when none is). Values kept for a run's
        masking count towards the task's limits until they are released.
        Raises: InvalidArgument (over a limit; then nothing changes).
        """
        self.get(task_id)  # drops them if expired: expired values are not merged again
        entry = self._entries.get(task_id)
        kept = self._kept.get(task_id)
        merged = {**(entry.values if entry else {}), **values}
        # Values kept already count; those this Send replaces do not (it would be refused
        # for replacing a value): when a run may have them they are kept afterwards, and
        # the task may then hold more than its limits by them until that run ends.
        extra = (kept.values if kept else set()) - set(merged.values())
        limits = self.limits
        running = " (with the values kept to mask a run's output until it ends)" if extra else ""
        if len(merged) + len(extra) > limits.keys_per_task:
            raise InvalidArgument(
                f"at most {limits.keys_per_task} secrets per task{running}", field="secrets"
            )
        size = _size(merged) + _bytes(extra)
        if size > limits.bytes_per_task:
            raise InvalidArgument(
                f"a task's secrets (names and values) hold at most {limits.bytes_per_task}"
                f" bytes; these would hold {size}{running}",
                field="secrets",
            )
        others = self._owned.get(owner, 0)
        others -= entry.size if entry and entry.owner == owner else 0
        others -= kept.size if kept and kept.owner == owner else 0
        if others + size > limits.bytes_per_user:
            raise InvalidArgument(
                f"your tasks' secrets hold at most {limits.bytes_per_user} bytes in all"
                f" ({others} held for other tasks): clear some first",
                field="secrets",
            )
        version = max(time.time_ns(), entry.version + 1 if entry else 0)
        self.apply_set(task_id, merged, version, owner=owner, keep_replaced=keep_replaced)
        if self.relay is not None:
            self.relay.relay_set(task_id, merged, version, owner, keep_replaced=keep_replaced)
        return sorted(merged)

    def drop(self, task_id: UUID, *, release: bool = False) -> None:
        """Stops handing a task's secrets out, here and on the other replicas. They are kept
        to mask output until the runs that may have them end, unless ``release``: no run
        that was given them is open (its end is the caller's)."""
        version = time.time_ns()
        self.apply_drop(task_id, version, release=release)
        if self.relay is not None:
            self.relay.relay_drop(task_id, version, release=release)

    def release(self, task_id: UUID) -> None:
        """Forgets the values kept for masking only (no run that may have them is open),
        here and on the other replicas."""
        version = time.time_ns()
        self.apply_release(task_id, version)
        if self.relay is not None:
            self.relay.relay_release(task_id, version)

    def retire(self, task_id: UUID) -> None:
        """Stops handing a task's secrets out here only, keeping them for masking (every
        replica prunes on its own)."""
        self._remove(task_id, keep=time.time_ns())

    def discard(self, task_id: UUID) -> None:
        """Forgets all of a task's secrets here only (every replica prunes on its own)."""
        self._remove(task_id, keep=None)
        self._forget_kept(task_id)

    def _remove(self, task_id: UUID, *, keep: int | None) -> None:
        """Stops handing the values out; ``keep``: the version under which they are kept
        for masking (None: forgotten)."""
        entry = self._entries.pop(task_id, None)
        if entry is None:
            return
        self._owe(entry.owner, -entry.size)
        if keep is not None:
            self.apply_kept(task_id, entry.values.values(), keep, owner=entry.owner)
        self._changed(task_id)

    def _owe(self, owner: str, size: int) -> None:
        left = self._owned.get(owner, 0) + size
        if left > 0:
            self._owned[owner] = left
        else:
            self._owned.pop(owner, None)

    def _forget_kept(self, task_id: UUID) -> None:
        kept = self._kept.pop(task_id, None)
        if kept is not None:
            self._owe(kept.owner, -kept.size)
            self._changed(task_id)

    def _changed(self, task_id: UUID) -> None:
        """A task's masking values changed: its maskers are made again."""
        if task_id in self._entries or task_id in self._kept:
            self._stamps[task_id] = next(self._counter)
        else:
            self._stamps.pop(task_id, None)
        for key in [k for k in self._maskers if task_id in k]:
            del self._maskers[key]

    def apply_set(
        self,
        task_id: UUID,
        values: Mapping[str, str],
        version: int,
        *,
        owner: str = "",
        keep_replaced: bool = True,
    ) -> None:
        """Holds ``values`` unless a newer set or a drop of the task is already known."""
        tombstone = self._tombstones.get(task_id)
        entry = self._entries.get(task_id)
        if (tombstone is not None and tombstone[0] >= version) or (
            entry is not None and entry.version >= version
        ):
            return
        self._remove(task_id, keep=None)
        if entry is not None and keep_replaced:
            replaced = set(entry.values.values()) - set(values.values())
            self.apply_kept(task_id, replaced, version, owner=entry.owner)
        held = self._entries[task_id] = _Entry(dict(values), version, owner)
        self._owe(owner, held.size)
        kept = self._kept.get(task_id)
        if kept is not None and kept.values & set(values.values()):
            # Handed out again: no longer kept apart.
            self._owe(kept.owner, -kept.size)
            kept.values -= set(values.values())
            self._owe(kept.owner, kept.size)
            if not kept.values:
                del self._kept[task_id]
        self._changed(task_id)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = None

    def apply_drop(self, task_id: UUID, version: int, *, release: bool = False) -> None:
        entry = self._entries.get(task_id)
        if entry is not None and entry.version <= version:
            self._remove(task_id, keep=None if release else version)
        if release:
            self.apply_release(task_id, version)
        known = self._tombstones.get(task_id)
        if known is None or known[0] < version:
            self._tombstones[task_id] = (version, time.monotonic())

    def apply_kept(
        self, task_id: UUID, values: Iterable[str], version: int, *, owner: str = ""
    ) -> None:
        """Keeps ``values`` to mask a task's output (not handed out), unless they were kept
        under a version the task's latest release already covers."""
        released = self._released.get(task_id)
        if released is not None and released[0] >= version:
            return
        handed = set(self._entries[task_id].values.values()) if task_id in self._entries else ()
        adding = {v for v in values if v not in handed}
        kept = self._kept.get(task_id)
        if not adding - (kept.values if kept else set()):
            if kept is not None:
                kept.version = max(kept.version, version)
            return
        if kept is None:
            kept = self._kept[task_id] = _Kept(set(), version, owner)
        self._owe(kept.owner, -kept.size)
        kept.values |= adding
        kept.version = max(kept.version, version)
        self._owe(kept.owner, kept.size)
        self._changed(task_id)

    def apply_release(self, task_id: UUID, version: int) -> None:
        """Forgets the values kept for masking, unless some were kept after ``version``."""
        known = self._released.get(task_id)
        if known is None or known[0] < version:
            self._released[task_id] = (version, time.monotonic())
        kept = self._kept.get(task_id)
        if kept is not None and kept.version <= version:
            self._forget_kept(task_id)

    def get(self, task_id: UUID) -> dict[str, str]:
        """The values handed out for a task (expired ones are only kept for masking)."""
        entry = self._entries.get(task_id)
        if entry is None:
            return {}
        if time.monotonic() - entry.stored_at > self._ttl:
            self._remove(task_id, keep=max(entry.version, time.time_ns()))
            return {}
        return dict(entry.values)

    def masking_values(self, task_id: UUID) -> set[str]:
        """What a task's runs' output is masked with: the values handed out and the kept."""
        self.get(task_id)
        entry, kept = self._entries.get(task_id), self._kept.get(task_id)
        return (set(entry.values.values()) if entry else set()) | (kept.values if kept else set())

    def stamp(self, task_id: UUID | None) -> int:
        """Changes whenever the task's masking values change (0: none)."""
        return 0 if task_id is None else self._stamps.get(task_id, 0)

    def cached_masker(self, key: _MaskerKey, stamps: tuple[int, int]) -> OutputMasker | None:
        held = self._maskers.get(key)
        return held[1] if held is not None and held[0] == stamps else None

    def cache_masker(self, key: _MaskerKey, stamps: tuple[int, int], masker: OutputMasker) -> None:
        if stamps != (self.stamp(key[0]), self.stamp(key[1])):
            return  # the values changed while it was made
        with contextlib.suppress(ValueError):  # larger than the whole cache: made per call
            self._maskers[key] = (stamps, masker)

    def snapshot(self) -> list[tuple[UUID, dict[str, str], int, str]]:
        """Every task's values with their version and owner, for a replica catching up."""
        return [(t, dict(e.values), e.version, e.owner) for t, e in self._entries.items()]

    def kept_snapshot(self) -> list[tuple[UUID, list[str], int, str]]:
        """Every task's values kept for masking, for a replica catching up: a run that
        sends its output there is masked with them too."""
        return [(t, sorted(k.values), k.version, k.owner) for t, k in self._kept.items()]

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
        for task_id in [t for t, (_, when) in self._released.items() if when < horizon]:
            del self._released[task_id]

    def task_ids(self) -> list[UUID]:
        """The tasks whose values are handed out."""
        return list(self._entries)

    def kept_task_ids(self) -> list[UUID]:
        """The tasks with values kept for masking only."""
        return list(self._kept)

    def masks_output(self) -> bool:
        """Whether any task's output is masked here (values handed out or kept)."""
        return bool(self._entries or self._kept)

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
        if len(value) < MIN_MASKED_LENGTH:
            # It could not be masked (see MIN_MASKED_LENGTH): output would show it.
            raise InvalidArgument(
                f"secret {key} is shorter than {MIN_MASKED_LENGTH} characters: so short a"
                " value cannot be masked in the output",
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

    Raises: InvalidArgument (a value shorter than ``MIN_MASKED_LENGTH``, a bad name, over a
    limit), NotFound.
    """
    checked = _check(values, store.limits)
    await task_service.get_task(actor=actor, task_id=task_id)
    store.get(task_id)  # expired values are kept for masking only from here on
    if task_id in store.kept_task_ids() and not await _runs_open([task_id]):
        # Kept for a run that has ended: they no longer count. (Kept values are not handed
        # out, so a run claimed meanwhile cannot have them.)
        store.release(task_id)
    # What is replaced is kept first, and released only if no run is open *after* the new
    # values are in place: a run claimed before then may hold the old ones (asking first
    # would race with such a claim); one claimed after gets the new ones.
    keys = store.put(task_id, checked, owner=str(actor.user_id or ""), keep_replaced=True)
    if task_id in store.kept_task_ids() and not await _runs_open([task_id]):
        store.release(task_id)
    events.publish(events.SecretsArrived(task_id=str(task_id)))
    return keys


async def clear_secrets(*, actor: Principal, store: SecretStore, task_id: UUID) -> None:
    """Stops handing the task's secrets out; a run that may have them keeps its output
    masked with them until it ends.

    Raises: NotFound.
    """
    await task_service.get_task(actor=actor, task_id=task_id)
    # Kept first, released only if no run is open once they are no longer handed out:
    # asking first would race with a claim that hands them out meanwhile.
    store.drop(task_id)
    if not await _runs_open([task_id]):
        store.release(task_id)


async def _runs_open(task_ids: Iterable[UUID]) -> set[UUID]:
    """Those of these tasks (unit or composite) that a running run sees the secrets of: it
    was, or may yet be, handed them. (A queued run is handed what is held when it starts.)"""
    ids = set(task_ids)
    if not ids:
        return set()
    sees: dict[UUID, set[UUID]] = {}  # AgentTask -> the tasks whose secrets its runs see
    for agent, unit, composite in await m.UnitTask.filter(
        Q(id__in=ids) | Q(composite_task_id__in=ids)
    ).values_list("agent_task_id", "id", "composite_task_id"):
        seen = {_uuid(unit)} | ({_uuid(composite)} if composite is not None else set())
        sees.setdefault(_uuid(agent), set()).update(seen & ids)
    for agent, composite in await m.CompositeTask.filter(id__in=ids).values_list(
        "planning_task_id", "id"
    ):
        if agent is not None:
            sees.setdefault(_uuid(agent), set()).add(_uuid(composite))
    running = await m.AgentSession.filter(
        agent_task_id__in=list(sees), status=m.AgentSessionStatus.RUNNING
    ).values_list("agent_task_id", flat=True)
    return set().union(*(sees[_uuid(a)] for a in running))


def _uuid(value: object) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


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


async def output_masker(
    store: SecretStore, agent_task_id: UUID, *, wait: float = RELAY_WAIT_S
) -> OutputMasker | None:
    """What a run's output (and every text its worker sends) is masked with; None: nothing.

    The values handed out to its runs and those kept for masking after a Clear, the TTL or
    a replacement (see ``SecretStore``). One masker per change of the values, made in a
    thread when large (``OutputMasker.build``), kept by the store.

    A worker may send output to a replica that has not heard of the task's secrets yet (it
    claimed the job on another one): when the task expects secrets and this replica has
    neither them nor a record of their drop, they are waited for as ``job_secrets`` does,
    so that output is never stored unmasked for want of a relay message.
    """
    if not store.masks_output() and (
        store.relay is None or not await expects_secrets(agent_task_id)
    ):
        return None  # the hot path of most runs: no query
    unit_id, composite_id = await _owners(agent_task_id)
    owners = [t for t in (unit_id, composite_id) if t is not None]
    values = set().union(*(store.masking_values(t) for t in owners))
    if (
        not values
        and store.relay is not None
        and await expects_secrets(agent_task_id)
        and not any(store.dropped(t) for t in owners)
    ):
        await job_secrets(store, agent_task_id, expects_secrets=True, wait=wait)
        values = set().union(*(store.masking_values(t) for t in owners))
    if not values:
        return None
    key, stamps = (unit_id, composite_id), (store.stamp(unit_id), store.stamp(composite_id))
    masker = store.cached_masker(key, stamps)
    if masker is None:
        masker = await OutputMasker.build(values)
        store.cache_masker(key, stamps, masker)
    return masker


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
    """A run ended: a unit task's own secrets go, also those kept for its masking (a retry
    waits for them again); a composite's stay for its other runs until it is finished, and
    what is kept of them for masking goes once none of its runs is open.
    """
    if not store.masks_output():
        return
    unit_id, composite_id = await _owners(agent_task_id)
    if unit_id is not None:
        store.drop(unit_id, release=True)
    if composite_id in store.kept_task_ids() and not await _runs_open([composite_id]):
        store.release(composite_id)


async def prune_secrets(store: SecretStore) -> int:
    """Stops handing out the secrets of tasks that are gone or finished, and expired ones
    (returns their count); forgets the values kept for masking once no run that may have
    them is open (each replica on its own)."""
    store.forget_old_tombstones()
    held = store.task_ids()
    dropped = 0
    if held:
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
        for task_id in held:
            if task_id not in live:
                store.retire(task_id)
                dropped += 1
            elif not store.get(task_id):  # expired (kept for masking only)
                dropped += 1
    kept = store.kept_task_ids()
    if kept:
        running = await _runs_open(kept)
        for task_id in kept:
            if task_id not in running:
                store.apply_release(task_id, time.time_ns())
    return dropped
