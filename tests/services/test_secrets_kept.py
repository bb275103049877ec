"""Masking outlives handing out: a run's output stays masked with the values it may have been
given until it ends; the masker is made once per change of the values, cheaply."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid

import pytest

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import InvalidArgument
from delidev.services import secret_masking, secrets, sessions, tasks, workers
from tests.factories import make_group, make_repository, make_workspace

Q = m.AgentSessionStatus
VALUE = "sk-live-7f3a9c2e51d84b6f"


async def _run(
    store: secrets.SecretStore, values: dict[str, str]
) -> tuple[m.UnitTask, workers.Job]:
    """A unit task expecting these secrets, sent and claimed; its worker fetched them."""
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values=values)
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    got = await workers.get_job_secrets(
        worker_id=worker.id, session_id=job.session.id, lease_token=job.lease_token, store=store
    )
    assert got == values
    return task, job


async def _append(store: secrets.SecretStore, job: workers.Job, seq: int, text: str) -> None:
    await workers.append_job_log(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        chunks=[sessions.LogChunkIn(sequence=seq, data=text)],
        store=store,
    )


async def _rows(job: workers.Job) -> str:
    return "".join(r.data for r in await m.LogChunk.filter(session_id=job.session.id))


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("how", ["clear", "ttl"])
async def test_output_after_a_clear_or_the_ttl_is_still_masked_until_the_run_ends(
    how: str,
) -> None:
    """Regression: Clear during a run, or the TTL (24 h, a run may last 7 days), dropped the
    values, and output sent afterwards was stored and served in clear (GetLog, the chunk
    rows, the error)."""
    store = secrets.SecretStore(ttl=dt.timedelta(seconds=0.5 if how == "ttl" else 3600))
    task, job = await _run(store, {"API_KEY": VALUE})
    await _append(store, job, 0, f"before {VALUE}\n")
    if how == "clear":
        await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    else:
        await asyncio.sleep(0.6)
        assert await secrets.prune_secrets(store) == 1
    # No longer handed out ...
    assert (
        await workers.get_job_secrets(
            worker_id=job.session.worker_id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            store=store,
        )
        == {}
    )
    # ... but the run's output is masked with them.
    await _append(store, job, 1, f"after {VALUE}\n")
    log = (await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)).content
    assert log == f"before {secrets.MASK}\nafter {secrets.MASK}\n"
    assert VALUE not in await _rows(job)
    ended = await workers.report_status(
        worker_id=job.session.worker_id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.FAILED,
        error=f"401 with {VALUE}",
        store=store,
    )
    assert ended.error == f"401 with {secrets.MASK}"
    assert ended.output_log == log  # what GetLog serves
    # The run ended: nothing of them is left in memory.
    assert not store.masks_output()
    assert store.held_bytes("") == 0


@pytest.mark.usefixtures("database")
async def test_a_replaced_value_still_masks_the_run_that_may_have_it() -> None:
    store = secrets.SecretStore()
    task, job = await _run(store, {"API_KEY": VALUE})
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"API_KEY": "sk-new-value-1"}
    )
    await _append(store, job, 0, f"{VALUE} sk-new-value-1\n")
    log = (await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)).content
    assert log == f"{secrets.MASK} {secrets.MASK}\n"
    # What is kept counts towards the task's limit while the run is open.
    store.limits = secrets.SecretLimits(bytes_per_task=60)
    with pytest.raises(InvalidArgument) as info:
        await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=task.id, values={"API_KEY": "x" * 40}
        )
    assert "a run's output until it ends" in info.value.message
    assert VALUE not in info.value.message


@pytest.mark.usefixtures("database")
async def test_values_kept_for_a_run_lost_by_its_worker_go_at_the_next_prune() -> None:
    store = secrets.SecretStore()
    task, job = await _run(store, {"API_KEY": VALUE})
    await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    await secrets.prune_secrets(store)
    assert store.masking_values(task.id) == {VALUE}  # the run is still open
    await m.AgentSession.filter(id=job.session.id).update(status=Q.LOST)  # as the sweep does
    await secrets.prune_secrets(store)
    assert not store.masks_output()
    # And a Clear with no run open keeps nothing.
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    assert not store.masks_output()


@pytest.mark.usefixtures("database")
async def test_values_too_short_to_mask_are_refused_by_name() -> None:
    store = secrets.SecretStore()
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    for value in ("1", "ab", "xyz", "é😀"):
        with pytest.raises(InvalidArgument) as info:
            await secrets.send_secrets(
                actor=LOCAL_USER, store=store, task_id=task.id, values={"OK": VALUE, "PIN": value}
            )
        assert "secret PIN is shorter than 4 characters" in info.value.message
        assert info.value.field == "secrets"
        assert value not in info.value.message.replace("PIN", "")
    assert task.id not in store
    assert await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"PIN": "1234"}
    ) == ["PIN"]


def _adversarial(alphabet: str = 'é€😀"\\ \n\t', step: int = 30) -> dict[str, str]:
    """Within the limits (64 KiB): each value a prefix of the next, of characters whose
    escapes are long: the set an audit sent."""
    base = "".join(alphabet[(i * 7) % len(alphabet)] for i in range(6000))
    values: dict[str, str] = {}
    length = 4
    while len(values) < 64:
        size = sum(len(v.encode()) + 4 for v in values.values()) + len(base[:length].encode())
        if size + 4 > secrets.MAX_TASK_BYTES:
            break
        values[f"K{len(values)}"] = base[:length]
        length += step
    return values


@pytest.mark.usefixtures("database")
async def test_the_masker_is_made_once_per_change_and_off_the_event_loop() -> None:
    """Regression: the masker was made again for every AppendLog, and a set of nested
    values cost 250-375 ms of event-loop CPU each time."""
    values = _adversarial()
    store = secrets.SecretStore()
    task, job = await _run(store, values)
    first = await secrets.output_masker(store, job.session.agent_task_id)
    assert first is not None
    assert await secrets.output_masker(store, job.session.agent_task_id) is first
    loop = asyncio.get_running_loop()
    costs = []
    for seq in range(5):
        started = time.process_time()
        await _append(store, job, seq, f"line {seq} {values['K10']}\n")
        costs.append(time.process_time() - started)
    # Printed, not asserted (machines differ): the audit measured 250-375 ms per call.
    print(
        f"\nadversarial set ({len(values)} values): CPU per AppendLog",
        [f"{c * 1000:.1f} ms" for c in costs],
    )
    log = (await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)).content
    assert values["K10"] not in log
    # A change makes a new one, in a thread (the loop keeps answering meanwhile).
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"X": VALUE})
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = loop.create_task(tick())
    started = time.perf_counter()
    second = await secrets.output_masker(store, job.session.agent_task_id)
    built = time.perf_counter() - started
    ticker.cancel()
    print(f"rebuilt after a change in {built * 1000:.0f} ms ({ticks} loop turns meanwhile)")
    assert second is not None
    assert second is not first
    assert ticks > 1


def test_nesting_past_the_work_bound_still_masks_every_value(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    values = _adversarial(step=60)
    monkeypatch.setattr(secret_masking, "MAX_JOINED_WORK", 1_000)
    with caplog.at_level(logging.WARNING):
        masker = secrets.OutputMasker(values)
    assert "nest in each other" in caplog.text
    assert not any(v in caplog.text for v in values.values())
    for value in values.values():
        assert value not in masker.mask(f"a {value} b")


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("how", ["clear", "replace"])
async def test_a_run_claimed_while_its_secrets_change_is_masked_with_what_it_got(
    how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (review): Clear and a replacing Send asked whether a run was open, then
    forgot the old values; a run claimed in between held them, and its output was stored
    in clear. Now they act first and ask after: a claim is made to land inside that
    question here (the real claim and GetSecrets, between the query and its answer)."""
    store = secrets.SecretStore()
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(
        actor=LOCAL_USER, repository_group_id=group.id, prompt="p", expects_secrets=True
    )
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    worker = (await workers.register_worker(name="w", endpoint_url="http://w:54872")).worker
    real = secrets._runs_open
    claimed: list[tuple[workers.Job | None, dict[str, str]]] = []

    async def claim_meanwhile(task_ids: object) -> set[object]:
        answer = await real(task_ids)  # type: ignore[arg-type]
        if not claimed:
            job = await workers.claim_job(worker_id=worker.id, store=store)
            got = {}
            if job is not None:
                got = await workers.get_job_secrets(
                    worker_id=worker.id,
                    session_id=job.session.id,
                    lease_token=job.lease_token,
                    store=store,
                )
            claimed.append((job, got))
        return answer  # type: ignore[return-value]

    monkeypatch.setattr(secrets, "_runs_open", claim_meanwhile)
    if how == "clear":
        await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    else:
        await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=task.id, values={"K": "sk-other-value-9"}
        )
    assert claimed
    job, got = claimed[0]
    if job is None:  # cleared before the claim: nothing to run with
        assert how == "clear"
        return
    await workers.append_job_log(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        chunks=[sessions.LogChunkIn(sequence=0, data=f"token={' '.join(got.values())}\n")],
        store=store,
    )
    rows = "".join(r.data for r in await m.LogChunk.filter(session_id=job.session.id))
    assert got
    assert all(value not in rows for value in got.values()), rows


def test_a_late_copy_of_kept_values_does_not_revive_them_after_their_release() -> None:
    """Regression (review): a replica's catching-up answer (values kept for masking, sent
    before the run ended) that arrived after the run's release kept them again, with their
    bytes counted, until the next prune."""
    store = secrets.SecretStore()
    task_id = uuid.uuid4()
    kept_at = time.time_ns()
    store.apply_set(task_id, {"K": VALUE}, kept_at - 10)
    store.apply_drop(task_id, kept_at)  # cleared during a run: kept for masking
    assert store.masks_output()
    store.apply_drop(task_id, kept_at + 1000, release=True)  # the run ended
    assert not store.masks_output()
    store.apply_kept(task_id, [VALUE], kept_at)  # the late copy
    assert not store.masks_output()
    assert store.held_bytes("") == 0
    store.apply_kept(task_id, [VALUE], kept_at + 2000)  # kept again later: a new run's
    assert store.masking_values(task_id) == {VALUE}
