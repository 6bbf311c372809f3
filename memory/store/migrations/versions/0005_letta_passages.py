"""The Letta passage ledger: which passage groups each agent holds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create ``letta_passages``."""
    op.create_table(
        "letta_passages",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("conversation_id", sa.String(36), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("passage_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("uq_letta_passages_agent_key", "letta_passages", ["agent_id", "key"], unique=True)
    op.create_index("ix_letta_passages_agent_conversation", "letta_passages", ["agent_id", "conversation_id"])


def downgrade() -> None:
    """Drop ``letta_passages``."""
    op.drop_index("ix_letta_passages_agent_conversation", "letta_passages")
    op.drop_index("uq_letta_passages_agent_key", "letta_passages")
    op.drop_table("letta_passages")
