"""Turns request credentials into a Principal; reads ``Authorization: Bearer`` headers.

``bearer_token`` is the one parser of that header, for users' access tokens here and for
workers' credentials and registration token (``connect/worker_handler.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from delidev import request_context
from delidev.auth.principal import LOCAL_USER, Principal
from delidev.errors import Unauthenticated
from delidev.settings import Settings

Verify = Callable[[str], Awaitable[Principal]]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header: the scheme in any case,
    whitespace around the token ignored. None when the header is missing, names another
    scheme, or carries no token."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


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
            principal = LOCAL_USER
        else:
            token = bearer_token(authorization)
            if token is None:
                raise Unauthenticated("authentication required: send Authorization: Bearer <token>")
            if self._verify is None:
                raise Unauthenticated("access token not accepted")
            principal = await self._verify(token)
        request_context.set_principal(principal)  # for the log
        return principal
