from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal
from uuid import UUID


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller a service acts for.

    ``user_id`` is None for the implicit local user of single-user mode, whose
    workspaces have no owner.
    """

    kind: Literal["local", "user", "worker"]
    user_id: UUID | None = None
    worker_id: UUID | None = None
    token_id: str | None = None
    """The ``jti`` of the access token the request came with."""
    token_expires_at: dt.datetime | None = None
    session_id: UUID | None = None
    """The sign-in the access token belongs to (its refresh-token family): logout ends it."""

    @property
    def is_worker(self) -> bool:
        return self.kind == "worker"


LOCAL_USER = Principal(kind="local")
