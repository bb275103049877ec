"""Secrets relay: only the leased worker reads them, and they are stored nowhere."""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import logging
import uuid

import pytest
from tortoise.models import Model

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, InvalidArgument, NotFound
from delidev.services import plans, secrets, sessions, tasks, workers
from tests.factories import make_group, make_repository, make_workspace

pytestmark = pytest.mark.usefixtures("database")

Q = m.AgentSessionStatus
VALUE = "sk-live-7f3a9c2e51d84b6f"


async def _group() -> m.RepositoryGroup:
    ws = await make_workspace()
    return await make_group(ws, [await make_repository(ws)])


async def _unit(**kwargs: object) -> m.UnitTask:
    return await tasks.create_unit_task(
        actor=LOCAL_USER,
        repository_group_id=(await _group()).id,
        prompt="Use the key",
        **kwargs,  # type: ignore[arg-type]
    )


async def _worker(name: str = "w") -> m.Worker:
    return (await workers.register_worker(name=name, endpoint_url="http://w:54872")).worker


async def _every_stored_value() -> str:
    """Every row of every table, as text."""
    rows: list[str] = []
    for name in m.__all__:
        model = getattr(m, name)
        if inspect.isclass(model) and issubclass(model, Model):
            rows.extend(repr(r) for r in await model.all().values())
    return "\n".join(rows)


async def test_only_the_leased_worker_reads_them_and_they_are_stored_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    keys = await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"API_KEY": VALUE, "N": "1"}
    )
    assert keys == ["API_KEY", "N"]
    worker, other = await _worker(), await _worker("other")
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    got = await workers.get_job_secrets(
        worker_id=worker.id, session_id=job.session.id, lease_token=job.lease_token, store=store
    )
    assert got == {"API_KEY": VALUE, "N": "1"}
    for wid, lease in ((other.id, job.lease_token), (worker.id, "guess"), (worker.id, "")):
        with pytest.raises(Conflict) as refused:
            await workers.get_job_secrets(
                worker_id=wid, session_id=job.session.id, lease_token=lease, store=store
            )
        assert VALUE not in str(refused.value)

    # The agent prints the key, plainly and base64-encoded, and asks a question quoting it.
    b64 = base64.b64encode(VALUE.encode()).decode()
    await workers.append_job_log(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        chunks=[
            sessions.LogChunkIn(sequence=0, data=f"export API_KEY={VALUE}\n"),
            sessions.LogChunkIn(sequence=1, data=f"Authorization: Basic {b64}\n"),
        ],
        store=store,
    )
    question = await workers.ask_tty_input(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        prompt=f"Is {VALUE} right?",
        input_type=m.TtyInputType.CONFIRM,
        options=[],
        expires_in=dt.timedelta(minutes=1),
        store=store,
    )
    assert VALUE not in question.prompt
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.FAILED,
        error=f"401 with key {VALUE}",
        store=store,
    )
    assert ended.error == f"401 with key {secrets.MASK}"
    assert (
        ended.output_log == f"export API_KEY={secrets.MASK}\nAuthorization: Basic {secrets.MASK}\n"
    )

    stored = await _every_stored_value()
    assert VALUE not in stored
    assert b64 not in stored
    assert VALUE not in caplog.text
    # Gone after the run: a retry waits until the client sends them again.
    assert task.id not in store
    await tasks.retry_task(actor=LOCAL_USER, task_id=task.id)
    assert await workers.claim_job(worker_id=other.id, store=store) is None


