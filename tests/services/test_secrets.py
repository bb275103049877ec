"""Secrets relay: only the leased worker reads them, and they are stored nowhere."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import inspect
import itertools
import json
import logging
import urllib.parse
import uuid
from collections.abc import Callable

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from tortoise.models import Model

from delidev import models as m
from delidev.auth.principal import LOCAL_USER
from delidev.errors import Conflict, InvalidArgument, NotFound
from delidev.services import plans, secret_masking, secrets, sessions, tasks, workers
from tests.factories import make_group, make_repository, make_workspace

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


@pytest.mark.usefixtures("database")
async def test_only_the_leased_worker_reads_them_and_they_are_stored_nowhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    keys = await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"API_KEY": VALUE, "N": "4096"}
    )
    assert keys == ["API_KEY", "N"]
    worker, other = await _worker(), await _worker("other")
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    got = await workers.get_job_secrets(
        worker_id=worker.id, session_id=job.session.id, lease_token=job.lease_token, store=store
    )
    assert got == {"API_KEY": VALUE, "N": "4096"}
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


@pytest.mark.usefixtures("database")
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
            actor=LOCAL_USER, store=store, task_id=uuid.uuid4(), values={"K": "vvvv"}
        )
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"A": "one-1"}
    )
    await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"B": "two-2"}
    )
    assert store.get(task.id) == {"A": "one-1", "B": "two-2"}
    await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=task.id)
    assert task.id not in store
    assert VALUE not in repr(store)


@pytest.mark.usefixtures("database")
async def test_nul_and_lone_surrogates_are_refused_and_named() -> None:
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    for values, says in (
        ({"K": "ab\x00cd"}, "secret K must not contain NUL"),
        ({"K": "ab\ud800cd"}, "secret K is not valid Unicode"),
        ({"K\x00": "value"}, "secret name 'K\\x00' must be"),
    ):
        with pytest.raises(InvalidArgument) as info:
            await secrets.send_secrets(
                actor=LOCAL_USER, store=store, task_id=task.id, values=values
            )
        assert says in info.value.message
        assert info.value.field == "secrets"
        assert "ab" not in info.value.message  # never the value
    assert task.id not in store


@pytest.mark.usefixtures("database")
async def test_held_secrets_are_capped_per_task_and_per_user() -> None:
    limits = secrets.SecretLimits(keys_per_task=3, bytes_per_task=100, bytes_per_user=150)
    store = secrets.SecretStore(limits=limits)
    first, second = await _unit(), await _unit()

    async def send(task: m.UnitTask, values: dict[str, str]) -> list[str]:
        return await secrets.send_secrets(
            actor=LOCAL_USER, store=store, task_id=task.id, values=values
        )

    assert await send(first, {"A": "x" * 59}) == ["A"]  # 60 bytes
    refusals = {
        "at most 3 secrets per task": {"B": "1111", "C": "2222", "D": "3333"},
        "hold at most 100 bytes; these would hold 101": {"B": "y" * 40},
    }
    for says, values in refusals.items():
        with pytest.raises(InvalidArgument) as info:
            await send(first, values)
        assert says in info.value.message
    assert store.get(first.id) == {"A": "x" * 59}  # unchanged by a refusal
    assert await send(second, {"B": "z" * 89}) == ["B"]  # 150 bytes in all
    with pytest.raises(InvalidArgument) as info:
        await send(second, {"C": "1111"})
    assert "at most 150 bytes in all (60 held for other tasks)" in info.value.message
    assert store.get(second.id) == {"B": "z" * 89}
    # Another user has room of their own; replacing a value counts the new size only.
    store.put(uuid.uuid4(), {"A": "w" * 99}, owner="someone else")
    assert await send(first, {"A": "v" * 9}) == ["A"]
    assert store.held_bytes("") == 10 + 90
    await secrets.clear_secrets(actor=LOCAL_USER, store=store, task_id=second.id)
    assert store.held_bytes("") == 10
    assert await send(second, {"B": "z" * 89, "C": "c" * 9}) == ["B", "C"]


@pytest.mark.usefixtures("database")
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


@pytest.mark.usefixtures("database")
async def test_expired_secrets_are_dropped() -> None:
    store = secrets.SecretStore(ttl=dt.timedelta(0))
    task = await _unit()
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    assert store.get(task.id) == {}
    assert task.id not in store
    # Expired values are not merged into the next send, nor counted against the user.
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    keys = await secrets.send_secrets(
        actor=LOCAL_USER, store=store, task_id=task.id, values={"N": "new-value"}
    )
    assert keys == ["N"]
    assert store.held_bytes("") == len("Nnew-value")


def test_masking() -> None:
    values = {"A": VALUE, "SHORT": "abc"}
    b64url = base64.urlsafe_b64encode(VALUE.encode()).decode().rstrip("=")
    text = f"{VALUE} {b64url} abc {VALUE}{VALUE}"
    assert secrets.mask(text, values) == f"{secrets.MASK} {secrets.MASK} abc {secrets.MASK * 2}"
    assert secrets.mask("nothing here", values) == "nothing here"


def _leaks(value: str) -> set[str]:
    """What of a value must never show: the value, and base64 (both alphabets) of it at any
    byte offset in a longer string: the characters whose bits all come from the value."""
    raw = value.encode()
    shown = {value}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            blob = encode(b"\xa5" * shift + raw + b"\x5a").decode()
            start, stop = 8 * shift, 8 * (shift + len(raw))
            shown.add("".join(c for j, c in enumerate(blob) if start <= 6 * j <= stop - 6))
    return {f for f in shown if len(f) >= secrets.MIN_MASKED_LENGTH}


@pytest.mark.parametrize("prefix", [b"", b"x", b"xy", b"xyz"])
@pytest.mark.parametrize("suffix", [b"", b"!", b"tail"])
@pytest.mark.parametrize("encode", [base64.b64encode, base64.urlsafe_b64encode])
def test_base64_of_a_value_at_any_offset_is_masked(
    prefix: bytes, suffix: bytes, encode: Callable[[bytes], bytes]
) -> None:
    value = "s3cr3t-\u00e9t\u00e9-?>~" + VALUE  # non-ASCII, and '+' '/' in its base64
    blob = encode(prefix + value.encode() + suffix).decode()
    masked = secrets.mask(f"data: {blob}\n", {"K": value})
    assert secrets.MASK in masked
    for leak in _leaks(value):
        assert leak not in masked, (prefix, suffix)


def test_a_value_escaped_in_json_or_a_url_is_masked() -> None:
    value = 'p@ss "w\\rd" \u00e9/+&'
    shown = [
        json.dumps({"password": value}),
        json.dumps({"password": value}, ensure_ascii=False),
        f"https://u:{urllib.parse.quote(value, safe='')}@host/",
        f"?q={urllib.parse.quote_plus(value)}&x=1",
    ]
    for text in shown:
        masked = secrets.mask(text, {"K": value})
        assert secrets.MASK in masked, text
        assert "p@ss" not in masked, text
        assert "p%40ss" not in masked, text


def _feed(masker: secrets.OutputMasker, chunks: list[str]) -> tuple[list[str], str]:
    """What a log receives chunk by chunk, and what is held back at the end."""
    placed, held = [], ""
    for chunk in chunks:
        now, held = masker.feed(held, masker.mask(chunk))
        placed.append(now)
    return placed, held


DB_PASSWORD = "s3cr3t-pass"
DB_URL = f"postgres://admin:{DB_PASSWORD}@db.internal/app"


@pytest.mark.parametrize("cut", range(1, 60))
def test_a_value_that_holds_another_is_masked_whole_wherever_the_output_is_cut(
    cut: int,
) -> None:
    """Regression: each chunk was masked on its own before it was joined to the end held
    back before it, so a chunk that began with the inner value (the password) showed the
    rest of the outer one (the URL)."""
    values = {"DB_PASSWORD": DB_PASSWORD, "DB_URL": DB_URL}
    text = f"connecting to {DB_URL} as {DB_PASSWORD}\n"
    placed, held = _feed(secrets.OutputMasker(values), [text[:cut], text[cut:]])
    assert "".join(placed) + held == secrets.mask(text, values)
    assert "".join(placed) + held == f"connecting to {secrets.MASK} as {secrets.MASK}\n"


@st.composite
def _nested(draw: st.DrawFn) -> tuple[dict[str, str], str, list[str]]:
    """An inner value, an outer one that holds it, output showing both, cut anywhere."""
    inner = draw(st.text(alphabet="xyz0123", min_size=secrets.MIN_MASKED_LENGTH, max_size=8))
    outer = draw(st.text(alphabet="ab:/@", min_size=1, max_size=6)) + inner
    outer += draw(st.text(alphabet="ab:/@", max_size=6))
    # Two occurrences of a value that overlap ("0000" in "000000") mask differently however
    # the text is masked: that is a property of replacing values, not of the streaming.
    assume(not any(v[:k] == v[-k:] for v in (inner, outer) for k in range(1, len(v))))
    parts = st.one_of(st.just(inner), st.just(outer), st.text(alphabet=" \n=ab", max_size=5))
    text = "".join(draw(st.lists(parts, min_size=1, max_size=8)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text))))
    chunks = [text[i:j] for i, j in itertools.pairwise([0, *cuts, len(text)])]
    return {"INNER": inner, "OUTER": outer}, text, chunks


@given(_nested())
@example(({"INNER": "0001", "OUTER": "a0001"}, "aa0001", ["a", "a0001"]))
@settings(max_examples=300, deadline=None)
def test_nested_values_never_show_however_the_output_is_cut(
    case: tuple[dict[str, str], str, list[str]],
) -> None:
    values, text, chunks = case
    placed, held = _feed(secrets.OutputMasker(values), chunks)
    log = "".join(placed) + held
    for value in values.values():
        assert value not in log
    # At most what the whole text's masking hides is hidden, and a little more next to a
    # mask: a held start of the outer value ("a" before "a0001") may join the mask after it.
    whole = secrets.mask(text, values)
    assert log == whole or len(log) < len(whole)
    assert secrets.mask(log, values) == log


@pytest.mark.parametrize("cuts", [(1, 2), (5, 6), (5, 9, 13), tuple(range(1, 40))])
def test_a_value_split_over_several_chunks_is_masked_whole(cuts: tuple[int, ...]) -> None:
    text = f"key={VALUE} and {VALUE[:3]}\n"
    chunks = [text[i:j] for i, j in itertools.pairwise([0, *cuts, len(text)])]
    placed, held = _feed(secrets.OutputMasker({"K": VALUE}), chunks)
    assert "".join(placed) + held == f"key={secrets.MASK} and {VALUE[:3]}\n"
    assert held == ""  # a line's end is no value's start


def test_only_what_could_start_a_value_is_held_back() -> None:
    masker = secrets.OutputMasker({"K": VALUE})
    assert masker.feed("", "plain text") == ("plain text", "")
    assert masker.feed("", f"key={VALUE[:9]}") == ("key=", VALUE[:9])
    assert masker.feed(VALUE[:9], "nothing more") == (f"{VALUE[:9]}nothing more", "")
    assert masker.feed("", "x") == ("x", "")
    # A value made to repeat itself costs no quadratic time: all that could start it waits.
    periodic = secrets.OutputMasker({"K": "ab" * 500 + "c"})
    placed, held = periodic.feed("", "ab" * 2000 + "a")
    assert placed + held == "ab" * 2000 + "a"
    assert len(held) <= 1000
    assert secrets.OutputMasker({}).feed("held", "more") == ("heldmore", "")


_CHARS = st.characters(
    codec="utf-8", exclude_characters="*\x00", categories=["L", "N", "P", "S", "Zs"]
)
_FILLER = st.text(
    alphabet=st.one_of(_CHARS, st.sampled_from("\n=:/+ab\U0001f600\u0301\u4e2d")),
    max_size=30,
)


@st.composite
def _output(draw: st.DrawFn) -> tuple[dict[str, str], list[str]]:
    """Secrets, and a run's output that shows them in every way, cut into random chunks."""
    values = draw(
        st.dictionaries(
            st.sampled_from(["A", "B", "C"]),
            st.text(alphabet=_CHARS, min_size=secrets.MIN_MASKED_LENGTH, max_size=40),
            min_size=1,
            max_size=3,
        )
    )
    shown = st.sampled_from(sorted(values.values()))
    encoded = st.builds(
        lambda encode, before, value, after: encode(before + value.encode() + after).decode(),
        st.sampled_from([base64.b64encode, base64.urlsafe_b64encode]),
        st.binary(max_size=4),
        shown,
        st.binary(max_size=4),
    )
    text = "".join(draw(st.lists(st.one_of(_FILLER, shown, encoded), min_size=1, max_size=8)))
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(text) - 1)), max_size=len(text))))
    return values, [text[i:j] for i, j in itertools.pairwise([0, *cuts, len(text)])]


