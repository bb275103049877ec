"""``/metrics``: who may read it, the off switch, labels no client can grow without bound,
and several uvicorn worker processes summed (issue 12). The values after a scripted run are
checked against a real server process in ``tests/e2e/test_metrics.py``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from delidev import metrics
from delidev.app import create_app
from delidev.settings import Settings

TOKEN = "metrics-token-0123456789-abcdefghij"
SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"


def _multi(settings: Settings, **changes: Any) -> Settings:
    return settings.replace(
        single_user_mode=False,
        jwt_secret=SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="client",
        oidc_client_secret="client-secret",
        **changes,
    )


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        yield client


@pytest.fixture
async def multi_without_token(
    settings: Settings, database: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(_multi(settings)):
        yield client


@pytest.fixture
async def multi_with_token(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(_multi(settings, metrics_token=TOKEN)):
        yield client


@pytest.fixture
async def metrics_off(settings: Settings, database: Any) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(settings.replace(metrics=False)):
        yield client


async def test_multi_user_mode_refuses_metrics_until_a_token_is_set(
    multi_without_token: httpx.AsyncClient,
) -> None:
    response = await multi_without_token.get("/metrics")
    assert response.status_code == 403
    assert "DELIDEV_METRICS_TOKEN" in response.json()["error"]
    assert "delidev_" not in response.text


async def test_the_token_opens_metrics_and_nothing_else_does(
    multi_with_token: httpx.AsyncClient,
) -> None:
    for headers in (
        {},
        {"authorization": "Bearer wrong-token-wrong-token-wrong-token"},
        {"authorization": f"Basic {TOKEN}"},
        {"authorization": f"Bearer {TOKEN}x"},
        {"authorization": "Bearer \xe9".encode("latin-1")},  # not ASCII: refused, no error
    ):
        refused = await multi_with_token.get("/metrics", headers=headers)
        assert refused.status_code == 401, headers
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "delidev_" not in refused.text
    ok = await multi_with_token.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    assert "delidev_jobs_queued" in ok.text


def _http_count(route: str) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            if (
                sample.name == "http_server_request_duration_seconds_count"
                and sample.labels.get("http_route") == route
            ):
                total += sample.value
    return total


async def test_the_off_switch_removes_the_endpoint_and_the_timing(
    metrics_off: httpx.AsyncClient,
) -> None:
    before = _http_count("/healthz")
    assert (await metrics_off.get("/metrics")).status_code == 404
    assert (await metrics_off.get("/healthz")).status_code == 200
    assert _http_count("/healthz") == before


async def test_made_up_paths_and_methods_share_one_series(http: httpx.AsyncClient) -> None:
    before = _http_count("other")
    for path in ("/x", "/delidev.v1.NoSuchService/Get", "/" + "a" * 5000, "/%00%ff"):
        await http.get(path)
    await http.request("BREW", "/healthz")
    assert _http_count("other") == before + 4
    text = (await http.get("/metrics")).text
    for made_up in ("NoSuchService", "aaaa", "BREW"):
        assert made_up not in text
    assert 'http_request_method="_OTHER"' in text


@given(st.text(max_size=300))
def test_an_operation_label_is_short_and_plain_whatever_the_client_sends(name: str) -> None:
    label = metrics.operation_label(name)
    assert label in ("anonymous", "other") or (label == name and len(label) <= 64)
    assert label.replace("_", "a").isalnum()


def test_operation_names_are_bounded_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # A set of its own: the process's places stay free for the tests that run after.
    monkeypatch.setattr(metrics, "_operation_names", set())
    for i in range(metrics._MAX_OPERATION_NAMES + 50):
        metrics.operation_label(f"Op{i}")
    assert len(metrics._operation_names) <= metrics._MAX_OPERATION_NAMES
    assert metrics.operation_label("OneMoreNewName") == "other"


async def test_operation_names_are_taken_only_by_authenticated_successes(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (audit): the first 200 names of the process were kept, whoever sent them
    and however the operation ended, so a client (anonymous in multi-user mode) could take
    them all with ``query Junk1 { __typename }``; the dashboards' own operations were then
    counted as "other" for the life of the process."""
    monkeypatch.setattr(metrics, "_operation_names", set())
    for i in range(metrics._MAX_OPERATION_NAMES + 20):
        await http.post("/graphql", json={"query": f"query Junk{i} {{ __typename }}"})
        await http.post("/graphql", json={"query": f"query Bad{i} {{ noSuchField }}"})
        cut = f"query Cut{i} {{ workspaces(limit: -1) {{ totalCount }} }}"
        await http.post("/graphql", json={"query": cut})
    response = await http.post(
        "/graphql", json={"query": "query Dashboard { workspaces(limit: 5) { items { id } } }"}
    )
    assert "errors" not in response.json(), response.json()
    text = (await http.get("/metrics")).text
    assert 'operation_name="Dashboard"' in text
    for made_up in ("Junk", "Bad", "Cut"):
        assert f'operation_name="{made_up}' not in text
    assert metrics._operation_names == {"Dashboard"}


