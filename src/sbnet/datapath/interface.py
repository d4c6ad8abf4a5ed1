"""The Datapath interface every backend implements (the reference switch now, Open vSwitch later)."""

from __future__ import annotations

from typing import Protocol

from sbnet.flows.actions import GroupMod, MeterMod
from sbnet.flows.flow import Flow


class Datapath(Protocol):
    """What the host agent and the tests may ask of a datapath, whichever backend it is."""

    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (),
               groups: list[GroupMod] = (), now: float | None = None,
               meters: list[MeterMod] = ()) -> None:
        """Apply meters (added, or modified if changed), deletions, additions and group
        changes atomically, or none of them.  Flows may name meters of the same bundle;
        a flow naming a meter that does not exist is refused (OFPMMFC_INVALID_METER)."""

    def delete_meter(self, meter_id: int) -> list[Flow]:
        """Delete a meter and every flow that names it (as OVS does); returns those flows."""

    def dump_meters(self) -> list[MeterMod]:
        """Installed meters by id (ovs-ofctl dump-meters)."""

    def meter_stats(self) -> list:
        """Per meter: flow count, packets and bytes in, band drops (ovs-ofctl meter-stats)."""

    def dump_flows(self) -> list:
        """Installed flows with packet and byte counters, duration and idle age."""

    def dump_megaflows(self) -> list[str]:
        """Datapath flows (match/mask, counters, tier, actions), one line each."""

    def trace(self, in_port: int, packet: bytes):
        """Tables visited, rules hit, the megaflow and the datapath actions for one packet."""
