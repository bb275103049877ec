"""Relays secret-store changes between the replicas of one PostgreSQL deployment.

Secrets live in the server processes' memory only (``services.secrets``), yet a client may
send them to replica A while the worker that runs the task talks to replica B. So every
change A's store makes (a task's values set, or dropped) goes to the other replicas through
the event bus (PostgreSQL NOTIFY), and B's store applies it to its own copy.

What crosses the database server is sealed: AES-256-GCM under a key derived (HKDF-SHA256)
from ``DELIDEV_JWT_SECRET``, which every replica shares and the database never sees. Nothing
is stored: a NOTIFY payload is gone once delivered. The seal also authenticates, so a
database user cannot inject values into a store. A message larger than one NOTIFY payload is
split into parts that the receivers put back together.

A replica that may have missed messages (it has just started, or its listener reconnected)
asks the others to send what they hold, the drops they remember and the values they keep
for masking only (``request_sync``): a running run may send its output to it. Versions in
the store make the duplicates harmless. A drop says whether the values are kept for masking
(Clear, while a run may have them) or forgotten (the run ended); a release forgets the
values kept for masking once no run that may have them is open.

Replays: whoever can read the channel can send a captured message again, and once the
store's tombstone for a drop is gone (``TOMBSTONE_TTL_S``) a replayed older "set" would bring
the dropped values back. So each sealed message carries its sender, a sequence number of that
sender and the time it was sealed: a message older than ``max_age`` (or as far in the
future) is refused, and so is one whose sequence number that sender already used (a sliding
window of ``WINDOW`` numbers, as in IPsec's anti-replay check). ``max_age`` stays well under
the tombstones' life, so any message still accepted cannot cross a drop. Drops are exempt:
their version keeps them from removing anything set after them.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from delidev import events
from delidev.services.secrets import TOMBSTONE_TTL_S, SecretStore

log = logging.getLogger(__name__)

PART_CHARS = 6000  # base64 characters per NOTIFY payload, well under its 8000-byte limit
PARTIAL_TTL_S = 60.0  # parts of a message that never completes are forgotten after this
_AAD = b"delidev secrets relay v1"
_NONCE_BYTES = 12
MAX_AGE_S = 120.0  # the default of DELIDEV_SECRETS_RELAY_MAX_AGE_MS
WINDOW = 1024  # sequence numbers of one sender remembered below its highest


def relay_key(secret: str) -> bytes:
    """The relay's AES key, derived from the deployment's shared secret (key separation:
    the JWT signing key itself is never used to encrypt)."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_AAD).derive(secret.encode())


@dataclass(slots=True)
class _Partial:
    parts: list[str | None]
    started: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Seen:
    """The sequence numbers of one sender seen lately: the highest, and a bitmap of the
    ``WINDOW`` numbers below it (bit i: ``highest - 1 - i``)."""

    highest: int
    below: int = 0
    heard: float = field(default_factory=time.monotonic)

    def first_time(self, seq: int) -> bool:
        """Records ``seq``; False when it was seen, or is too far behind to tell."""
        self.heard = time.monotonic()
        if seq > self.highest:
            shift = seq - self.highest
            self.below = (
                ((self.below << shift) | (1 << (shift - 1))) & ((1 << WINDOW) - 1)
                if shift <= WINDOW
                else 0
            )
            self.highest = seq
            return True
        bit = self.highest - seq - 1
        if bit < 0 or bit >= WINDOW or (self.below >> bit) & 1:
            return False
        self.below |= 1 << bit
        return True


