"""No request can forge a line of a real server's log or bloat it.

Crafted values (newlines with a fake record after them, NUL, ESC, megabytes) go to an
anonymous ``HandleCallback`` and ``RefreshToken``, and, through an error that quotes them,
into a traceback: every record still starts where the server started it, no control
character reaches the file, and the log grows by far less than was sent.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from tests.e2e.harness import Server

SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"
MULTI_USER = {
    "DELIDEV_SINGLE_USER_MODE": "false",
    "DELIDEV_JWT_SECRET": SECRET,
    "DELIDEV_OIDC_ISSUER_URL": "https://id.example",
    "DELIDEV_OIDC_CLIENT_ID": "c",
    "DELIDEV_OIDC_CLIENT_SECRET": "s",
}
FORGED = "2026-12-04 09:00:00,000 CRITICAL delidev.app: FORGED"
CRAFTED = [
    "x" * 300 + "\n" + FORGED,
    "a\x00b\n" + FORGED,
    "\r" + FORGED + "\x1b[2J\x1b[1;1H",
    "y" * 3_000_000 + "\n" + FORGED,
]
# A record starts with the time, the level and the logger; anything else on a line of its
# own is part of a traceback (indented frames, the exception lines Python prints).
# (with the request's id after the logger's name on records written while one is handled)
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ [\w.]+( \[[\w.:-]+\])?: ")
TRACEBACK = re.compile(
    r"(Traceback \(most recent call last\):|  .*|[\w.]+(: .*)?|"
    r"The above exception was the direct cause of the following exception:|"
    r"During handling of the above exception, another exception occurred:|)"
)
# The server's handler for HandleCallback fails with the state in the error's message, as an
# unexpected error deep in a library would: the formatter alone has to keep the log safe.
QUOTING_FAILURE = """
from delidev.connect import handlers

async def failing(self, request, ctx):
    raise RuntimeError(f"could not use state {request.state}")

handlers.AuthHandler.handle_callback = failing
"""


def _check(log: str, sent: int) -> None:
    assert "FORGED" in log or sent == 0
    for line in log.splitlines():
        assert RECORD.match(line) or TRACEBACK.fullmatch(line), line[:300]
        assert not line.startswith(FORGED), line[:300]
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f]", line), line[:300]
    # Megabytes were sent; each value is cut to DELIDEV_LOG_MAX_VALUE_CHARS (1000).
    assert len(log) < 100_000, len(log)


async def _send(
    server: Server, method: str, field: str, extra: dict[str, str], *, expect: int = 400
) -> int:
    async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:
        for value in CRAFTED:
            response = await client.post(
                f"/delidev.v1.AuthService/{method}", json={**extra, field: value}
            )
            assert response.status_code == expect, response.text[:300]
            assert "FORGED" not in response.text
    return sum(len(v) for v in CRAFTED)


async def test_crafted_sign_in_values_are_refused_and_never_logged(
    e2e_database_url: str, tmp_path: Path
) -> None:
    server = await Server(e2e_database_url, tmp_path / "server.log", **MULTI_USER).ready()
    try:
        await _send(server, "HandleCallback", "state", {"code": "c"})
        await _send(server, "HandleCallback", "code", {"state": "s"})
        await _send(server, "RefreshToken", "refreshToken", {})
    finally:
        server.stop()
    log = server.log()
    assert "FORGED" not in log  # refused as invalid_argument before anything logs them
    _check(log, 0)


async def test_values_quoted_by_an_unexpected_error_are_escaped_and_cut(
    e2e_database_url: str, tmp_path: Path
) -> None:
    server = Server(
        e2e_database_url, tmp_path / "server.log", prelude=QUOTING_FAILURE, **MULTI_USER
    )
    await server.ready()
    try:
        sent = await _send(server, "HandleCallback", "state", {"code": "c"}, expect=500)
    finally:
        server.stop()
    log = server.log()
    assert log.count("RuntimeError: could not use state ") == len(CRAFTED), log[-3000:]
    assert "\\n" + FORGED in log  # the newline is shown escaped, on the record's own line
    _check(log, sent)
