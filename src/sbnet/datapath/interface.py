"""The Datapath interface every backend implements (the reference switch now, Open vSwitch later)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from sbnet.flows.actions import GroupMod, MeterMod
from sbnet.flows.flow import Flow


@runtime_checkable
class Datapath(Protocol):
    """What the host agent and the tests may ask of a datapath, whichever backend it is:
    the reference switch in memory (sbnet.datapath.switch.Switch), on real interfaces
    (sbnet.datapath.afpacket.AfPacketDatapath, also through AfPacketProcess), or Open
    vSwitch (sbnet.ovs.backend.OvsDatapath).  tests/datapath/test_conformance.py runs
    the same packet scenarios against each."""

    def plug(self, name: str, ofport: int) -> int:
        """Make interface `name` OpenFlow port `ofport` (the reference switch in memory
        makes a port of that name that keeps what it sends); returns the ofport."""

    def unplug(self, name: str) -> None:
        """Remove the port of interface `name` (no error if there is none)."""

    def add_tunnel(self, name: str, kind: str, ofport: int, **options) -> int:
        """A vxlan/gre/geneve port taking its remote and key from the flow (tun_dst, tun_id)."""

    def port_names(self) -> dict[str, int]:
        """Interface name -> OpenFlow port number of every port but LOCAL."""

    def delete_group(self, group_id: int) -> None:
        """Delete one group (and, as OVS does, nothing else)."""

    def dump_conntrack(self, zone: int | None = None) -> list[str]:
        """Connections in `ovs-appctl dpctl/dump-conntrack` style."""

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
