"""The kernel's connection map kept in step with the slow path's conntrack: hand-downs, kernel connection events, ageing."""

from __future__ import annotations

import time

import numpy as np

from sbnet.datapath.conntrack_nat import DNAT, SNAT
from sbnet.datapath.ebpf import layout as L
from sbnet.flows import fields as F

TRK, NEW, EST, RPL = (F.CT_STATE_BITS[k] for k in ("trk", "new", "est", "rpl"))
SNAT_BIT, DNAT_BIT = F.CT_STATE_BITS["snat"], F.CT_STATE_BITS["dnat"]
EST_ORIG, EST_REPLY = TRK | EST, TRK | EST | RPL
NEW_ORIG, NEW_REPLY = TRK | NEW, TRK | NEW | RPL     # UDP or an ICMP query awaiting its reply
OPEN_ORIG, OPEN_REPLY = TRK | L.CS_OPENING, TRK | L.CS_OPENING | RPL   # TCP in its handshake
PUNT = 0                       # held by the slow path in a way the map cannot: packets go up
_OPENING = (OPEN_ORIG, OPEN_REPLY)
_PEER_FIELDS = ("seqlo", "seqhi", "max_win", "wscale", "state")    # conntrack_tcp.PEER_FIELDS
_EVENT_STATES = {L.CT_COMMIT_EVENT: (OPEN_ORIG, OPEN_REPLY), L.CT_EST_EVENT: (EST_ORIG, EST_REPLY),
                 L.CT_HANDOVER_EVENT: (PUNT, PUNT)}


