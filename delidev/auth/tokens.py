"""Access tokens: HS256 JWTs with ``sub``, ``email``, ``name``, ``iat``, ``exp``, ``iss`` and
``jti``. The profile claims are for clients to show; the server trusts only ``sub``.

Verification accepts HS256 only (so ``alg: none`` and algorithm confusion fail), checks the
signature, issuer and expiry and requires every claim. Its errors say why in general terms
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
REQUIRED_CLAIMS = ["exp", "iat", "iss", "sub", "jti"]
LEEWAY = dt.timedelta(seconds=30)


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    jti: str
    user_id: UUID
    expires_at: dt.datetime


def issue_access_token(
    settings: Settings,
    user_id: UUID,
    *,
    email: str = "",
    name: str | None = None,
    now: dt.datetime | None = None,
) -> AccessToken:
    if not settings.jwt_secret:
        raise RuntimeError("access tokens need DELIDEV_JWT_SECRET")
    issued = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    expires = issued + dt.timedelta(hours=settings.jwt_expiration_hours)
    jti = secrets.token_hex(16)
    token = jwt.encode(
        {
            "iss": settings.jwt_issuer,
            "sub": str(user_id),
            "email": email,
            "name": name,
            "iat": issued,
            "exp": expires,
            "jti": jti,
        },
        settings.jwt_secret,
        algorithm=ALGORITHM,
    )
    return AccessToken(token=token, jti=jti, user_id=user_id, expires_at=expires)


def verify_access_token(settings: Settings, token: str) -> AccessToken:
    """The token's claims, once its signature, issuer and expiry hold. Raises: Unauthenticated."""
    if not settings.jwt_secret:
        raise Unauthenticated("access tokens are not accepted by this server")
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
        jti = str(claims["jti"])
    except jwt.ExpiredSignatureError:
        raise Unauthenticated("access token expired: refresh it or sign in again") from None
    except (jwt.InvalidTokenError, ValueError, KeyError):
        raise Unauthenticated("access token not accepted") from None
    if not jti or len(jti) > 64:
        raise Unauthenticated("access token not accepted")
    return AccessToken(
        token=token,
        jti=jti,
        user_id=user_id,
        expires_at=dt.datetime.fromtimestamp(int(claims["exp"]), dt.UTC),
    )
