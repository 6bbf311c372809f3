"""Segments carry the speaker's display name (``me``, a person's name, or ``Speaker n``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the nullable ``segments.speaker_name`` column."""
    with op.batch_alter_table("segments") as batch:
        batch.add_column(sa.Column("speaker_name", sa.String(100), nullable=True))


def downgrade() -> None:
    """Drop ``segments.speaker_name``."""
    with op.batch_alter_table("segments") as batch:
        batch.drop_column("speaker_name")
