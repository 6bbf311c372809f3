"""Per-user speaker voice profiles.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``speaker_profiles``: one name per user (any case), at most one wearer profile."""
    op.create_table(
        "speaker_profiles",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("is_user", sa.Boolean, nullable=False),
        sa.Column("embedding", sa.LargeBinary, nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_speaker_profiles_uid", "speaker_profiles", ["uid"])
    op.create_index("uq_speaker_profiles_uid_name", "speaker_profiles", ["uid", sa.text("lower(name)")], unique=True)
    op.create_index(
        "uq_speaker_profiles_wearer",
        "speaker_profiles",
        ["uid"],
        unique=True,
        sqlite_where=sa.text("is_user"),
        postgresql_where=sa.text("is_user"),
    )


def downgrade() -> None:
    """Drop ``speaker_profiles``."""
    op.drop_table("speaker_profiles")
