"""A smaller run against a real server process (single-user mode, every Connect method, both
codecs): what the in-process run cannot see, a crash of the process (a segfault in a native
parser) or a traceback in its log. Afterwards the process is alive and answers."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.e2e.harness import Server
from tests.fuzz import harness as h
from tests.fuzz.proto_strategies import Values
from tests.fuzz.test_connect_fuzz import SERVICES, Method, _content_type, _envelope

EXAMPLES_PER_METHOD = max(2, h.EXAMPLES_PER_TARGET // 4)


async def test_a_real_server_survives_the_fuzz(e2e_database_url: str, tmp_path: Path) -> None:
    server = await Server(
        e2e_database_url, tmp_path / "server.log", DELIDEV_LOG_LEVEL="info"
    ).ready()
    try:
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as http:
            api = h.Api(http)
            workspace = await api("WorkspaceService/Create", {"name": "fz-real"})
            ids = [workspace["workspace"]["id"]]
            values = Values(ids)
            failures = []
            for methods in SERVICES.values():
                for method in methods:
                    for codec in ("json", "binary"):
                        bodies = (
                            values.json_body(method.input)
                            if codec == "json"
                            else values.binary_body(method.input)
                        )

                        async def send(
                            body: bytes, method: Method = method, codec: str = codec
                        ) -> None:
                            h.count("server")
                            content = _envelope(body, "ok") if method.streaming else body
                            response = await http.post(
                                method.path,
                                content=content,
                                headers={
                                    "content-type": _content_type(codec, method.streaming),
                                    "connect-protocol-version": "1",
                                },
                            )
                            what = f"{method.path} [{codec}, real server] {h.show(body)}"
                            if response.status_code >= 500:
                                raise h.finding(
                                    f"http-{response.status_code}",
                                    f"{what}: HTTP {response.status_code}",
                                )
                            if server.proc.poll() is not None:
                                raise h.finding("died", f"{what}: the server process died")

                        failure = await h.run_examples(
                            f"{method.path} [{codec}, real server]",
                            bodies,
                            send,
                            h.budget(EXAMPLES_PER_METHOD),
                        )
                        if failure:
                            failures.append(failure)
                        if server.proc.poll() is not None:
                            break
            assert server.proc.poll() is None, "the server process died:\n" + server.log()[-3000:]
            assert (await http.get("/healthz")).status_code == 200
    finally:
        server.stop()
    tracebacks = re.findall(r"Traceback \(most recent call last\)", server.log())
    assert not failures, "\n\n".join(failures)
    assert not tracebacks, (
        f"{len(tracebacks)} tracebacks in the server log:\n{server.log()[-3000:]}"
    )
