"""Connection tracking for the reference switch: Open vSwitch userspace conntrack semantics over packet batches.

API (pure: no clock, no I/O; the caller passes `now`, seconds on any monotonic clock)::

    ct = Conntrack(timeouts: Timeouts | None = None, limit: int = 3_000_000,
                   zone_limits: dict[int, int] | None = None, default_zone_limit: int = 0,
                   tcp_liberal: bool = False, checksums: bool = True, capacity: int = 1024)
    ct.execute(batch: Batch, parsed: Parsed, rows: np.ndarray, zone: int | np.ndarray,
               commit: bool = False, nat: NatSpec | actions.Nat | None = None,
               set_mark: tuple[int, int] | None = None,     # (value, mask), 32 bits
               set_label: tuple[int, int] | None = None,    # (value, mask), 128 bits
               now: float = 0.0, force: bool = False) -> None
    ct.expire(now) -> int                  # sweep: connections removed
    ct.dump(zone=None) -> list[str]        # `ovs-appctl dpctl/dump-conntrack` lines, sorted
    ct.flush(zone=None) -> None
    ct.stats -> dict[str, int]             # counters (conntrack_full, zone_full, nat_exhausted...)
    ct.memory_per_connection() -> float    # bytes
    ct.find(tuple) / ct.connections(zone) / ct.tcp_state(slot) / len(ct)
    NatSpec.parse("nat(src=10.0.0.1-10.0.0.3:1000-2000,random)"), NatSpec.from_action(Nat)

execute() is the datapath's ct() action for the packets `rows` of a parsed
batch (indices or a mask; any packets, IP or not).  `zone` is one int or one
value per row.  It writes into parsed.keys, for those rows: ct_state (always
with +trk), ct_zone, ct_mark, ct_label_hi/lo and the original-direction tuple
(ct_nw_src/dst or ct_ipv6_*, ct_nw_proto, ct_tp_src/dst; zero when the packet
could not be keyed), as OVS write_ct_md().  With `nat` (the bare NatSpec() is
ct(nat): apply an existing connection's translation, create none) it rewrites
batch.data in place (IPv4 header, TCP, UDP, ICMPv6 checksums updated
incrementally; ICMP errors get their quoted header translated and checksums
recomputed) and the address/port key slots, so later tables match on the
translated packet.  The incoming ct_state/ct_zone slots are read as OVS reads
pkt->md: state from another zone is reset; a packet already NATed in this zone
is looked up by its reverse tuple and not translated twice.  set_mark and
set_label act only with commit (ovs-ofctl refuses exec() without commit).

Semantics (OVS 3.1 lib/conntrack.c, conntrack-tcp.c, conntrack-icmp.c,
conntrack-other.c; checked against ovs-vswitchd on the dummy datapath in
tests/datapath/test_conntrack_ovs.py):
- TCP: pf's per-peer states and sequence windows as OVS userspace (not the
  kernel's single-state machine): SYN+ACK or bad flag combinations never open
  a connection, a mid-stream ACK does; out-of-window segments (and RSTs not at
  the expected sequence) are +inv and change nothing; `tcp_liberal` accepts
  them (OVS ct-disable-tcp-seq-chk); a SYN on a connection closed both ways
  replaces it; dump prints max(orig, reply) coalesced (FIN_WAIT_2 -> TIME_WAIT,
  SYN_RECV -> ESTABLISHED) as dpctl does.
- UDP and other IP protocols: +new until a packet in the reply direction,
  then +est (what ovs-vswitchd 3.1 does; its conntrack-other.c reads as if the
  third packet were +est, the daemon keeps +new).  ICMP/ICMPv6 echo (and
  timestamp/info) is a connection keyed by id; a reply cannot open one.
- ICMP/ICMPv6 errors are +rel (+rpl) to the connection they quote, never +est,
  never creating one; other ICMP types (ND, MLD...), fragments (no
  reassembly: OVS would run ipf), bad IPv4/L4 checksums (unless
  checksums=False, as with NIC-validated checksums) and non-IP packets are
  +inv+trk with a zero tuple.
- commit=False never stores a connection (+new+trk).  At the global `limit`
  or a zone limit (zone_limits, else default_zone_limit; 0 = none), or when NAT
  finds no free tuple, the packet stays +new+trk, untranslated, uncommitted,
  counted (conntrack_full / zone_full / nat_exhausted), as OVS
  conn_not_found(); established connections keep working.
- NAT as nat_get_unique_tuple(): SNAT without ports keeps the source port
  unless taken (then its range 1-511, 600-1023 or 1024-65535); with a range the
  first port (and address) comes from a hash of the tuple (`random`: random,
  `persistent`: address independent of the hash basis); every candidate is
  tried before giving up.  The hash is not OVS's, so the port picked after a
  collision differs from OVS's; the translation otherwise matches it byte for
  byte (tests).  Replies are +est+rpl with the reverse bit (+dnat after SNAT).
  A packet of a NATed connection is translated whatever its verdict, +inv
  included (OVS handle_nat()).  In a batch, new connections whose first-choice
  tuple is free are committed together; the others then search in batch
  order, so after a collision the port picked may differ from one-by-one
  processing (still unique).
- `force` drops a connection found in the reply direction and starts anew.
- Timeouts: Linux's defaults mapped onto OVS's timeout classes (Timeouts;
  Timeouts.ovs() gives OVS's netdev defaults).  No per-zone timeout policy,
  no ALGs (FTP/TFTP helpers), no ct_clear (the switch clears the ct slots).

Speed: established TCP/IPv4 ACK segments first take the express path
(conntrack_fast): header words read as slices, checksums from one small
matrix product, one lookup and one table-row gather per packet, a few
scatters back; a connection any of whose rows in the batch is something
else stays off it, so batch order holds.  The other rows are keyed, hashed
and looked up for the whole batch (numpy open-addressing index,
conntrack_index); each connection is one 256-byte table row gathered once.
Vectorized: established TCP ACK segments (any number per
connection, conntrack_tcp.established_runs), any TCP segment of a connection
with one row in the batch (conntrack_tcp.update_many: handshakes, FIN, RST),
steady UDP/ICMP, and committing new connections (IPv4 NAT included) whose
tuples nothing else in the batch touches.  The rest (several non-trivial
segments of one connection, ICMP errors, NAT set-up, limits reached,
recirculated NATed packets) runs per packet in batch order (conntrack_slow).  Results are the same either way
(tests compare batches with one-by-one runs).  bench/bench_conntrack.py
measures it.

Integration (the switch's ct(table=T, zone=Z, commit, nat, exec(...)) action):
run parse() once, then for the rows reaching ct(): ct.execute(batch, parsed,
rows, zone, commit, NatSpec.from_action(a.nat) if a.nat else None, mark/label
from exec(), now); then re-enter table T with those rows' keys (recirculation:
a new recirc_id; megaflows of the second pass match recirc_id and the ct_*
slots like any field).  ct() is never cached as a megaflow result by itself:
the megaflow of the first pass ends in ct(...),recirc(id), and the datapath
runs execute() on every packet that hits it.  Call ct.expire(now) from time
to time (OVS sweeps every few seconds); lookups ignore expired connections
anyway.
"""

