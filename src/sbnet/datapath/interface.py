"""The Datapath interface every backend implements (the reference switch now, Open vSwitch later)."""

from __future__ import annotations

from typing import Protocol

from sbnet.flows.actions import GroupMod
from sbnet.flows.flow import Flow


class Datapath(Protocol):
    """What the host agent and the tests may ask of a datapath, whichever backend it is."""

    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (),
               groups: list[GroupMod] = ()) -> None:
        """Apply deletions, additions and group changes atomically, or none of them."""

    def dump_flows(self) -> list:
        """Installed flows with packet and byte counters, duration and idle age."""

    def dump_megaflows(self) -> list[str]:
        """Datapath flows (match/mask, counters, tier, actions), one line each."""

    def trace(self, in_port: int, packet: bytes):
        """Tables visited, rules hit, the megaflow and the datapath actions for one packet."""
