"""OIDC sign-in (authorization code + PKCE S256) for multi-user mode.

``login_url`` stores a state row (PKCE verifier, nonce, redirect URI; it expires after ten
minutes) and returns the provider's authorization URL. ``complete_login`` consumes that row
once, exchanges the code with the verifier, verifies the ID token against the provider's
JWKS (signature, issuer as the discovery document states it, audience, expiry, nonce),
creates or updates the user and signs them in (``services/auth.py``). Authlib builds the
authorization request and the PKCE challenge; PyJWT verifies the ID token.

Anyone may ask for a login URL, so pending states are bounded: expired ones are dropped on
the way (and by the periodic sweep, ``auth.purge_expired``), and beyond
``MAX_PENDING_LOGINS`` the oldest are evicted. Eviction rather than refusal: a refusal would
let a flood of anonymous requests lock every user out for ten minutes, while eviction costs
only the slowest sign-ins a retry, and only while the flood outpaces them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from tortoise.exceptions import IntegrityError

from delidev import models as m
from delidev.errors import InvalidArgument, Unauthenticated, Unavailable
from delidev.services import common
from delidev.services.auth import TokenPair, check_token_text, issue_tokens
from delidev.settings import Settings

log = logging.getLogger(__name__)
_ADDRESS_TAKEN = "the e-mail address belongs to another account"

STATE_LIFETIME = dt.timedelta(minutes=10)
STATE_MAX_CHARS = 255  # the column's size; the states we issue have 43
MAX_CLAIM_CHARS = 255  # the size of the users columns email, name, oidc_issuer, oidc_subject
MAX_PENDING_LOGINS = 10_000
PKCE_VERIFIER_BYTES = 32  # 43 base64url characters
DISCOVERY_TTL_S = 3600.0
HTTP_TIMEOUT_S = 10.0
# Asymmetric algorithms only: an HS256 ID token would be signed with our client secret.
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384"]


@dataclass
class OidcClient:
    """The provider's endpoints, discovered once an hour, and its signing keys."""

    settings: Settings
    max_pending_logins: int = MAX_PENDING_LOGINS
    _discovery: dict[str, Any] | None = None
    _fetched_at: float = 0.0
    _jwks: jwt.PyJWKClient | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def _allowed(self, redirect_uri: str) -> bool:
        allowed = set(self.settings.allowed_redirect_uris)
        if self.settings.oidc_redirect_url:
            allowed.add(self.settings.oidc_redirect_url)
        return redirect_uri in allowed

    async def discovery(self) -> dict[str, Any]:
        """Raises: Unavailable (the provider cannot be reached)."""
        async with self._lock:
            if self._discovery is None or time.monotonic() - self._fetched_at > DISCOVERY_TTL_S:
                issuer = (self.settings.oidc_issuer_url or "").rstrip("/")
                try:
                    async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                        response = await http.get(f"{issuer}/.well-known/openid-configuration")
                        response.raise_for_status()
                        found = dict(response.json())
                except (httpx.HTTPError, ValueError):
                    log.warning("OIDC discovery failed for %s", issuer, exc_info=True)
                    raise Unavailable("the sign-in provider cannot be reached") from None
                # OIDC Discovery 4.3: the document must name the issuer it was fetched from
                # (a trailing slash aside); ID tokens are then checked against its spelling.
                if str(found.get("issuer") or "").rstrip("/") != issuer:
                    log.warning("OIDC discovery at %s names another issuer", issuer)
                    raise Unavailable("the sign-in provider is misconfigured")
                self._discovery = found
                self._fetched_at = time.monotonic()
                self._jwks = jwt.PyJWKClient(str(found["jwks_uri"]), cache_keys=True)
            return self._discovery

    async def login_url(self, *, redirect_uri: str) -> tuple[str, str]:
        """(the URL to send the browser to, the state). Raises: InvalidArgument, Unavailable."""
        redirect_uri = redirect_uri or self.settings.oidc_redirect_url or ""
        if not redirect_uri:
            raise InvalidArgument("redirect_uri is required", field="redirect_uri")
        if not self._allowed(redirect_uri):
            raise InvalidArgument(
                "redirect_uri is not on the server's allow-list (DELIDEV_ALLOWED_REDIRECT_URIS)",
                field="redirect_uri",
            )
        found = await self.discovery()
        await self._make_room()
        state = secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(PKCE_VERIFIER_BYTES)
        nonce = secrets.token_urlsafe(32)
        await m.AuthState.create(
            state=state,
            code_verifier=verifier,
            nonce=nonce,
            redirect_uri=redirect_uri,
            expires_at=common.now() + STATE_LIFETIME,
        )
        url = prepare_grant_uri(
            str(found["authorization_endpoint"]),
            client_id=self.settings.oidc_client_id,
            response_type="code",
            redirect_uri=redirect_uri,
            scope=self.settings.oidc_scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return url, state

    async def _make_room(self) -> None:
        """Keeps the pending sign-ins below the cap (see the module docstring)."""
        await m.AuthState.filter(expires_at__lt=common.now()).delete()
        excess = await m.AuthState.all().count() - self.max_pending_logins + 1
        if excess > 0:
            oldest = (
                await m.AuthState.all()
                .order_by("expires_at")
                .limit(excess)
                .values_list("state", flat=True)
            )
            await m.AuthState.filter(state__in=list(oldest)).delete()
            log.warning("too many sign-ins in progress: evicted the %d oldest", len(oldest))

    async def complete_login(self, *, code: str, state: str) -> TokenPair:
        """Signs in the user the provider vouches for. Raises: InvalidArgument,
        Unauthenticated, Unavailable."""
        check_token_text(code, field="code", limit=self.settings.auth_max_token_chars)
        check_token_text(state, field="state", limit=STATE_MAX_CHARS)
        pending = await m.AuthState.get_or_none(state=state)
        # Used once: only the caller that deletes the row goes on.
        if pending is None or not await m.AuthState.filter(state=state).delete():
            raise Unauthenticated("sign-in state unknown or already used: start again")
        if pending.expires_at <= common.now():
            raise Unauthenticated("sign-in took too long: start again")
        found = await self.discovery()
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                response = await http.post(
                    str(found["token_endpoint"]),
                    data={
                        "grant_type": "authorization_code",
                        "code": code,
                        "redirect_uri": pending.redirect_uri,
                        "code_verifier": pending.code_verifier,
                        "client_id": self.settings.oidc_client_id or "",
                        "client_secret": self.settings.oidc_client_secret or "",
                    },
                )
        except httpx.HTTPError:
            log.warning("OIDC token exchange failed", exc_info=True)
            raise Unavailable("the sign-in provider cannot be reached") from None
        if response.status_code != 200:
            log.info("OIDC token exchange refused with HTTP %s", response.status_code)
            raise Unauthenticated("the sign-in provider refused the code: start again")
        try:
            tokens = response.json()
        except ValueError:
            tokens = None
        if not isinstance(tokens, dict):
            log.warning("OIDC token exchange answered HTTP 200 without a JSON object")
            raise Unavailable("the sign-in provider sent no token answer: start again")
        if self._jwks is None:
            raise Unavailable("the sign-in provider cannot be reached")
        claims = await verify_id_token(
            str(tokens.get("id_token") or ""),
            jwks=self._jwks,
            issuer=str(found["issuer"]),
            audience=self.settings.oidc_client_id or "",
            nonce=pending.nonce or "",
        )
        if "email" not in claims and found.get("userinfo_endpoint") and tokens.get("access_token"):
            profile = await self._userinfo(found, str(tokens["access_token"]), claims)
            # The address and whether it was verified come from the same answer.
            claims = {**profile, **{k: v for k, v in claims.items() if k != "email_verified"}}
        user = await self._upsert_user(claims)
        return await issue_tokens(settings=self.settings, user=user)

    async def _userinfo(
        self, found: dict[str, Any], access_token: str, claims: dict[str, Any]
    ) -> dict[str, Any]:
        """Profile claims the ID token left out (many providers keep e-mail and name for
        the userinfo endpoint); ignored unless they are about the same subject."""
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                response = await http.get(
                    str(found["userinfo_endpoint"]),
                    headers={"authorization": f"Bearer {access_token}"},
                )
            info = dict(response.json()) if response.status_code == 200 else {}
        except (httpx.HTTPError, ValueError):
            log.warning("OIDC userinfo request failed", exc_info=True)
            return {}
        if str(info.get("sub")) != str(claims["sub"]):
            return {}
        return {k: info[k] for k in ("email", "email_verified", "name") if k in info}

    async def _upsert_user(self, claims: dict[str, Any]) -> m.User:
        """Raises: Unauthenticated."""
        issuer = _identifier(claims, "iss")
        subject = _identifier(claims, "sub")
        synthetic = f"{subject}@{issuer.split('://')[-1]}"[:MAX_CLAIM_CHARS]
        email = _verified_email(claims) or synthetic
        name = _display_name(claims)
        user = await m.User.get_or_none(oidc_issuer=issuer, oidc_subject=subject)
        if user is None:
            if await m.User.exists(email=email):
                # Another account holds this address: keep them apart, never merge silently.
                raise Unauthenticated(_ADDRESS_TAKEN)
            try:
                return await m.User.create(
                    email=email, name=name, oidc_issuer=issuer, oidc_subject=subject
                )
            except IntegrityError:
                # Two first sign-ins raced: the other one made the row, or took the address.
                user = await m.User.get_or_none(oidc_issuer=issuer, oidc_subject=subject)
                if user is None:
                    raise Unauthenticated(_ADDRESS_TAKEN) from None
                return user
        if (user.email, user.name) != (email, name) and not await m.User.filter(
            email=email
        ).exclude(id=user.id).exists():
            user.email, user.name = email, name
            try:
                await user.save(update_fields=["email", "name", "updated_at"])
            except IntegrityError:
                # Another sign-in took the address in between: keep the stored profile.
                log.info("OIDC profile update skipped: the e-mail address was taken")
                stored = await m.User.get_or_none(id=user.id)
                if stored is None:  # deleted meanwhile
                    raise Unauthenticated("the account is gone: sign in again") from None
                return stored
        return user


def _unstorable(text: str) -> bool:
    """Holds a control character or a lone surrogate (no column stores NUL or a surrogate;
    none belongs in an identifier, an address or a name)."""
    return any(map(common.unstorable, text))


def _identifier(claims: dict[str, Any], key: str) -> str:
    """``iss`` or ``sub``: kept whole, as they identify the account, so one that the column
    cannot hold is refused. Raises: Unauthenticated."""
    value = claims.get(key)
    if not isinstance(value, str) or not value or len(value) > MAX_CLAIM_CHARS:
        raise Unauthenticated(
            f"the ID token's {key} claim must be a string of 1 to {MAX_CLAIM_CHARS} characters"
        )
    if _unstorable(value):
        raise Unauthenticated(f"the ID token's {key} claim holds control characters")
    return value


def _verified_email(claims: dict[str, Any]) -> str | None:
    """The ``email`` claim when the provider says it verified the address, else None.

    A missing ``email_verified`` counts as unverified. OIDC Core 5.1 says an ``email`` claim
    alone does not mean the provider checked the address, and taking an unchecked one would
    let whoever signs in first with someone else's address hold (and lock) it here. Google,
    GitLab, Keycloak, Auth0, Okta and oidc-provider send ``email_verified`` with ``email``;
    with a provider that does not, users still sign in, under ``sub@issuer-host``.
    ``"true"`` is taken as true too: some providers (Amazon Cognito) send a string.
    """
    verified = claims.get("email_verified")
    if verified is not True and verified != "true":
        return None
    email = claims.get("email")
    if not isinstance(email, str) or not 3 <= len(email) <= MAX_CLAIM_CHARS or "@" not in email:
        return None
    if _unstorable(email) or any(c.isspace() for c in email):
        return None
    return email


def _display_name(claims: dict[str, Any]) -> str | None:
    """The ``name`` claim if it is a string: control characters and runs of whitespace
    become one space, cut to what the column holds; None when nothing is left."""
    name = claims.get("name")
    if not isinstance(name, str):
        return None
    spaced = "".join(" " if common.unstorable(c) else c for c in name)
    return " ".join(spaced.split())[:MAX_CLAIM_CHARS].rstrip() or None


async def verify_id_token(
    id_token: str, *, jwks: jwt.PyJWKClient, issuer: str, audience: str, nonce: str
) -> dict[str, Any]:
    """The claims of an ID token signed by a key of ``jwks``, issued by ``issuer`` for
    ``audience``, unexpired, and carrying ``nonce``. Raises: Unauthenticated."""
    if not id_token:
        raise Unauthenticated("the sign-in provider sent no ID token")
    try:
        key = await asyncio.to_thread(jwks.get_signing_key_from_jwt, id_token)
        claims: dict[str, Any] = jwt.decode(
            id_token,
            key.key,
            algorithms=ID_TOKEN_ALGORITHMS,
            audience=audience,
            issuer=issuer,
            leeway=30,
            options={"require": ["exp", "iat", "iss", "sub", "aud"]},
        )
    except (jwt.PyJWTError, ValueError):
        raise Unauthenticated("the ID token from the sign-in provider is not valid") from None
    if not nonce or not common.same_secret(str(claims.get("nonce", "")), nonce):
        raise Unauthenticated("the ID token from the sign-in provider is not valid")
    return claims
