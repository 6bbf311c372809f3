"""Bring the database schema up to date with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

__all__ = ["upgrade"]

MIGRATIONS = Path(__file__).with_name("migrations")


def upgrade(url: str) -> None:
    """Apply every migration to the database at ``url`` (blocking; run it in a thread)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    command.upgrade(config, "head")
