"""A smaller run against a real server process (every Connect method, both codecs; in
single-user mode, and in multi-user mode as an anonymous caller): what the in-process run
cannot see, a crash of the process (a segfault in a native parser) or a traceback in its
log. Afterwards the process is alive and answers."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Server
from tests.fuzz import harness as h
from tests.fuzz.proto_strategies import Values
from tests.fuzz.test_connect_fuzz import SERVICES, Method, _content_type, _envelope

EXAMPLES_PER_METHOD = max(2, h.EXAMPLES_PER_TARGET // 4)
MULTI_USER = {
    "DELIDEV_SINGLE_USER_MODE": "false",
    "DELIDEV_JWT_SECRET": h.JWT_SECRET,
    "DELIDEV_OIDC_ISSUER_URL": "http://127.0.0.1:9",  # nothing listens: sign-in is unavailable
    "DELIDEV_OIDC_CLIENT_ID": "client",
    "DELIDEV_OIDC_CLIENT_SECRET": h.OIDC_CLIENT_SECRET,
    "DELIDEV_WORKER_REGISTRATION_TOKEN": h.REGISTRATION_TOKEN,
}


def _died(server: Server) -> str:
    code = server.proc.returncode
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    return f"the server process died ({how})"


async def _fuzz(http: httpx.AsyncClient, server: Server, mode: str, values: Values) -> list[str]:
    """Every method, both codecs, against the process; stops early if it dies."""
    # multi-user: the provider is unreachable on purpose, so "unavailable" is the right answer
    allowed_5xx = {503} if mode == "multi" else set()
    failures = []
    for method in (m for methods in SERVICES.values() for m in methods):
        for codec in ("json", "binary"):

            async def send(body: bytes, method: Method = method, codec: str = codec) -> None:
                h.count("server")
                what = f"{method.path} [{codec}, {mode}-user server] {h.show(body)}"
                try:
                    response = await http.post(
                        method.path,
                        content=_envelope(body, "ok") if method.streaming else body,
                        headers={
                            "content-type": _content_type(codec, method.streaming),
                            "connect-protocol-version": "1",
                        },
                    )
                except httpx.TransportError as exc:
                    if server.proc.poll() is not None:
                        raise h.finding("died", f"{what}: {_died(server)}") from None
                    raise h.finding("transport", f"{what}: {type(exc).__name__}") from None
                if response.status_code >= 500 and response.status_code not in allowed_5xx:
                    raise h.finding(
                        f"http-{response.status_code}", f"{what}: HTTP {response.status_code}"
                    )
                if server.proc.poll() is not None:
                    raise h.finding("died", f"{what}: {_died(server)}")

            failure = await h.run_examples(
                f"{method.path} [{codec}, {mode}-user server]",
                values.json_body(method.input)
                if codec == "json"
                else values.binary_body(method.input),
                send,
                h.budget(EXAMPLES_PER_METHOD),
                explicit=values.boundary_bodies(method.input, codec),
            )
            if failure:
                failures.append(failure)
            if server.proc.poll() is not None:
                return failures
    return failures


@pytest.mark.parametrize("mode", ["single", "multi"])
async def test_a_real_server_survives_the_fuzz(
    e2e_database_url: str, tmp_path: Path, mode: str
) -> None:
    env = MULTI_USER if mode == "multi" else {}
    server = await Server(
        e2e_database_url, tmp_path / "server.log", DELIDEV_LOG_LEVEL="info", **env
    ).ready()
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            ids = [h.fresh_id()]
            if mode == "single":
                created = await h.Api(http)("WorkspaceService/Create", {"name": "fz-real"})
                ids = [created["workspace"]["id"]]
            failures = await _fuzz(http, server, mode, Values(ids))
            if server.proc.poll() is None:
                # issue 9 item 1, exactly as reported
                with contextlib.suppress(httpx.TransportError):
                    await http.post(
                        "/delidev.v1.AuthService/GetCurrentUser",
                        content=b"[" * 15_000 + b"]" * 15_000,
                        headers={"content-type": "application/json"},
                    )
            if server.proc.poll() is not None:
                failures.append(_died(server))
            else:
                assert (await http.get("/healthz")).status_code == 200
    finally:
        server.stop()
    log = server.log()
    tracebacks = len(re.findall(r"Traceback \(most recent call last\)", log))
    if tracebacks:
        first = log.index("Traceback (most recent call last)")
        failures.append(
            f"{tracebacks} tracebacks in the server log; the first:\n"
            f"{log[max(0, first - 300) : first + 1500]}"
        )
    assert not failures, "\n\n".join(failures)
