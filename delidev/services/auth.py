"""Sign-in sessions of multi-user mode: access tokens, refresh tokens, logout.

A sign-in yields an access token (a JWT, ``auth/tokens.py``) and an opaque refresh token
stored hashed. The sign-in is the refresh token's *family*: refreshing rotates (the old
refresh token is used up and a new one of the same family is issued), and every access
token names its family in the ``sid`` claim. An access token is accepted only while its
family holds an unrevoked refresh token of its user, so a token signed with the secret but
never issued here (an unknown ``sid``) is refused, and ending a sign-in ends every token of
it at once, on every replica: the check reads the database on each request (one indexed
query, as cheap as the revoked-``jti`` and user lookups it replaced).

Presenting a used or revoked refresh token again revokes the whole family (someone else has
a copy). Logout revokes the caller's family. Tokens never appear in logs or error messages.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import secrets
from dataclasses import dataclass
from uuid import UUID, uuid4

from delidev import models as m
from delidev.auth.principal import Principal
from delidev.auth.tokens import issue_access_token, verify_access_token
from delidev.errors import FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from delidev.services import common
from delidev.services.common import transaction
from delidev.settings import Settings

REFRESH_LIFETIME = dt.timedelta(days=30)
_SIGNED_OUT = "sign-in ended (signed out, or revoked): sign in again"
_VSCHAR = re.compile("[\x20-\x7e]+")


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_at: dt.datetime
    user: m.User


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def ensure_sign_in_enabled(*, settings: Settings) -> None:
    """Sign-in (the OIDC login) exists only in multi-user mode, whatever the transport.

    Raises: FailedPrecondition.
    """
    if settings.single_user_mode:
        raise FailedPrecondition("the server runs in single-user mode: there is no sign-in")


def check_token_text(value: str, *, field: str, limit: int) -> None:
    """A code, state or token from a request: present, at most ``limit`` characters, and
    printable ASCII only (OAuth 2.0's VSCHAR, RFC 6749 appendix A). Checked before the value
    reaches the database, a hash or a log. Raises: InvalidArgument."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if len(value) > limit:
        raise InvalidArgument(
            f"{field} is too long ({len(value)} characters, at most {limit})", field=field
        )
    if not _VSCHAR.fullmatch(value):
        raise InvalidArgument(
            f"{field} may hold only printable ASCII characters (no control characters)",
            field=field,
        )


async def issue_tokens(
    *, settings: Settings, user: m.User, family_id: UUID | None = None
) -> TokenPair:
    """A fresh access token and refresh token for a signed-in user: a new sign-in, or the
    next pair of the sign-in ``family_id``."""
    family_id = family_id or uuid4()
    access = issue_access_token(
        settings, user.id, session_id=family_id, email=user.email, name=user.name
    )
    refresh = secrets.token_urlsafe(32)
    await m.RefreshToken.create(
        user_id=user.id,
        token_hash=_hash(refresh),
        family_id=family_id,
        access_jti=access.jti,
        expires_at=common.now() + REFRESH_LIFETIME,
    )
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh,
        expires_at=access.expires_at,
        user=user,
    )


async def _signed_in(*, user_id: UUID, session_id: UUID) -> bool:
    """Whether the sign-in is one this server holds and has not ended: a refresh token of
    the family, of this user, not revoked. One indexed query (``family_id``); it also
    answers whether the user still exists (their refresh tokens go with them)."""
    return await m.RefreshToken.exists(family_id=session_id, user_id=user_id, revoked_at=None)


async def authenticate(*, settings: Settings, token: str) -> Principal:
    """The user an access token speaks for. Raises: Unauthenticated."""
    access = verify_access_token(settings, token)
    if not await _signed_in(user_id=access.user_id, session_id=access.session_id):
        raise Unauthenticated(_SIGNED_OUT)
    return Principal(
        kind="user",
        user_id=access.user_id,
        token_id=access.jti,
        token_expires_at=access.expires_at,
        session_id=access.session_id,
    )