@given(_output())
@settings(max_examples=300, deadline=None)
def test_streamed_output_never_shows_a_value_whatever_the_chunking(
    case: tuple[dict[str, str], list[str]],
) -> None:
    values, chunks = case
    masker = secrets.OutputMasker(values)
    placed, held = _feed(masker, chunks)
    log = "".join(placed) + held
    for value in values.values():
        for leak in _leaks(value):
            assert leak not in log
    assert len(held) < max(len(base64.b64encode(v.encode())) for v in values.values())
    # Nothing but the values changes.
    assert secrets.mask(log, values) == log


@pytest.mark.usefixtures("database")
async def test_held_back_output_and_a_cut_log_live_side_by_side() -> None:
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    text = "".join(f"line {i} {VALUE}\n" for i in range(20)) + f"end {VALUE[:5]}"
    pieces = [text[i : i + 7] for i in range(0, len(text), 7)]  # a value spans 4+ chunks
    for sequence, piece in enumerate(pieces):
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            chunks=[sessions.LogChunkIn(sequence=sequence, data=piece)],
            store=store,
            limits=sessions.LogLimits(max_chars=200, chunk_max_chars=20),
        )
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        store=store,
    )
    log = (await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)).content
    assert "characters of output dropped here" in log
    assert log.startswith(f"line 0 {secrets.MASK}\n")
    assert log.endswith(f"line 19 {secrets.MASK}\nend {VALUE[:5]}")
    assert VALUE not in log
    assert ended.output_log == log


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("order", ["in order", "the second first"])
async def test_a_url_holding_a_password_is_masked_whole_across_append_calls(order: str) -> None:
    """Regression (through the store, both databases): the chunk that starts with the
    password came masked to the join with the URL's start, and the URL's rest was shown."""
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    values = {"DB_PASSWORD": DB_PASSWORD, "DB_URL": DB_URL}
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values=values)
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    text = f"connecting to {DB_URL} ...\n"
    cut = text.index(DB_PASSWORD)
    pieces = [(0, text[:cut]), (1, text[cut:])]
    for sequence, piece in pieces if order == "in order" else pieces[::-1]:
        await workers.append_job_log(
            worker_id=worker.id,
            session_id=job.session.id,
            lease_token=job.lease_token,
            chunks=[sessions.LogChunkIn(sequence=sequence, data=piece)],
            store=store,
        )
    live = (await sessions.read_log(actor=LOCAL_USER, session_id=job.session.id)).content
    stored = await _every_stored_value()
    ended = await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        store=store,
    )
    for shown in (live, ended.output_log or ""):
        assert DB_PASSWORD not in shown
        assert "db.internal" not in shown, shown
    assert ended.output_log == f"connecting to {secrets.MASK} ...\n"
    assert DB_PASSWORD not in stored
    assert "db.internal" not in stored


