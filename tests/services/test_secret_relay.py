"""Secrets relayed between replicas: every store holds the same values, sealed on the way."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from delidev import db, events
from delidev.auth.principal import LOCAL_USER
from delidev.services import secret_relay, secrets, tasks
from delidev.settings import Settings
from tests.factories import make_group, make_repository, make_workspace
from tests.waiting import until

KEY = secret_relay.relay_key("x" * 48)
VALUE = "sk-relay-5e0b7c9d13a24f68"


def test_versions_keep_a_late_copy_from_undoing_a_newer_change() -> None:
    store = secrets.SecretStore()
    task = uuid.uuid4()
    store.apply_set(task, {"K": "new"}, version=20)
    store.apply_set(task, {"K": "old"}, version=10)  # arrives late
    assert store.get(task) == {"K": "new"}
    store.apply_drop(task, version=30)
    store.apply_set(task, {"K": "older still"}, version=25)  # a sync reply sent before the drop
    assert store.get(task) == {}
    store.apply_set(task, {"K": "sent again"}, version=40)  # the client sends them again
    assert store.get(task) == {"K": "sent again"}
    store.discard(task)
    assert task not in store


def test_values_that_arrive_from_another_replica_wake_this_ones_claimers() -> None:
    """Regression (review): values relayed to a replica woke nothing there. The sender's
    SecretsArrived may come before the values do, so a job waiting for them stayed unclaimed
    until a safety-net re-check (30 s for a watching worker)."""
    bus_a, bus_b = events.EventBus(), events.EventBus()
    relayed: list[events.SecretsRelayed] = []
    bus_a.subscribe(lambda e: relayed.append(e) if isinstance(e, events.SecretsRelayed) else None)
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, bus_a, KEY)
    relay_b = secret_relay.SecretRelay(store_b, bus_b, KEY)
    heard: list[events.Event] = []
    bus_b.subscribe(heard.append)
    task = uuid.uuid4()
    store_a.put(task, {"K": "value-1234"})
    for event in relayed:
        relay_b.on_event(event)
    assert store_b.get(task) == {"K": "value-1234"}
    arrived = [e for e in heard if isinstance(e, events.SecretsArrived)]
    assert [e.task_id for e in arrived] == [str(task)]


def test_a_message_splits_into_parts_and_is_put_back_together() -> None:
    bus = events.EventBus()
    sent: list[events.SecretsRelayed] = []
    bus.subscribe(lambda e: sent.append(e) if isinstance(e, events.SecretsRelayed) else None)
    roomy = secrets.SecretLimits(bytes_per_task=1 << 20, bytes_per_user=1 << 20)
    store_a, store_b = secrets.SecretStore(limits=roomy), secrets.SecretStore(limits=roomy)
    secret_relay.SecretRelay(store_a, bus, KEY)
    big = {f"K{i}": "v" * 20_000 for i in range(5)}  # ~100 KB: many NOTIFY payloads
    task = uuid.uuid4()
    store_a.put(task, big)
    assert len(sent) > 10
    assert all(len(events.encode(e, "o").encode()) < events.MAX_PAYLOAD_BYTES for e in sent)
    # Sealed: the plaintext runs of "v" do not show (32 in a row: random base64 never has them).
    assert all("v" * 32 not in e.data for e in sent)
    # A second relay on another bus hears the parts out of order and interleaved.
    other_bus = events.EventBus()
    relay_b = secret_relay.SecretRelay(store_b, other_bus, KEY)
    for event in [*sent[1::2], *sent[::2]]:
        relay_b.on_event(event)
    assert store_b.get(task) == big


def test_a_message_sealed_with_another_key_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    bus_a, bus_b = events.EventBus(), events.EventBus()
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, bus_a, secret_relay.relay_key("y" * 48))
    relay_b = secret_relay.SecretRelay(store_b, bus_b, KEY)
    sent: list[events.Event] = []
    bus_a.subscribe(sent.append)
    task = uuid.uuid4()
    store_a.put(task, {"API_KEY": VALUE})
    forged = events.SecretsRelayed(
        sender="z", message="m", part=0, parts=1, data="bm90IHNlYWxlZA=="
    )
    for event in [*sent, forged]:
        relay_b.on_event(event)
    assert store_b.get(task) == {}
    assert relay_b.refused == 2
    assert VALUE not in caplog.text


def _capture(bus: events.EventBus) -> list[events.SecretsRelayed]:
    sent: list[events.SecretsRelayed] = []
    bus.subscribe(lambda e: sent.append(e) if isinstance(e, events.SecretsRelayed) else None)
    return sent


def test_a_replay_is_refused_even_once_the_tombstone_is_gone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bus_a = events.EventBus()
    sent = _capture(bus_a)
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, bus_a, KEY)
    relay_b = secret_relay.SecretRelay(store_b, events.EventBus(), KEY)
    task = uuid.uuid4()
    store_a.put(task, {"API_KEY": VALUE})
    captured = list(sent)  # someone who reads the channel keeps a copy
    for event in captured:
        relay_b.on_event(event)
    assert store_b.get(task) == {"API_KEY": VALUE}
    store_a.drop(task)
    for event in sent[len(captured) :]:
        relay_b.on_event(event)
    assert store_b.get(task) == {}
    monkeypatch.setattr(secrets, "TOMBSTONE_TTL_S", -1.0)
    store_b.forget_old_tombstones()  # the drop is forgotten: only the replay check is left
    for event in captured:
        relay_b.on_event(event)
    assert store_b.get(task) == {}
    assert (relay_b.replayed, relay_b.refused) == (1, 0)
    assert "a replay of one already received" in caplog.text
    # A replica that never saw it refuses it too once it is older than max_age.
    relay_c = secret_relay.SecretRelay(store_c := secrets.SecretStore(), events.EventBus(), KEY)
    later = time.time_ns() + int((secret_relay.MAX_AGE_S + 1) * 1e9)
    monkeypatch.setattr(secret_relay.time, "time_ns", lambda: later)
    for event in captured:
        relay_c.on_event(event)
    assert store_c.get(task) == {}
    assert relay_c.replayed == 1
    assert "too old" in caplog.text
    # A late drop still counts (it removes nothing set after it).
    store_c.apply_set(task, {"API_KEY": "old"}, version=1)
    for event in sent[len(captured) :]:
        relay_c.on_event(event)
    assert store_c.get(task) == {}
    assert VALUE not in caplog.text


def test_each_message_is_taken_once_in_whatever_order_it_arrives() -> None:
    bus_a = events.EventBus()
    sent = _capture(bus_a)
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, bus_a, KEY)
    relay_b = secret_relay.SecretRelay(store_b, events.EventBus(), KEY)
    held = {uuid.uuid4(): {"K": f"value-{i}"} for i in range(3)}
    for task, values in held.items():
        store_a.put(task, values, owner="u1")
    for event in reversed(sent):
        relay_b.on_event(event)
    assert {t: store_b.get(t) for t in held} == held
    assert store_b.held_bytes("u1") == store_a.held_bytes("u1") == 3 * len("Kvalue-0")
    for event in sent:
        relay_b.on_event(event)
    assert relay_b.replayed == 3


def test_a_replica_that_starts_learns_the_drops_and_a_replayed_set_cannot_cross_them() -> None:
    bus = events.EventBus()
    sent = _capture(bus)
    store_a, store_c = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, bus, KEY)
    task = uuid.uuid4()
    store_a.put(task, {"API_KEY": VALUE})
    captured = list(sent)
    store_a.drop(task)
    relay_c = secret_relay.SecretRelay(store_c, bus, KEY)  # starts after the drop
    relay_c.request_sync()
    for event in captured:  # fresh, and never seen by this replica: only the drop stops it
        relay_c.on_event(event)
    assert store_c.get(task) == {}
    assert relay_c.replayed == 0


@pytest.fixture
async def dsn(settings: Settings) -> str:
    return db.asyncpg_dsn(settings)


@pytest.fixture
async def buses(dsn: str) -> AsyncIterator[list[events.PostgresEventBus]]:
    started: list[events.PostgresEventBus] = []
    try:
        for _ in range(3):
            bus = events.PostgresEventBus(dsn)
            started.append(bus)
        yield started
    finally:
        for bus in started:
            await bus.stop()


def _waits(store: secrets.SecretStore) -> asyncio.Event:
    """Set once ``store`` waits for values to arrive (a test seam on ``arrival``)."""
    waiting = asyncio.Event()
    arrival = store.arrival

    async def spied(seconds: float) -> None:
        waiting.set()
        await arrival(seconds)

    store.arrival = spied  # type: ignore[method-assign]  # a test seam
    return waiting


@pytest.mark.postgres_only
async def test_replicas_share_sets_and_drops_and_a_late_replica_catches_up(
    dsn: str, buses: list[events.PostgresEventBus]
) -> None:
    a, b, late = buses
    store_a, store_b, store_late = (secrets.SecretStore() for _ in range(3))
    secret_relay.SecretRelay(store_a, a, KEY)
    secret_relay.SecretRelay(store_b, b, KEY)
    await a.start()
    await b.start()

    # What crosses PostgreSQL, seen by a plain listener on the channel, never holds a value.
    seen: list[str] = []
    spy = await asyncpg.connect(dsn)
    await spy.add_listener(events.CHANNEL, lambda *args: seen.append(str(args[-1])))
    try:
        task, other = uuid.uuid4(), uuid.uuid4()
        store_a.put(task, {"API_KEY": VALUE})
        store_b.put(other, {"TOKEN": VALUE + "-b"})
        await until(lambda: store_b.get(task) == {"API_KEY": VALUE})
        await until(lambda: store_a.get(other) == {"TOKEN": VALUE + "-b"})
        store_a.put(task, {"MORE": "more-value"})
        await until(lambda: store_b.get(task) == {"API_KEY": VALUE, "MORE": "more-value"})

        # A replica that starts now asks the others and gets everything they hold.
        late_relay = secret_relay.SecretRelay(store_late, late, KEY)
        await late.start()
        late_relay.request_sync()  # as the app does once its bus listens
        await until(lambda: store_late.get(other) == {"TOKEN": VALUE + "-b"})
        await until(lambda: store_late.get(task) == store_a.get(task))

        # A drop on one replica (Clear, or the run ended) reaches them all.
        store_b.drop(task)
        await until(lambda: store_a.get(task) == {} and store_late.get(task) == {})
        # The spy has heard everything once it hears an event published after the drop
        # arrived (notifications reach a listener in commit order).
        a.publish(events.JobQueued())
        await until(lambda: any('"JobQueued"' in p for p in seen), what="the spy")
    finally:
        await spy.close()
    assert seen, "the spy heard nothing"
    assert not [p for p in seen if VALUE in p or "more-value" in p]


@pytest.mark.postgres_only
@pytest.mark.usefixtures("database")
async def test_a_runs_secrets_are_awaited_from_the_replica_that_holds_them(
    buses: list[events.PostgresEventBus],
) -> None:
    a, b, _ = buses
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, a, KEY)
    secret_relay.SecretRelay(store_b, b, KEY)
    await a.start()
    await b.start()
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    unit = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    assert (
        await secrets.job_secrets(store_b, unit.agent_task_id, expects_secrets=True, wait=0.2) == {}
    )

    waiting = _waits(store_b)

    async def send_later() -> None:  # once B waits for them
        await waiting.wait()
        store_a.put(unit.id, {"API_KEY": VALUE})

    sender = asyncio.create_task(send_later())
    got = await secrets.job_secrets(store_b, unit.agent_task_id, expects_secrets=True, wait=5)
    await sender
    assert got == {"API_KEY": VALUE}


@pytest.mark.postgres_only
@pytest.mark.usefixtures("database")
async def test_output_sent_to_another_replica_waits_for_the_secrets_it_is_masked_with(
    buses: list[events.PostgresEventBus],
) -> None:
    a, b, _ = buses
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, a, KEY)
    secret_relay.SecretRelay(store_b, b, KEY)
    await a.start()
    await b.start()
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    unit = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    plain = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="q")

    waiting = _waits(store_b)

    async def send_later() -> None:  # once B waits for them
        await waiting.wait()
        store_a.put(unit.id, {"API_KEY": VALUE})

    # The worker claimed on A and sends its first output to B before the relay got there.
    sender = asyncio.create_task(send_later())
    got = await secrets.output_masker(store_b, unit.agent_task_id, wait=5)
    await sender
    assert got is not None
    assert got.mask(VALUE) == secrets.MASK

    # Secrets dropped (Clear, or the run ended) are not waited for again, nor are a task's
    # that expects none: a guard far below the wait shows neither call waits for it. After
    # a Clear the values still mask (a run may have them) until they are released.
    store_a.drop(unit.id)
    await until(lambda: store_b.dropped(unit.id))
    kept = await asyncio.wait_for(secrets.output_masker(store_b, unit.agent_task_id, wait=600), 30)
    assert kept is not None
    assert kept.mask(VALUE) == secrets.MASK
    store_a.release(unit.id)
    await until(lambda: not store_b.masking_values(unit.id))
    assert (
        await asyncio.wait_for(secrets.output_masker(store_b, unit.agent_task_id, wait=600), 30)
        is None
    )
    assert (
        await asyncio.wait_for(secrets.output_masker(store_b, plain.agent_task_id, wait=600), 30)
        is None
    )


@pytest.mark.postgres_only
async def test_values_kept_for_masking_reach_every_replica_and_go_with_the_run(
    buses: list[events.PostgresEventBus],
) -> None:
    """Regression: a Clear (or a replacement) on one replica dropped the values everywhere,
    so output a running run sent to any replica afterwards was stored in clear."""
    a, b, c = buses
    store_a, store_b, store_c = secrets.SecretStore(), secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, a, KEY)
    secret_relay.SecretRelay(store_b, b, KEY)
    await a.start()
    await b.start()
    task = uuid.uuid4()
    store_a.put(task, {"API_KEY": VALUE})
    await until(lambda: store_b.get(task) == {"API_KEY": VALUE})
    store_a.put(task, {"API_KEY": "sk-replaced-0000"})  # a run may have had the old one
    store_a.drop(task)  # Clear while the run is open
    await until(lambda: store_b.dropped(task))
    both = {VALUE, "sk-replaced-0000"}
    assert store_b.get(task) == {}  # no longer handed out
    assert store_b.masking_values(task) == both  # but still masked with
    # A replica that starts now hears of them too (the run may send its output there).
    relay_c = secret_relay.SecretRelay(store_c, c, KEY)
    await c.start()
    relay_c.request_sync()  # as a replica does when it starts
    await until(lambda: store_c.masking_values(task) == both)
    assert store_c.get(task) == {}
    # The run ends: forgotten everywhere.
    store_a.drop(task, release=True)
    await until(lambda: not store_b.masking_values(task) and not store_c.masking_values(task))
    assert not store_a.masks_output()


@pytest.mark.postgres_only
async def test_a_message_replayed_through_postgres_is_refused(
    dsn: str, buses: list[events.PostgresEventBus], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, _ = buses
    store_a, store_b = secrets.SecretStore(), secrets.SecretStore()
    secret_relay.SecretRelay(store_a, a, KEY)
    relay_b = secret_relay.SecretRelay(store_b, b, KEY)
    await a.start()
    await b.start()
    heard: list[str] = []
    spy = await asyncpg.connect(dsn)  # a database user who reads the channel
    await spy.add_listener(events.CHANNEL, lambda *args: heard.append(str(args[-1])))
    try:
        task = uuid.uuid4()
        store_a.put(task, {"API_KEY": VALUE})
        await until(lambda: store_b.get(task) == {"API_KEY": VALUE} and bool(heard))
        captured = list(heard)
        store_a.drop(task)
        await until(lambda: store_b.get(task) == {})
        monkeypatch.setattr(secrets, "TOMBSTONE_TTL_S", -1.0)
        store_b.forget_old_tombstones()
        for payload in captured:
            await spy.execute("SELECT pg_notify($1, $2)", events.CHANNEL, payload)
        await until(lambda: relay_b.replayed >= 1)
        assert store_b.get(task) == {}
        assert relay_b.refused == 0
    finally:
        await spy.close()
