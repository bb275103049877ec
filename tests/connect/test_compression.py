"""Compressed request bodies: gzip with several members, bounded in work and in size.

Regression: connectrpc's gzip copied the rest of the body for every gzip member, so a
4 MiB body of 200,000 empty members held the event loop for half a minute (the process-level
proof is in ``tests/e2e/test_connect_hardening.py``).
"""

from __future__ import annotations

import gzip
import zlib

import httpx
import pytest
from connectrpc.errors import ConnectError
from hypothesis import given, settings
from hypothesis import strategies as st

from delidev.connect.compression import MAX_MEMBERS, BoundedGzip

UNARY = "/delidev.v1.AuthService/GetCurrentUser"  # anonymous, on the fast unary path
JSON_GZIP = {"content-type": "application/json", "content-encoding": "gzip"}
EMPTY_MEMBERS = gzip.compress(b"") * 200_000  # ~4 MB


def _envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=MAX_MEMBERS))
@settings(max_examples=200, deadline=None)
def test_up_to_the_bound_it_reads_what_gzip_reads(pieces: list[bytes]) -> None:
    body = b"".join(gzip.compress(p) for p in pieces)
    assert BoundedGzip().decompress(body, 1 << 20) == gzip.decompress(body) == b"".join(pieces)
    assert BoundedGzip().decompress(body) == b"".join(pieces)


@given(st.binary(max_size=300), st.integers(0, 400))
@settings(max_examples=300, deadline=None)
def test_a_cut_or_damaged_body_is_an_error_never_a_hang(data: bytes, cut: int) -> None:
    body = gzip.compress(data)[:cut] + data[:cut]
    try:
        expected: bytes | None = gzip.decompress(body)
    except (OSError, EOFError, zlib.error):
        expected = None
    try:
        got: bytes | None = BoundedGzip().decompress(body, 1 << 20)
    except (OSError, EOFError, zlib.error, ValueError):
        got = None
    assert got == expected or (got is None and body.count(b"\x1f\x8b") > MAX_MEMBERS)


def test_past_the_bounds() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_MEMBERS} members"):
        BoundedGzip().decompress(gzip.compress(b"x") * (MAX_MEMBERS + 1), 1 << 20)
    with pytest.raises(ConnectError, match="larger than configured max 1000"):
        BoundedGzip().decompress(gzip.compress(b"x" * 1001), 1000)
    with pytest.raises(ConnectError, match="larger than configured max 1000"):
        BoundedGzip().decompress(gzip.compress(b"x" * 600) * 2, 1000)  # over two members
    assert BoundedGzip().decompress(b"", 10) == b""


async def test_many_gzip_members_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(UNARY, content=EMPTY_MEMBERS, headers=JSON_GZIP)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid_argument"
    assert f"at most {MAX_MEMBERS} members" in body["message"]


async def test_a_body_over_a_few_members_is_read(http: httpx.AsyncClient) -> None:
    response = await http.post(
        UNARY, content=gzip.compress(b"{") + gzip.compress(b"}"), headers=JSON_GZIP
    )
    assert response.status_code == 200, response.text
    response = await http.post(
        UNARY, content=gzip.compress(b'{"') + gzip.compress(b"}"), headers=JSON_GZIP
    )
    assert response.status_code == 400  # '{"}': the members were joined, and it is no JSON
    assert response.json()["code"] == "invalid_argument"


async def test_many_members_in_a_streaming_envelope_are_refused(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/delidev.v1.SessionService/StreamLog",
        content=_envelope(EMPTY_MEMBERS[:400_000], flags=1),
        headers={"content-type": "application/connect+json", "connect-content-encoding": "gzip"},
    )
    assert b"invalid_argument" in response.content
    assert f"at most {MAX_MEMBERS} members".encode() in response.content
