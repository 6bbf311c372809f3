"""What the OMI app keeps per user and per conversation: starred conversations, and the user's settings.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``conversations.starred``, an index for listing by start, and ``user_settings``."""
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("starred", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_index("ix_conversations_uid_started_at", "conversations", ["uid", "started_at"])
    op.create_table(
        "user_settings",
        sa.Column("uid", sa.String(128), primary_key=True),
        sa.Column("language", sa.String(16), nullable=True),
        sa.Column("onboarding_completed", sa.Boolean, nullable=True),
        sa.Column("acquisition_source", sa.String(64), nullable=True),
        sa.Column("time_zone", sa.String(64), nullable=True),
        sa.Column("chat_cleared_at", sa.Float, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("user_settings")
    op.drop_index("ix_conversations_uid_started_at", "conversations")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("starred")
