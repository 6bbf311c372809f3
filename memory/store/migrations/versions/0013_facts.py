"""Facts about the user that conversations reveal (OMI's "memories"), added, updated or superseded.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``facts``."""
    op.create_table(
        "facts",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("category", sa.String(32), nullable=False),
        sa.Column("conversation_id", sa.String(64), nullable=True),
        sa.Column("manual", sa.Boolean, nullable=False),
        sa.Column("edited", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("superseded_by", sa.String(36), nullable=True),
        sa.Column("removed_at", sa.Float, nullable=True),
    )
    op.create_index("ix_facts_uid_created_at", "facts", ["uid", "created_at"])


def downgrade() -> None:
    """Drop ``facts``."""
    op.drop_index("ix_facts_uid_created_at", "facts")
    op.drop_table("facts")