async def _revoke_family(family_id: UUID) -> None:
    """Ends a sign-in: revokes every refresh token of the family, and with them every access
    token issued for it (``authenticate`` looks for an unrevoked member).

    Repeats until a pass finds nothing left: on PostgreSQL a rotation committing meanwhile
    adds a member this UPDATE cannot see (it waits on the row the rotation locked, then
    carries on with the rows of its own snapshot), and the next pass catches it.
    """
    now = common.now()
    while await m.RefreshToken.filter(family_id=family_id, revoked_at=None).update(revoked_at=now):
        pass


async def ensure_still_signed_in(*, actor: Principal) -> None:
    """For long-lived streams, checked again while they run: the access token they were
    opened with must not have expired, nor its sign-in ended since (logout, a reused refresh
    token). Other callers (single-user mode, workers) pass. Raises: Unauthenticated."""
    if actor.kind != "user" or actor.user_id is None or actor.session_id is None:
        return
    if actor.token_expires_at is not None and actor.token_expires_at <= common.now():
        raise Unauthenticated("access token expired: sign in again")
    if not await _signed_in(user_id=actor.user_id, session_id=actor.session_id):
        raise Unauthenticated(_SIGNED_OUT)


async def refresh_tokens(*, settings: Settings, refresh_token: str) -> TokenPair:
    """Rotates a refresh token. A reused one revokes its whole family.

    Raises: InvalidArgument (not a refresh token's form), Unauthenticated.
    """
    check_token_text(refresh_token, field="refresh_token", limit=settings.auth_max_token_chars)
    stored = await m.RefreshToken.get_or_none(token_hash=_hash(refresh_token))
    if stored is None:
        raise Unauthenticated("refresh token not accepted")
    if stored.used_at is not None or stored.revoked_at is not None:
        await _revoke_family(stored.family_id)
        raise Unauthenticated("refresh token already used: every session of it is revoked")
    if stored.expires_at <= common.now():
        raise Unauthenticated("refresh token expired: sign in again")
    async with transaction():
        claimed = await m.RefreshToken.filter(id=stored.id, used_at=None, revoked_at=None).update(
            used_at=common.now()
        )
        if claimed:
            user = await m.User.get_or_none(id=stored.user_id)
            if user is None:
                raise Unauthenticated("refresh token not accepted")
            return await issue_tokens(settings=settings, user=user, family_id=stored.family_id)
    # A concurrent refresh (or a logout) used it first: that is a reuse too. Revoked outside
    # the transaction above, so that raising cannot roll the revocation back.
    await _revoke_family(stored.family_id)
    raise Unauthenticated("refresh token already used: every session of it is revoked")


async def logout(*, settings: Settings, actor: Principal, refresh_token: str | None = None) -> None:
    """Ends the caller's sign-in: every access and refresh token of it (and of
    ``refresh_token``'s sign-in, when that is the caller's) stops working at once. In
    single-user mode there is no sign-in, and nothing to do.

    Raises: InvalidArgument (``refresh_token`` not a refresh token's form), Unauthenticated
    (a worker, or no access token).
    """
    if actor.kind == "local":
        return
    if actor.user_id is None or actor.session_id is None:
        raise Unauthenticated("logout needs a signed-in user")
    families = {actor.session_id}
    if refresh_token:
        check_token_text(refresh_token, field="refresh_token", limit=settings.auth_max_token_chars)
        other = await m.RefreshToken.get_or_none(
            token_hash=_hash(refresh_token), user_id=actor.user_id
        )
        if other is not None:
            families.add(other.family_id)
    for family_id in families:
        await _revoke_family(family_id)


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
    """Drops refresh tokens and sign-in states past their expiry (the periodic sweep)."""
    now = now or common.now()
    gone = await m.RefreshToken.filter(expires_at__lt=now).delete()
    gone += await m.AuthState.filter(expires_at__lt=now).delete()
    return gone
