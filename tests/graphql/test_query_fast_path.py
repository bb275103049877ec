"""The compiled path for hot queries (``delidev/graphql/query_fast_path.py``): which
documents it takes, and that every answer it gives is the ordinary path's answer, byte for
byte. The ordinary path is reached over GET (the compiled path serves POSTs only)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tortoise.context import TortoiseContext

from delidev import models as m
from delidev.app import create_app
from delidev.auth.principal import LOCAL_USER
from delidev.graphql import limits
from delidev.graphql.app import DeliDevGraphQL
from delidev.graphql.query_fast_path import PLAN_MAX_CHARS, query_plan
from delidev.graphql.schema import build_schema, document_checks
from delidev.services import auth, workspaces
from delidev.settings import Settings
from tests.factories import make_repository, make_workspace

SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
WORKSPACE = "query($id: ID!){ workspace(id: $id){ id name description createdAt updatedAt } }"
# Every field of Workspace that is a plain attribute: IDs, strings, big integers, an enum,
# optional timestamps.
PLAIN_WORKSPACE_FIELDS = (
    "id",
    "name",
    "description",
    "userId",
    "maxConcurrentJobs",
    "createdAt",
    "updatedAt",
    "monthlyBudgetMicros",
    "budgetPeriod",
    "taskBudgetMicros",
    "budgetWarningPercent",
    "budgetWarnedAt",
    "budgetBlockedUntil",
    "__typename",
)

PLANNED = [
    WORKSPACE,
    "query Named($id: ID!){ w: workspace(id: $id){ __typename id n: name } __typename }",
    "{ workspaces(limit: 5) { totalCount items { id name budgetPeriod } } }",
    "query($id: ID!){ repository(id: $id){ id name workspaceId } }",
    "query($a: ID!, $b: ID!){ a: workspace(id: $a){ id } b: workspace(id: $b){ id } }",
]
NOT_PLANNED = {
    "a fragment": "query($id: ID!){ workspace(id: $id){ ...F } } fragment F on Workspace { id }",
    "an inline fragment": "query($id: ID!){ workspace(id: $id){ ... on Workspace { id } } }",
    "a directive": "query($id: ID!, $x: Boolean!){ workspace(id: $id){ id @include(if: $x) } }",
    "a field with a resolver": "query($id: ID!){ workspace(id: $id){ repositories { id } } }",
    "an interface": "query($id: ID!){ task(id: $id){ id } }",
    "an enum argument": "{ tasks(kind: UNIT) { totalCount } }",
    "a duplicate response key": "{ workspaces { totalCount } workspaces { totalCount } }",
    "a mutation": 'mutation { createWorkspace(input: {name: "x"}) { id } }',
    "a subscription": "subscription($id: ID!){ sessionLog(sessionId: $id){ data } }",
    "two operations": "query A { workspaces { totalCount } } query B { workspaces { totalCount } }",
    "an invalid document": "{ workspaces { nope } }",
    "a document that does not parse": "{ workspaces {",
    "introspection": "{ __schema { queryType { name } } }",
    "too long a document": "{ workspaces { totalCount } }" + " " * PLAN_MAX_CHARS,
}


@pytest.fixture(scope="module")
def core_schema() -> Any:
    settings = Settings.from_env({"DELIDEV_SINGLE_USER_MODE": "true"})
    return build_schema(settings)._schema, document_checks(settings)


@pytest.mark.parametrize("document", PLANNED)
def test_plain_documents_get_a_plan(core_schema: Any, document: str) -> None:
    schema, checks = core_schema
    assert query_plan(schema, checks, document, None) is not None


@pytest.mark.parametrize("document", NOT_PLANNED.values(), ids=NOT_PLANNED.keys())
def test_other_documents_take_the_ordinary_path(core_schema: Any, document: str) -> None:
    schema, checks = core_schema
    assert query_plan(schema, checks, document, None) is None


def test_an_operation_name_must_match(core_schema: Any) -> None:
    schema, checks = core_schema
    document = "query Named { workspaces { totalCount } }"
    assert query_plan(schema, checks, document, "Named") is not None
    assert query_plan(schema, checks, document, "Other") is None


def test_the_document_limits_apply(settings: Settings) -> None:
    """A document over the limits (here: aliases) is the ordinary path's to refuse."""
    strict = settings.replace(graphql_max_aliases=1)
    schema = build_schema(strict)._schema
    document = "{ a: workspaces { totalCount } b: workspaces { totalCount } }"
    assert query_plan(schema, document_checks(strict), document, None) is None
    assert query_plan(schema, document_checks(settings), document, None) is not None


# --- Over HTTP: the same answers as the ordinary path ------------------------------------------


