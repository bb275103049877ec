"""Access tokens: HS256 JWTs with ``sub``, ``sid``, ``email``, ``name``, ``iat``, ``exp``,
``iss`` and ``jti``. The profile claims are for clients to show; the server trusts only
``sub`` and ``sid`` (the sign-in the token belongs to, checked against the store by
``services/auth.py``).

Verification accepts HS256 only (so ``alg: none`` and algorithm confusion fail), checks the
signature, issuer and expiry and requires every claim. A token is never accepted for longer
than the configured lifetime after its ``iat``, whatever its ``exp`` says (a token minted with
the secret but not by this server may name any ``exp``). Its errors say why in general terms
and never echo the token.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from uuid import UUID

import jwt

from delidev.errors import Unauthenticated
from delidev.settings import Settings

ALGORITHM = "HS256"
REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "sid", "jti"]
LEEWAY = dt.timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    user_id: UUID
    session_id: UUID
    """The sign-in (refresh-token family) the token was issued for."""
    expires_at: dt.datetime
    """``exp``, or earlier when ``exp`` is further from ``iat`` than the lifetime allows."""


def lifetime(settings: Settings) -> dt.timedelta:
    return dt.timedelta(hours=settings.jwt_expiration_hours)


def issue_access_token(
    settings: Settings,
    user_id: UUID,
    *,
    session_id: UUID,
    email: str = "",
    name: str | None = None,
    now: dt.datetime | None = None,
) -> AccessToken:
    if not settings.jwt_secret:
        raise RuntimeError("access tokens need DELIDEV_JWT_SECRET")
    issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    expires = issued + lifetime(settings)
    jti = secrets.token_hex(16)
    token = jwt.encode(
        {
            "iss": settings.jwt_issuer,
            "sub": str(user_id),
            "sid": str(session_id),
            "email": email,
            "name": name,
            "iat": issued,
            "exp": expires,
            "jti": jti,
        },
        settings.jwt_secret,
        algorithm=ALGORITHM,
    )
    return AccessToken(
        token=token, jti=jti, user_id=user_id, session_id=session_id, expires_at=expires
    )


def verify_access_token(settings: Settings, token: str) -> AccessToken:
    """The token's claims, once its signature, issuer and expiry hold (the sign-in is the
    caller's to check). Raises: Unauthenticated."""
    if not settings.jwt_secret:
        raise Unauthenticated("access tokens are not accepted by this server")
    if len(token) > settings.auth_max_token_chars:
        raise Unauthenticated("access token not accepted")
    try:
        claims = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            leeway=LEEWAY,
            options={"require": REQUIRED_CLAIMS, "verify_aud": False},
        )
        user_id = UUID(str(claims["sub"]))
        session_id = UUID(str(claims["sid"]))
        jti = str(claims["jti"])
        issued = dt.datetime.fromtimestamp(int(claims["iat"]), dt.UTC)
        expires = dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC)
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("access token expired: refresh it or sign in again") from None
    except (jwt.InvalidTokenError, ValueError, KeyError, OverflowError, OSError):
        raise Unauthenticated("access token not accepted") from None
    if not jti or len(jti) > 64:
        raise Unauthenticated("access token not accepted")
    expires = min(expires, issued + lifetime(settings))
    if expires + LEEWAY <= dt.datetime.now(dt.UTC):
        raise Unauthenticated("access token expired: refresh it or sign in again")
    return AccessToken(
        token=token, jti=jti, user_id=user_id, session_id=session_id, expires_at=expires
    )
