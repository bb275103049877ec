from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e.harness import fresh_database


@pytest.fixture
async def e2e_database_url(tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database of its own for the server processes of one test."""
    async with fresh_database(tmp_path) as url:
        yield url
