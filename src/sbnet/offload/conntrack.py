"""The NIC tier's conntrack: which packets' connections the NIC holds, and offering it established ones."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.conntrack_index import stored
from sbnet.datapath.conntrack_table import EST, NEW, TRK, _hash_words
from sbnet.flows import fields as F

_S = F.SLOT_INDEX
_U = np.uint64
_TCP_FIN_RST = 0x001 | 0x004
_ETH_IPV6 = 0x86DD


class CtOffload:
    """Connections between a switch's conntrack and its NIC tier (nf_flowtable's model).

    A connection goes to the NIC once a packet of it comes back from conntrack +trk+est
    (TCP or UDP) through an offloadable megaflow (installed or still queued: TC's act_ct
    adds established connections to the flowtable from the software path too); the table's capacity is the profile's
    `conntrack.capacity` and a connection it refuses stays in software (counted once in
    `tier.ct_refused`).  A FIN or RST goes to software and takes the connection off the
    NIC, as the flowtable hands teardown back to the host.  Connection ids are the
    conntrack's stored hash of the original tuple, so they survive slot reuse."""

    def __init__(self, tier, conntrack) -> None:
        self.tier = tier
        self.ct = conntrack
        self.refused: set[int] = set()
        self._zones: dict[int, int | None] = {}       # action id -> zone of its ct(), if any

    def held(self, switch, mf: np.ndarray, keys: np.ndarray, rows: np.ndarray,
             tcp_flags: np.ndarray, now: float) -> np.ndarray | None:
        """Per packet (rows of keys, megaflows mf): its connection is on the NIC.  Offers the
        connections of established packets after deciding, so the packet that makes the
        offer is still a software one."""
        need = self.tier.needs_ct(mf)
        if not need.any():
            return None
        held = np.zeros(mf.size, dtype=bool)
        idx = np.flatnonzero(need)
        r = rows[idx]
        conn = np.full(idx.size, -1, dtype=np.int64)
        second = keys[_S["recirc_id"], r] != 0
        if second.any():
            conn[second] = _orig_hash(keys, r[second])
        first = np.flatnonzero(~second)
        if first.size:
            zones = self._first_pass_zones(switch, mf[idx[first]])
            ok = zones >= 0
            conn[first[ok]] = self._lookup(keys, r[first[ok]], zones[ok].astype(_U), now)
        proto = keys[_S["nw_proto"], r]
        l4 = (proto == F.IP_TCP) | (proto == F.IP_UDP)
        fin = (tcp_flags[idx].astype(np.int64) & _TCP_FIN_RST) != 0
        fin &= proto == F.IP_TCP
        known = (conn != -1) & l4
        held[idx] = known & ~fin & self.tier.ct_held_many(conn)
        for c in np.unique(conn[known & fin]).tolist():
            self.tier.ct_remove(c)
        st = keys[_S["ct_state"], r]
        est = second & known & ~fin & ((st & _U(TRK | EST)) == _U(TRK | EST)) & \
            ((st & _U(NEW)) == 0)
        want = est & ~held[idx]
        if want.any():
            ids, first_row = np.unique(conn[want], return_index=True)
            tcp = proto[want][first_row] == F.IP_TCP
            for c, is_tcp in zip(ids.tolist(), tcp.tolist()):
                if c in self.refused or (is_tcp and not self._tcp_established(c)):
                    continue
                if not self.tier.ct_add(c, now):
                    self.refused.add(c)
        return held

    def _tcp_established(self, conn: int) -> bool:
        """Both peers ESTABLISHED (act_ct offloads a TCP connection only then, not at SYN-ACK)."""
        v = int(self.ct._index.get_many(np.array([conn], dtype=np.int64).view(_U))[0])
        if v < 0:
            return False
        a, b = self.ct.tcp_state(v >> 1)
        return a == b == "ESTABLISHED"

    def expire(self) -> None:
        """Drop NIC entries whose connection the software conntrack no longer has."""
        live = self.ct.hkey[:self.ct.live.size][self.ct.live, 0].view(np.int64)
        held = np.fromiter(self.tier._conns, dtype=np.int64, count=self.tier.ct_count())
        for c in held[~np.isin(held, live)].tolist():
            self.tier.ct_remove(c)
        self.refused &= set(live.tolist())

    def _first_pass_zones(self, switch, mf: np.ndarray) -> np.ndarray:
        aids = switch.cache.action_of[mf]
        out = np.full(mf.size, -1, dtype=np.int64)
        for aid in np.unique(aids).tolist():
            if aid not in self._zones:
                ct = next((a for a in switch._actions[aid] if isinstance(a, odp.Ct)), None)
                self._zones[aid] = None if ct is None else int(ct.zone)
            z = self._zones[aid]
            if z is not None:
                out[aids == aid] = z
        return out

    def _lookup(self, keys: np.ndarray, r: np.ndarray, zones: np.ndarray, now: float) -> np.ndarray:
        """Connection id of each packet as it reaches ct() (either direction), -1 if none."""
        h = _tuple_hash(keys, r, zones, "")
        vals = self.ct._index.get_many(h)
        slot = np.where(vals >= 0, vals >> 1, 0)
        ok = (vals >= 0) & self.ct.live[slot]
        return np.where(ok, self.ct.hkey[slot, 0].view(np.int64), -1)


def _orig_hash(keys: np.ndarray, r: np.ndarray) -> np.ndarray:
    """The stored hash of the original-direction tuple conntrack wrote into the ct_* slots."""
    return _tuple_hash(keys, r, keys[_S["ct_zone"], r], "ct_").view(np.int64)


def _tuple_hash(keys: np.ndarray, r: np.ndarray, zones: np.ndarray, pre: str) -> np.ndarray:
    """Conntrack's stored tuple hash (conntrack_pkt._hash) from key slots: the packet's own
    tuple (pre "") or the original tuple conntrack wrote (pre "ct_")."""
    k = lambda name: keys[_S[pre + name], r]      # noqa: E731
    v6 = keys[_S["eth_type"], r] == _ETH_IPV6
    meta = zones.astype(_U) | (k("nw_proto") << _U(16)) | (v6.astype(_U) << _U(24))
    return stored(_hash_words(
        meta, np.where(v6, k("ipv6_src_hi"), 0).astype(_U),
        np.where(v6, k("ipv6_src_lo"), k("nw_src")).astype(_U),
        np.where(v6, k("ipv6_dst_hi"), 0).astype(_U),
        np.where(v6, k("ipv6_dst_lo"), k("nw_dst")).astype(_U),
        (k("tp_src") << _U(32)) | k("tp_dst")))
