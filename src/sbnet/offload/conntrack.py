"""The NIC tier's conntrack: which packets' connections the NIC holds, and offering it established ones."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import odp
from sbnet.flows import fields as F

_S = F.SLOT_INDEX
_U = np.uint64
_TCP_FIN_RST = 0x001 | 0x004
_TRK, _EST, _NEW = (F.CT_STATE_BITS[k] for k in ("trk", "est", "new"))


class CtOffload:
    """Connections between a switch's conntrack and its NIC tier (nf_flowtable's model).

    A connection goes to the NIC once a packet of it comes back from conntrack +trk+est
    (TCP or UDP) through an offloadable megaflow (installed or still queued: TC's act_ct
    adds established connections to the flowtable from the software path too); the table's capacity is the profile's
    `conntrack.capacity` and a connection it refuses stays in software (counted once in
    `tier.ct_refused`).  A FIN or RST goes to software and takes the connection off the
    NIC, as the flowtable hands teardown back to the host.  Connections are read
    through the conntrack's ConnView (`conntrack.view`), whose ids (the hash of the
    original tuple) survive slot reuse."""

    def __init__(self, tier, conntrack, dpif) -> None:
        self.tier = tier
        self.conns = conntrack.view
        self.dpif = dpif           # read through action_ids() and action_list() only
        self.refused: set[int] = set()
        self._zones: dict[int, int | None] = {}       # action id -> zone of its ct(), if any

    def held(self, mf: np.ndarray, keys: np.ndarray, rows: np.ndarray,
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
            conn[second] = self.conns.original_ids(keys, r[second])
        first = np.flatnonzero(~second)
        if first.size:
            zones = self._first_pass_zones(mf[idx[first]])
            ok = zones >= 0
            conn[first[ok]] = self.conns.ids(keys, r[first[ok]], zones[ok].astype(_U))
        proto = keys[_S["nw_proto"], r]
        l4 = (proto == F.IP_TCP) | (proto == F.IP_UDP)
        fin = (tcp_flags[idx].astype(np.int64) & _TCP_FIN_RST) != 0
        fin &= proto == F.IP_TCP
        known = (conn != -1) & l4
        held[idx] = known & ~fin & self.tier.ct_held_many(conn)
        for c in np.unique(conn[known & fin]).tolist():
            self.tier.ct_remove(c)
        st = keys[_S["ct_state"], r]
        est = second & known & ~fin & ((st & _U(_TRK | _EST)) == _U(_TRK | _EST)) & \
            ((st & _U(_NEW)) == 0)
        want = est & ~held[idx]
        if want.any():
            ids, first_row = np.unique(conn[want], return_index=True)
            tcp = proto[want][first_row] == F.IP_TCP
            for c, is_tcp in zip(ids.tolist(), tcp.tolist()):
                if c in self.refused or (is_tcp and not self.conns.tcp_established(c)):
                    continue
                if not self.tier.ct_add(c, now):
                    self.refused.add(c)
        return held

    def expire(self) -> None:
        """Drop NIC entries whose connection the software conntrack no longer has."""
        live = self.conns.live_ids()
        held = self.tier.ct_ids()
        for c in held[~np.isin(held, live)].tolist():
            self.tier.ct_remove(c)
        self.refused &= set(live.tolist())

    def _first_pass_zones(self, mf: np.ndarray) -> np.ndarray:
        aids = self.dpif.action_ids(mf)
        out = np.full(mf.size, -1, dtype=np.int64)
        for aid in np.unique(aids).tolist():
            if aid not in self._zones:
                ct = next((a for a in self.dpif.action_list(aid) if isinstance(a, odp.Ct)), None)
                self._zones[aid] = None if ct is None else int(ct.zone)
            z = self._zones[aid]
            if z is not None:
                out[aids == aid] = z
        return out
