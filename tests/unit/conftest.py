"""Fixtures of the unit tests: the state stores on both databases (SQLite, real PostgreSQL)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from serve_app.state.config import StateSettings
from serve_app.state.sql_store import SqlStateStore
from tests.postgres import postgres_available, postgres_server


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """One throwaway PostgreSQL server per module (tests/postgres.py)."""
    if not postgres_available():
        pytest.skip("PostgreSQL is not installed on this machine")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqlStateStore]:
    """The state store, migrated and empty, on each database in turn."""
    if request.param == "sqlite":
        url = StateSettings(data_dir=tmp_path).database_url()
    else:
        url = request.getfixturevalue("postgres_url").replace("postgresql://", "postgresql+asyncpg://")
    state = SqlStateStore(url)
    await state.start()
    if request.param == "postgresql":
        await state.purge_older_than(time.time() + 1e6)  # the module's server is shared
    yield state
    await state.close()
