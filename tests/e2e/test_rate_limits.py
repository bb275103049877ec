"""Sign-in calls anyone may make, and worker registrations, are rate-limited per client
address.

Regressions (audits): 10,200 anonymous ``GetLoginUrl`` calls in 85 s from one address
evicted a user's pending sign-in (``services/oidc.py`` keeps a bounded number), and guessing
codes and refresh tokens was unthrottled; 3,000 ``Register`` calls in 17 s from one address
stored 3,000 workers (~25 MB), kept for a week. A real server process; the second address
is another loopback address (127.0.0.2).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from delidev.connect.rate_limits import _bucket_of
from tests.e2e.harness import Server, serving

LOGIN_URL = "/delidev.v1.AuthService/GetLoginUrl"
REFRESH = "/delidev.v1.AuthService/RefreshToken"
REGISTER = "/delidev.v1.WorkerService/Register"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    # A burst of 3, then one call every half second.
    async with serving(
        tmp_path,
        DELIDEV_SIGN_IN_PER_MINUTE="120",
        DELIDEV_SIGN_IN_BURST="3",
        DELIDEV_WORKER_REGISTER_PER_MINUTE="120",
        DELIDEV_WORKER_REGISTER_BURST="3",
    ) as server:
        yield server


def _client(server: Server, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.base, transport=transport, timeout=30)


async def _call(
    http: httpx.AsyncClient, path: str, body: dict[str, str] | None = None
) -> httpx.Response:
    return await http.post(path, json=body or {}, headers={"content-type": "application/json"})


async def test_a_burst_then_a_steady_rate_per_address(server: Server) -> None:
    async with _client(server) as http, _client(server, "127.0.0.2") as other:
        first = [await _call(http, p) for p in (LOGIN_URL, REFRESH, LOGIN_URL)]
        assert all(r.status_code != 429 for r in first), [r.text for r in first]
        refused = await _call(http, LOGIN_URL)
        assert refused.status_code == 429
        assert refused.json()["code"] == "resource_exhausted"
        assert "too many sign-in calls" in refused.json()["message"]
        assert int(refused.headers["retry-after"]) >= 1
        assert (await _call(http, REFRESH)).status_code == 429
        # Other calls, and other addresses, are not limited.
        listed = await _call(http, "/delidev.v1.WorkspaceService/List")
        assert listed.status_code == 200
        assert (await _call(other, LOGIN_URL)).status_code != 429
        # A token comes back every half second.
        await asyncio.sleep(0.6)
        assert (await _call(http, LOGIN_URL)).status_code != 429
        assert (await _call(http, LOGIN_URL)).status_code == 429
    log = server.log()
    assert "refused 1 sign-in calls" in log
    assert "Traceback" not in log


async def test_worker_registrations_are_limited_per_address(server: Server) -> None:
    async def register(http: httpx.AsyncClient, name: str) -> httpx.Response:
        return await _call(http, REGISTER, {"name": name, "endpointUrl": "http://w:1"})

    async with _client(server) as http, _client(server, "127.0.0.2") as other:
        first = [await register(http, f"w{i}") for i in range(3)]
        assert all(r.status_code == 200 for r in first), [r.text for r in first]
        refused = await register(http, "w3")
        assert refused.status_code == 429
        assert refused.json()["code"] == "resource_exhausted"
        assert "too many worker registrations" in refused.json()["message"]
        assert int(refused.headers["retry-after"]) >= 1
        # Sign-in has its own bucket; other addresses have theirs.
        assert (await _call(http, LOGIN_URL)).status_code != 429
        assert (await register(other, "o0")).status_code == 200
        listed = await http.post("/graphql", json={"query": "{ workers { items { name } } }"})
        names = sorted(w["name"] for w in listed.json()["data"]["workers"]["items"])
        assert names == ["o0", "w0", "w1", "w2"]  # the refused one stored nothing
        await asyncio.sleep(0.6)
        assert (await register(http, "w4")).status_code == 200
    log = server.log()
    assert "refused 1 worker registrations" in log
    assert "Traceback" not in log


def test_an_ipv6_client_draws_from_its_slash_64() -> None:
    """One host usually holds a whole /64: a fresh address per call must not mean a fresh
    bucket (review)."""
    assert _bucket_of("2001:db8:1:2::1") == _bucket_of("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert _bucket_of("2001:db8:1:2::1") != _bucket_of("2001:db8:1:3::1")
    assert _bucket_of("127.0.0.2") == "127.0.0.2"
    assert _bucket_of("not an address:") == "not an address:"
