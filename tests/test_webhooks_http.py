"""``POST /webhooks/{provider}/{repository_id}`` through the app: statuses and JSON answers of
every refusal (and that nothing is stored then), the body cap on declared and streamed
bodies, hostile bodies and headers (Hypothesis), GitHub's own signing code as a cross-check,
tenant isolation, and the settings through both APIs (the secret never comes back)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tortoise.context import TortoiseContext

from delidev import events
from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.services import repository_settings, webhooks
from delidev.settings import Settings
from tests.factories import make_repository, make_workspace
from tests.webhook_payloads import (
    GITHUB_SECRET,
    GITLAB_TOKEN,
    INTEROP_DIR,
    encode,
    ensure_node_modules,
    github_example,
    github_headers,
    github_sign,
    gitlab_example,
    gitlab_headers,
)

pytestmark = pytest.mark.usefixtures("database")


async def secured(
    actor: Principal = LOCAL_USER,
    host: str = "github.com",
    secret: str | None = None,
    remote_url: str | None = None,
) -> m.Repository:
    ws = await make_workspace(actor)
    if remote_url is None:
        repo = await make_repository(ws, actor, host=host)
    else:
        from delidev.services import repositories

        repo = await repositories.add_repository(
            actor=actor, workspace_id=ws.id, remote_url=remote_url
        )
    default = (
        GITLAB_TOKEN
        if "gitlab" in host or (remote_url and "gitlab" in remote_url)
        else GITHUB_SECRET
    )
    return await repository_settings.set_webhook_secret(
        actor=actor, repository_id=repo.id, secret=secret or default
    )


async def stored() -> tuple[int, int]:
    return await m.WebhookDelivery.all().count(), await m.TodoItem.all().count()


async def test_github_delivery_through_the_route(http: httpx.AsyncClient) -> None:
    repo = await secured()
    body = encode(github_example("issues", "opened"))
    headers = github_headers("issues", body)
    answer = await http.post(f"/webhooks/github/{repo.id}", content=body, headers=headers)
    assert (answer.status_code, answer.json()) == (200, {"status": "processed"})
    again = await http.post(f"/webhooks/github/{repo.id}", content=body, headers=headers)
    assert (again.status_code, again.json()) == (200, {"status": "duplicate"})
    assert await stored() == (1, 1)


async def test_gitlab_delivery_through_the_route(http: httpx.AsyncClient) -> None:
    repo = await secured(host="gitlab.com")
    body = encode(gitlab_example("issue_open"))
    answer = await http.post(
        f"/webhooks/gitlab/{repo.id}", content=body, headers=gitlab_headers("Issue Hook")
    )
    assert (answer.status_code, answer.json()) == (200, {"status": "processed"})
    assert await stored() == (1, 1)


async def test_unknown_events_are_acknowledged_and_ignored(http: httpx.AsyncClient) -> None:
    repo = await secured()
    body = encode(github_example("ping"))
    answer = await http.post(
        f"/webhooks/github/{repo.id}", content=body, headers=github_headers("ping", body)
    )
    assert (answer.status_code, answer.json()) == (202, {"status": "ignored"})
    body = encode({"action": "created", "starred_at": None})
    answer = await http.post(
        f"/webhooks/github/{repo.id}", content=body, headers=github_headers("star", body)
    )
    assert answer.status_code == 202
    assert await stored() == (2, 0)  # their ids are remembered all the same


async def test_refusals(http: httpx.AsyncClient) -> None:
    repo = await secured()
    no_secret = await make_repository(await make_workspace())
    body = encode(github_example("issues", "opened"))
    good = github_headers("issues", body)
    path = f"/webhooks/github/{repo.id}"

    def without(name: str) -> dict[str, str]:
        return {k: v for k, v in good.items() if k != name}

    cases: list[tuple[str, dict[str, str], bytes, int, str]] = [
        (f"/webhooks/github/{uuid.uuid4()}", good, body, 404, "no webhook is configured"),
        (f"/webhooks/github/{no_secret.id}", good, body, 404, "no webhook is configured"),
        (f"/webhooks/gitlab/{repo.id}", good, body, 404, "no webhook is configured"),
        (f"/webhooks/bitbucket/{repo.id}", good, body, 404, "no webhook is configured"),
        ("/webhooks/github/x", good, body, 404, "no webhook is configured"),
        (path, without("x-hub-signature-256"), body, 401, "not signed"),
        (path, {**good, "x-hub-signature-256": github_sign("nope", body)}, body, 401, "match"),
        (path, {**good, "x-hub-signature-256": "sha256=" + "zz" * 32}, body, 401, "match"),
        (path, {**good, "content-type": "application/x-www-form-urlencoded"}, body, 415, "JSON"),
        (path, without("x-github-event"), body, 400, "names no event"),
        (path, without("x-github-delivery"), body, 400, "no id"),
        (path, {**good, "x-github-delivery": "x" * 300}, body, 400, "too long"),
    ]
    not_json = b"{not json"
    cases.append((path, github_headers("issues", not_json), not_json, 400, "not valid JSON"))
    listed = b"[1, 2]"
    cases.append((path, github_headers("issues", listed), listed, 400, "JSON object"))
    deep = b'{"a":' * 100 + b"1" + b"}" * 100
    cases.append((path, github_headers("issues", deep), deep, 400, "deeper"))
    broken = encode({"action": "opened", "issue": {"html_url": 5}})
    cases.append((path, github_headers("issues", broken), broken, 400, "issue.html_url"))
    bad_url = encode(
        {"action": "opened", "issue": {"html_url": "javascript:alert(1)", "title": "t"}}
    )
    cases.append((path, github_headers("issues", bad_url), bad_url, 400, "http(s) URL"))

    for url, headers, sent, status, words in cases:
        answer = await http.post(url, content=sent, headers=headers)
        assert answer.status_code == status, (url, headers, answer.text)
        assert words in answer.json()["error"], answer.text
    assert (await http.get(path)).status_code == 405
    assert await stored() == (0, 0)


async def test_a_changed_file_count_beyond_32_bits_is_clamped_and_both_apis_list_it(
    http: httpx.AsyncClient,
) -> None:
    repo = await secured()
    for number, count in enumerate((2**31, 10**30, -5), start=1):
        payload = github_example("pull_request", "opened")
        payload["pull_request"]["html_url"] = f"https://github.com/o/r/pull/{number}"
        payload["pull_request"]["changed_files"] = count
        body = encode(payload)
        answer = await http.post(
            f"/webhooks/github/{repo.id}",
            content=body,
            headers=github_headers("pull_request", body),
        )
        assert answer.status_code == 200, answer.text
    stored_counts = sorted(i.data["changed_files_count"] for i in await m.TodoItem.all())
    assert stored_counts == [0, 2**31 - 1, 2**31 - 1]
    # A row filed before the clamp existed lists too (bounded on the way out).
    await m.TodoItem.create(
        type=m.TodoItemType.PR_REVIEW,
        source=m.TodoItemSource.AUTO,
        status=m.TodoItemStatus.PENDING,
        repository_id=repo.id,
        data={
            "pr_url": "https://github.com/o/r/pull/9",
            "pr_title": "t",
            "changed_files_count": 10**30,
        },
    )

    listed = await http.post("/delidev.v1.TodoService/List", json={})
    assert listed.status_code == 200, listed.text
    connect_counts = sorted(
        int(i["prReview"].get("changedFilesCount", 0)) for i in listed.json()["items"]
    )
    assert connect_counts == [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]
    query = "{ todoItems { items { data { ... on PrReviewData { changedFilesCount } } } } }"
    graphql = await http.post("/graphql", json={"query": query})
    assert "errors" not in graphql.json(), graphql.text
    graphql_counts = sorted(
        i["data"]["changedFilesCount"] for i in graphql.json()["data"]["todoItems"]["items"]
    )
    assert graphql_counts == [0, 2**31 - 1, 2**31 - 1, 2**31 - 1]


async def test_a_payload_url_with_whitespace_or_control_characters_is_refused_naming_it(
    http: httpx.AsyncClient,
) -> None:
    """Refused before the URL reaches a query (PostgreSQL cannot even compare a NUL), with
    the payload field named; nothing is stored."""
    repo = await secured()
    gitlab_repo = await secured(host="gitlab.com")
    pr = "https://github.com/Codertocat/Hello-World/pull/2"
    closed = github_example("pull_request", "closed")
    closed["pull_request"]["html_url"] = pr + "\x00"
    opened = github_example("pull_request", "opened")
    opened["pull_request"]["html_url"] = pr + "\n/files"
    issue = github_example("issues", "opened")
    issue["issue"]["html_url"] = "https://github.com/Codertocat/Hello-World/issues/1 x"
    comment = github_example("pull_request_review_comment", "created")
    comment["comment"]["html_url"] = pr + "\r#discussion_r1"
    run = github_example(
        "check_run", "completed", lambda e: e["check_run"]["conclusion"] == "failure"
    )
    run["check_run"]["details_url"] = "https://example.com/\x1b[2J"
    github_cases = [
        ("pull_request", closed, "pull_request.html_url"),
        ("pull_request", opened, "pull_request.html_url"),
        ("issues", issue, "issue.html_url"),
        ("pull_request_review_comment", comment, "comment.html_url"),
        ("check_run", run, "check_run.details_url"),
    ]
    for event, payload, field in github_cases:
        body = encode(payload)
        answer = await http.post(
            f"/webhooks/github/{repo.id}", content=body, headers=github_headers(event, body)
        )
        assert answer.status_code == 400, (field, answer.text)
        assert field in answer.json()["error"], answer.text
        assert "must not contain" in answer.json()["error"]  # NUL, whitespace or control
    note = gitlab_example("note_merge_request")
    note["merge_request"]["url"] = "http://example.com/g/t/merge_requests/1\x00"
    answer = await http.post(
        f"/webhooks/gitlab/{gitlab_repo.id}",
        content=encode(note),
        headers=gitlab_headers("Note Hook"),
    )
    assert answer.status_code == 400, answer.text
    assert "merge_request.url" in answer.json()["error"]
    assert await stored() == (0, 0)


async def test_a_gitlab_token_that_does_not_match_is_refused(http: httpx.AsyncClient) -> None:
    repo = await secured(host="gitlab.com")
    body = encode(gitlab_example("issue_open"))
    latin = {**gitlab_headers("Issue Hook"), "x-gitlab-token": "ünïcödé-token-ü".encode("latin-1")}
    for headers in (
        gitlab_headers("Issue Hook", token="not-the-token-at-all"),
        {k: v for k, v in gitlab_headers("Issue Hook").items() if k != "x-gitlab-token"},
        latin,
    ):
        answer = await http.post(f"/webhooks/gitlab/{repo.id}", content=body, headers=headers)
        assert answer.status_code == 401, answer.text
    assert await stored() == (0, 0)


@pytest.fixture
async def small_app(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    application = create_app(dataclasses.replace(settings, webhook_max_body_bytes=4096))
    token = events.bind(application.state.events)
    try:
        yield application
    finally:
        events.unbind(token)


async def test_oversized_bodies_are_refused_declared_or_streamed(small_app: Any) -> None:
    repo = await secured()
    path = f"/webhooks/github/{repo.id}"
    big = encode({"action": "opened", "padding": "x" * 10_000})
    pulled = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(1000):  # 1 MB in 1 KiB pieces, no content-length: chunked
            pulled += 1
            yield b"x" * 1024

    transport = httpx.ASGITransport(app=small_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        declared = await client.post(path, content=big, headers=github_headers("issues", big))
        assert declared.status_code == 413
        assert "larger than 4096 bytes" in declared.json()["error"]
        streamed = await client.post(path, content=chunks(), headers=github_headers("issues", b""))
        assert streamed.status_code == 413
    assert pulled <= 6  # refused once past the cap, not after reading the megabyte
    assert await stored() == (0, 0)


def test_the_signature_matches_githubs_own_signing_code() -> None:
    """``@octokit/webhooks-methods`` (GitHub's JavaScript signing code) signs a real example
    delivery and verifies ours."""
    ensure_node_modules()
    node = shutil.which("node")
    assert node is not None, "node is needed (tests/interop)"
    body = encode(github_example("pull_request", "opened"))
    ours = webhooks.github_signature(GITHUB_SECRET, body)
    script = """
import { sign, verify } from "@octokit/webhooks-methods";
import { readFileSync } from "node:fs";
const [secret, ours] = [process.env.SECRET, process.env.OURS];
const payload = readFileSync(0, "utf8");
const theirs = await sign(secret, payload);
console.log(JSON.stringify({ theirs, verified: await verify(secret, payload, ours) }));
"""
    done = subprocess.run(
        [node, "--input-type=module", "-e", script],
        input=body,
        capture_output=True,
        cwd=INTEROP_DIR,
        env={"SECRET": GITHUB_SECRET, "OURS": ours, "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    assert result == {"theirs": ours, "verified": True}


async def test_a_delivery_for_one_tenant_leaves_the_other_alone(http: httpx.AsyncClient) -> None:
    alice = Principal(kind="user", user_id=(await m.User.create(email="alice@x.test")).id)
    bob = Principal(kind="user", user_id=(await m.User.create(email="bob@x.test")).id)
    url = "https://github.com/Codertocat/Hello-World.git"
    mine = await secured(alice, remote_url=url, secret="alice-secret-0123456789")
    theirs = await secured(bob, remote_url=url, secret="bob-secret-0123456789ab")
    await repository_settings.update_repository_settings(
        actor=bob, repository_id=theirs.id, auto_triage=True
    )
    body = encode(github_example("issues", "opened"))
    signed_for_alice = github_headers("issues", body, secret="alice-secret-0123456789")
    answer = await http.post(f"/webhooks/github/{mine.id}", content=body, headers=signed_for_alice)
    assert answer.status_code == 200
    wrong_door = await http.post(
        f"/webhooks/github/{theirs.id}",
        content=body,
        headers=github_headers("issues", body, secret="alice-secret-0123456789"),
    )
    assert wrong_door.status_code == 401
    assert await m.TodoItem.filter(repository_id=mine.id).count() == 1
    assert await m.TodoItem.filter(repository_id=theirs.id).count() == 0
    assert await m.WebhookDelivery.filter(repository_id=theirs.id).count() == 0


_HEADER_NAMES = st.sampled_from(
    [
        "content-type",
        "x-github-event",
        "x-github-delivery",
        "x-hub-signature-256",
        "x-gitlab-token",
        "x-gitlab-event",
        "idempotency-key",
        "content-length",
    ]
)
_HEADER_VALUES = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
) | st.sampled_from(["application/json", "issues", "pull_request", "check_run", "Note Hook"])
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=30,
)
_EVENTS = st.sampled_from(
    [
        "issues",
        "pull_request",
        "pull_request_review",
        "pull_request_review_comment",
        "check_run",
        "ping",
        "x",
    ]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=st.data(),
    event=_EVENTS,
    payload=_JSON,
    raw=st.binary(max_size=200),
    signed=st.booleans(),
    as_json=st.booleans(),
    extra=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=3),
)
async def test_hostile_deliveries_never_fail_and_refusals_store_nothing(
    http: httpx.AsyncClient,
    data: st.DataObject,
    event: str,
    payload: Any,
    raw: bytes,
    signed: bool,
    as_json: bool,
    extra: dict[str, str],
) -> None:
    repo = await m.Repository.filter(webhook_secret__not_isnull=True).first()
    if repo is None:
        repo = await secured()
    if as_json and isinstance(payload, dict):
        # Known event shapes with hostile values inside.
        payload = {
            "action": data.draw(
                st.sampled_from(["opened", "closed", "created", "completed", "submitted"])
            ),
            **payload,
        }
    body = json.dumps(payload).encode() if as_json else raw
    headers = github_headers(event, body)
    if not signed:
        headers["x-hub-signature-256"] = github_sign("another-secret", body)
    headers.update({k: v for k, v in extra.items() if k != "content-length"})
    before = await stored()
    answer = await http.post(f"/webhooks/github/{repo.id}", content=body, headers=headers)
    assert answer.status_code in (200, 202, 400, 401, 415), answer.text
    assert isinstance(answer.json(), dict)
    if answer.status_code >= 400:
        assert await stored() == before


_GITLAB_EVENTS = st.sampled_from(
    ["Issue Hook", "Merge Request Hook", "Note Hook", "Pipeline Hook", "Push Hook", "x"]
)
_KINDS = st.sampled_from(["issue", "merge_request", "note", "pipeline", "push", "x"])


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    event=_GITLAB_EVENTS,
    kind=_KINDS,
    attributes=_JSON,
    rest=_JSON,
    raw=st.binary(max_size=200),
    with_token=st.booleans(),
    as_json=st.booleans(),
    extra=st.dictionaries(_HEADER_NAMES, _HEADER_VALUES, max_size=3),
)
async def test_hostile_gitlab_deliveries_never_fail_and_refusals_store_nothing(
    http: httpx.AsyncClient,
    event: str,
    kind: str,
    attributes: Any,
    rest: Any,
    raw: bytes,
    with_token: bool,
    as_json: bool,
    extra: dict[str, str],
) -> None:
    """GitLab's shapes (``object_kind``, ``object_attributes``, ``merge_request``, ...)
    holding hostile values: never a 500, and a refusal stores nothing."""
    repo = await m.Repository.filter(
        webhook_secret__not_isnull=True, vcs_provider_type=m.VcsProviderType.GITLAB
    ).first()
    if repo is None:
        repo = await secured(host="gitlab.com")
    payload: Any = {
        "object_kind": kind,
        "object_attributes": attributes,
        "merge_request": rest,
        "project": rest,
        "labels": rest,
    }
    body = json.dumps(payload).encode() if as_json else raw
    headers = gitlab_headers(event, token=GITLAB_TOKEN if with_token else "a-wrong-token-123")
    headers.update({k: v for k, v in extra.items() if k != "content-length"})
    before = await stored()
    answer = await http.post(f"/webhooks/gitlab/{repo.id}", content=body, headers=headers)
    assert answer.status_code in (200, 202, 400, 401, 415), answer.text
    assert isinstance(answer.json(), dict)
    if answer.status_code >= 400:
        assert await stored() == before
