from __future__ import annotations

from uuid import UUID, uuid4

from tortoise import fields
from tortoise.models import Model


class User(Model):
    """A person signed in through OIDC (multi-user mode only)."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    email = fields.CharField(max_length=255, unique=True)
    name = fields.CharField(max_length=255, null=True)
    oidc_issuer = fields.CharField(max_length=255, null=True)
    oidc_subject = fields.CharField(max_length=255, null=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    updated_at = fields.DatetimeField(auto_now=True)

    class Meta:
        table = "users"
        unique_together = (("oidc_issuer", "oidc_subject"),)


class AuthState(Model):
    """One pending OIDC login: PKCE verifier, nonce and redirect, used once."""

    state = fields.CharField(max_length=255, primary_key=True)
    code_verifier = fields.CharField(max_length=255)
    nonce = fields.CharField(max_length=255, null=True)
    redirect_uri = fields.TextField()
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField(db_index=True)

    class Meta:
        table = "auth_states"


class RefreshToken(Model):
    """An opaque refresh token, stored hashed - rotation keeps a family together."""

    id = fields.UUIDField(primary_key=True, default=uuid4)
    user: fields.ForeignKeyRelation[User] = fields.ForeignKeyField(
        "models.User", related_name="refresh_tokens", on_delete=fields.CASCADE
    )
    token_hash = fields.CharField(max_length=64, unique=True)
    family_id = fields.UUIDField(db_index=True)
    access_jti = fields.CharField(max_length=64, null=True)
    """The access token issued with this refresh token (for an audit; not checked)."""
    created_at = fields.DatetimeField(auto_now_add=True)
    expires_at = fields.DatetimeField()
    used_at = fields.DatetimeField(null=True)
    revoked_at = fields.DatetimeField(null=True)

    user_id: UUID

    class Meta:
        table = "refresh_tokens"
        indexes = (("user_id",),)