class SecretRelay:
    """Links one replica's ``SecretStore`` to the others' through ``bus``."""

    def __init__(
        self, store: SecretStore, bus: events.EventBus, key: bytes, *, max_age: float = MAX_AGE_S
    ) -> None:
        if not 0 < max_age <= TOMBSTONE_TTL_S / 2:
            raise ValueError(f"max_age must be positive and at most {TOMBSTONE_TTL_S / 2} s")
        self._store = store
        self._bus = bus
        self._aead = AESGCM(key)
        self.id = uuid.uuid4().hex[:12]
        self._partial: dict[tuple[str, str], _Partial] = {}
        self._sequence = itertools.count()
        self._max_age_ns = int(max_age * 1e9)
        self._seen: dict[str, _Seen] = {}
        self.refused = 0  # messages that did not authenticate (another key, or forged)
        self.replayed = 0  # authentic messages refused as too old or seen before
        store.relay = self
        bus.subscribe(self.on_event)

    def __repr__(self) -> str:
        return f"SecretRelay(id={self.id!r})"

    # Sending ----------------------------------------------------------------------------

    def relay_set(
        self,
        task_id: UUID,
        values: Mapping[str, str],
        version: int,
        owner: str,
        *,
        keep_replaced: bool = True,
    ) -> None:
        self._send(
            {
                "op": "set",
                "task": str(task_id),
                "values": dict(values),
                "v": version,
                "owner": owner,
                "keep": keep_replaced,
            }
        )

    def relay_drop(self, task_id: UUID, version: int, *, release: bool = False) -> None:
        self._send({"op": "drop", "task": str(task_id), "v": version, "release": release})

    def relay_release(self, task_id: UUID, version: int) -> None:
        self._send({"op": "release", "task": str(task_id), "v": version})

    def _relay_kept(self, task_id: UUID, values: list[str], version: int, owner: str) -> None:
        """Kept values travel only in answer to a sync (a store relays its changes through
        ``Relay``'s methods; the kept values come from those changes on every replica)."""
        self._send(
            {"op": "kept", "task": str(task_id), "values": values, "v": version, "owner": owner}
        )

    def request_sync(self) -> None:
        """Asks every other replica to send all it holds."""
        self._send({"op": "sync"})

    def _send(self, message: dict[str, object]) -> None:
        message |= {"from": self.id, "seq": next(self._sequence), "at": time.time_ns()}
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, json.dumps(message).encode(), _AAD)
        text = base64.b64encode(sealed).decode()
        parts = [text[i : i + PART_CHARS] for i in range(0, len(text), PART_CHARS)]
        message_id = uuid.uuid4().hex[:12]
        for index, part in enumerate(parts):
            self._bus.publish(
                events.SecretsRelayed(
                    sender=self.id, message=message_id, part=index, parts=len(parts), data=part
                )
            )

    # Receiving --------------------------------------------------------------------------

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Resync):
            self.request_sync()  # messages may have been lost meanwhile
            return
        if not isinstance(event, events.SecretsRelayed) or event.sender == self.id:
            return
        text = self._assemble(event)
        if text is not None:
            self._open(text)

    def _assemble(self, event: events.SecretsRelayed) -> str | None:
        if event.parts == 1:
            return event.data
        if not 0 <= event.part < event.parts <= 10_000:
            return None
        now = time.monotonic()
        for stale in [k for k, p in self._partial.items() if now - p.started > PARTIAL_TTL_S]:
            del self._partial[stale]
        key = (event.sender, event.message)
        partial = self._partial.setdefault(key, _Partial([None] * event.parts))
        if len(partial.parts) != event.parts:
            del self._partial[key]
            return None
        partial.parts[event.part] = event.data
        if any(p is None for p in partial.parts):
            return None
        del self._partial[key]
        return "".join(p for p in partial.parts if p is not None)

    def _open(self, text: str) -> None:
        try:
            sealed = base64.b64decode(text, validate=True)
            plain = self._aead.decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _AAD)
            message = json.loads(plain)
            # A drop or a release is applied whatever its age: its version keeps it from
            # removing anything set or kept after it, so a late or replayed one is harmless
            # (and a late one is needed).
            if message.get("op") in ("drop", "release") or self._fresh(message):
                self._apply(message)
        except (InvalidTag, binascii.Error, ValueError, KeyError, TypeError):
            # Never log the content: it may hold values.
            self.refused += 1
            log.warning(
                "ignored a relayed secrets message that does not authenticate or parse"
                " (do all replicas share DELIDEV_JWT_SECRET?)"
            )

    def _fresh(self, message: dict[str, object]) -> bool:
        """Whether an authentic message is new: sealed lately, and its sender's sequence
        number not used before. Refusals are counted and logged (without content)."""
        sender, seq, sealed_at = str(message["from"]), int(str(message["seq"])), message["at"]
        if sender == self.id:
            return False  # our own, sent back
        now = time.time_ns()
        horizon = time.monotonic() - 2 * self._max_age_ns / 1e9
        for gone in [s for s, seen in self._seen.items() if seen.heard < horizon]:
            del self._seen[gone]  # whatever it sent before is too old by now
        if not isinstance(sealed_at, int) or abs(now - sealed_at) > self._max_age_ns:
            reason = "too old (or its sender's clock is off)"
        else:
            seen = self._seen.get(sender)
            if seen is None:
                self._seen[sender] = _Seen(highest=seq)
                return True
            if seen.first_time(seq):
                return True
            reason = "a replay of one already received"
        self.replayed += 1
        log.warning("ignored a relayed secrets message: %s", reason)
        return False

    def _apply(self, message: dict[str, object]) -> None:
        op = message["op"]
        if op == "sync":
            for task_id, values, version, owner in self._store.snapshot():
                self.relay_set(task_id, values, version, owner)
            for task_id, version in self._store.tombstones():
                self.relay_drop(task_id, version)
            for task_id, kept, version, owner in self._store.kept_snapshot():
                self._relay_kept(task_id, kept, version, owner)
            return
        task_id = UUID(str(message["task"]))
        version = int(str(message["v"]))
        if op == "set":
            held = message["values"]
            if not isinstance(held, dict):
                raise TypeError("values")
            self._store.apply_set(
                task_id,
                {str(k): str(v) for k, v in held.items()},
                version,
                owner=str(message.get("owner", "")),
                keep_replaced=message.get("keep") is not False,
            )
            if task_id in self._store:
                # Held here now: jobs that wait for them may be claimable from this replica.
                # Its wait reconciler and watching workers hear it (here only: the sender's
                # own SecretsArrived may have come before the values did).
                self._bus.deliver(events.SecretsArrived(task_id=str(task_id)))
        elif op == "drop":
            self._store.apply_drop(task_id, version, release=message.get("release") is True)
        elif op == "release":
            self._store.apply_release(task_id, version)
        elif op == "kept":
            listed = message["values"]
            if not isinstance(listed, list):
                raise TypeError("values")
            self._store.apply_kept(
                task_id, [str(v) for v in listed], version, owner=str(message.get("owner", ""))
            )