def test_the_route_names_cover_exactly_the_services_served(settings: Settings) -> None:
    from delidev import events
    from delidev.auth.authenticator import Authenticator
    from delidev.connect.routes import SERVICE_PATHS, connect_apps, connect_route
    from delidev.services.live import LogFeeds
    from delidev.services.secrets import SecretStore
    from delidev.services.workers import JobSignal

    async def verify(_: str) -> Any:
        raise AssertionError("not called")

    apps = connect_apps(
        Authenticator(settings, verify), settings, JobSignal(), SecretStore(),
        LogFeeds(events.EventBus()),
    )  # fmt: skip
    assert sorted(a.path for a in apps) == sorted(SERVICE_PATHS)
    assert connect_route("/delidev.v1.TaskService/Get") == "/delidev.v1.TaskService/{method}"
    for made_up in ("/delidev.v1.NoSuchService/Get", "/delidev.v1.TaskService", "/x"):
        assert connect_route(made_up) is None


def _rpc_count(service: str, method: str, code: str | None = None) -> float:
    total = 0.0
    for family in REGISTRY.collect():
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "rpc_server_call_duration_seconds_count"
                and (labels.get("rpc_service"), labels.get("rpc_method")) == (service, method)
                and code in (None, labels.get("rpc_response_status_code"))
            ):
                total += sample.value
    return total


async def test_calls_the_runtime_refuses_are_counted_with_their_code(
    http: httpx.AsyncClient,
) -> None:
    """Regression: a call refused before our interceptors ran (a body that does not decode,
    an unknown JSON field, a wrong content type, too large) was only an HTTP 400 in the
    metrics, missing from the RPC series a dashboard of errors by method reads."""
    service, method = "delidev.v1.TaskService", "List"
    path = f"/{service}/{method}"
    route = "/delidev.v1.TaskService/{method}"
    before = {code: _rpc_count(service, method, code) for code in ("ok", "invalid_argument")}
    http_before, rpc_before = _http_count(route), _rpc_count(service, "List")
    sends = [
        ({"content-type": "application/json"}, b"{}", "ok"),
        ({"content-type": "application/json"}, b'{"noSuchField": 1}', "invalid_argument"),
        ({"content-type": "application/json"}, b"{not json", "invalid_argument"),
        ({"content-type": "application/proto"}, b"\xff\xff\xff", "invalid_argument"),
        ({"content-type": "text/plain"}, b"{}", None),
        ({"content-type": "application/json"}, b" " * (5 * 1024 * 1024), None),
    ]
    statuses = []
    for headers, body, _ in sends:
        statuses.append((await http.post(path, content=body, headers=headers)).status_code)
    assert statuses[:4] == [200, 400, 400, 400]
    assert all(s >= 400 for s in statuses[4:]), statuses
    assert _rpc_count(service, method, "ok") == before["ok"] + 1
    assert _rpc_count(service, method, "invalid_argument") == before["invalid_argument"] + 3
    # Every call to a method served is in the RPC series once, as in the HTTP series.
    assert _http_count(route) - http_before == _rpc_count(service, "List") - rpc_before == 6
    # A CORS preflight is no call of the method.
    preflight = {"origin": "https://elsewhere.example", "access-control-request-method": "POST"}
    await http.options(path, headers=preflight)
    assert _rpc_count(service, "List") - rpc_before == 6
    # A method that is not served stays out of the RPC series (no label from a client).
    await http.post(f"/{service}/NoSuchMethod", content=b"{}", headers=sends[0][0])
    assert _rpc_count(service, "NoSuchMethod") == 0