from __future__ import annotations

import sys
import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack_index import HashIndex, stored
from sbnet.datapath.conntrack_nat import SNAT, NatSpec, first_candidates, rewrite
from sbnet.datapath.conntrack_pkt import PacketInfo, extract
from sbnet.datapath.conntrack_fast import ExpressPath
from sbnet.datapath.conntrack_slow import PerPacketPath
from sbnet.datapath.conntrack_table import (
    _CT_FIRST, _CT_LAST, _M64, _NAT_BITS, _PROTO_NAMES, _S, _W, C_EXP, C_L4ST, C_LABEL, C_MARK,
    C_NAT, C_PROTO, C_TCP, C_TUP, C_V6, C_ZONE, DNAT_BIT, EST, ICMP_REPLY, INV, MAX_TCP_ROUNDS,
    NEW, OTHER_BIDIR, RPL, SNAT_BIT, TM_ICMP_FIRST, TM_ICMP_REPLY, TM_OTHER_BIDIR,
    TM_OTHER_FIRST, TRK, Timeouts, _hash_words, tuple_hash)
from sbnet.datapath.parse import Parsed
from sbnet.flows.fields import IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP

__all__ = ["Conntrack", "NatSpec", "Timeouts", "tuple_hash"]


class Conntrack(ExpressPath, PerPacketPath):
    """Connections of every zone, stored column-wise in numpy arrays indexed by slot."""

    def __init__(self, timeouts: Timeouts | None = None, limit: int = 3_000_000,
                 zone_limits: dict[int, int] | None = None, default_zone_limit: int = 0,
                 tcp_liberal: bool = False, checksums: bool = True, capacity: int = 1024):
        self.timeouts = timeouts or Timeouts()
        self._tmo = self.timeouts.by_class()
        self.limit = limit
        self.zone_limits = dict(zone_limits or {})
        self.default_zone_limit = default_zone_limit    # 0 = unlimited, as OVS
        self.tcp_liberal = tcp_liberal
        self.checksums = checksums
        self.hash_basis = 0x5B1E7
        self.stats: dict[str, int] = dict.fromkeys(
            ("packets", "lookups_hit", "fast_path", "committed", "deleted", "expired",
             "invalid", "conntrack_full", "zone_full", "nat_exhausted",
             "tcp_seq_chk_failed", "tcp_invalid_flags", "related"), 0)
        self._index = HashIndex(capacity)      # tuple hash -> slot * 2 + direction
        self._overflow: dict[tuple, int] = {}  # exact tuple -> slot * 2 + direction
        self._free: list[int] = []
        self._zone_count: dict[int, int] = {}
        self._n = 0
        self._scratch = np.zeros(0, dtype=np.int64)
        self._mark = np.zeros(0, dtype=np.int8)
        self._alloc(capacity)

    # -- storage -------------------------------------------------------------
    def _alloc(self, cap: int) -> None:
        """(Re)allocate the table: one 256-byte row per connection slot, so the batch
        path gathers everything it needs about a connection with one row copy."""
        old = getattr(self, "_cap", 0)
        # Row `cap` stays all zero: what a packet without a connection gathers.
        table = np.zeros((cap + 1, _W), dtype=np.uint64)
        live = np.zeros(cap + 1, dtype=bool)
        hkey = np.zeros((cap + 1, 2), dtype=np.uint64)
        if old:
            table[:old] = self.table[:old]
            live[:old] = self.live[:old]
            hkey[:old] = self.hkey[:old]
        self.table, self.live, self.hkey = table, live, hkey
        i64, f64 = table.view(np.int64), table.view(np.float64)
        self.tup = table[:, C_TUP:C_TUP + 12].reshape(cap + 1, 2, 6)
        self.tcp = i64[:, C_TCP:C_TCP + 10].reshape(cap + 1, 2, 5)
        self.exp = f64[:, C_EXP]
        self.mark = table[:, C_MARK]
        self.label = table[:, C_LABEL:C_LABEL + 2]
        self.zone, self.proto, self.v6 = table[:, C_ZONE], table[:, C_PROTO], table[:, C_V6]
        self.nat, self.l4st = table[:, C_NAT], table[:, C_L4ST]
        assert np.shares_memory(self.tup, table) and np.shares_memory(self.tcp, table)
        self._free.extend(range(cap - 1, old - 1, -1))
        self._cap = cap

    def __len__(self) -> int:
        return self._n

    def _tuple(self, i: int, d: int) -> tuple:
        r = self.tup[i, d].tolist()
        return (int(self.zone[i]), int(self.proto[i]), int(self.v6[i]),
                r[0] << 64 | r[1], r[2] << 64 | r[3], r[4], r[5])

    def _lookup(self, t: tuple, now: float) -> tuple[int, int]:
        """(slot, direction) of the live connection owning tuple t, or (-1, 0)."""
        v = self._index.get(tuple_hash(t))
        if v >= 0 and self._tuple(v >> 1, v & 1) != t:
            v = -1
        if v < 0 and self._overflow:
            v = self._overflow.get(t, -1)
        if v < 0:
            return -1, 0
        i = v >> 1
        if self.exp[i] <= now:
            self._delete(i)
            self.stats["expired"] += 1
            return -1, 0
        return i, v & 1

    def _taken(self, t: tuple) -> bool:
        v = self._index.get(tuple_hash(t))
        if v >= 0 and self._tuple(v >> 1, v & 1) == t:
            return True
        return t in self._overflow

    def _insert_key(self, t: tuple, val: int) -> int:
        h = tuple_hash(t)
        if h in self._index:
            self._overflow[t] = val
        else:
            self._index.insert(h, val)
        return h

    def _delete(self, i: int) -> None:
        for d in (0, 1):
            h = int(self.hkey[i, d])
            val = i * 2 + d
            if self._index.get(h) == val:
                self._index.delete(h)
            elif self._overflow:
                t = self._tuple(i, d)
                if self._overflow.get(t) == val:
                    del self._overflow[t]
        self.live[i] = False
        self.exp[i] = 0.0
        z = int(self.zone[i])
        self._zone_count[z] -= 1
        self._n -= 1
        self._free.append(i)
        self.stats["deleted"] += 1

    def _zone_limit(self, zone: int) -> int:
        return self.zone_limits.get(zone, self.default_zone_limit)

    def _create(self, fwd: tuple, rev: tuple, nat_action: int, now: float) -> int:
        if not self._free:
            self._alloc(self._cap * 2)
        i = self._free.pop()
        zone, proto, v6 = fwd[0], fwd[1], fwd[2]
        self.live[i] = True
        self.zone[i], self.proto[i], self.v6[i] = zone, proto, v6
        for d, t in ((0, fwd), (1, rev)):
            self.tup[i, d] = (t[3] >> 64, t[3] & _M64, t[4] >> 64, t[4] & _M64, t[5], t[6])
            self.hkey[i, d] = self._insert_key(t, i * 2 + d)
        self.mark[i] = 0
        self.label[i] = 0
        self.nat[i] = nat_action
        self.l4st[i] = 0
        self._zone_count[zone] = self._zone_count.get(zone, 0) + 1
        self._n += 1
        self.stats["committed"] += 1
        return i

    # -- the ct() action -------------------------------------------------------
    def execute(self, batch: Batch, parsed: Parsed, rows: np.ndarray, zone: int | np.ndarray,
                commit: bool = False, nat: NatSpec | None = None,
                set_mark: tuple[int, int] | None = None,
                set_label: tuple[int, int] | None = None, now: float = 0.0,
                force: bool = False) -> None:
        """Run the packets `rows` through conntrack in `zone`; see the module docstring."""
        rows = np.asarray(rows)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)
        m = len(rows)
        if not m:
            return
        keys = parsed.keys
        zones = np.broadcast_to(np.asarray(zone, dtype=np.int64), (m,)).astype(np.uint64)
        nat = NatSpec.from_action(nat) if nat is not None else None
        if not force and not (commit and (set_mark is not None or set_label is not None)):
            left = self._express(batch, parsed, rows, zones, nat, now)
            if left.size < m:
                rows, zones, m = rows[left], zones[left], left.size
                if not m:
                    return
        self.stats["packets"] += m
        p = extract(batch, parsed, rows, zones, self.checksums)
        st_in = keys[_S["ct_state"], rows]
        same_zone = keys[_S["ct_zone"], rows] == zones
        st = np.where(same_zone, st_in, 0).astype(np.uint64)
        natted = (st & _NAT_BITS) != 0
        st[~p.ok] = INV
        conn = np.full(m, -1, dtype=np.int64)
        reply = np.zeros(m, dtype=bool)
        tsrc = np.where(p.ok, 2, 0).astype(np.int8)   # tuple for ct_*: 0 none, 1 conn, 2 packet
        nat_rows: list[np.ndarray] = []

        look = p.ok & ~p.related & ~natted
        found = np.zeros(m, dtype=bool)
        same = None
        # Each packet's connection row, gathered once (the zero row when none).
        if look.all():
            li = np.arange(m)
            vals = self._index.get_many(p.hash)
        else:
            li = np.flatnonzero(look)
            vals = self._index.get_many(p.hash[li])
        hit = vals >= 0
        ci = np.where(hit, vals >> 1, self._cap)
        di = (vals & 1).astype(np.intp)
        rl = self.table[ci]
        if li.size:
            tw = rl[:, C_TUP:C_TUP + 12].reshape(-1, 2, 6)[np.arange(ci.size), di]
            same = hit & (tw == p.words[li]).all(axis=1) & (rl[:, C_EXP].view(np.float64) > now)
            if not same.all():
                rl[~same] = 0
                li, ci, di = li[same], ci[same], di[same]
        if li.size == m:
            R = rl
        else:
            R = np.zeros((m, _W), dtype=np.uint64)
            R[li] = rl[same] if li.size != rl.shape[0] else rl
        found[li] = True
        conn[li] = ci
        reply[li] = di.astype(bool)
        self.stats["lookups_hit"] += li.size
        fast, general = self._fast_eligible(p, found, conn, reply, force, R)
        if fast.any():
            nat_rows.append(self._fast(p, fast, general, conn, reply, st, tsrc, now, nat,
                                       natted, R))
        slow = stale = np.flatnonzero(p.ok & ~fast)
        if slow.size and commit and not self._overflow and (nat is None or not nat.random):
            slow, jobs = self._bulk_new(p, slow, found, natted, conn, reply, st, tsrc, now,
                                        nat.action if nat is not None else 0, nat)
            nat_rows.append(jobs)
        if slow.size:
            nat_rows.append(self._slow_rows(batch, parsed, rows, p, slow, conn, reply, st, tsrc,
                                            natted, zones, commit, nat, force, now))
        if commit and (set_mark is not None or set_label is not None):
            self._set_mark_label(conn, set_mark, set_label)
            stale = np.arange(m)
        if stale.size:
            # Rows not on the fast path: their connection changed, or is new.
            sc = stale[conn[stale] >= 0]
            R[stale] = 0
            R[sc] = self.table[conn[sc]]
        st[~p.ok] = INV
        self.stats["invalid"] += int(((st & INV) != 0).sum())
        self._write_md(keys, rows, p, st | TRK, zones, conn, tsrc, R)
        if nat_rows:
            jobs = np.concatenate(nat_rows)
            if jobs.size:
                self._nat_rewrite(batch, parsed, rows, p, jobs, conn, reply)

    def _unique(self, c: np.ndarray) -> np.ndarray:
        """Which entries of c occur once in c (a scatter/gather over a scratch array)."""
        seen = self._scratch
        if seen.size < self._cap + 1:
            seen = self._scratch = np.zeros(self._cap + 1, dtype=np.int64)
        idx = np.arange(c.size)
        seen[c] = idx
        last = seen[c] == idx               # the last write wins
        seen[c[::-1]] = idx[::-1]
        return last & (seen[c] == idx)      # ... and the first

    def _fast_eligible(self, p: PacketInfo, found, conn, reply, force, R):
        """Rows whose whole update is vectorizable, and which TCP rows take the
        general vectorized update (one row of their connection in the batch)."""
        fast = found.copy()
        general = np.zeros(found.size, dtype=bool)
        if not fast.any():
            return fast, general
        fi = np.flatnonzero(fast)
        c = conn[fi]
        proto = p.proto[fi]
        l4st = R[fi, C_L4ST]
        tcp = proto == IP_TCP
        icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
        ok = np.where(icmp, l4st == ICMP_REPLY, l4st == OTHER_BIDIR)
        if tcp.any():
            ri = R.view(np.int64)
            fl = p.flags[fi]
            s0, s1 = ri[fi, C_TCP + 4], ri[fi, C_TCP + 9]
            simple = ((s0 == T.ESTABLISHED) & (s1 == T.ESTABLISHED)
                      & ((fl & (T.SYN | T.FIN | T.RST)) == 0) & ((fl & T.ACK) != 0))
            # A SYN on a connection closed both ways replaces it: per-packet path.
            renew = ((fl & (T.SYN | T.ACK)) == T.SYN) & (s0 >= T.FIN_WAIT_2) \
                & (s1 >= T.FIN_WAIT_2)
            gen = tcp & ~simple & ~renew & self._unique(c)
            ok = np.where(tcp, simple | gen, ok)
            general[fi[gen]] = True
        if force:
            ok &= ~reply[fi]
        if not ok.all():
            fast[fi[~ok]] = False
            # A connection with any row on the slow path keeps all its rows there, in order.
            bad = np.isin(c, c[~ok])
            fast[fi[bad]] = False
            general &= fast
        return fast, general

    def _fast(self, p, fast, general, conn, reply, st, tsrc, now, nat, natted, R) -> np.ndarray:
        fi = np.flatnonzero(fast)
        c = conn[fi]
        rp = reply[fi]
        proto = p.proto[fi]
        res = np.full(fi.size, T.VALID, dtype=np.int64)
        tcp = proto == IP_TCP
        gen = general[fi]
        simple = tcp & ~gen
        if simple.any():
            t = np.flatnonzero(simple)
            res[t] = self._fast_tcp(p, fi[t], c[t], rp[t], now, fast)
        if gen.any():
            res[gen] = self._general_tcp(p, fi[gen], c[gen], rp[gen], now)
        if not tcp.all():
            oth = np.flatnonzero(~tcp)
            co = c[oth]
            icmp = (proto[oth] == IP_ICMP) | (proto[oth] == IP_ICMPV6)
            self.exp[co] = now + self._tmo[np.where(icmp, TM_ICMP_REPLY, TM_OTHER_BIDIR)]
        # Rows the passes left to the per-packet path are no longer fast.
        keep = fast[fi]
        if not keep.all():
            fi, c, rp, res = fi[keep], c[keep], rp[keep], res[keep]
        s = st[fi]
        est = (s | EST | np.where(rp, RPL, 0).astype(np.uint64)) & ~np.uint64(NEW)
        st[fi] = np.where(res == T.VALID, est,
                          np.where(res == T.INVALID, INV, s | NEW)).astype(np.uint64)
        tsrc[fi] = 1
        self.stats["fast_path"] += fi.size
        if nat is None:
            return np.zeros(0, dtype=np.intp)
        # OVS translates whatever the update said, invalid packets included.
        natc = R[fi, C_NAT]
        j = (natc != 0) & ~natted[fi]
        jobs = fi[j]
        snat = (natc[j] & SNAT) != 0
        st[jobs] |= np.where(snat != rp[j], SNAT_BIT, DNAT_BIT).astype(np.uint64)
        return jobs

    def _general_tcp(self, p, rows, c, rp, now) -> np.ndarray:
        """Any TCP segment of a connection with no other row in the batch (T.update_many)."""
        fl = p.flags[rows]
        ws = np.zeros(rows.size, dtype=np.int64)
        for j in np.flatnonzero(fl & T.SYN).tolist():
            ws[j] = p.wscale(int(rows[j]))
        res, tm = T.update_many(self.tcp, c, rp, fl, p.seq[rows], p.ack[rows], p.win[rows],
                                p.plen[rows], ws, self.tcp_liberal)
        upd = tm >= 0
        self.exp[c[upd]] = now + self._tmo[tm[upd]]
        bad = res == T.INVALID
        if bad.any():
            flags_bad = T.invalid_flags_many(fl)
            self.stats["tcp_invalid_flags"] += int((bad & flags_bad).sum())
            self.stats["tcp_seq_chk_failed"] += int((bad & ~flags_bad).sum())
        return res

    def _fast_tcp(self, p, rows, c, rp, now, fast) -> np.ndarray:
        """Established segments, any number per connection (T.established_runs);
        returns VALID/INVALID per row.

        Each pass settles every connection's rows up to its first invalid one;
        rows still open after MAX_TCP_ROUNDS passes are taken off `fast` and
        left to the per-packet path, which runs after, in order.
        """
        valid = np.ones(rows.size, dtype=bool)
        est = self._tmo[T.TM_TCP_EST]
        once = self._unique(c)
        if not once.all():
            # Connections with one row here skip the prefix maxima (disjoint, so
            # the two groups can run in either order).
            o = np.flatnonzero(once)
            if o.size:
                r = rows[o]
                ok, _ = T.established_runs(self.tcp, c[o], rp[o], p.seq[r], p.ack[r],
                                           p.win[r], p.plen[r], self.tcp_liberal, True)
                valid[o] = ok
                self.exp[c[o[ok]]] = now + est
                self.stats["tcp_seq_chk_failed"] += int(o.size - np.count_nonzero(ok))
            left = np.flatnonzero(~once)
        else:
            left = np.arange(rows.size)
        unique = bool(once.all())
        for _ in range(MAX_TCP_ROUNDS):
            r = rows[left]
            cl = c[left]
            ok, done = T.established_runs(self.tcp, cl, rp[left], p.seq[r], p.ack[r], p.win[r],
                                          p.plen[r], self.tcp_liberal, unique)
            valid[left] = ok
            settled = ok & done
            self.exp[cl if settled.all() else cl[settled]] = now + est
            self.stats["tcp_seq_chk_failed"] += int(np.count_nonzero(~ok & done))
            if done.all():
                break
            left = left[~done]
        else:
            fast[rows[left]] = False
        return np.where(valid, T.VALID, T.INVALID)

    def _bulk_new(self, p, slow, found, natted, conn, reply, st, tsrc, now, act, nat):
        """Commit, vectorized, the new connections whose tuples (original and reply)
        no other packet of the batch touches, so order cannot matter; with NAT
        (IPv4), those whose first-choice reply tuple is free.  Returns the rows
        left for the per-packet path and the rows to translate.  Only when the
        limits leave room for all of them."""
        none = np.zeros(0, dtype=np.intp)
        cand = ~found[slow] & ~p.related[slow] & ~natted[slow]
        if act:
            cand &= ~p.v6[slow]
        if not cand.any():
            return slow, none
        w = p.words[slow]
        proto = p.proto[slow]
        fl = p.flags[slow]
        tcp = proto == IP_TCP
        bad_fl = np.where(fl & T.SYN, (fl & (T.RST | T.FIN)) != 0, (fl & (T.ACK | T.RST)) == 0)
        bad_fl |= ((fl & T.ACK) == 0) & ((fl & (T.FIN | T.PSH | T.URG)) != 0)
        bad_fl |= (fl & (T.SYN | T.ACK)) == (T.SYN | T.ACK)
        typ = (w[:, 4] & np.uint64(0xFF)).astype(np.int64)
        icmp_ok = np.where(proto == IP_ICMP, np.isin(typ, (8, 13, 15)), typ == 128)
        icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
        cand &= np.where(tcp, ~bad_fl, np.where(icmp, icmp_ok, True))
        meta = p.zone[slow] | (proto.astype(np.uint64) << np.uint64(16)) \
            | (p.v6[slow].astype(np.uint64) << np.uint64(24))
        h = stored(_hash_words(meta, w[:, 0], w[:, 1], w[:, 2], w[:, 3],
                               (w[:, 4] << np.uint64(32)) | w[:, 5]))
        if act:
            rw = first_candidates(nat, self.hash_basis, p.zone[slow], proto, w)
        else:
            rw = w[:, [2, 3, 0, 1, 5, 4]]
        rh = stored(_hash_words(meta, rw[:, 0], rw[:, 1], rw[:, 2], rw[:, 3],
                                (rw[:, 4] << np.uint64(32)) | rw[:, 5]))
        ci = np.flatnonzero(cand)
        allh = np.concatenate([h, rh[ci]])
        _, inv, cnt = np.unique(allh, return_inverse=True, return_counts=True)
        once = cnt[inv] == 1
        cand[ci] &= once[:slow.size][ci] & once[slow.size:]
        ci = np.flatnonzero(cand)
        if not ci.size:
            return slow, none
        absent = (self._index.get_many(h[ci]) < 0) & (self._index.get_many(rh[ci]) < 0)
        ci = ci[absent]
        k = ci.size
        if not k:
            return slow, none
        zones = p.zone[slow[ci]].astype(np.int64)
        zu, zc = np.unique(zones, return_counts=True)
        if self._n + k > self.limit or any(
                self._zone_limit(int(z)) and self._zone_count.get(int(z), 0) + int(n) >
                self._zone_limit(int(z)) for z, n in zip(zu, zc)):
            return slow, none
        while len(self._free) < k:
            self._alloc(self._cap * 2)
        slots = np.array(self._free[-k:][::-1], dtype=np.int64)
        del self._free[-k:]
        rows = slow[ci]
        blk = np.zeros((k, _W), dtype=np.uint64)
        wk = w[ci]
        blk[:, C_TUP:C_TUP + 6] = wk
        blk[:, C_TUP + 6:C_TUP + 12] = rw[ci]
        blk[:, C_NAT] = act
        blk[:, C_ZONE] = zones
        pk = proto[ci]
        blk[:, C_PROTO] = pk
        blk[:, C_V6] = p.v6[rows]
        cls = np.where(pk == IP_TCP, T.TM_TCP_FIRST,
                       np.where(icmp[ci], TM_ICMP_FIRST, TM_OTHER_FIRST))
        blk.view(np.float64)[:, C_EXP] = now + self._tmo[cls]
        t = np.flatnonzero(pk == IP_TCP)
        if t.size:
            r = rows[t]
            blk.view(np.int64)[t, C_TCP:C_TCP + 10] = T.new_peers_many(
                p.flags[r], p.seq[r], p.win[r], p.plen[r],
                [p.wscale(int(i)) for i in r]).reshape(-1, 10)
        self.table[slots] = blk
        self.live[slots] = True
        self.hkey[slots, 0] = h[ci]
        self.hkey[slots, 1] = rh[ci]
        self._index.insert_many(np.concatenate([h[ci], rh[ci]]),
                                np.concatenate([slots * 2, slots * 2 + 1]))
        for z, n in zip(zu.tolist(), zc.tolist()):
            self._zone_count[z] = self._zone_count.get(z, 0) + n
        self._n += k
        self.stats["committed"] += k
        st[rows] = NEW | (SNAT_BIT if act == SNAT else DNAT_BIT if act else 0)
        conn[rows] = slots
        reply[rows] = False
        tsrc[rows] = 1
        keep = np.ones(slow.size, dtype=bool)
        keep[ci] = False
        return slow[keep], (rows if act else none)

    def _set_mark_label(self, conn, set_mark, set_label) -> None:
        c = conn[conn >= 0]
        if set_mark is not None:
            v, msk = set_mark
            msk &= 0xFFFFFFFF
            self.mark[c] = (self.mark[c] & np.uint64(~msk & 0xFFFFFFFF)) | np.uint64(v & msk)
        if set_label is not None:
            v, msk = set_label
            for j, sh in ((0, 64), (1, 0)):
                mj = (msk >> sh) & _M64
                vj = (v >> sh) & _M64
                self.label[c, j] = (self.label[c, j] & np.uint64(~mj & _M64)) | np.uint64(vj & mj)

    def _write_md(self, keys, rows, p, st, zones, conn, tsrc, R) -> None:
        """ct_state, ct_zone, ct_mark, ct_label and the original tuple, as OVS write_ct_md."""
        m = len(rows)
        blk = np.empty((_CT_LAST - _CT_FIRST + 1, m), dtype=np.uint64)
        blk[0] = st
        blk[1] = zones
        blk[2] = R[:, C_MARK]
        blk[3] = R[:, C_LABEL]
        blk[4] = R[:, C_LABEL + 1]
        has = conn >= 0
        if has.all():
            words, proto, v6 = R[:, C_TUP:C_TUP + 6], R[:, C_PROTO], R[:, C_V6] != 0
        else:
            words = np.where(has[:, None], R[:, C_TUP:C_TUP + 6], p.words)
            proto = np.where(has, R[:, C_PROTO], p.proto.astype(np.uint64))
            v6 = np.where(has, R[:, C_V6] != 0, p.v6)
            none = tsrc == 0
            if none.any():
                words[none] = 0
                proto[none] = 0
        if v6.any():
            blk[5] = np.where(v6, 0, words[:, 1])
            blk[6] = np.where(v6, 0, words[:, 3])
            blk[7:11] = np.where(v6, words[:, :4].T, 0)
        else:
            blk[5] = words[:, 1]
            blk[6] = words[:, 3]
            blk[7:11] = 0
        blk[11] = proto
        icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
        if icmp.any():
            blk[12] = np.where(icmp, words[:, 4] & np.uint64(0xFF), words[:, 4])
            blk[13] = np.where(icmp, 0, words[:, 5])
        else:
            blk[12] = words[:, 4]
            blk[13] = words[:, 5]
        if m == keys.shape[1] and rows[0] == 0 and rows[-1] == m - 1 and \
                (m < 2 or (np.diff(rows) == 1).all()):
            keys[_CT_FIRST:_CT_LAST + 1] = blk
        else:
            keys[_CT_FIRST:_CT_LAST + 1, rows] = blk

    def _nat_rewrite(self, batch, parsed, rows, p, jobs, conn, reply) -> None:
        """Rewrite the packets `jobs` (local row numbers) to the connection's other tuple reversed."""
        c = conn[jobs]
        other = 1 - reply[jobs].astype(np.intp)
        w = self.tup[c, other]
        for v6 in (False, True):
            sel = np.flatnonzero(p.v6[jobs] == v6)
            if not sel.size:
                continue
            j = jobs[sel]
            r = rows[j]
            ww = w[sel]
            pat = np.isin(p.proto[j], (IP_TCP, IP_UDP))
            new = {"src_hi": ww[:, 2], "src_lo": ww[:, 3], "dst_hi": ww[:, 0],
                   "dst_lo": ww[:, 1],
                   "sport": np.where(pat, ww[:, 5], parsed.keys[_S["tp_src"], r]),
                   "dport": np.where(pat, ww[:, 4], parsed.keys[_S["tp_dst"], r])}
            rewrite(batch.data, parsed.keys, r, parsed.l3[r].astype(np.int64),
                    parsed.l4[r].astype(np.int64), v6, p.proto[j], new)

    # -- maintenance -------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Remove every connection whose timeout has passed; how many were removed."""
        dead = np.flatnonzero(self.live & (self.exp <= now))
        self._delete_many(dead)
        self.stats["expired"] += dead.size
        return int(dead.size)

    def flush(self, zone: int | None = None) -> None:
        sel = self.live if zone is None else self.live & (self.zone == zone)
        self._delete_many(np.flatnonzero(sel))

    def _delete_many(self, slots: np.ndarray) -> None:
        """_delete() for many slots: index entries removed with vectorized probes."""
        if not slots.size:
            return
        vals = np.stack([slots * 2, slots * 2 + 1], axis=1).ravel()
        done = self._index.delete_many(self.hkey[slots].ravel(), vals)
        if not done.all():
            # The rest live in the overflow table (their hash was taken).
            for v in vals[~done].tolist():
                t = self._tuple(v >> 1, v & 1)
                if self._overflow.get(t) == v:
                    del self._overflow[t]
        zu, zc = np.unique(self.zone[slots], return_counts=True)
        for z, n in zip(zu.tolist(), zc.tolist()):
            self._zone_count[z] -= n
        self.live[slots] = False
        self.exp[slots] = 0.0
        self._n -= slots.size
        self._free.extend(slots.tolist())
        self.stats["deleted"] += slots.size

    def connections(self, zone: int | None = None) -> list[int]:
        sel = self.live if zone is None else self.live & (self.zone == zone)
        return np.flatnonzero(sel).tolist()

    def tcp_state(self, slot: int) -> tuple[str, str]:
        """(original, reply) peer states of a TCP connection, OVS names."""
        a, b = self.tcp[slot, :, 4].tolist()
        return T.STATE_NAMES[a], T.STATE_NAMES[b]

    def find(self, t: tuple, now: float = float("-inf")) -> tuple[int, int]:
        """(slot, direction) owning tuple (zone, proto, v6, src, dst, sport, dport), or (-1, 0)."""
        return self._lookup(t, now)

    def dump(self, zone: int | None = None) -> list[str]:
        """Lines as `ovs-appctl dpctl/dump-conntrack` prints them, sorted."""
        return sorted(self._format(i) for i in self.connections(zone))

    def _format(self, i: int) -> str:
        proto = int(self.proto[i])
        name = _PROTO_NAMES.get(proto, f"proto={proto}")
        if proto == IP_ICMP and self.v6[i]:
            name = "icmp"
        parts = [name]
        for label, d in (("orig", 0), ("reply", 1)):
            parts.append(f"{label}=({self._format_tuple(i, d)})")
        if self.zone[i]:
            parts.append(f"zone={int(self.zone[i])}")
        if self.mark[i]:
            parts.append(f"mark={int(self.mark[i])}")
        lab = int(self.label[i, 0]) << 64 | int(self.label[i, 1])
        if lab:
            parts.append(f"labels=0x{lab:x}")
        if proto == IP_TCP:
            a, b = self.tcp[i, :, 4].tolist()
            parts.append(f"protoinfo=(state={T.coalesced_state(a, b)})")
        return ",".join(parts)

    def _format_tuple(self, i: int, d: int) -> str:
        import ipaddress
        t = self._tuple(i, d)
        conv = ipaddress.IPv6Address if t[2] else ipaddress.IPv4Address
        s = f"src={conv(t[3])},dst={conv(t[4])}"
        if t[1] in (IP_ICMP, IP_ICMPV6):
            return s + f",id={t[5] >> 8},type={t[5] & 0xFF},code=0"
        if t[1] in (IP_TCP, IP_UDP, IP_SCTP):
            return s + f",sport={t[5]},dport={t[6]}"
        return s

    def memory_per_connection(self) -> float:
        """Bytes per live connection: its array columns and its share of the index.

        Counted per allocated slot, so right after a growth (capacity doubles) the
        figure includes the free slots; the overflow dict is counted with sys.getsizeof.
        """
        arrays = self.table.nbytes + self.live.nbytes + self.hkey.nbytes
        total = arrays + self._index.nbytes() + sys.getsizeof(self._overflow)
        return total / max(self._n, 1)
