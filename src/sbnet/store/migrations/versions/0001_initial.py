"""Initial schema: resources, allocations, revision counter and change feed."""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sbnet_resources",
        sa.Column("type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("project_id", sa.String(255), nullable=False, index=True),
        sa.Column("parent_id", sa.String(36), nullable=True, index=True),
        sa.Column("body", sa.JSON, nullable=False),
    )
    op.create_table(
        "sbnet_ip_allocations",
        sa.Column("subnet_id", sa.String(36), primary_key=True),
        sa.Column("ip_address", sa.String(64), primary_key=True),
        sa.Column("network_id", sa.String(36), nullable=False, index=True),
        sa.Column("port_id", sa.String(36), nullable=False, index=True),
    )
    op.create_table(
        "sbnet_mac_allocations",
        sa.Column("network_id", sa.String(36), primary_key=True),
        sa.Column("mac_address", sa.String(17), primary_key=True),
        sa.Column("port_id", sa.String(36), nullable=False, index=True),
    )
    op.create_table(
        "sbnet_segment_allocations",
        sa.Column("network_type", sa.String(16), primary_key=True),
        sa.Column("physical_network", sa.String(64), primary_key=True),
        sa.Column("segmentation_id", sa.BigInteger, primary_key=True),
        sa.Column("network_id", sa.String(36), nullable=False, index=True),
    )
    rev = op.create_table(
        "sbnet_revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(rev, [{"id": 1, "value": 0}])
    op.create_table(
        "sbnet_changes",
        sa.Column("revision", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("resource", sa.String(64), nullable=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("body", sa.JSON, nullable=True),
    )


def downgrade() -> None:
    for name in ("sbnet_changes", "sbnet_revision", "sbnet_segment_allocations",
                 "sbnet_mac_allocations", "sbnet_ip_allocations", "sbnet_resources"):
        op.drop_table(name)