@pytest.fixture
def ordinary_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each request the ordinary path (Strawberry's view) answers."""
    calls: list[str] = []
    run = DeliDevGraphQL.run

    async def recording(self: DeliDevGraphQL, request: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(request.method)
        return await run(self, request, *args, **kwargs)

    monkeypatch.setattr(DeliDevGraphQL, "run", recording)
    return calls


async def _both(
    http: httpx.AsyncClient, query: str, variables: dict[str, Any] | None, **extra: Any
) -> tuple[httpx.Response, httpx.Response]:
    """The answer over POST and over GET (the ordinary path)."""
    body: dict[str, Any] = {"query": query, "variables": variables, **extra}
    posted = await http.post("/graphql", json=body)
    params = {"query": query}
    if variables is not None:
        params["variables"] = json.dumps(variables)
    if "operationName" in extra:
        params["operationName"] = extra["operationName"]
    got = await http.get("/graphql", params=params, headers={"accept": "application/json"})
    return posted, got


def _same(posted: httpx.Response, got: httpx.Response) -> None:
    assert (posted.status_code, posted.headers["content-type"]) == (
        got.status_code,
        got.headers["content-type"],
    )
    assert posted.content == got.content


async def test_a_planned_query_is_answered_without_the_ordinary_path(
    http: httpx.AsyncClient, ordinary_calls: list[str]
) -> None:
    ws = await make_workspace()
    posted, got = await _both(http, WORKSPACE, {"id": str(ws.id)})
    _same(posted, got)
    assert posted.json()["data"]["workspace"]["id"] == str(ws.id)
    assert ordinary_calls == ["GET"]


EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)


@EXAMPLES
@given(
    name=_text.filter(lambda s: s.strip() != "" and "\x00" not in s),
    description=st.none() | _text.filter(lambda s: "\x00" not in s),
    fields=st.lists(st.sampled_from(PLAIN_WORKSPACE_FIELDS), min_size=1, max_size=8),
    aliased=st.lists(st.booleans(), min_size=8, max_size=8),
    budget=st.none() | st.integers(0, 10**15),
)
async def test_any_selection_of_plain_fields_answers_as_the_ordinary_path(
    http: httpx.AsyncClient,
    ordinary_calls: list[str],
    name: str,
    description: str | None,
    fields: list[str],
    aliased: list[bool],
    budget: int | None,
) -> None:
    ws = await workspaces.create_workspace(
        actor=LOCAL_USER, name=name[:100], description=description
    )
    if budget is not None:
        await m.Workspace.filter(id=ws.id).update(monthly_budget_micros=budget)
    selection = " ".join(
        f"a{i}: {f}" if aliased[i] else f for i, f in enumerate(dict.fromkeys(fields))
    )
    query = f"query Pick($id: ID!){{ workspace(id: $id){{ {selection} }} }}"
    ordinary_calls.clear()
    posted, got = await _both(http, query, {"id": str(ws.id)})
    _same(posted, got)
    assert "errors" not in posted.json()
    assert ordinary_calls == ["GET"]


async def test_lists_and_several_root_fields(
    http: httpx.AsyncClient, ordinary_calls: list[str]
) -> None:
    first, second = await make_workspace(), await make_workspace()
    repo = await make_repository(first)
    for query, variables in [
        ("{ workspaces(limit: 5) { totalCount items { id name budgetPeriod } } }", None),
        (
            "query($a: ID!, $b: ID!){ a: workspace(id: $a){ id } b: workspace(id: $b){ id } }",
            {"a": str(first.id), "b": str(second.id)},
        ),
        ("query($id: ID!){ repository(id: $id){ id name workspaceId } }", {"id": str(repo.id)}),
        ("{ __typename workspaces(limit: 1, offset: 1) { items { __typename id } } }", None),
    ]:
        posted, got = await _both(http, query, variables)
        _same(posted, got)
        assert "errors" not in posted.json()
    assert ordinary_calls == ["GET"] * 4


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"id": str(uuid.uuid4())}, "NOT_FOUND"),  # the resolver raises
        ({"id": "not-a-uuid"}, "INVALID_ARGUMENT"),  # so does parse_id
        ({"id": 5}, "INVALID_ARGUMENT"),  # coerces to "5", then fails to parse
        ({"id": None}, "INVALID_ARGUMENT"),  # variables that do not coerce
        ({}, "INVALID_ARGUMENT"),
        (None, "INVALID_ARGUMENT"),
        ({"id": ["x"]}, "INVALID_ARGUMENT"),
    ],
)
async def test_errors_are_the_ordinary_paths(
    http: httpx.AsyncClient, variables: dict[str, Any] | None, code: str
) -> None:
    posted, got = await _both(http, WORKSPACE, variables)
    _same(posted, got)
    errors = posted.json()["errors"]
    assert errors[0]["extensions"]["code"] == code
    assert "Traceback" not in posted.text


