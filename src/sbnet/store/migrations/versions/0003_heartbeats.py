"""Agents' heartbeats in a table of their own, so that every server process on one database sees them."""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # No resource and no change: a heartbeat moves no revision (agents beat every few seconds).
    op.create_table(
        "sbnet_heartbeats",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("seen", sa.Float, nullable=False),          # seconds since the epoch
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("heartbeat_at", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("sbnet_heartbeats")
