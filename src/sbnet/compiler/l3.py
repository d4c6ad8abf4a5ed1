"""Stages l3_*: the distributed router, floating IPs and SNAT."""

from __future__ import annotations


def build(ctx) -> None:
    """Not built yet: l3 tables' miss flows pass everything on."""
