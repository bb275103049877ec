"""Turns request credentials into a Principal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import Unauthenticated
from delidev.settings import Settings

Verify = Callable[[str], Awaitable[Principal]]


class Authenticator:
    """Single-user mode: every caller is the local user (auth is off, as the spec says).

    Multi-user mode: a bearer access token, checked by ``verify`` (the app passes the auth
    service's, which also checks that the token's sign-in is held and not ended). Without
    one, everything is refused.
    """

    def __init__(self, settings: Settings, verify: Verify | None = None) -> None:
        self._single_user = settings.single_user_mode
        self._verify = verify

    async def authenticate(self, authorization: str | None) -> Principal:
        """Raises: Unauthenticated."""
        if self._single_user:
            return LOCAL_USER
        if not authorization:
            raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
        if self._verify is None:
            raise Unauthenticated("access token not accepted")
        return await self._verify(token)