class ConnSync:
    """Which connections the kernel's map holds, and in which state, for one switch.

    Every direction the map holds is in `held` (zone, proto, src, dst, sport, dport) ->
    the state written.  The slow path hands down the connections of each upcall batch
    (hand_down) and reconciles everything once a maintenance tick (sync): established
    connections in both directions; with kernel_ct also UDP connections and ICMP queries
    awaiting their reply (the kernel establishes them on it) and, as PUNT, the UDP ones it holds in a
    way the map cannot (label, NAT) and the TCP ones not established, so the kernel never
    takes one of them for new.  Connection events (the kernel's own commits, first
    replies, TCP handshakes completed or handed over) go into the slow path's conntrack
    (events); a TCP connection in its handshake in the kernel stays the kernel's until it
    hands it over.  Zone limits go down with what the kernel may still commit in each
    zone (write_limits)."""

    def __init__(self, tier, conntrack, kernel_ct: bool) -> None:
        self.tier, self.ct, self.kernel_ct = tier, conntrack, kernel_ct
        self.zones: set[int] = set()          # ct zones of megaflows in the kernel
        self.held: dict[tuple, int] = {}
        self.held6: dict[tuple, int] = {}
        self.nats: dict[tuple, tuple] = {}    # translation written, by (held/held6) direction
        self._established = 0                  # EST_ORIG entries in held
        self._synced_ns = time.monotonic_ns()  # kernel `used` stamps after this are news
        # Kernel commits taken up, by zone: all those made before this (a previous agent's
        # are in the map, taken up with it), then one per commit event.
        self._commits: dict[int, int] = tier.zone_commits() if kernel_ct and tier else {}
        self._limits: dict[int, tuple[int, int]] = {}   # (limit, base) written, by zone

    # -- what the map should hold ------------------------------------------------------
    def desired(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """Map keys (CT_KEY_DTYPE), states, marks and translations (CT_NAT_DTYPE) for the
        connections `slots` (unique, live IPv4 TCP/UDP/ICMP), both directions, direction 0
        first; none for those the map must not hold (without kernel_ct, TCP before it is
        established)."""
        view = self.ct.view
        est = view.held_outside(slots)
        if self.kernel_ct:
            new = ~est & view.unreplied_udp(slots)
            punt = ~est & ~new
        else:
            new = punt = np.zeros(len(slots), dtype=bool)
        keep = est | new | punt
        slots, est, new = slots[keep], est[keep], new[keep]
        zone, proto, nat, tup = view.tuples(slots)
        keys = np.zeros(2 * len(slots), dtype=L.CT_KEY_DTYPE)
        keys["zone"], keys["proto"] = np.tile(zone, 2), np.tile(proto, 2)
        d = np.concatenate([tup[:, 0], tup[:, 1]])
        keys["src"], keys["dst"] = d[:, 1], d[:, 3]
        keys["sport"], keys["dport"] = L.key_ports(keys["proto"], d[:, 4], d[:, 5])
        orig = np.where(est, EST_ORIG, np.where(new, NEW_ORIG, PUNT))
        reply = np.where(est, EST_REPLY, np.where(new, NEW_REPLY, PUNT))
        states = np.concatenate([orig, reply]).astype(np.uint32)
        marks = np.tile(view.marks(slots), 2).astype(np.uint32)
        return keys, states, marks, _translations(proto, nat, tup)

    def desired6(self, slots: np.ndarray) -> tuple[np.ndarray, ...]:
        """desired() of IPv6 connections (CT6_KEY_DTYPE keys): the established ones only."""
        view = self.ct.view
        slots = slots[view.held_outside(slots)]
        zone, proto, nat, tup = view.tuples(slots)
        n = len(slots)
        keys = np.zeros(2 * n, dtype=L.CT6_KEY_DTYPE)
        keys["zone"], keys["proto"] = np.tile(zone, 2), np.tile(proto, 2)
        d = np.concatenate([tup[:, 0], tup[:, 1]])
        keys["src"], keys["dst"] = d[:, 0:2], d[:, 2:4]
        keys["sport"], keys["dport"] = L.key_ports(keys["proto"], d[:, 4], d[:, 5])
        states = np.concatenate([np.full(n, EST_ORIG), np.full(n, EST_REPLY)]).astype(np.uint32)
        marks = np.tile(view.marks(slots), 2).astype(np.uint32)
        return keys, states, marks, _translations(proto, nat, tup)

    def _write(self, keys: np.ndarray, states: np.ndarray, marks: np.ndarray,
               nats: np.ndarray, force: bool = False) -> None:
        """Entries whose state or translation differs from what the map was given (force:
        every one), in one system call."""
        v6 = keys.dtype == L.CT6_KEY_DTYPE
        dirs = _dirs6(keys) if v6 else _dirs(keys)
        held = self.held6 if v6 else self.held
        nat_of = [_nat_key(n) for n in nats.tolist()]
        # A TCP connection in its handshake in the kernel stays there: the slow path's
        # conntrack has it as the kernel's last event told, not as the kernel has it now.
        change = np.array([force or ((held.get(k) != s or self.nats.get(k) != t) and not (
            s == PUNT and held.get(k) in _OPENING))
            for k, s, t in zip(dirs, states.tolist(), nat_of)], dtype=bool)
        if not change.any():
            return
        vals = np.zeros(int(change.sum()), dtype=L.CT_VAL_DTYPE)
        vals["state"], vals["mark"], vals["nat"] = states[change], marks[change], nats[change]
        (self.tier.add_conns6 if v6 else self.tier.add_conns)(keys[change].tobytes(),
                                                              vals.tobytes())
        for k, s, t, c in zip(dirs, states.tolist(), nat_of, change.tolist()):
            if c:
                if v6:
                    self.held6[k] = s
                else:
                    self._set(k, s)
                if t is None:
                    self.nats.pop(k, None)
                else:
                    self.nats[k] = t

    # -- the three ways in ---------------------------------------------------------------
    def hand_down(self, tuples: np.ndarray, zones=None, force: bool = False) -> None:
        """The connections of these (proto, src, dst, sport, dport) rows (an upcall batch's
        packets) in `zones` (default: the kernel's), as the slow path's conntrack now holds
        them; force: written even where the map was given that state already (an imported
        connection replaces whatever the map held for its tuples)."""
        zones = self.zones if zones is None else zones
        if not zones or not len(tuples):
            return
        tuples = np.unique(tuples, axis=0)
        found = []
        for zone in zones:
            proto, src, dst, sport, dport = tuples.T
            slot, _ = self.ct.view.find_ipv4(np.full(len(tuples), zone), proto, src, dst,
                                             sport, dport)
            found.append(slot[slot >= 0])
        slots = np.unique(np.concatenate(found))
        if slots.size:
            self._write(*self.desired(slots), force=force)

    def hand_down6(self, tuples: np.ndarray, zones=None, force: bool = False) -> None:
        """hand_down() of IPv6 rows (proto, src high, low, dst high, low, sport, dport)."""
        zones = self.zones if zones is None else zones
        if not zones or not len(tuples):
            return
        tuples = np.unique(np.asarray(tuples, dtype=np.uint64), axis=0)
        found = []
        for zone in zones:
            t = tuples.T
            slot, _ = self.ct.view.find_ipv6(np.full(len(tuples), zone), t[0], tuples[:, 1:3],
                                             tuples[:, 3:5], t[5], t[6])
            found.append(slot[slot >= 0])
        slots = np.unique(np.concatenate(found))
        if not slots.size:
            return
        # One no longer established (a FIN, a RST seen) leaves the map now: its packets go up.
        gone = slots[~self.ct.view.held_outside(slots)]
        if gone.size:
            zone, proto, _, tup = self.ct.view.tuples(gone)
            for z, p, t in zip(zone.tolist(), proto.tolist(), tup.tolist()):
                for sh, sl, dh, dl, sp, dp in t:
                    k = (z, p, sh << 64 | sl, dh << 64 | dl, sp, dp)
                    if self.held6.pop(k, None) is not None:
                        self.tier.remove_conn6(*k)
                        self.nats.pop(k, None)
        self._write(*self.desired6(slots), force=force)

    def guard(self, tuples: np.ndarray) -> list[tuple]:
        """Before the slow path switches an upcall batch (kernel_ct): both directions of
        each of its tuples the map does not hold get a PUNT entry, so that a packet of
        a connection the batch commits (its reply, or a SYN sent again, racing the
        hand-down after the batch) goes up instead of being taken for new in the kernel.
        The entries made."""
        if not self.kernel_ct or not self.zones or not len(tuples):
            return []
        tuples = tuples[(tuples[:, 0] == F.IP_TCP) | (tuples[:, 0] == F.IP_UDP)]   # the kernel's commits
        made = []
        for proto, src, dst, sport, dport in np.unique(tuples, axis=0).tolist():
            for zone in self.zones:
                for d in ((zone, proto, src, dst, sport, dport),
                          (zone, proto, dst, src, dport, sport)):
                    if d not in self.held and self.tier.add_conn_if_absent(*d, PUNT):
                        made.append(d)
        return made

    def unguard(self, made: list[tuple]) -> None:
        """After the batch's hand-down: the guards no connection took over go."""
        for d in made:
            if d not in self.held:
                self.tier.remove_conn(*d)

    def events(self, events: np.ndarray, kinds: np.ndarray, now: float) -> None:
        """Connection events (layout.CT_EVENT_DTYPE records, their kinds the
        layout.CT_*_EVENT reasons), each by its connection's original direction, into the
        slow path's conntrack: UDP connections and ICMP queries the kernel committed or
        saw the first reply of; TCP connections it committed, completed the handshake of, or handed
        over in their handshake, with their peers as the kernel had them."""
        keys = events["key"]
        for zone in keys["zone"][kinds == L.CT_COMMIT_EVENT].tolist():
            self._commits[zone] = self._commits.get(zone, 0) + 1
        for proto in (F.IP_UDP, F.IP_ICMP):
            rows = keys["proto"] == proto
            ukeys, established = keys[rows], kinds[rows] == L.CT_EST_EVENT
            if not len(ukeys):
                continue
            sports, dports = L.tuple_ports(proto, ukeys["sport"], ukeys["dport"])
            slot = self.ct.adopt_udp_many(ukeys["zone"], ukeys["src"], ukeys["dst"], sports,
                                          dports, established, now, proto)
            for zone, src, dst, sport, dport, e, s in zip(
                    ukeys["zone"].tolist(), ukeys["src"].tolist(), ukeys["dst"].tolist(),
                    sports.tolist(), dports.tolist(), established.tolist(), slot.tolist()):
                if s >= 0:
                    self._set((zone, proto, src, dst, sport, dport), EST_ORIG if e else NEW_ORIG)
                    self._set((zone, proto, dst, src, dport, sport), EST_REPLY if e else NEW_REPLY)
        tcp = np.flatnonzero(keys["proto"] == F.IP_TCP)
        if tcp.size:
            tkeys, p = keys[tcp], events["tcp"][tcp]
            peers = np.stack([p[f].astype(np.int64) for f in _PEER_FIELDS], axis=-1)
            slot = self.ct.adopt_tcp_many(tkeys["zone"], tkeys["src"], tkeys["dst"],
                                          tkeys["sport"], tkeys["dport"], peers, now)
            for k, kind, s in zip(tkeys.tolist(), kinds[tcp].tolist(), slot.tolist()):
                if s >= 0:
                    zone, proto, _, sport, dport, src, dst = k
                    orig, reply = _EVENT_STATES[kind]
                    self._set((zone, proto, src, dst, sport, dport), orig)
                    self._set((zone, proto, dst, src, dport, sport), reply)
        self.write_limits()

    def write_limits(self) -> None:
        """Each kernel zone's connection limit, with what its conntrack holds there less
        the kernel's commits taken up (the kernel adds its own commits to that)."""
        table = self.ct.table
        for zone in self.zones:
            limit = self.ct.zone_limit(zone)
            if not limit and zone not in self._limits:
                continue
            base = table.zone_count.get(zone, 0) - self._commits.get(zone, 0)
            if self._limits.get(zone) != (limit, base):
                self.tier.set_zone_limit(zone, limit, base)
                self._limits[zone] = (limit, base)

    def _set(self, k: tuple, state: int) -> None:
        old = self.held.get(k)
        self.held[k] = state
        self._established += (state == EST_ORIG) - (old == EST_ORIG)

    def _drop(self, k: tuple) -> None:
        self._established -= self.held.pop(k) == EST_ORIG
        self.nats.pop(k, None)

    def sync(self, now: float) -> None:
        """Reconcile the map with the conntrack: connections the kernel forwarded for keep
        their timeouts going, those it committed that no event told of are taken up, every
        connection in the kernel's zones is written as it now is, and what the conntrack
        no longer holds leaves the map."""
        keys, vals, slot = self._forwarded(False, now)
        if len(keys):
            # (TCP: only those the kernel tracked itself, whose ends it has.)
            lost = np.flatnonzero((slot < 0) & np.isin(vals["state"], (NEW_ORIG, EST_ORIG, OPEN_ORIG))
                                  & ((keys["proto"] != F.IP_TCP) | (vals["tcp"]["state"][:, 0] != 0)))
            lost = np.array([i for i in lost.tolist() if _dir(keys[i].tolist()) not in self.held],
                            dtype=np.int64)
            if lost.size:
                # Committed in the kernel, their events lost (a full ring, or a previous agent's).
                ev = np.zeros(lost.size, dtype=L.CT_EVENT_DTYPE)
                ev["key"], ev["tcp"] = keys[lost], vals["tcp"][lost]
                self.events(ev, np.where(vals["state"][lost] == EST_ORIG, L.CT_EST_EVENT,
                                         L.CT_COMMIT_EVENT), now)
        self._sync6(now)
        self._synced_ns = time.monotonic_ns()
        slots = self.ct.view.in_zones(self.zones) if self.zones else np.zeros(0, np.int64)
        want_k, want_s, want_m, want_n = self.desired(slots)
        want = dict(zip(_dirs(want_k), want_s.tolist()))
        for k in [k for k in self.held if k not in want]:
            self.tier.remove_conn(*k)
            self._drop(k)
        if len(want_k):
            self._write(want_k, want_s, want_m, want_n)
        self.write_limits()

    def _forwarded(self, v6: bool, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The IPv4 (v6: IPv6) map's keys and values, and the slots of their connections
        in the conntrack (-1: none); the timeouts of those the kernel forwarded for since
        the last sync start again."""
        m, dtype = (self.tier.m_conns6, L.CT6_KEY_DTYPE) if v6 else (self.tier.m_conns, L.CT_KEY_DTYPE)
        raw_k, raw_v = m.items()
        keys = np.frombuffer(raw_k, dtype=dtype)
        vals = np.frombuffer(raw_v, dtype=L.CT_VAL_DTYPE)
        if not len(keys):
            return keys, vals, np.zeros(0, np.int64)
        find = self.ct.view.find_ipv6 if v6 else self.ct.view.find_ipv4
        slot, _ = find(keys["zone"], keys["proto"], keys["src"], keys["dst"],
                       *L.tuple_ports(keys["proto"], keys["sport"], keys["dport"]))
        self.ct.keep_alive(np.unique(slot[vals["used"] > self._synced_ns]), now)
        return keys, vals, slot

    def _sync6(self, now: float) -> None:
        """sync() of the IPv6 map: timeouts of what the kernel forwarded go on, the
        established connections of the kernel's zones are written, the others leave."""
        self._forwarded(True, now)
        slots = self.ct.view.in_zones(self.zones, v6=True) if self.zones else np.zeros(0, np.int64)
        want_k, want_s, want_m, want_n = self.desired6(slots)
        want = set(_dirs6(want_k))
        for k in [k for k in self.held6 if k not in want]:
            self.tier.remove_conn6(*k)
            del self.held6[k]
            self.nats.pop(k, None)
        if len(want_k):
            self._write(want_k, want_s, want_m, want_n)

    def take_up(self, now: float) -> None:
        """The connections a previous agent left in the pinned maps, into the conntrack
        (NATed ones with their translation)."""
        for v6, (keys, vals) in ((False, self.tier.m_conns.items()), (True, self.tier.m_conns6.items())):
            k = np.frombuffer(keys, dtype=L.CT6_KEY_DTYPE if v6 else L.CT_KEY_DTYPE)
            v = np.frombuffer(vals, dtype=L.CT_VAL_DTYPE)
            for key, val in zip(k.tolist(), v.tolist()):
                zone, proto, _, sport, dport, src, dst = key
                sport, dport = L.tuple_ports(proto, sport, dport)
                state, mark, nat = val[0], val[1], val[6]
                if v6:
                    src, dst = _u128(src), _u128(dst)
                if state & RPL or not state & TRK:
                    continue              # the original direction's entry takes up both
                if state & EST:
                    reply, kind = None, 0
                    if nat[0]:            # the reply direction's tuple: the translation reversed
                        _, nsport, ndport, nsrc, ndst = nat
                        nsport, ndport = L.tuple_ports(proto, nsport, ndport)
                        reply = (_u128(ndst), _u128(nsrc), ndport, nsport)
                        kind = SNAT if nat[0] & SNAT_BIT else DNAT
                    self.ct.adopt_established(zone, proto, src, dst, sport, dport, mark, now,
                                              v6=v6, reply=reply, nat=kind)
                elif proto in (F.IP_UDP, F.IP_ICMP) and not v6:
                    self.ct.adopt_udp(zone, src, dst, sport, dport, False, now, proto)
                self.zones.add(zone)

    def established(self) -> int:
        """Connections the map holds established (both directions each)."""
        return self._established


def _dir(k: tuple) -> tuple:
    """A CT_KEY_DTYPE record as (zone, proto, src, dst, sport, dport), ports as conntrack's
    tuple words."""
    zone, proto, _, sport, dport, src, dst = k
    return (zone, proto, src, dst, *L.tuple_ports(proto, sport, dport))


def _dirs(keys: np.ndarray) -> list[tuple]:
    return [_dir(k) for k in keys.tolist()]


def _dirs6(keys: np.ndarray) -> list[tuple]:
    """CT6_KEY_DTYPE records as (zone, proto, src, dst, sport, dport), addresses 128-bit."""
    return [(z, p, _u128(s), _u128(d), *L.tuple_ports(p, sp, dp))
            for z, p, _, sp, dp, s, d in keys.tolist()]


def _u128(words) -> int:
    """(high, low) 64-bit words (a record's subarray) as one int."""
    return int(words[0]) << 64 | int(words[1])


def _translations(proto: np.ndarray, nat: np.ndarray, tup: np.ndarray) -> np.ndarray:
    """Each direction's translation (CT_NAT_DTYPE, direction 0 first) of connections with
    NAT `nat` and tuples `tup` (ConnView.tuples): its packets leave with the other
    direction's tuple reversed, +snat or +dnat (an SNATed connection's replies are
    +dnat, as OVS says; an ICMP query's ports keyed as the maps key them: its id is kept)."""
    n = len(nat)
    out = np.zeros(2 * n, dtype=L.CT_NAT_DTYPE)
    on = np.tile(nat != 0, 2)
    if not on.any():
        return out
    other = np.concatenate([tup[:, 1], tup[:, 0]])
    out["src"], out["dst"] = other[:, 2:4], other[:, 0:2]
    out["sport"], out["dport"] = L.key_ports(np.tile(proto, 2), other[:, 5], other[:, 4])
    snat = (nat & SNAT) != 0
    out["flags"] = np.concatenate([np.where(snat, SNAT_BIT, DNAT_BIT),
                                   np.where(snat, DNAT_BIT, SNAT_BIT)])
    out[~on] = 0
    return out


def _nat_key(rec: tuple) -> tuple | None:
    """A CT_NAT_DTYPE record (as tolist() gives it) as a comparable value; None: no NAT."""
    flags, sport, dport, src, dst = rec
    return (flags, sport, dport, _u128(src), _u128(dst)) if flags else None
