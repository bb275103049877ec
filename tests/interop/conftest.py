from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    BACKEND,
    create_postgres_database,
    drop_postgres_database,
    postgres_url,
)


@pytest.fixture
def server_database_url(tmp_path: Path) -> Iterator[str]:
    """A fresh database of the backend under test for one server process."""
    if BACKEND == "sqlite":
        yield f"sqlite:///{tmp_path / 'delidev.db'}"
        return
    name = asyncio.run(create_postgres_database())
    try:
        yield postgres_url(name)
    finally:
        asyncio.run(drop_postgres_database(name))
