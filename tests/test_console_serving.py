"""The web console at ``/`` (issue 13), served from a small build made here in ``tmp_path``:
its headers (caching, hardening), gzip, 304s, the routes it must leave alone, the off switch,
a server without a build, paths that try to leave the build, and bounded metric labels."""

from __future__ import annotations

import asyncio
import gzip
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from delidev import events
from delidev.app import create_app
from delidev.console import CONTENT_SECURITY_POLICY, content_security_policy
from delidev.settings import Settings
from tests.test_server import running_server, stop

# A change to the policy must be a change here too. connect-src is the page's own origin
# (it was any http(s) and ws(s) server: a ``?server=`` link could then take a sign-in to
# another server, which passed the code on and kept the user's tokens).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self' ws://127.0.0.1:54871 wss://127.0.0.1:54871; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'"
)
HARDENING = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
IMMUTABLE = "public, max-age=31536000, immutable"
SCRIPT = "assets/index-3f2a1b.js"
STYLE = "assets/index-9c8d.css"
# Big enough to be compressed (GZipMiddleware leaves bodies under 500 bytes as they are).
INDEX = (
    '<!doctype html><html><head><meta charset="utf-8"><title>DeliDev</title>'
    f'<script type="module" src="/{SCRIPT}"></script><link rel="stylesheet" href="/{STYLE}">'
    "</head><body><div id='app'></div>" + "<!-- console -->" * 60 + "</body></html>"
)
SCRIPT_TEXT = "export const fleet = 'workers';\n" * 40
OUTSIDE = "this file lies outside the console build"


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A build as Vite leaves it, and a file next to it that must never be served."""
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / SCRIPT).write_text(SCRIPT_TEXT)
    (root / STYLE).write_text("body { margin: 0 }\n")
    (root / "favicon.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (tmp_path / "pyproject.toml").write_text(OUTSIDE)
    (tmp_path / "secret.txt").write_text(OUTSIDE)
    return root


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    token = events.bind(app.state.events)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:54871"
        ) as client:
            yield client
    finally:
        events.unbind(token)


@pytest.fixture
async def served(settings: Settings, database: Any, dist: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(settings.replace(console_dir=dist)):
        yield client


def _hardened(response: httpx.Response) -> None:
    expected = {
        **HARDENING,
        "content-security-policy": content_security_policy(response.request.headers["host"]),
    }
    for name, value in expected.items():
        assert response.headers.get(name) == value, (name, response.headers)


def test_the_policy_names_only_the_pages_own_host() -> None:
    assert content_security_policy("127.0.0.1:54871") == CSP
    assert "ws://[::1]:8080 wss://[::1]:8080;" in content_security_policy("[::1]:8080")
    assert "ws://hub.example.com wss://hub.example.com;" in content_security_policy(
        "hub.example.com"
    )
    # Anything else is left out (and can add nothing to the policy).
    own_only = CONTENT_SECURITY_POLICY.format(sockets="")
    for host in (None, "", "evil; script-src *", "a b", "x:99999999", "h\u00e9te"):
        assert content_security_policy(host) == own_only, host
    assert "connect-src 'self';" in own_only


async def test_the_index_is_served_at_the_root_revalidated_every_time(
    served: httpx.AsyncClient,
) -> None:
    response = await served.get("/", headers={"accept-encoding": "identity"})
    assert response.status_code == 200
    assert response.text == INDEX
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    assert "content-encoding" not in response.headers
    _hardened(response)
    head = await served.head("/")
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(INDEX))
    _hardened(head)


async def test_hashed_assets_are_kept_for_a_year(served: httpx.AsyncClient) -> None:
    for path in (SCRIPT, STYLE):
        response = await served.get(f"/{path}")
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == IMMUTABLE
        _hardened(response)
    script = await served.get(f"/{SCRIPT}")
    assert script.text == SCRIPT_TEXT
    assert "javascript" in script.headers["content-type"]
    # Other top-level files of the build are served, and revalidated like the index.
    icon = await served.get("/favicon.svg")
    assert icon.status_code == 200
    assert icon.headers["cache-control"] == "no-cache"
    _hardened(icon)


async def test_gzip_when_the_client_accepts_it_identity_otherwise(
    served: httpx.AsyncClient,
) -> None:
    for path, text in (("/", INDEX), (f"/{SCRIPT}", SCRIPT_TEXT)):
        # Read raw, so the body is the bytes sent (httpx would decode them).
        async with served.stream("GET", path, headers={"accept-encoding": "gzip"}) as zipped:
            raw = b"".join([chunk async for chunk in zipped.aiter_raw()])
        assert zipped.headers["content-encoding"] == "gzip", path
        assert "accept-encoding" in zipped.headers["vary"].lower()
        assert gzip.decompress(raw).decode() == text
        assert len(raw) < len(text)
        _hardened(zipped)
        plain = await served.get(path, headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers
        assert plain.text == text


async def test_an_unchanged_file_is_answered_304(served: httpx.AsyncClient) -> None:
    for path, cache in (("/", "no-cache"), (f"/{SCRIPT}", IMMUTABLE)):
        first = await served.get(path)
        etag = first.headers["etag"]
        again = await served.get(path, headers={"if-none-match": etag})
        assert again.status_code == 304, path
        assert again.content == b""
        assert again.headers["cache-control"] == cache
        _hardened(again)
        since = await served.get(
            path, headers={"if-modified-since": first.headers["last-modified"]}
        )
        assert since.status_code == 304
        changed = await served.get(path, headers={"if-none-match": '"another"'})
        assert changed.status_code == 200


async def test_other_paths_and_methods_are_left_as_they_were(
    served: httpx.AsyncClient,
) -> None:
    for path in ("/nope", "/index.htm", "/assets/index-000000.js", "/graphql/x"):
        missing = await served.get(path)
        assert missing.status_code == 404, path
    # A missing asset is no hashed file to keep: it may exist after the next deployment.
    gone = await served.get("/assets/index-000000.js")
    assert gone.headers["cache-control"] == "no-cache"
    _hardened(gone)
    assert (await served.post("/", content=b"x")).status_code == 405
    assert (await served.post(f"/{SCRIPT}", content=b"x")).status_code == 405
    assert (await served.post("/nope", content=b"x")).status_code == 404
    # The server's own routes answer as before, without the console's headers.
    health = await served.get("/healthz")
    assert health.json() == {"status": "ok"}
    assert "content-security-policy" not in health.headers
    graphiql = await served.get("/graphql", headers={"accept": "text/html"})
    assert "graphiql" in graphiql.text.lower()
    query = await served.post("/graphql", json={"query": "{ workers { totalCount } }"})
    assert query.json() == {"data": {"workers": {"totalCount": 0}}}
    assert "delidev_" in (await served.get("/metrics")).text
    connect = await served.post(
        "/delidev.v1.WorkspaceService/List", json={}, headers={"content-type": "application/json"}
    )
    assert connect.status_code == 200, connect.text


async def test_the_host_check_still_comes_first(
    settings: Settings, database: Any, dist: Path
) -> None:
    async for client in _client(settings.replace(console_dir=dist, allowed_hosts=())):
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/", headers={"host": "rebound.example"})
        assert refused.status_code == 400
        assert INDEX not in refused.text


@pytest.mark.parametrize(
    "path",
    [
        "/assets/%2e%2e/%2e%2e/pyproject.toml",
        "/assets/%2E%2E/%2E%2E/secret.txt",
        "/assets/..%2f..%2fpyproject.toml",
        "/assets/..%2F..%2Fsecret.txt",
        "/assets/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/%2e%2e/secret.txt",
        "/assets/%2fetc%2fpasswd",
        "/assets/..%5c..%5csecret.txt",
    ],
)
async def test_no_path_leaves_the_build(served: httpx.AsyncClient, path: str) -> None:
    response = await served.get(path)
    assert response.status_code == 404, (path, response.text)
    assert OUTSIDE not in response.text
    assert "root:" not in response.text


async def _raw_get(app: Any, path: str) -> tuple[int, bytes]:
    """GET ``path`` as a server hands it to the app, without the normalizing httpx does."""
    sent: list[Any] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if requested:  # the client stays connected: a response may listen for it leaving
            await asyncio.Event().wait()
        requested = True
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 54871),
    }
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


async def test_dot_segments_sent_as_they_are_stay_inside(
    settings: Settings, database: Any, dist: Path
) -> None:
    app = create_app(settings.replace(console_dir=dist))
    assert await _raw_get(app, "/") == (200, INDEX.encode())
    for path in ("/assets/../../pyproject.toml", "/assets/../../secret.txt", "/../secret.txt"):
        status, body = await _raw_get(app, path)
        assert status == 404, path
        assert OUTSIDE.encode() not in body


async def test_the_off_switch_leaves_the_root_404(
    settings: Settings, database: Any, dist: Path
) -> None:
    async for client in _client(settings.replace(console=False, console_dir=dist)):
        for path in ("/", f"/{SCRIPT}", "/favicon.svg"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/healthz")).status_code == 200


async def test_without_a_build_there_is_no_console_and_one_line_says_so(
    settings: Settings, database: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="delidev.console")
    empty = tmp_path / "console_dist"  # no index.html: a checkout where it was never built
    empty.mkdir()
    (empty / "favicon.svg").write_text("<svg/>")
    async for client in _client(settings.replace(console_dir=empty)):
        for path in ("/", "/favicon.svg", "/assets/x.js"):
            assert (await client.get(path)).status_code == 404, path
        assert (await client.get("/healthz")).status_code == 200
    lines = [r for r in caplog.records if r.name == "delidev.console"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.INFO
    assert "not served" in lines[0].getMessage()
    assert str(empty) in lines[0].getMessage()


def _http_count(route: str) -> float:
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == "http_server_request_duration_seconds_count"
        and sample.labels.get("http_route") == route
    )


async def test_console_requests_are_timed_under_bounded_routes(
    served: httpx.AsyncClient,
) -> None:
    root, assets = _http_count("/"), _http_count("/assets/{path}")
    await served.get("/")
    for i in range(5):
        await served.get(f"/assets/made-up-{i}.js")
    await served.get(f"/{SCRIPT}")
    assert _http_count("/") == root + 1
    assert _http_count("/assets/{path}") == assets + 6
    text = (await served.get("/metrics")).text
    assert "made-up-" not in text
    assert "index-3f2a1b" not in text


def test_a_real_server_serves_the_console_or_starts_without_it(tmp_path: Path, dist: Path) -> None:
    """uvicorn, not the test transport: the build is served compressed, and a server whose
    build is missing starts all the same and says so."""
    with running_server(tmp_path, DELIDEV_CONSOLE_DIR=str(dist)) as (base, proc):
        response = httpx.get(f"{base}/", headers={"accept-encoding": "gzip"})
        assert response.status_code == 200
        assert response.headers["content-encoding"] == "gzip"
        assert response.text == INDEX
        _hardened(response)
        script = httpx.get(f"{base}/{SCRIPT}")
        assert script.headers["cache-control"] == IMMUTABLE
        assert "not served" not in stop(proc)
    missing = tmp_path / "never-built"
    with running_server(tmp_path, DELIDEV_CONSOLE_DIR=str(missing)) as (base, proc):
        assert httpx.get(f"{base}/").status_code == 404
        assert httpx.get(f"{base}/healthz").status_code == 200
        output = stop(proc)
    assert f"web console not served: no build in {missing}" in output