async def test_request_shapes_the_plan_does_not_take_are_answered_as_before(
    http: httpx.AsyncClient, ordinary_calls: list[str]
) -> None:
    ws = await make_workspace()
    variables = {"id": str(ws.id)}
    shapes: list[dict[str, Any]] = [
        {"query": WORKSPACE, "variables": variables, "extensions": {"x": 1}},
        {"query": WORKSPACE, "variables": variables, "operationName": 5},
        {"query": WORKSPACE, "variables": "no"},
        {"query": 5},
    ]
    for shape in shapes:
        response = await http.post("/graphql", json=shape)
        assert response.status_code in (200, 400), response.text
    assert ordinary_calls == ["POST"] * len(shapes)
    bad = await http.post(
        "/graphql", content=b'{"query": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert bad.status_code == 400
    assert "valid Unicode" in bad.json()["errors"][0]["message"]


async def test_only_a_json_media_type_is_served(
    http: httpx.AsyncClient, ordinary_calls: list[str]
) -> None:
    """A cross-site page may POST "text/plain; x=application/json" without a preflight: it
    is refused as Strawberry refuses it, not answered by the plan (a regression)."""
    ws = await make_workspace()
    body = json.dumps({"query": WORKSPACE, "variables": {"id": str(ws.id)}})
    for content_type in ("text/plain; x=application/json", "text/plain", "application/xml"):
        response = await http.post("/graphql", content=body, headers={"content-type": content_type})
        assert response.status_code == 400, (content_type, response.text)
        assert "Unsupported content type" in response.json()["errors"][0]["message"]
    assert len(ordinary_calls) == 3
    ordinary_calls.clear()
    charset = await http.post(
        "/graphql", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert charset.json()["data"]["workspace"]["id"] == str(ws.id)
    assert ordinary_calls == []


async def test_huge_numbers_and_names_are_refused_or_left_to_the_ordinary_path(
    http: httpx.AsyncClient, ordinary_calls: list[str]
) -> None:
    """A 5000-digit integer answered 500 (Python's int() limit, a regression); a long
    operation name (or document) is not planned, so no plan cache key holds it."""
    huge = b'{"query": "{ __typename }", "variables": {"x": ' + b"9" * 5000 + b"}}"
    response = await http.post(
        "/graphql", content=huge, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "at most 4300 digits" in response.json()["errors"][0]["message"]
    ordinary_calls.clear()
    named = "N" + "x" * 5000
    response = await http.post(
        "/graphql", json={"query": f"query {named} {{ __typename }}", "operationName": named}
    )
    assert response.json() == {"data": {"__typename": "Query"}}
    assert ordinary_calls == ["POST"]
    before = query_plan.cache_info().currsize
    padded = "{ __typename }" + " " * PLAN_MAX_CHARS
    response = await http.post("/graphql", json={"query": padded})
    assert response.json() == {"data": {"__typename": "Query"}}
    assert query_plan.cache_info().currsize == before


def test_the_document_cache_is_bounded_by_characters(settings: Settings) -> None:
    """Documents are kept up to CACHED_CHARS characters in all, long ones under a digest."""
    schema = build_schema(settings)._schema
    checks = document_checks(settings)
    limits._CHECKED.clear()
    for i in range(40):
        # A unique document of ~20 000 characters (checked as the worker threads do).
        query = "{ " + f"a{i}: __typename " + "b: __typename " * 1400 + "}"
        args = (schema, query, checks.max_tokens, checks.limits, checks.all_rules)
        limits._remember(limits._key(*args), query, limits.check(*args))
    kept = sum(v.weight for v in limits._CHECKED.values())
    assert 0 < kept <= limits.CACHED_CHARS
    assert len(limits._CHECKED) < 40  # the oldest went
    assert all(isinstance(k[1], bytes) and len(k[1]) == 32 for k in limits._CHECKED)


async def test_documents_that_do_not_parse_are_counted_by_their_text(
    http: httpx.AsyncClient,
) -> None:
    """Regression (audit): a document that did not parse weighed 1 character, so up to
    500,000 of them were kept, each keyed by its text of up to 2,000 characters: ~1.3 GB of
    one process for anyone who could send a query (anonymous in multi-user mode, as the
    document is checked before the caller is)."""
    limits._CHECKED.clear()
    sent = 400
    for i in range(sent):
        query = f"{{ broken{i} " + "x " * 990  # ~1,990 characters, no closing brace
        response = await http.post("/graphql", json={"query": query})
        assert response.status_code == 200
        assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"
    texts = [len(k[1]) for k in limits._CHECKED if isinstance(k[1], str)]
    assert sum(texts) <= limits.CACHED_CHARS
    assert len(limits._CHECKED) < sent  # the oldest went: 400 x 1,990 > CACHED_CHARS


async def test_the_answer_size_limit_holds(settings: Settings, database: TortoiseContext) -> None:
    ws = await make_workspace()
    app = create_app(settings.replace(graphql_max_response_bytes=60))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.post(
            "/graphql", json={"query": WORKSPACE, "variables": {"id": str(ws.id)}}
        )
    assert "errors" in response.json()
    assert "larger than 60 bytes" in response.json()["errors"][0]["message"]


async def test_the_operation_is_counted_and_logged(
    http: httpx.AsyncClient, ordinary_calls: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="delidev.access")
    ws = await make_workspace()
    query = "query FastOne($id: ID!){ workspace(id: $id){ id } }"
    response = await http.post("/graphql", json={"query": query, "variables": {"id": str(ws.id)}})
    assert "errors" not in response.json()
    assert ordinary_calls == []
    lines = [r for r in caplog.records if r.name == "delidev.access"]
    assert [getattr(r, "graphql", None) for r in lines] == ["query FastOne"]
    exposition = (await http.get("/metrics")).text
    assert (
        'delidev_graphql_operation_duration_seconds_count{operation_name="FastOne",'
        'operation_type="query",outcome="ok"}'
    ) in exposition


# --- Multi-user: the caller is checked as on the ordinary path ------------------------------


@pytest.fixture
async def multi(settings: Settings, database: TortoiseContext) -> AsyncIterator[Any]:
    configured = settings.replace(
        single_user_mode=False,
        jwt_secret=SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret="client-secret",
    )
    transport = httpx.ASGITransport(app=create_app(configured))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client, configured


async def test_the_caller_is_authenticated_and_sees_only_their_own(
    multi: Any, ordinary_calls: list[str]
) -> None:
    client, configured = multi
    ada = await m.User.create(email="ada@example.com", name="ada")
    bob = await m.User.create(email="bob@example.com", name="bob")
    token = (await auth.issue_tokens(settings=configured, user=ada)).access_token
    theirs = await m.Workspace.create(name="bob's", user_id=bob.id)
    mine = await m.Workspace.create(name="ada's", user_id=ada.id)

    async def ask(workspace: m.Workspace, authorization: str | None) -> dict[str, Any]:
        headers = {"authorization": authorization} if authorization else {}
        response = await client.post(
            "/graphql",
            json={"query": WORKSPACE, "variables": {"id": str(workspace.id)}},
            headers=headers,
        )
        return dict(response.json())

    assert (await ask(mine, f"Bearer {token}"))["data"]["workspace"]["name"] == "ada's"
    assert ordinary_calls == []
    refused = await ask(mine, None)
    assert refused["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    forged = await ask(mine, f"Bearer {token[:-4]}AAAA")
    assert forged["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    hidden = await ask(theirs, f"Bearer {token}")
    assert hidden["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert len(ordinary_calls) == 3  # each error answered by the ordinary path


# --- The off switch -------------------------------------------------------------------------


def test_the_switch_is_read_from_the_environment() -> None:
    assert Settings.from_env({}).graphql_query_plans is True
    assert Settings.from_env({"DELIDEV_GRAPHQL_QUERY_PLANS": "false"}).graphql_query_plans is False


async def test_switched_off_every_query_runs_the_ordinary_way_with_the_same_answers(
    settings: Settings, database: TortoiseContext, ordinary_calls: list[str]
) -> None:
    ws = await make_workspace()
    repo = await make_repository(ws)
    requests: list[dict[str, Any]] = [
        {"query": WORKSPACE, "variables": {"id": str(ws.id)}},
        {"query": WORKSPACE, "variables": {"id": str(uuid.uuid4())}},
        {
            "query": "query($id: ID!){ repository(id: $id){ id name } }",
            "variables": {"id": str(repo.id)},
        },
        {"query": "{ workspaces { totalCount items { id budgetPeriod } } __typename }"},
    ]
    answers: dict[bool, list[bytes]] = {}
    for plans in (True, False):
        app = create_app(settings.replace(graphql_query_plans=plans))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            answers[plans] = [(await client.post("/graphql", json=r)).content for r in requests]
    assert answers[True] == answers[False]
    # On: only the request that failed (NOT_FOUND) ran the ordinary way; off: every one.
    assert ordinary_calls == ["POST"] * (1 + len(requests))
