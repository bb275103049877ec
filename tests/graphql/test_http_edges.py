"""GraphQL over HTTP at its edges: bodies that are not GraphQL requests, values Python's
JSON accepts and the server cannot hold, subscriptions over POST, the
``application/graphql-response+json`` media type, the size of an answer, and what an
anonymous caller of a multi-user server is shown."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from tortoise.context import TortoiseContext

from delidev import models as m
from delidev.app import create_app
from delidev.services import sessions, tasks
from delidev.services.sessions import LogChunkIn
from delidev.settings import Settings
from tests.factories import LOCAL_USER, make_group, make_repository, make_workspace, start_latest

pytestmark = pytest.mark.usefixtures("database")

CREATE = "mutation($n: String!) { createWorkspace(input: {name: $n}) { id } }"
GRAPHQL_RESPONSE = "application/graphql-response+json"


def _body(query: str, **variables: Any) -> bytes:
    return json.dumps({"query": query, "variables": variables}).encode()


BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("null", b"null", "must be a JSON object"),
    ("a number", b"1", "must be a JSON object"),
    ("a string", b'"{ workspaces { totalCount } }"', "must be a JSON object"),
    ("invalid UTF-8", b'{"query": "{ workspaces { totalCount } }", "x": "\xff\xfe"}', "UTF-8"),
    ("not JSON", b"{query", "not valid JSON"),
    (
        "deeply nested variables",
        b'{"query": "{ __typename }", "variables": {"v": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        "nests deeper than",
    ),
    ("a lone surrogate", _body(CREATE, n="\ud800"), "valid Unicode"),
    ("NaN", b'{"query": "{ __typename }", "variables": {"v": NaN}}', "finite"),
    ("1e400", b'{"query": "{ __typename }", "variables": {"v": 1e400}}', "finite"),
    ("a batch", b'[{"query": "{ __typename }"}]', "Batching"),
    ("a numeric query", b'{"query": 5}', "`query` must be a string"),
    ("no query", b"{}", "no GraphQL query"),
    # Found by the fuzzer once operations were timed and logged: a list reached them.
    (
        "a list operationName",
        b'{"query": "{ __typename }", "operationName": [[1]]}',
        "must be a string",
    ),
    (
        "a numeric operationName",
        b'{"query": "{ __typename }", "operationName": 5}',
        "must be a string",
    ),
    ("a subscription", _body("subscription { workerUpdated { workerId } }"), "WebSocket"),
]


@pytest.mark.parametrize(("what", "body", "reason"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
async def test_a_bad_body_is_a_400_with_a_code(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, what: str, body: bytes, reason: str
) -> None:
    response = await http.post(
        "/graphql", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, (what, response.text)
    assert response.headers["content-type"] == "application/json"
    (error,) = response.json()["errors"]
    assert error["extensions"] == {"code": "INVALID_ARGUMENT", "delidevCode": -32602}
    assert reason in error["message"]
    assert await m.Workspace.all().count() == 0
    assert not [r for r in caplog.records if r.exc_info]


async def test_deep_variables_in_the_url_are_refused(http: httpx.AsyncClient) -> None:
    variables = '{"v": ' + "[" * 5_000 + "]" * 5_000 + "}"
    response = await http.get(
        "/graphql", params={"query": "{ __typename }", "variables": variables}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"


async def test_good_requests_are_unchanged(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/graphql", content=_body(CREATE, n="café 😀"), headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert "errors" not in response.json()
    assert [w.name for w in await m.Workspace.all()] == ["café 😀"]


# --- application/graphql-response+json -----------------------------------------------------

REQUEST_ERRORS = [
    ("a syntax error", "{ workspaces { ", {}),
    ("too many tokens", "{ workspaces { totalCount " + "totalCount " * 6000 + "} }", {}),
    ("a validation error", "{ workspaces { nope } }", {}),
    ("a missing variable", "query($id: ID!) { workspace(id: $id) { id } }", {}),
    ("a variable of the wrong type", "query($n: Int) { workspaces(limit: $n) { totalCount } }",
     {"n": "ten"}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "query", "variables"), REQUEST_ERRORS, ids=[e[0] for e in REQUEST_ERRORS]
)
async def test_request_errors_are_400_without_data_for_graphql_response_json(
    http: httpx.AsyncClient, what: str, query: str, variables: dict[str, Any]
) -> None:
    response = await http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"accept": f"{GRAPHQL_RESPONSE}, application/json;q=0.9"},
    )
    assert response.status_code == 400, what
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    body = response.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize(
    ("what", "query", "variables"), REQUEST_ERRORS, ids=[e[0] for e in REQUEST_ERRORS]
)
async def test_request_errors_stay_200_with_data_for_application_json(
    http: httpx.AsyncClient, what: str, query: str, variables: dict[str, Any]
) -> None:
    response = await http.post(
        "/graphql",
        json={"query": query, "variables": variables},
        headers={"accept": "application/json"},
    )
    assert response.status_code == 200, what
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "INVALID_ARGUMENT"


async def test_field_errors_are_200_with_data_for_graphql_response_json(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/graphql",
        json={"query": '{ workspace(id: "6c1d2d07-2b1c-4d56-9c7f-0d8c3d4c1a11") { id } }'},
        headers={"accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == GRAPHQL_RESPONSE
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_bad_body_answers_in_the_accepted_media_type(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/graphql",
        content=b"null",
        headers={"content-type": "application/json", "accept": GRAPHQL_RESPONSE},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == GRAPHQL_RESPONSE


# --- The size of an answer -----------------------------------------------------------------


async def _session_with_log(size: int) -> str:
    ws = await make_workspace()
    group = await make_group(ws, [await make_repository(ws)])
    task = await tasks.create_unit_task(actor=LOCAL_USER, repository_group_id=group.id, prompt="p")
    session = await start_latest(task.agent_task_id)
    await sessions.append_log(
        session_id=session.id, chunks=[LogChunkIn(sequence=0, data="x" * size)]
    )
    return str(session.id)


@pytest.fixture
async def small_answers(settings: Settings, database: TortoiseContext) -> Any:
    app = create_app(settings.replace(graphql_max_response_bytes=50_000))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client


async def test_aliased_log_reads_are_refused_past_the_budget(
    small_answers: httpx.AsyncClient,
) -> None:
    """30 aliased reads of a 20 000-character log would answer 600 KB; 2 fit in 50 KB."""
    session_id = await _session_with_log(20_000)
    reads = " ".join(f"r{i}: log {{ content }}" for i in range(30))
    response = await small_answers.post(
        "/graphql",
        json={"query": f'{{ session(id: "{session_id}") {{ {reads} }} }}'},
    )
    assert response.status_code == 200
    assert len(response.content) < 50_000
    body = response.json()
    codes = {(e["extensions"]["code"], e["extensions"].get("field")) for e in body["errors"]}
    assert codes == {("INVALID_ARGUMENT", "log")}
    assert "DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES" in body["errors"][0]["message"]


async def test_log_reads_within_the_budget_are_served(small_answers: httpx.AsyncClient) -> None:
    session_id = await _session_with_log(20_000)
    reads = " ".join(
        f"r{i}: log(offset: {i * 10_000}, limit: 10000) {{ content }}" for i in range(2)
    )
    response = await small_answers.post(
        "/graphql", json={"query": f'{{ session(id: "{session_id}") {{ {reads} }} }}'}
    )
    body = response.json()
    assert "errors" not in body, body
    assert [len(r["content"]) for r in body["data"]["session"].values()] == [10_000, 10_000]


async def test_any_answer_over_the_limit_is_refused(settings: Settings) -> None:
    for i in range(30):
        await make_workspace(name=f"{i:03}" + "w" * 250)
    app = create_app(settings.replace(graphql_max_response_bytes=5_000))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.post(
            "/graphql", json={"query": "{ workspaces { items { name } } }"}
        )
    assert len(response.content) < 5_000
    (error,) = response.json()["errors"]
    assert error["extensions"]["code"] == "INVALID_ARGUMENT"
    assert "larger than 5000 bytes" in error["message"]


# --- GraphiQL and introspection by mode ----------------------------------------------------

INTROSPECTION = "{ __schema { types { name } } }"


def _multi_user(settings: Settings, **extra: Any) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret="Vq3f9Zs0LkP2xR7mT4wYb8NcH1uJ6eGd",
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret="client-secret",
        **extra,
    )


async def _shown(settings: Settings) -> tuple[int, bool]:
    """(the status of GraphiQL for a browser, whether introspection answers)."""
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        page = await client.get("/graphql", headers={"accept": "text/html"})
        schema = (await client.post("/graphql", json={"query": INTROSPECTION})).json()
    return page.status_code, "errors" not in schema


async def test_multi_user_mode_hides_graphiql_and_introspection(settings: Settings) -> None:
    assert await _shown(settings) == (200, True)
    assert await _shown(_multi_user(settings)) == (404, False)
    opened = _multi_user(settings, graphql_graphiql=True, graphql_introspection=True)
    assert await _shown(opened) == (200, True)
    closed = settings.replace(graphql_graphiql=False, graphql_introspection=False)
    assert await _shown(closed) == (404, False)


async def test_graphiql_is_never_framed_by_another_site(settings: Settings) -> None:
    """Regression: the page (which fills its editor from the URL) could be framed by
    any site, one tricked click from running a mutation on a single-user server."""
    app = create_app(settings)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        page = await client.get("/graphql", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["x-content-type-options"] == "nosniff"


async def test_refused_introspection_says_why(settings: Settings) -> None:
    app = create_app(_multi_user(settings))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        response = await client.post("/graphql", json={"query": INTROSPECTION})
        typename = await client.post("/graphql", json={"query": "{ __typename }"})
    refusals = response.json()["errors"]
    assert {e["extensions"]["code"] for e in refusals} == {"INVALID_ARGUMENT"}
    assert "introspection" in refusals[0]["message"]
    assert typename.json() == {"data": {"__typename": "Query"}}


def test_the_settings_come_from_the_environment() -> None:
    env = {
        "DELIDEV_GRAPHQL_INTROSPECTION": "true",
        "DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES": "1000",
        "DELIDEV_GRAPHQL_MAX_FIELDS": "10",
        "DELIDEV_GRAPHQL_MAX_FRAGMENTS": "3",
    }
    settings = Settings.from_env(env)
    assert settings.graphql_introspection is True
    assert settings.graphql_graphiql is None
    assert (settings.graphql_max_response_bytes, settings.graphql_max_fields) == (1000, 10)
    assert settings.graphql_max_fragments == 3
