"""A real OpenID provider for the sign-in tests: the npm package ``oidc-provider`` on a
loopback port (``tests/interop/oidc_provider.mjs``), and a browser-less walk through its
login and consent forms; and ``FakeProvider``, which serves forged ID tokens."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.interop.test_typescript_interop import HERE, NPM_CI_TIMEOUT_S, _free_port, _run, _tool

CLIENT_ID = "delidev-tests"
CLIENT_SECRET = "oidc-client-secret-for-tests-only"
REDIRECT_URI = "http://127.0.0.1:5173/auth/callback"


def _node_modules() -> None:
    """``npm ci`` in tests/interop when its node_modules is missing or stale."""
    npm = _tool("npm")
    installed = HERE / "node_modules" / ".package-lock.json"
    lock = HERE / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], timeout=NPM_CI_TIMEOUT_S)


@contextmanager
def openid_provider(
    accounts_file: Path | None = None, redirect_uri: str = REDIRECT_URI
) -> Iterator[str]:
    """Starts the provider and yields its issuer URL; stops it on exit. ``accounts_file``
    (JSON, read at every sign-in) overrides the e-mail and name of the logins it names;
    ``redirect_uri`` is the one its client may be sent back to."""
    node = _tool("node")
    _node_modules()
    port = _free_port()
    env = {
        **os.environ,
        "OIDC_PORT": str(port),
        "OIDC_CLIENT_ID": CLIENT_ID,
        "OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "OIDC_REDIRECT_URI": redirect_uri,
        "OIDC_ACCOUNTS_FILE": str(accounts_file or ""),
    }
    proc = subprocess.Popen(
        [node, "oidc_provider.mjs"],
        cwd=HERE,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.strip() == "ready":
                break
        else:
            pytest.fail("the OpenID provider did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and self.action is None:
            self.action = a.get("action", "")
        if tag == "input" and a.get("name"):
            self.fields[a["name"]] = a.get("value", "")


async def browse(login_url: str, *, login: str) -> dict[str, str]:
    """What a browser does: follow the provider's redirects, sign in as ``login`` on its
    login form, consent, and stop at our redirect URI. Returns its query parameters."""
    async with httpx.AsyncClient(follow_redirects=False, timeout=10) as browser:
        url, method, data = login_url, "GET", None
        for _ in range(20):
            response = await browser.request(method, url, data=data)
            if response.is_redirect:
                url, method, data = urljoin(url, response.headers["location"]), "GET", None
                if url.startswith(REDIRECT_URI):
                    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
                continue
            assert response.status_code == 200, response.text
            form = _Form()
            form.feed(response.text)
            assert form.action is not None, response.text
            fields = dict(form.fields)
            if "login" in fields:
                fields.update(login=login, password="any")
            url, method, data = urljoin(url, form.action), "POST", fields
    raise AssertionError("the provider never sent the browser back")


class FakeProvider:
    """A stand-in OpenID provider on a loopback port, for the ID-token checks the real one
    never gets wrong: a discovery document, a JWKS with one RSA key, and a token endpoint
    that answers any code with ``id_token`` as the test set it (``sign`` makes one).

    ``issuer`` is what the discovery document names (by default the base URL);
    ``token_requests`` keeps the form of every token request.
    """

    KID = "test-key"

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.id_token: str | None = None
        self.token_body: bytes | None = None  # set: the token endpoint answers this instead
        self.token_requests: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.issuer = self.base_url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeProvider:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def sign(
        self,
        claims: dict[str, Any],
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str = KID,
    ) -> str:
        """An RS256 ID token with ``claims``, signed by ``key`` (default: the JWKS key)."""
        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid})

    def _documents(self) -> dict[str, Any]:
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        return {
            "/.well-known/openid-configuration": {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.base_url}/auth",
                "token_endpoint": f"{self.base_url}/token",
                "jwks_uri": f"{self.base_url}/jwks",
            },
            "/jwks": {"keys": [{**jwk, "kid": self.KID, "use": "sig", "alg": "RS256"}]},
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                document = provider._documents().get(self.path)
                self._answer(200 if document else 404, document or {})

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                provider.token_requests.append({k: v[0] for k, v in parse_qs(body).items()})
                if provider.token_body is not None:
                    self.send_response(200)
                    self.send_header("content-length", str(len(provider.token_body)))
                    self.end_headers()
                    self.wfile.write(provider.token_body)
                    return
                answer: dict[str, Any] = {"access_token": "opaque", "token_type": "Bearer"}
                if provider.id_token is not None:
                    answer["id_token"] = provider.id_token
                self._answer(200, answer)

            def _answer(self, status: int, document: dict[str, Any]) -> None:
                body = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        return Handler
