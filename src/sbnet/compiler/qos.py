"""Stages qos_egress and qos_ingress: bandwidth limits as meters, DSCP marking."""

from __future__ import annotations


def build(ctx) -> None:
    """Not built yet: the tables' miss flows pass everything on."""
