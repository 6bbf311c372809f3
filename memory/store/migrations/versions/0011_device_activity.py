"""When audio last arrived from each user's device, for the alert on a device gone silent.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``device_activity``."""
    op.create_table(
        "device_activity",
        sa.Column("uid", sa.String(128), primary_key=True),
        sa.Column("last_audio_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop ``device_activity``."""
    op.drop_table("device_activity")
