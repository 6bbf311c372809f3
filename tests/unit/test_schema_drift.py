"""The migrations build exactly the schema the models describe (real SQLite, Alembic's own comparison)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from memory.store.migrate import upgrade
from memory.store.models import Base


def test_the_migrated_database_matches_the_models(tmp_path: Path) -> None:
    path = tmp_path / "drift.db"
    upgrade(f"sqlite+aiosqlite:///{path}")  # as the service migrates
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == [], differences
