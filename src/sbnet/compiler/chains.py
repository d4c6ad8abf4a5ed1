"""Stages chain_classify and chain_forward: port chains through port pair groups."""

from __future__ import annotations


def build(ctx) -> None:
    """Not built yet: chain_classify's miss passes everything on."""