async def test_clear_and_validation() -> None:
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    bad: list[dict[str, str]] = [{}, {"1BAD": "value"}, {"A B": "v"}, {"EMPTY": ""}]
    bad.append({f"K{i}": "v" for i in range(secrets.MAX_SECRETS + 1)})
    bad.append({"BIG": "x" * (secrets.MAX_VALUE_BYTES + 1)})
    for values in bad:
        with pytest.raises(InvalidArgument) as info:
            await secrets.send_secrets(
                actor=LOCAL_USER, store=store, task_id=task.id, values=values
            )
        assert info.value.field == "secrets"
    assert task.id not in store
    with pytest.raises(InvalidArgument) as named:
        await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=task.id, values={"OK": VALUE, "9x": VALUE}
        )
    assert VALUE not in str(named.value)
    with pytest.raises(NotFound):
        await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=uuid.uuid4(), values={"K": "v"}
        )
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"A": "1"})
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"B": "2"})
    assert store.get(task.id) == {"A": "1", "B": "2"}
    await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    assert task.id not in store
    assert VALUE not in repr(store)


async def test_a_composites_secrets_reach_its_planner_and_its_nodes_until_it_is_finished() -> None:
    store = secrets.SecretStore()
    composite = await tasks.create_composite_task(
        actor=LOCAL_USER,
        repository_group_id=(await _group()).id,
        prompt="Plan it",
        expects_secrets=True,
    )
    worker = await _worker()
    assert await workers.claim_job(worker_id=worker.id, store=store) is None
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=composite.id, values={"TOKEN": VALUE}
    )
    planning = await workers.claim_job(worker_id=worker.id, store=store)
    assert planning is not None
    assert planning.session.kind == m.JobKind.PLANNING
    plan = "tasks:\n  - id: a\n    prompt: do a\n  - id: b\n    prompt: do b\n    dependsOn: [a]\n"
    assert plans.parse_plan(plan)
    await workers.report_status(
        worker_id=worker.id,
        session_id=planning.session.id,
        lease_token=planning.lease_token,
        status=Q.SUCCEEDED,
        plan_yaml=plan,
        store=store,
    )
    assert composite.id in store  # the nodes still need them
    await tasks.approve_task(actor=LOCAL_USER, task_id=composite.id)
    node_job = await workers.claim_job(worker_id=worker.id, store=store)
    assert node_job is not None
    assert node_job.expects_secrets
    got = await workers.get_job_secrets(
        worker_id=worker.id,
        session_id=node_job.session.id,
        lease_token=node_job.lease_token,
        store=store,
    )
    assert got == {"TOKEN": VALUE}
    assert await secrets.prune_secrets(store) == 0
    await tasks.delete_task(actor=LOCAL_USER, task_id=composite.id)
    assert await secrets.prune_secrets(store) == 1
    assert composite.id not in store


async def test_expired_secrets_are_dropped() -> None:
    store = secrets.SecretStore(ttl=dt.timedelta(0))
    task = await _unit()
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    assert store.get(task.id) == {}
    assert task.id not in store


def test_masking() -> None:
    values = {"A": VALUE, "SHORT": "abc"}
    b64url = base64.urlsafe_b64encode(VALUE.encode()).decode().rstrip("=")
    text = f"{VALUE} {b64url} abc {VALUE}{VALUE}"
    assert secrets.mask(text, values) == f"{secrets.MASK} {secrets.MASK} abc {secrets.MASK * 2}"
    assert secrets.mask("nothing here", values) == "nothing here"


@pytest.mark.parametrize("cut", range(1, len(VALUE)))
def test_a_value_split_anywhere_is_masked_at_the_seam(cut: int) -> None:
    before, after = f"key: {VALUE[:cut]}", f"{VALUE[cut:]} and {VALUE[:3]}\n"
    masked_before, masked_after = secrets.mask_seam(before, after, {"K": VALUE})
    assert (len(masked_before), len(masked_after)) == (len(before), len(after))
    assert masked_before + masked_after == f"key: {'*' * len(VALUE)} and {VALUE[:3]}\n"


def test_the_seam_leaves_other_text_alone() -> None:
    assert secrets.mask_seam("abc sk-li", "ne x", {"K": VALUE}) == ("abc sk-li", "ne x")
    assert secrets.mask_seam("x", "y", {}) == ("x", "y")
    assert secrets.mask_seam("", VALUE, {"K": VALUE}) == ("", VALUE)  # whole values: mask()
