"""Sign-in sessions of multi-user mode: access tokens, refresh tokens, logout.

A sign-in yields an access token (a JWT, ``auth/tokens.py``) and an opaque refresh token
stored hashed. Refreshing rotates: the old refresh token is used up and a new one of the
same family is issued. Presenting a used or revoked refresh token again revokes the whole
family (someone else has a copy): every refresh token of it, and every access token issued
with them, until that access token would have expired anyway. Logout ends the sign-in: the
access token is revoked (by ``jti``) and no refresh token of its family works any more.
Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass
from uuid import UUID, uuid4

from tortoise.expressions import Q

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.auth.tokens import LEEWAY, issue_access_token, verify_access_token
from delidev.errors import NotFound, Unauthenticated
from delidev.services.common import transaction
from delidev.settings import Settings

REFRESH_LIFETIME = dt.timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: dt.datetime
    user: m.User


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def issue_tokens(
    *, settings: Settings, user: m.User, family_id: UUID | None = None
) -> TokenPair:
    """A fresh access token and refresh token for a signed-in user."""
    access = issue_access_token(settings, user.id, email=user.email, name=user.name)
    refresh = secrets.token_urlsafe(32)
    await m.RefreshToken.create(
        user_id=user.id,
        token_hash=_hash(refresh),
        family_id=family_id or uuid4(),
        access_jti=access.jti,
        expires_at=_now() + REFRESH_LIFETIME,
    )
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh,
        expires_at=access.expires_at,
        user=user,
    )


async def authenticate(*, settings: Settings, token: str) -> Principal:
    """The user an access token speaks for. Raises: Unauthenticated."""
    access = verify_access_token(settings, token)
    if await m.RevokedToken.exists(jti=access.jti):
        raise Unauthenticated("access token revoked: sign in again")
    if not await m.User.exists(id=access.user_id):
        raise Unauthenticated("access token not accepted")
    return Principal(
        kind="user",
        user_id=access.user_id,
        token_id=access.jti,
        token_expires_at=access.expires_at,
    )


async def _revoke_refresh_tokens(family_id: UUID) -> None:
    """Revokes every refresh token of a family.

    Repeats until a pass finds nothing left: on PostgreSQL a rotation committing meanwhile
    adds a member this UPDATE cannot see (it waits on the row the rotation locked, then
    carries on with the rows of its own snapshot), and the next pass catches it.
    """
    now = _now()
    while await m.RefreshToken.filter(family_id=family_id, revoked_at=None).update(revoked_at=now):
        pass


async def _revoke_family(*, settings: Settings, family_id: UUID) -> None:
    """Someone else has a copy of a refresh token: ends every session of its family."""
    await _revoke_refresh_tokens(family_id)
    # An access token may be accepted until its exp plus the leeway: the revocation must
    # outlive that, or the sweep would bring the token back to life.
    lifetime = dt.timedelta(hours=settings.jwt_expiration_hours) + LEEWAY
    members = await m.RefreshToken.filter(family_id=family_id).values_list(
        "access_jti", "created_at"
    )
    # The row is written after the token is issued (its iat is rounded down to the
    # second), so created_at + lifetime is never before the token's own exp.
    revocations = [
        m.RevokedToken(jti=jti, expires_at=issued + lifetime) for jti, issued in members if jti
    ]
    await m.RevokedToken.bulk_create(revocations, ignore_conflicts=True)


async def _revoke_access(jti: str, expires_at: dt.datetime) -> None:
    await m.RevokedToken.bulk_create(
        [m.RevokedToken(jti=jti, expires_at=expires_at + LEEWAY)], ignore_conflicts=True
    )


async def ensure_still_signed_in(*, actor: Principal) -> None:
    """For long-lived streams, checked again while they run: the access token they were
    opened with must not have expired or been revoked since (logout, a reused refresh
    token). Other callers (single-user mode, workers) pass. Raises: Unauthenticated."""
    if actor.kind != "user" or actor.token_id is None:
        return
    if actor.token_expires_at is not None and actor.token_expires_at <= _now():
        raise Unauthenticated("access token expired: sign in again")
    if await m.RevokedToken.exists(jti=actor.token_id):
        raise Unauthenticated("access token revoked: sign in again")


async def refresh_tokens(*, settings: Settings, refresh_token: str) -> TokenPair:
    """Rotates a refresh token. A reused one revokes its whole family.

    Raises: Unauthenticated.
    """
    if not refresh_token or len(refresh_token) > 512:
        raise Unauthenticated("refresh token not accepted")
    stored = await m.RefreshToken.get_or_none(token_hash=_hash(refresh_token))
    if stored is None:
        raise Unauthenticated("refresh token not accepted")
    if stored.used_at is not None or stored.revoked_at is not None:
        await _revoke_family(settings=settings, family_id=stored.family_id)
        raise Unauthenticated("refresh token already used: every session of it is revoked")
    if stored.expires_at <= _now():
        raise Unauthenticated("refresh token expired: sign in again")
    async with transaction():
        claimed = await m.RefreshToken.filter(id=stored.id, used_at=None, revoked_at=None).update(
            used_at=_now()
        )
        if claimed:
            user = await m.User.get_or_none(id=stored.user_id)
            if user is None:
                raise Unauthenticated("refresh token not accepted")
            return await issue_tokens(settings=settings, user=user, family_id=stored.family_id)
    # A concurrent refresh (or a logout) used it first: that is a reuse too. Revoked outside
    # the transaction above, so that raising cannot roll the revocation back.
    await _revoke_family(settings=settings, family_id=stored.family_id)
    raise Unauthenticated("refresh token already used: every session of it is revoked")


async def logout(*, settings: Settings, actor: Principal, refresh_token: str | None = None) -> None:
    """Ends the caller's sign-in: revokes the access token, and every refresh token and
    every access token issued in its family (and in ``refresh_token``'s, when it is the
    caller's), so that no earlier token of the sign-in outlives it. In single-user mode
    there is no sign-in, and nothing to do.

    Raises: Unauthenticated (a worker, or no access token).
    """
    if actor.kind == "local":
        return
    if actor.user_id is None or actor.token_id is None or actor.token_expires_at is None:
        raise Unauthenticated("logout needs a signed-in user")
    await _revoke_access(actor.token_id, actor.token_expires_at)
    families = m.RefreshToken.filter(user_id=actor.user_id, access_jti=actor.token_id)
    if refresh_token:
        families = m.RefreshToken.filter(
            Q(access_jti=actor.token_id) | Q(token_hash=_hash(refresh_token)),
            user_id=actor.user_id,
        )
    for family_id in {row["family_id"] for row in await families.values("family_id")}:
        await _revoke_family(settings=settings, family_id=family_id)


LOCAL_USER_ID = UUID(int=0)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


async def get_current_user(*, actor: Principal) -> m.User:
    """The signed-in user; in single-user mode the implicit local user (id all zeros, not
    stored). Raises: NotFound."""
    if actor.user_id is None:
        return m.User(
            id=LOCAL_USER_ID,
            email="local@localhost",
            name="Local user",
            created_at=_EPOCH,
            updated_at=_EPOCH,
        )
    user = await m.User.get_or_none(id=actor.user_id)
    if user is None:
        raise NotFound("user not found")
    return user


async def purge_expired(*, now: dt.datetime | None = None) -> int:
    """Drops revocations, refresh tokens and sign-in states past their expiry (the periodic
    sweep)."""
    now = now or _now()
    gone = await m.RevokedToken.filter(expires_at__lt=now).delete()
    gone += await m.RefreshToken.filter(expires_at__lt=now).delete()
    gone += await m.AuthState.filter(expires_at__lt=now).delete()
    return gone