@pytest.mark.usefixtures("database")
async def test_the_commits_a_worker_reports_are_masked_before_they_are_stored() -> None:
    store = secrets.SecretStore()
    task = await _unit(expects_secrets=True)
    await secrets.send_secrets(actor=LOCAL_USER, store=store, task_id=task.id, values={"K": VALUE})
    worker = await _worker()
    job = await workers.claim_job(worker_id=worker.id, store=store)
    assert job is not None
    shifted = base64.b64encode(b"x" + VALUE.encode()).decode()
    await workers.report_status(
        worker_id=worker.id,
        session_id=job.session.id,
        lease_token=job.lease_token,
        status=Q.SUCCEEDED,
        base_commit=VALUE,
        end_commit=shifted,
        store=store,
    )
    unit = await m.UnitTask.get(id=task.id)
    assert unit.base_commit == secrets.MASK
    assert unit.end_commit is not None
    assert secrets.MASK in unit.end_commit
    stored = await _every_stored_value()
    assert VALUE not in stored
    assert shifted[2:-4] not in stored


async def test_a_large_batch_is_masked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    masker = secrets.OutputMasker({"K": VALUE})
    texts = [f"a {VALUE} b", "plain"]
    assert await masker.mask_each(texts) == [f"a {secrets.MASK} b", "plain"]
    threads: list[object] = []
    real = asyncio.to_thread

    async def spy(func: Callable[[], list[str]]) -> list[str]:
        threads.append(func)
        return await real(func)

    monkeypatch.setattr(secret_masking.asyncio, "to_thread", spy)
    monkeypatch.setattr(secret_masking, "OFFLOAD_WORK", 10)
    assert await masker.mask_each(texts) == [f"a {secrets.MASK} b", "plain"]
    assert len(threads) == 1
