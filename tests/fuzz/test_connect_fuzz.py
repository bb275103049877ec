"""Every Connect method, both codecs, both modes: bodies derived from the request message's
descriptor (``proto_strategies``), valid-ish and hostile, sent with the fuzzer's credentials
or broken ones. Each answer and each log line is checked (``harness.Checker``); afterwards
the server still answers and the protected rows are unchanged."""

from __future__ import annotations

import asyncio
import importlib
import json
from dataclasses import dataclass

import pytest
from hypothesis import strategies as st
from protobuf import DescMessage

from tests.fuzz import harness as h
from tests.fuzz.conftest import World
from tests.fuzz.proto_strategies import Values

PROTO_MODULES = ("auth", "repository", "secrets", "session", "task", "todo", "worker", "workspace")
HANG_S = 60.0
"""A request still unanswered after this long is reported as a hang (a safety net, not a
timing assertion: every answer here takes milliseconds)."""
LAST = ("Logout",)
"""Run last in their service: Logout revokes the fuzzer's own token."""


@dataclass(frozen=True)
class Method:
    service: str
    name: str
    input: DescMessage
    streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.service}/{self.name}"


def all_methods() -> dict[str, list[Method]]:
    """Every method of every service, read from the generated descriptors."""
    services: dict[str, list[Method]] = {}
    for module in PROTO_MODULES:
        desc = importlib.import_module(f"delidev.connect.gen.delidev.v1.{module}_pb").desc()
        for service in desc.services:
            methods = [
                Method(
                    service.type_name,
                    method.name,
                    method.input,
                    method.method_kind == "server_streaming",
                )
                for method in service.methods
            ]
            methods.sort(key=lambda m: m.name in LAST)
            services[service.type_name] = methods
    return services


SERVICES = all_methods()


def test_every_generated_method_is_fuzzed() -> None:
    names = {m.path for methods in SERVICES.values() for m in methods}
    assert len(SERVICES) == 9
    assert "/delidev.v1.AuthService/GetCurrentUser" in names
    assert len(names) >= 50


def _content_type(codec: str, streaming: bool) -> str:
    if streaming:
        return "application/connect+json" if codec == "json" else "application/connect+proto"
    return "application/json" if codec == "json" else "application/proto"


def _envelope(body: bytes, variant: str) -> bytes:
    if variant == "short":
        return b"\x00" + (len(body) + 7).to_bytes(4, "big") + body
    if variant == "flags":
        return b"\x03" + len(body).to_bytes(4, "big") + body
    if variant == "bare":
        return body
    return b"\x00" + len(body).to_bytes(4, "big") + body


def _stream_error(body: bytes) -> str:
    """The code in the end-of-stream message of a streaming answer, if any."""
    rest = body
    while len(rest) >= 5:
        flags, size = rest[0], int.from_bytes(rest[1:5], "big")
        payload, rest = rest[5 : 5 + size], rest[5 + size :]
        if flags & 0x02:
            try:
                end = json.loads(payload)
            except ValueError:
                return ""
            return str(end.get("error", {}).get("code", "")) if isinstance(end, dict) else ""
    return ""


async def fuzz_method(world: World, method: Method, codec: str) -> str | None:
    values = Values(world.ids())
    bodies = values.json_body(method.input) if codec == "json" else values.binary_body(method.input)
    variants = st.sampled_from(["ok", "ok", "ok", "ok", "short", "flags", "bare"])
    strategy = st.tuples(
        bodies,
        st.sampled_from(world.auth_headers()),
        variants if method.streaming else st.just("ok"),
    )
    content_type = _content_type(codec, method.streaming)

    async def send(example: tuple[bytes, dict[str, str], str]) -> None:
        body, auth, variant = example
        if method.streaming:
            body = _envelope(body, variant)
        what = f"{method.path} [{codec}, {world.mode}-user] body={h.show(body)}"
        h.count(f"connect-{codec}")
        world.checker.begin()
        with world.checker.watchdog.armed(what):
            try:
                async with asyncio.timeout(HANG_S):
                    response = await world.http.post(
                        method.path,
                        content=body,
                        headers={
                            "content-type": content_type,
                            "connect-protocol-version": "1",
                            **auth,
                        },
                    )
            except TimeoutError:
                raise h.finding("hang", f"{what}: no answer in {HANG_S:.0f} s") from None
            except Exception as exc:  # raised through the in-process transport: a 500
                raise h.raised(what, exc) from None
        world.checker.answer(what, response.status_code, response.content)
        if method.streaming and _stream_error(response.content) in ("internal", "unknown"):
            raise h.finding(
                "stream-internal", f"{what}: stream ended with {_stream_error(response.content)}"
            )

    explicit = [
        (body, world.attacker.headers, "ok") for body in values.boundary_bodies(method.input, codec)
    ]
    return await h.run_examples(f"{method.path} [{codec}]", strategy, send, explicit=explicit)


@pytest.mark.parametrize("codec", ["json", "binary"])
@pytest.mark.parametrize("service", sorted(SERVICES), ids=lambda s: s.rsplit(".", 1)[-1])
async def test_connect_service(world: World, service: str, codec: str) -> None:
    failures = []
    for method in SERVICES[service]:
        failure = await fuzz_method(world, method, codec)
        if failure:
            failures.append(failure)
        await world.alive()
    await world.unchanged()
    assert not failures, "\n\n".join(failures)
