"""Fixtures of the unit tests: a real Postgres for the storage contract tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import TempPostgres, postgres_binaries


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real Postgres: OMI_LETTA_TEST_POSTGRES_URL, else a throwaway cluster if PostgreSQL is installed."""
    if url := os.environ.get("OMI_LETTA_TEST_POSTGRES_URL"):
        yield url
        return
    if postgres_binaries() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql) and OMI_LETTA_TEST_POSTGRES_URL is unset")
    server = TempPostgres()
    url = server.start()
    yield url
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each storage test runs twice: on a fresh SQLite file and on the real Postgres."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'test.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
