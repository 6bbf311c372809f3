"""Offline recordings the OMI app uploads: one job per upload, keyed by its user and content.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``sync_jobs``."""
    op.create_table(
        "sync_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("content_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("total_files", sa.Integer, nullable=False),
        sa.Column("total_segments", sa.Integer, nullable=False),
        sa.Column("processed_segments", sa.Integer, nullable=False),
        sa.Column("successful_segments", sa.Integer, nullable=False),
        sa.Column("failed_segments", sa.Integer, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("completed_at", sa.Float, nullable=True),
        sa.Column("audio_deleted_at", sa.Float, nullable=True),
    )
    op.create_index("ix_sync_jobs_uid_content", "sync_jobs", ["uid", "content_id"], unique=True)
    op.create_index("ix_sync_jobs_status", "sync_jobs", ["status"])


def downgrade() -> None:
    """Drop ``sync_jobs``."""
    op.drop_index("ix_sync_jobs_status", "sync_jobs")
    op.drop_index("ix_sync_jobs_uid_content", "sync_jobs")
    op.drop_table("sync_jobs")
