"""Conversations and their transcript segments.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``conversations`` and ``segments``."""
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("finished_at", sa.Float, nullable=False),
        sa.Column("last_speech_at", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Integer, nullable=False),
        sa.Column("discarded", sa.Boolean, nullable=False),
    )
    op.create_index("ix_conversations_uid", "conversations", ["uid"])
    op.create_index("ix_conversations_uid_status", "conversations", ["uid", "status"])
    op.create_table(
        "segments",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(36),
            sa.ForeignKey("conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("speaker", sa.String(32), nullable=False),
        sa.Column("speaker_id", sa.Integer, nullable=False),
        sa.Column("is_user", sa.Boolean, nullable=False),
        sa.Column("person_id", sa.String(64), nullable=True),
        sa.Column("start", sa.Float, nullable=False),
        sa.Column("end", sa.Float, nullable=False),
        sa.Column("translations", sa.JSON, nullable=False),
        sa.Column("speech_profile_processed", sa.Boolean, nullable=False),
        sa.Column("stt_provider", sa.String(64), nullable=True),
    )
    op.create_index("ix_segments_conversation_id", "segments", ["conversation_id"])


def downgrade() -> None:
    """Drop both tables."""
    op.drop_table("segments")
    op.drop_table("conversations")
