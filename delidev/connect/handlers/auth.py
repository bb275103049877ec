"""Connect handler of AuthService: OIDC sign-in, token refresh, the current user, logout."""

from __future__ import annotations

from delidev.auth.authenticator import Authenticator
from delidev.connect import convert
from delidev.connect.gen.delidev.v1 import auth_pb
from delidev.connect.gen.delidev.v1.auth_connect import AuthService
from delidev.connect.handlers.base import Ctx, Handler
from delidev.services import auth, oidc
from delidev.settings import Settings


class AuthHandler(Handler, AuthService):
    """Sign-in (OIDC) and sessions of multi-user mode; the login methods need no token."""

    def __init__(self, authenticator: Authenticator, settings: Settings) -> None:
        super().__init__(authenticator)
        self._settings = settings
        self._oidc = oidc.OidcClient(settings)

    def _multi_user(self) -> None:
        auth.ensure_sign_in_enabled(settings=self._settings)

    async def get_login_url(
        self, request: auth_pb.GetLoginUrlRequest, ctx: Ctx
    ) -> auth_pb.GetLoginUrlResponse:
        self._multi_user()
        url, state = await self._oidc.login_url(redirect_uri=request.redirect_uri)
        return auth_pb.GetLoginUrlResponse(url=url, state=state)

    async def handle_callback(
        self, request: auth_pb.HandleCallbackRequest, ctx: Ctx
    ) -> auth_pb.HandleCallbackResponse:
        self._multi_user()
        pair = await self._oidc.complete_login(code=request.code, state=request.state)
        return convert.signed_in(pair)

    async def refresh_token(
        self, request: auth_pb.RefreshTokenRequest, ctx: Ctx
    ) -> auth_pb.RefreshTokenResponse:
        pair = await auth.refresh_tokens(
            settings=self._settings, refresh_token=request.refresh_token
        )
        return convert.refreshed(pair)

    async def get_current_user(
        self, request: auth_pb.GetCurrentUserRequest, ctx: Ctx
    ) -> auth_pb.GetCurrentUserResponse:
        user = await auth.get_current_user(actor=await self.actor(ctx))
        return auth_pb.GetCurrentUserResponse(user=convert.user(user))

    async def logout(self, request: auth_pb.LogoutRequest, ctx: Ctx) -> auth_pb.LogoutResponse:
        await auth.logout(
            settings=self._settings,
            actor=await self.actor(ctx),
            refresh_token=request.refresh_token or None,
        )
        return auth_pb.LogoutResponse()
