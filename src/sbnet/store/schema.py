"""The tables: resources as JSON documents, allocation tables whose keys forbid duplicates, the feed."""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, Float, Index, Integer, MetaData, String, Table

metadata = MetaData()

# One row per resource; body is exactly what the API returns (an admin's view).
resources = Table(
    "sbnet_resources", metadata,
    Column("type", String(64), primary_key=True),
    Column("id", String(36), primary_key=True),
    Column("project_id", String(255), nullable=False),
    Column("parent_id", String(36), nullable=True),
    Column("body", JSON, nullable=False),
    # Lists and counts by project or parent always name the type too (migration 0004).
    Index("ix_sbnet_resources_project_type", "project_id", "type"),
    Index("ix_sbnet_resources_parent_type", "parent_id", "type"),
)

# The primary keys are the last line of defence against double allocation under concurrency.
ip_allocations = Table(
    "sbnet_ip_allocations", metadata,
    Column("subnet_id", String(36), primary_key=True),
    Column("ip_address", String(64), primary_key=True),
    Column("network_id", String(36), nullable=False, index=True),
    Column("port_id", String(36), nullable=False, index=True),
)

mac_allocations = Table(
    "sbnet_mac_allocations", metadata,
    Column("network_id", String(36), primary_key=True),
    Column("mac_address", String(17), primary_key=True),
    Column("port_id", String(36), nullable=False, index=True),
)

segment_allocations = Table(
    "sbnet_segment_allocations", metadata,
    Column("network_type", String(16), primary_key=True),
    Column("physical_network", String(64), primary_key=True),  # "" for tunnels
    Column("segmentation_id", BigInteger, primary_key=True),
    Column("network_id", String(36), nullable=False, index=True),
)

# A single row; every write transaction locks it first, which serialises writers.
revision = Table(
    "sbnet_revision", metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

changes = Table(
    "sbnet_changes", metadata,
    Column("revision", BigInteger, primary_key=True, autoincrement=False),
    Column("resource", String(64), nullable=False),
    Column("id", String(36), nullable=False),
    Column("op", String(8), nullable=False),
    Column("project_id", String(255), nullable=False),
    Column("body", JSON, nullable=True),
)

# Agents' last heartbeats, shared by the server processes on one database (no change feed).
heartbeats = Table(
    "sbnet_heartbeats", metadata,
    Column("host", String(255), primary_key=True),
    Column("seen", Float, nullable=False),
    Column("started_at", String(32), nullable=False),
    Column("heartbeat_at", String(32), nullable=False),
    Column("config", JSON, nullable=False),
)
