"""Connection tracking for the reference switch: Open vSwitch userspace conntrack semantics over packet batches.

API (pure: no clock, no I/O; the caller passes `now`, seconds on any monotonic clock)::

    ct = Conntrack(timeouts: Timeouts | None = None, limit: int = 3_000_000,
                   zone_limits: dict[int, int] | None = None, default_zone_limit: int = 0,
                   tcp_liberal: bool = False, checksums: bool = True, capacity: int = 1024,
                   compiled: bool = True)      # False: the numpy express path
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
    ct.view -> ConnView                    # what the NIC tier reads (offload.conntrack)
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

Layout: Conntrack (this module) is the engine: configuration, counters,
the connection table (conntrack_table.ConnTable) and execute(), which hands
one CtBatch (conntrack_pkt: the call's arguments and per-row verdicts) through
its stages: the express path (conntrack_fast), the vectorized batch path
(conntrack_batch), the per-packet path (conntrack_slow), then writes the ct_*
slots and translates (conntrack_nat).

Speed: established TCP/IPv4 ACK segments first take the express path
(conntrack_fast): header words read as slices, checksums from one small
matrix product, one lookup and one table-row gather per packet, a few
scatters back; a connection any of whose rows in the batch is something
else stays off it, so batch order holds.  By default (compiled=True) the
express path is one numba pass (conntrack_kernel) that also takes UDP/IPv4 of
connections seen both ways; conntrack_fast is its reference.  The other rows are keyed, hashed
and looked up for the whole batch (numpy open-addressing index,
conntrack_index); each connection is one 256-byte table row gathered once.
Vectorized: established TCP ACK segments (any number per
connection, conntrack_tcp.established_runs), any TCP segment of a connection
with one row in the batch (conntrack_tcp.update_many: handshakes, FIN, RST),
steady UDP/ICMP, and committing new connections (IPv4 NAT included) whose
tuples nothing else in the batch touches (conntrack_batch).  The rest (several non-trivial
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

import ipaddress

import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack_batch import bulk_new, eligible, lookup, steady, uncommitted_new
from sbnet.datapath.conntrack_fast import express
from sbnet.datapath.conntrack_extract import COMPILED_MAX as EXTRACT_MAX, extract_compiled
from sbnet.datapath.conntrack_kernel import express as express_compiled, nat4_rows, write_md_rows
from sbnet.datapath.conntrack_nat import NatSpec, rewrite
from sbnet.datapath.conntrack_pkt import CtBatch
from sbnet.datapath.conntrack_slow import per_packet
from sbnet.datapath.conntrack_table import (
    _CT_FIRST, _CT_LAST, _M64, _PROTO_NAMES, _S, _W, C_L4ST, C_LABEL, C_MARK, C_PROTO,
    C_TUP, C_V6, C_ZONE, ICMP_FIRST, ICMP_REPLY, INV,
    OTHER_BIDIR, OTHER_FIRST, TM_ICMP_FIRST, TM_OTHER_FIRST, TRK, ConnTable, Timeouts, meta_words, tuple_hash,
    tuple_hashes)
from sbnet.datapath.parse import Parsed
from sbnet.flows.fields import ETH_IPV6, IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP

__all__ = ["ConnView", "Conntrack", "NatSpec", "Timeouts", "tuple_hash"]


class Conntrack:
    """The connection tracker: configuration, counters and the connection table of
    every zone; execute() runs one ct() action over a batch."""

    def __init__(self, timeouts: Timeouts | None = None, limit: int = 3_000_000,
                 zone_limits: dict[int, int] | None = None, default_zone_limit: int = 0,
                 tcp_liberal: bool = False, checksums: bool = True, capacity: int = 1024,
                 compiled: bool = True):
        self.timeouts = timeouts or Timeouts()
        self.tmo = self.timeouts.by_class()       # seconds per timeout class
        self.limit = limit
        self.zone_limits = dict(zone_limits or {})
        self.default_zone_limit = default_zone_limit    # 0 = unlimited, as OVS
        self.tcp_liberal = tcp_liberal
        self.checksums = checksums
        # The express path's compiled kernel, or (False) its numpy reference.
        self.compiled = compiled
        self._express = express_compiled if compiled else express
        self.hash_basis = 0x5B1E7
        self.stats: dict[str, int] = dict.fromkeys(
            ("packets", "lookups_hit", "fast_path", "committed", "deleted", "expired",
             "invalid", "conntrack_full", "zone_full", "nat_exhausted",
             "tcp_seq_chk_failed", "tcp_invalid_flags", "related"), 0)
        self.table = ConnTable(capacity, self.stats, compiled)
        self.view = ConnView(self)

    def __len__(self) -> int:
        return self.table.n

    @property
    def tcp(self) -> np.ndarray:
        """TCP peers per slot: (slots, 2 directions, seqlo/seqhi/max_win/wscale/state)."""
        return self.table.tcp

    @property
    def exp(self) -> np.ndarray:
        """Expiry time per slot."""
        return self.table.exp

    @property
    def mark(self) -> np.ndarray:
        """ct_mark per slot."""
        return self.table.mark

    @property
    def label(self) -> np.ndarray:
        """ct_label per slot: (slots, 2) uint64, high word first."""
        return self.table.label

    def zone_limit(self, zone: int) -> int:
        """Connections zone may hold (0: no limit of its own)."""
        return self.zone_limits.get(zone, self.default_zone_limit)

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
        zones = np.broadcast_to(np.asarray(zone, dtype=np.int64), (m,)).astype(np.uint64)
        nat = NatSpec.from_action(nat) if nat is not None else None
        b = CtBatch(batch, parsed, rows, zones, commit, nat, now, force)
        exec_md = commit and (set_mark is not None or set_label is not None)
        if not force and not exec_md:
            left = self._express(self, b)
            if left.size < m:
                b.narrow(left)
                m = left.size
                if not m:
                    return
        self.stats["packets"] += m
        keyed = None
        if self.compiled and m <= EXTRACT_MAX:
            keyed = extract_compiled(batch, parsed, b.rows, b.zones, self.checksums)
        b.start(self.checksums, keyed)
        lookup(self, b)
        fast, general = eligible(self, b)
        if fast.any():
            b.jobs.append(steady(self, b, fast, general))
        slow = stale = np.flatnonzero(b.p.ok & ~fast)
        if slow.size and commit and not self.table.overflow and (nat is None or not nat.random):
            slow = bulk_new(self, b, slow)
        elif slow.size and not commit:
            slow = uncommitted_new(self, b, slow)
        if slow.size:
            per_packet(self, b, slow)
        if exec_md:
            self._set_mark_label(b.conn, set_mark, set_label)
            stale = np.arange(m)
        if stale.size:
            # Rows not on the fast path: their connection changed, or is new.
            R, conn = b.R, b.conn
            sc = stale[conn[stale] >= 0]
            R[stale] = 0
            R[sc] = self.table.mem[conn[sc]]
        st = b.st
        st[~b.p.ok] = INV
        self.stats["invalid"] += int(((st & INV) != 0).sum())
        st |= np.uint64(TRK)
        if self.compiled:
            p = b.p
            write_md_rows(b.parsed.keys, b.rows.astype(np.int64, copy=False), b.R, b.conn, st,
                          b.zones, p.words, p.proto, p.v6, b.tsrc)
        else:
            _write_md(b)
        if b.jobs:
            jobs = np.concatenate(b.jobs)
            if jobs.size:
                self._nat_rewrite(b, jobs)

    def _set_mark_label(self, conn, set_mark, set_label) -> None:
        tab = self.table
        c = conn[conn >= 0]
        if set_mark is not None:
            v, msk = set_mark
            msk &= 0xFFFFFFFF
            tab.mark[c] = (tab.mark[c] & np.uint64(~msk & 0xFFFFFFFF)) | np.uint64(v & msk)
        if set_label is not None:
            v, msk = set_label
            for j, sh in ((0, 64), (1, 0)):
                mj = (msk >> sh) & _M64
                vj = (v >> sh) & _M64
                tab.label[c, j] = (tab.label[c, j] & np.uint64(~mj & _M64)) | np.uint64(vj & mj)

    def _nat_rewrite(self, b: CtBatch, jobs: np.ndarray) -> None:
        """Rewrite the packets `jobs` (local row numbers) to the connection's other tuple reversed."""
        p, rows, parsed = b.p, b.rows, b.parsed
        c = b.conn[jobs]
        other = 1 - b.reply[jobs].astype(np.intp)
        w = self.table.tup[c, other]
        for v6 in (False, True):
            sel = np.flatnonzero(p.v6[jobs] == v6)
            if not sel.size:
                continue
            j = jobs[sel]
            r = rows[j]
            ww = w[sel]
            if self.compiled and not v6:
                nat4_rows(b.batch.data, parsed.keys, r.astype(np.int64, copy=False),
                          parsed.l3.astype(np.int32, copy=False),
                          parsed.l4.astype(np.int32, copy=False), p.proto[j],
                          np.ascontiguousarray(ww))
                continue
            pat = np.isin(p.proto[j], (IP_TCP, IP_UDP))
            new = {"src_hi": ww[:, 2], "src_lo": ww[:, 3], "dst_hi": ww[:, 0],
                   "dst_lo": ww[:, 1],
                   "sport": np.where(pat, ww[:, 5], parsed.keys[_S["tp_src"], r]),
                   "dport": np.where(pat, ww[:, 4], parsed.keys[_S["tp_dst"], r])}
            rewrite(b.batch.data, parsed.keys, r, parsed.l3[r].astype(np.int64),
                    parsed.l4[r].astype(np.int64), v6, p.proto[j], new)

    # -- maintenance -------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Remove every connection whose timeout has passed; how many were removed."""
        tab = self.table
        dead = np.flatnonzero(tab.live & (tab.exp <= now))
        tab.delete_many(dead)
        self.stats["expired"] += dead.size
        return int(dead.size)

    def flush(self, zone: int | None = None) -> None:
        self.table.delete_many(np.flatnonzero(self._in_zone(zone)))

    def connections(self, zone: int | None = None) -> list[int]:
        return np.flatnonzero(self._in_zone(zone)).tolist()

    def _in_zone(self, zone: int | None) -> np.ndarray:
        tab = self.table
        return tab.live if zone is None else tab.live & (tab.zone == zone)

    def adopt_established(self, zone: int, proto: int, src: int, dst: int, sport: int,
                          dport: int, mark: int, now: float, v6: bool = False,
                          reply: tuple | None = None, nat: int = 0) -> int:
        """Take up an established TCP/UDP/ICMP connection another holder kept (the kernel
        tier's connection map across an agent restart): TCP with both peers ESTABLISHED and
        window scales unknown (their windows are learnt again; a liberal conntrack accepts
        the segments meanwhile), UDP as seen both ways, an ICMP query as answered.  reply: the reply direction's
        (src, dst, sport, dport) when NATed (`nat`: conntrack_nat.SNAT or DNAT).  Its
        slot, or -1 when a connection already owns either tuple."""
        fwd = (zone, proto, int(v6), src, dst, sport, dport)
        rev = (zone, proto, int(v6), *(reply or (dst, src, dport, sport)))
        tab = self.table
        if proto not in (IP_TCP, IP_UDP, IP_ICMP, IP_ICMPV6) or tab.taken(fwd) or tab.taken(rev):
            return -1
        i = tab.create(fwd, rev, nat)
        tab.mark[i] = mark
        if proto == IP_TCP:
            tab.tcp[i] = [[0, 0, 0, T.WSCALE_UNKNOWN, T.ESTABLISHED]] * 2
            tab.exp[i] = now + self.tmo[T.TM_TCP_EST]
        elif proto in (IP_ICMP, IP_ICMPV6):
            tab.l4st[i] = ICMP_REPLY
            tab.exp[i] = now + self.tmo[TM_ICMP_FIRST + ICMP_REPLY]
        else:
            tab.l4st[i] = OTHER_BIDIR
            tab.exp[i] = now + self.tmo[TM_OTHER_FIRST + OTHER_BIDIR]
        return i

    def adopt_tcp(self, zone: int, src: int, dst: int, sport: int, dport: int,
                  peers, now: float) -> int:
        """An IPv4 TCP connection another holder tracks (the kernel tier commits SYNs and
        follows handshakes itself): made if absent, its peers (per direction: seqlo, seqhi,
        max_win, wscale, state) as that holder has them.  Its slot, or -1 when either
        tuple belongs to another connection."""
        fwd = (zone, IP_TCP, 0, src, dst, sport, dport)
        rev = (zone, IP_TCP, 0, dst, src, dport, sport)
        tab = self.table
        i, d = tab.lookup(fwd, float("-inf"))
        if d or (i < 0 and tab.taken(rev)):
            return -1
        if i < 0:
            i = tab.create(fwd, rev, 0)
        tab.tcp[i] = peers
        a, b = int(tab.tcp[i, 0, 4]), int(tab.tcp[i, 1, 4])
        tab.exp[i] = now + self.tmo[T.timeout_class(a, b)]
        return i

    def tcp_state(self, slot: int) -> tuple[str, str]:
        """(original, reply) peer states of a TCP connection, OVS names."""
        a, b = self.table.tcp[slot, :, 4].tolist()
        return T.STATE_NAMES[a], T.STATE_NAMES[b]

    def adopt_udp(self, zone: int, src: int, dst: int, sport: int, dport: int,
                  replied: bool, now: float, proto: int = IP_UDP) -> int:
        """An IPv4 UDP connection (proto IP_ICMP: an ICMP query, its ports conntrack's
        tuple words) another holder committed (the kernel tier tells its own commits and
        first replies): seen one way, or both when `replied`.  A connection already
        owning the tuple is marked replied if `replied`.  Its slot, or -1 when the tuple's
        reverse belongs to another connection."""
        fwd = (zone, proto, 0, src, dst, sport, dport)
        tab = self.table
        i, d = tab.lookup(fwd, float("-inf"))
        if i < 0:
            if tab.taken((zone, proto, 0, dst, src, dport, sport)):
                return -1
            i = tab.create(fwd, (zone, proto, 0, dst, src, dport, sport), 0)
            tab.l4st[i] = OTHER_FIRST
        first, both = _ADOPTED[proto]
        if replied:
            tab.l4st[i] = both
        tab.exp[i] = now + self.tmo[first + int(tab.l4st[i])]
        return i

    def adopt_udp_many(self, zone: np.ndarray, src: np.ndarray, dst: np.ndarray,
                       sport: np.ndarray, dport: np.ndarray, replied: np.ndarray,
                       now: float, proto: int = IP_UDP) -> np.ndarray:
        """adopt_udp() for many connections of one protocol at once (each its own, original
        direction); their slots (-1: refused).  Those neither held nor colliding with
        another are stored in one step, the rest one by one."""
        number = proto
        zone, src, dst, sport, dport, proto, zero, meta, h = _ipv4_hashes(
            number, zone, src, dst, sport, dport)
        replied = np.asarray(replied, dtype=bool)
        n = len(zone)
        tab = self.table
        uh, first, inv = np.unique(h, return_index=True, return_inverse=True)
        if len(uh) < n:
            # A connection told of twice (committed, then its reply): once, replied if either.
            rep = np.zeros(len(uh), dtype=bool)
            np.logical_or.at(rep, inv.ravel(), replied)
            return self.adopt_udp_many(zone[first], src[first], dst[first], sport[first],
                                       dport[first], rep, now, number)[inv.ravel()]
        slot, _ = self.view.find_ipv4(zone, proto, src, dst, sport, dport)
        rh = tuple_hashes(meta, zero, dst, zero, src, dport, sport)
        new = slot < 0
        made = self._create_ipv4_many(zone, number, src, dst, sport, dport, h, rh, new)
        tab.l4st[made[made >= 0]] = OTHER_FIRST
        slot = np.where(made >= 0, made, slot)
        for i in np.flatnonzero(new).tolist():
            if slot[i] < 0:
                slot[i] = self.adopt_udp(int(zone[i]), int(src[i]), int(dst[i]), int(sport[i]),
                                         int(dport[i]), bool(replied[i]), now, number)
        ok = slot >= 0
        s, r = slot[ok], replied[ok]
        tm_first, both = _ADOPTED[number]
        tab.l4st[s[r]] = both
        tab.exp[s] = now + self.tmo[tm_first + tab.l4st[s].astype(np.int64)]
        return slot

    def adopt_tcp_many(self, zone: np.ndarray, src: np.ndarray, dst: np.ndarray,
                       sport: np.ndarray, dport: np.ndarray, peers: np.ndarray,
                       now: float) -> np.ndarray:
        """adopt_tcp() for many connections at once (original directions; of a connection
        told of more than once, its last row's peers); their slots (-1: refused)."""
        zone, src, dst, sport, dport, proto, zero, meta, h = _ipv4_hashes(
            IP_TCP, zone, src, dst, sport, dport)
        peers = np.asarray(peers, dtype=np.int64).reshape(-1, 2, 5)
        n = len(zone)
        tab = self.table
        uh, inv = np.unique(h, return_inverse=True)
        inv = inv.ravel()
        if len(uh) < n:
            last = np.zeros(len(uh), dtype=np.int64)
            np.maximum.at(last, inv, np.arange(n))
            return self.adopt_tcp_many(zone[last], src[last], dst[last], sport[last],
                                       dport[last], peers[last], now)[inv]
        slot, d = self.view.find_ipv4(zone, proto, src, dst, sport, dport)
        back = (slot >= 0) & (d == 1)          # the reply tuple of another connection
        rh = tuple_hashes(meta, zero, dst, zero, src, dport, sport)
        made = self._create_ipv4_many(zone, IP_TCP, src, dst, sport, dport, h, rh, slot < 0)
        slot = np.where(made >= 0, made, slot)
        for i in np.flatnonzero(slot < 0).tolist():
            slot[i] = self.adopt_tcp(int(zone[i]), int(src[i]), int(dst[i]), int(sport[i]),
                                     int(dport[i]), peers[i], now)
        slot[back] = -1
        ok = slot >= 0
        s = slot[ok]
        tab.tcp[s] = peers[ok]
        tab.exp[s] = now + self.tmo[T.timeout_classes(peers[ok, 0, 4], peers[ok, 1, 4])]
        return slot

    def _create_ipv4_many(self, zone, proto: int, src, dst, sport, dport, h, rh,
                          new: np.ndarray) -> np.ndarray:
        """The connections `new` (a mask) whose tuples (hashes h, reply rh) nothing holds
        and no other row shares, stored in one step; their slots, -1 for every other row."""
        n = len(zone)
        tab = self.table
        slot = np.full(n, -1, dtype=np.int64)
        _, inv, cnt = np.unique(np.concatenate([h, rh]), return_inverse=True, return_counts=True)
        once = (cnt[inv.ravel()] == 1).reshape(2, n).all(axis=0)
        bulk = np.flatnonzero(new & once & (tab.index.get_many(h) < 0) & (tab.index.get_many(rh) < 0))
        if bulk.size:
            blk = np.zeros((bulk.size, _W), dtype=np.uint64)
            blk[:, C_TUP + 1], blk[:, C_TUP + 3] = src[bulk], dst[bulk]
            blk[:, C_TUP + 4], blk[:, C_TUP + 5] = sport[bulk], dport[bulk]
            blk[:, C_TUP + 7], blk[:, C_TUP + 9] = dst[bulk], src[bulk]
            blk[:, C_TUP + 10], blk[:, C_TUP + 11] = dport[bulk], sport[bulk]
            blk[:, C_ZONE], blk[:, C_PROTO] = zone[bulk], proto
            zu, zc = np.unique(zone[bulk].astype(np.int64), return_counts=True)
            slot[bulk] = tab.create_many(blk, h[bulk], rh[bulk], zu, zc)
        return slot

    def keep_alive(self, slots: np.ndarray, now: float) -> None:
        """Connections whose packets another holder forwarded since the last call: their
        timeouts start again, as if this conntrack had seen those packets."""
        tab = self.table
        slots = slots[slots >= 0]
        if not slots.size:
            return
        proto = tab.proto[slots]
        icmp = (proto == IP_ICMP) | (proto == IP_ICMPV6)
        cls = np.where(proto == IP_TCP, T.TM_TCP_EST,
                       np.where(icmp, TM_ICMP_FIRST, TM_OTHER_FIRST) + tab.l4st[slots].astype(np.int64))
        tab.exp[slots] = np.maximum(tab.exp[slots], now + self.tmo[cls])

    def find(self, t: tuple, now: float = float("-inf")) -> tuple[int, int]:
        """(slot, direction) owning tuple (zone, proto, v6, src, dst, sport, dport), or (-1, 0)."""
        return self.table.lookup(t, now)

    def dump(self, zone: int | None = None) -> list[str]:
        """Lines as `ovs-appctl dpctl/dump-conntrack` prints them, sorted."""
        return sorted(self._format(i) for i in self.connections(zone))

    def _format(self, i: int) -> str:
        tab = self.table
        proto = int(tab.proto[i])
        name = _PROTO_NAMES.get(proto, f"proto={proto}")
        if proto == IP_ICMP and tab.v6[i]:
            name = "icmp"
        parts = [name]
        for label, d in (("orig", 0), ("reply", 1)):
            parts.append(f"{label}=({self._format_tuple(i, d)})")
        if tab.zone[i]:
            parts.append(f"zone={int(tab.zone[i])}")
        if tab.mark[i]:
            parts.append(f"mark={int(tab.mark[i])}")
        lab = int(tab.label[i, 0]) << 64 | int(tab.label[i, 1])
        if lab:
            parts.append(f"labels=0x{lab:x}")
        if proto == IP_TCP:
            a, b = tab.tcp[i, :, 4].tolist()
            parts.append(f"protoinfo=(state={T.coalesced_state(a, b)})")
        return ",".join(parts)

    def _format_tuple(self, i: int, d: int) -> str:
        t = self.table.tuple(i, d)
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
        return self.table.nbytes() / max(self.table.n, 1)


