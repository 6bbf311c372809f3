"""One claim per user on creating their Letta agent, so several workers never create two.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``letta_agent_claims``."""
    op.create_table(
        "letta_agent_claims",
        sa.Column("uid", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=True),
        sa.Column("claimed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    """Drop ``letta_agent_claims``."""
    op.drop_table("letta_agent_claims")
