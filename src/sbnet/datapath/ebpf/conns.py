"""Established connections of the reference switch's conntrack, as entries of the kernel tier's connection map."""

from __future__ import annotations

from dataclasses import dataclass

from sbnet.flows import fields as F

_TRK, _EST, _RPL = F.CT_STATE_BITS["trk"], F.CT_STATE_BITS["est"], F.CT_STATE_BITS["rpl"]
HELD_TCP_STATES = ("ESTABLISHED",)


@dataclass(frozen=True)
class ConnEntry:
    """One direction of a connection: its 5-tuple in the packets' own order and their ct_state."""

    zone: int
    proto: int
    src: int
    dst: int
    sport: int
    dport: int
    state: int
    mark: int


def established(conntrack, zone: int, proto: int, src: int, dst: int, sport: int,
                dport: int) -> list[ConnEntry] | None:
    """Both directions of an IPv4 TCP/UDP connection the slow path committed and has seen
    established, or None when the kernel must not hold it (unknown, not established,
    labelled: those packets go up)."""
    if proto not in (F.IP_TCP, F.IP_UDP):
        return None
    slot, direction = conntrack.find((zone, proto, 0, src, dst, sport, dport))
    if slot < 0:
        return None
    if proto == F.IP_TCP and conntrack.tcp_state(slot) != ("ESTABLISHED", "ESTABLISHED"):
        return None
    if proto == F.IP_UDP and not conntrack.find((zone, proto, 0, dst, src, dport, sport))[0] >= 0:
        return None
    if int(conntrack.label[slot].any()):
        return None
    mark = int(conntrack.mark[slot])
    there = ConnEntry(zone, proto, src, dst, sport, dport, _TRK | _EST | (_RPL if direction else 0), mark)
    back = ConnEntry(zone, proto, dst, src, dport, sport, _TRK | _EST | (0 if direction else _RPL), mark)
    return [there, back]