def _write_md(b: CtBatch) -> None:
    """ct_state, ct_zone, ct_mark, ct_label and the original tuple of b's rows into
    their key slots, as OVS write_ct_md."""
    keys, rows, p, R, conn = b.parsed.keys, b.rows, b.p, b.R, b.conn
    m = len(rows)
    blk = np.empty((_CT_LAST - _CT_FIRST + 1, m), dtype=np.uint64)
    blk[0] = b.st
    blk[1] = b.zones
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
        none = b.tsrc == 0
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


class ConnView:
    """What another package (the NIC tier's conntrack, offload.conntrack) may read
    about connections.  A connection's id is the stored hash of its original tuple
    (the index key of direction 0): it outlives slot reuse and can be computed from
    the ct_* key slots conntrack writes, without a lookup."""

    def __init__(self, ct: Conntrack):
        self._table = ct.table

    def ids(self, keys: np.ndarray, rows: np.ndarray, zones: np.ndarray) -> np.ndarray:
        """Id of the live connection owning each packet's tuple (either direction) in
        zones, from the packet key slots (rows of keys); -1 where none."""
        tab = self._table
        vals = tab.index.get_many(_key_hashes(keys, rows, zones, ""))
        slot = np.where(vals >= 0, vals >> 1, 0)
        ok = (vals >= 0) & tab.live[slot]
        return np.where(ok, tab.hkey[slot, 0].view(np.int64), -1)

    @staticmethod
    def original_ids(keys: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Id of the connection whose original tuple ct() wrote into the ct_* slots."""
        return _key_hashes(keys, rows, keys[_S["ct_zone"], rows], "ct_").view(np.int64)

    def live_ids(self) -> np.ndarray:
        """Ids of every live connection."""
        tab = self._table
        return tab.hkey[:tab.live.size][tab.live, 0].view(np.int64)

    def find_ipv4(self, zone: np.ndarray, proto: np.ndarray, src: np.ndarray, dst: np.ndarray,
                  sport: np.ndarray, dport: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, direction) of the live connection owning each IPv4 tuple (arrays, one
        tuple a row), slot -1 where none: find() for many tuples at once."""
        zero = np.zeros(len(src), dtype=np.uint64)
        return self._find(zone, proto, False, zero, src, zero, dst, sport, dport)

    def find_ipv6(self, zone: np.ndarray, proto: np.ndarray, src: np.ndarray, dst: np.ndarray,
                  sport: np.ndarray, dport: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """find_ipv4 for IPv6 tuples: src and dst as (high, low) 64-bit words, a row each."""
        src, dst = np.asarray(src, dtype=np.uint64), np.asarray(dst, dtype=np.uint64)
        return self._find(zone, proto, True, src[:, 0], src[:, 1], dst[:, 0], dst[:, 1],
                          sport, dport)

    def _find(self, zone, proto, v6: bool, shi, slo, dhi, dlo, sport, dport):
        tab = self._table
        u = np.uint64
        zone, proto, shi, slo, dhi, dlo, sport, dport = (
            np.asarray(a, dtype=u) for a in (zone, proto, shi, slo, dhi, dlo, sport, dport))
        flag = np.full(len(slo), v6, dtype=bool)
        vals = tab.index.get_many(tuple_hashes(meta_words(zone, proto, flag), shi, slo, dhi,
                                               dlo, sport, dport))
        slot = np.where(vals >= 0, vals >> 1, tab.cap)       # row cap: all zero
        d = np.where(vals >= 0, vals & 1, 0)
        tup = tab.tup[slot, d]
        same = ((tab.zone[slot] == zone) & (tab.proto[slot] == proto) & (tab.v6[slot] == int(v6))
                & (tup[:, 0] == shi) & (tup[:, 1] == slo) & (tup[:, 2] == dhi) & (tup[:, 3] == dlo)
                & (tup[:, 4] == sport) & (tup[:, 5] == dport) & tab.live[slot])
        slot = np.where(same, slot, -1).astype(np.int64)
        if tab.overflow:                   # tuples whose hash another tuple holds
            for i in np.flatnonzero(~same).tolist():
                v = tab.overflow.get((int(zone[i]), int(proto[i]), int(v6),
                                      int(shi[i]) << 64 | int(slo[i]),
                                      int(dhi[i]) << 64 | int(dlo[i]),
                                      int(sport[i]), int(dport[i])), -1)
                if v >= 0 and tab.live[v >> 1]:
                    slot[i], d[i] = v >> 1, v & 1
        return slot, d.astype(np.int64)

    def held_outside(self, slots: np.ndarray) -> np.ndarray:
        """Per slot (-1: none): its connection may run outside the slow path: TCP with both
        peers ESTABLISHED, UDP that has seen a reply (before that its packets are +new), or
        an ICMP query answered; no label."""
        tab = self._table
        s = np.where(slots >= 0, slots, tab.cap)
        proto = tab.proto[s]
        st = tab.tcp[s, :, 4]
        tcp_ok = (proto == IP_TCP) & (st[:, 0] == T.ESTABLISHED) & (st[:, 1] == T.ESTABLISHED)
        udp_ok = (proto == IP_UDP) & (tab.l4st[s] == OTHER_BIDIR)
        icmp_ok = ((proto == IP_ICMP) | (proto == IP_ICMPV6)) & (tab.l4st[s] == ICMP_REPLY)
        return (slots >= 0) & (tcp_ok | udp_ok | icmp_ok) & ~tab.label[s].any(axis=1)

    def in_zones(self, zones, v6: bool = False) -> np.ndarray:
        """Slots of the live IPv4 (v6: IPv6) TCP, UDP and ICMP connections in `zones`."""
        tab = self._table
        n = tab.live.size
        protos = (IP_TCP, IP_UDP, IP_ICMPV6 if v6 else IP_ICMP)
        ok = tab.live & (tab.v6[:n] == int(v6)) & np.isin(tab.proto[:n], protos)
        return np.flatnonzero(ok & np.isin(tab.zone[:n], list(zones)))

    def tuples(self, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per slot: zone, proto, its NAT (0, conntrack_nat.SNAT or DNAT) and both
        directions' tuples as the packets carry them, (n, 2, 6) words: source high, low,
        destination high, low, source port, destination port (IPv4: high words 0)."""
        tab = self._table
        return (tab.zone[slots].astype(np.int64), tab.proto[slots].astype(np.int64),
                tab.nat[slots].astype(np.int64), tab.tup[slots])

    def unreplied_udp(self, slots: np.ndarray) -> np.ndarray:
        """Per slot: an IPv4 UDP connection or ICMP query seen one way only, no label, no NAT."""
        tab = self._table
        t0, t1 = tab.tup[slots, 0], tab.tup[slots, 1]
        plain = ((t1[:, 1] == t0[:, 3]) & (t1[:, 3] == t0[:, 1]) & (t1[:, 4] == t0[:, 5])
                 & (t1[:, 5] == t0[:, 4]))
        proto, st = tab.proto[slots], tab.l4st[slots]
        one_way = (((proto == IP_UDP) & (st != OTHER_BIDIR))
                   | ((proto == IP_ICMP) & (st == ICMP_FIRST) & (tab.v6[slots] == 0)))
        return one_way & plain & ~tab.label[slots].any(axis=1)

    def marks(self, slots: np.ndarray) -> np.ndarray:
        return self._table.mark[np.where(slots >= 0, slots, self._table.cap)].astype(np.int64)

    def tcp_established(self, conn_id: int) -> bool:
        """The connection with this id is TCP with both peers ESTABLISHED."""
        tab = self._table
        v = int(tab.index.get_many(np.array([conn_id], dtype=np.int64).view(np.uint64))[0])
        if v < 0:
            return False
        a, b = tab.tcp[v >> 1, :, 4].tolist()
        return a == b == T.ESTABLISHED


# adopt_udp's protocols: the first timeout class and the state once replied.
_ADOPTED = {IP_UDP: (TM_OTHER_FIRST, OTHER_BIDIR), IP_ICMP: (TM_ICMP_FIRST, ICMP_REPLY)}


def _ipv4_hashes(proto: int, *cols) -> tuple[np.ndarray, ...]:
    """IPv4 tuples (zone, src, dst, sport, dport arrays) of one protocol as uint64 arrays,
    then the protocol's and zero columns, the meta words and the original tuples' hashes."""
    zone, src, dst, sport, dport = (np.asarray(a, dtype=np.uint64) for a in cols)
    proto_col = np.full(len(zone), proto, dtype=np.uint64)
    zero = np.zeros(len(zone), dtype=np.uint64)
    meta = meta_words(zone, proto_col, zero.astype(bool))
    return (zone, src, dst, sport, dport, proto_col, zero, meta,
            tuple_hashes(meta, zero, src, zero, dst, sport, dport))


def _key_hashes(keys: np.ndarray, r: np.ndarray, zones: np.ndarray, pre: str) -> np.ndarray:
    """The stored tuple hash from key slots: the packet's own tuple (pre "") or the
    original tuple conntrack wrote (pre "ct_")."""
    u = np.uint64
    k = lambda name: keys[_S[pre + name], r]      # noqa: E731
    v6 = keys[_S["eth_type"], r] == ETH_IPV6
    return tuple_hashes(meta_words(zones, k("nw_proto"), v6),
                        np.where(v6, k("ipv6_src_hi"), 0).astype(u),
                        np.where(v6, k("ipv6_src_lo"), k("nw_src")).astype(u),
                        np.where(v6, k("ipv6_dst_hi"), 0).astype(u),
                        np.where(v6, k("ipv6_dst_lo"), k("nw_dst")).astype(u),
                        k("tp_src"), k("tp_dst"))
