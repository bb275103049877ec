from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import (
    BACKEND,
    create_postgres_database,
    drop_postgres_database,
    postgres_url,
)


@pytest.fixture
async def e2e_database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database of its own for the server processes of one test."""
    if BACKEND == "sqlite":
        yield f"sqlite://{tmp_path / 'e2e.db'}"
        return
    name = await create_postgres_database()
    try:
        yield postgres_url(name)
    finally:
        await drop_postgres_database(name)
