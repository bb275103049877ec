"""A signed-in user for end-to-end tests that skip the OIDC round trip.

The server accepts an access token only for a sign-in it holds (a refresh-token family of the
user, ``services/auth.py``), so a token made in the test process needs that sign-in in the
server's database: ``sign_in`` writes the user and the refresh-token row as ``issue_tokens``
would, and mints the access token for it. Tests of the whole sign-in use the real provider
(``tests/e2e/test_tenants.py``, ``tests/interop/test_oidc_login.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import sqlite3
import uuid

import asyncpg

from delidev.auth.tokens import issue_access_token
from delidev.services.auth import REFRESH_LIFETIME
from delidev.settings import Settings


async def sign_in(database_url: str, jwt_secret: str, user_id: uuid.UUID | None = None) -> str:
    """An access token of a new sign-in of ``user_id`` (a new user when None)."""
    new_user = user_id is None
    user_id = user_id or uuid.uuid4()
    family = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    row = (
        uuid.uuid4(),
        user_id,
        hashlib.sha256(secrets.token_urlsafe(32).encode()).hexdigest(),
        family,
        now,
        now + REFRESH_LIFETIME,
    )
    insert_user = "INSERT INTO users (id, email, created_at, updated_at) VALUES ({})"
    insert_token = (
        "INSERT INTO refresh_tokens (id, user_id, token_hash, family_id, created_at, expires_at)"
        " VALUES ({})"
    )
    if database_url.startswith("sqlite://"):
        with sqlite3.connect(database_url.removeprefix("sqlite://")) as db:
            if new_user:
                db.execute(
                    insert_user.format("?, ?, ?, ?"),
                    (str(user_id), f"{user_id}@example.com", str(now), str(now)),
                )
            db.execute(
                insert_token.format("?, ?, ?, ?, ?, ?"),
                tuple(str(v) if not isinstance(v, str) else v for v in row),
            )
    else:
        conn = await asyncpg.connect(database_url)
        try:
            if new_user:
                await conn.execute(
                    insert_user.format("$1, $2, $3, $3"), user_id, f"{user_id}@example.com", now
                )
            await conn.execute(insert_token.format("$1, $2, $3, $4, $5, $6"), *row)
        finally:
            await conn.close()
    settings = Settings(jwt_secret=jwt_secret)
    return issue_access_token(settings, user_id, session_id=family).token
