"""Established connections of the reference switch's conntrack, as entries of the kernel tier's connection map."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbnet.datapath.ebpf import layout as L
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
    established (UDP: a reply seen), or None when the kernel must not hold it (unknown, not established,
    labelled: those packets go up)."""
    if proto not in (F.IP_TCP, F.IP_UDP):
        return None
    slot, direction = conntrack.find((zone, proto, 0, src, dst, sport, dport))
    if slot < 0:
        return None
    if proto == F.IP_TCP and conntrack.tcp_state(slot) != ("ESTABLISHED", "ESTABLISHED"):
        return None
    if proto == F.IP_UDP and not conntrack.view.held_outside(np.array([slot]))[0]:
        return None             # no reply seen yet: its packets are still +new
    if int(conntrack.label[slot].any()):
        return None
    mark = int(conntrack.mark[slot])
    there = ConnEntry(zone, proto, src, dst, sport, dport, _TRK | _EST | (_RPL if direction else 0), mark)
    back = ConnEntry(zone, proto, dst, src, dport, sport, _TRK | _EST | (0 if direction else _RPL), mark)
    return [there, back]


def held_many(conntrack, zone: int, tuples: np.ndarray) -> np.ndarray:
    """Which (proto, src, dst, sport, dport) rows belong to a connection the kernel may
    hold (established() for many tuples at once: committed, established, no label)."""
    if not len(tuples):
        return np.zeros(0, dtype=bool)
    proto, src, dst, sport, dport = tuples.T
    slot, _ = conntrack.view.find_ipv4(np.full(len(tuples), zone), proto, src, dst, sport, dport)
    return conntrack.view.held_outside(slot)


def entries_many(conntrack, zone: int, tuples: np.ndarray) -> tuple[bytes, bytes, list[tuple]]:
    """Both directions of each held connection among `tuples` as the connection map's packed
    (keys, values), and the (zone, proto, src, dst, sport, dport) of every direction."""
    if not len(tuples):
        return b"", b"", []
    proto, src, dst, sport, dport = tuples.T
    slot, d = conntrack.view.find_ipv4(np.full(len(tuples), zone), proto, src, dst, sport, dport)
    ok = conntrack.view.held_outside(slot)
    if not ok.any():
        return b"", b"", []
    proto, src, dst, sport, dport, d = (a[ok] for a in (proto, src, dst, sport, dport, d))
    mark = conntrack.view.marks(slot[ok])
    n = len(proto)
    keys = np.zeros(2 * n, dtype=L.CT_KEY_DTYPE)
    vals = np.zeros(2 * n, dtype=L.CT_VAL_DTYPE)
    keys["zone"], keys["proto"] = zone, np.tile(proto, 2)
    keys["src"], keys["dst"] = np.concatenate([src, dst]), np.concatenate([dst, src])
    keys["sport"], keys["dport"] = np.concatenate([sport, dport]), np.concatenate([dport, sport])
    # This direction is the reply one when the tuple is the connection's direction 1.
    vals["state"] = _TRK | _EST | np.where(np.concatenate([d, 1 - d]) == 1, _RPL, 0)
    vals["mark"] = np.tile(mark, 2)
    dirs = list(zip([zone] * 2 * n, keys["proto"].tolist(), keys["src"].tolist(),
                    keys["dst"].tolist(), keys["sport"].tolist(), keys["dport"].tolist()))
    return keys.tobytes(), vals.tobytes(), dirs

