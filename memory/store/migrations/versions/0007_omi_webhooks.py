"""What the OMI cloud's developer webhooks bring: a conversation's summary and id there, and day summaries.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``conversations.structured`` and ``conversations.external_id``; create ``day_summaries``."""
    with op.batch_alter_table("conversations") as batch:
        batch.add_column(sa.Column("structured", sa.JSON, nullable=True))
        batch.add_column(sa.Column("external_id", sa.String(64), nullable=True))
    op.create_index("ix_conversations_uid_external_id", "conversations", ["uid", "external_id"])
    op.create_table(
        "day_summaries",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("summary_json", sa.JSON, nullable=True),
        sa.Column("received_at", sa.Float, nullable=False),
    )
    op.create_index("ix_day_summaries_uid_created_at", "day_summaries", ["uid", "created_at"])


def downgrade() -> None:
    """Drop ``day_summaries`` and the two conversation columns."""
    op.drop_index("ix_day_summaries_uid_created_at", "day_summaries")
    op.drop_table("day_summaries")
    op.drop_index("ix_conversations_uid_external_id", "conversations")
    with op.batch_alter_table("conversations") as batch:
        batch.drop_column("external_id")
        batch.drop_column("structured")
