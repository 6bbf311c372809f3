"""Fixtures of the unit tests: a real Postgres for the storage contract tests."""

from __future__ import annotations

import os
from collections.abc import Iterator

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
