"""Conntrack's connection table (one numpy row per connection, the tuple index) and its shared definitions: ct_state bits, timeout classes, the tuple hash."""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields

import numpy as np

from sbnet.datapath.conntrack_index import HashIndex, stored
from sbnet.flows.fields import (CT_STATE_BITS, IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP,
                                SLOT_INDEX)

_S = SLOT_INDEX
NEW, EST, REL, RPL = (CT_STATE_BITS[k] for k in ("new", "est", "rel", "rpl"))
INV, TRK, SNAT_BIT, DNAT_BIT = (CT_STATE_BITS[k] for k in ("inv", "trk", "snat", "dnat"))
_NAT_BITS = SNAT_BIT | DNAT_BIT
_M64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15

# Timeout classes beyond TCP's (OVS enum ct_timeout order).
TM_OTHER_FIRST, TM_OTHER_MULTIPLE, TM_OTHER_BIDIR, TM_ICMP_FIRST, TM_ICMP_REPLY = range(6, 11)
# Other/UDP and ICMP pseudo-connection states (conntrack-other.c, conntrack-icmp.c).
OTHER_FIRST, OTHER_MULTIPLE, OTHER_BIDIR = 0, 1, 2
ICMP_FIRST, ICMP_REPLY = 0, 1
_ICMP_NEW_TYPES = {IP_ICMP: (8, 13, 15), IP_ICMPV6: (128,)}
_PROTO_NAMES = {IP_TCP: "tcp", IP_UDP: "udp", IP_ICMP: "icmp", IP_ICMPV6: "icmpv6",
                IP_SCTP: "sctp"}
# Columns of the connection table (uint64 words; tcp is int64, exp float64).
C_TUP, C_TCP, C_EXP, C_MARK, C_LABEL = 0, 12, 22, 23, 24
C_ZONE, C_PROTO, C_V6, C_NAT, C_L4ST = 26, 27, 28, 29, 30
_W = 32
_CT_FIRST, _CT_LAST = _S["ct_state"], _S["ct_tp_dst"]
assert _CT_LAST - _CT_FIRST == 13
# Passes of vectorized established-TCP updates per batch (each settles every
# connection's segments up to its first invalid one); rows left after them
# take the per-packet path.
MAX_TCP_ROUNDS = 4


@dataclass(frozen=True)
class Timeouts:
    """Seconds per OVS timeout class (ct_dpif_tp_attr names).

    Defaults are Linux's nf_conntrack defaults mapped onto OVS's classes:
    tcp syn_sent 120, syn_recv 60, established 432000 (5 days), fin_wait 120,
    time_wait 120, close 10; udp 30 (first and single direction), udp stream
    120 (bidirectional); icmp 30.  Other IP protocols use the udp classes, as
    in OVS userspace (Linux would use 600).  `ovs()` gives OVS's own netdev
    defaults (conntrack-tp.c).
    """

    tcp_syn_sent: float = 120
    tcp_syn_recv: float = 60
    tcp_established: float = 432000
    tcp_fin_wait: float = 120
    tcp_time_wait: float = 120
    tcp_close: float = 10
    udp_first: float = 30
    udp_single: float = 30
    udp_multiple: float = 120
    icmp_first: float = 30
    icmp_reply: float = 30

    @classmethod
    def ovs(cls) -> Timeouts:
        return cls(30, 30, 86400, 900, 45, 30, 60, 60, 30, 60, 30)

    def by_class(self) -> np.ndarray:
        return np.array([getattr(self, f.name) for f in fields(self)], dtype=np.float64)


def _hash_words(meta, shi, slo, dhi, dlo, ports):
    """64-bit mix of a tuple's words; numpy arrays (wrapping uint64) or Python ints."""
    if isinstance(meta, np.ndarray):
        p = np.uint64(_P)
        h = meta * p
        for w in (shi, slo, dhi, dlo, ports):
            h = (h ^ w) * p
            h ^= h >> np.uint64(29)
        return h
    h = (meta * _P) & _M64
    for w in (shi, slo, dhi, dlo, ports):
        h = ((h ^ w) * _P) & _M64
        h ^= h >> 29
    return h


def tuple_hashes(meta: np.ndarray, shi, slo, dhi, dlo, sport, dport) -> np.ndarray:
    """The stored tuple hash of many tuples (uint64 arrays or scalars), as the index keys them.

    meta is zone | proto << 16 | v6 << 24 (meta_words); src/dst are split in
    64-bit halves (zero high halves for IPv4).  The one definition of the tuple
    hash: tuple_hash() is the same for one Python tuple.
    """
    return stored(_hash_words(meta, shi, slo, dhi, dlo, (sport << np.uint64(32)) | dport))


def meta_words(zone: np.ndarray, proto: np.ndarray, v6: np.ndarray) -> np.ndarray:
    """The first hashed word of each tuple: zone | proto << 16 | v6 << 24 (uint64)."""
    u = np.uint64
    return np.asarray(zone).astype(u) | (np.asarray(proto).astype(u) << u(16)) \
        | (np.asarray(v6).astype(u) << u(24))


def tuple_hash(t: tuple) -> int:
    """Hash of (zone, proto, v6, src, dst, sport, dport) as the batch lookup computes it."""
    zone, proto, v6, src, dst, sport, dport = t
    return stored(_hash_words(zone | proto << 16 | v6 << 24, src >> 64, src & _M64, dst >> 64,
                              dst & _M64, sport << 32 | dport))


def _reverse(t: tuple) -> tuple:
    zone, proto, v6, src, dst, sport, dport = t
    return (zone, proto, v6, dst, src, dport, sport)


class ConnTable:
    """Connections of every zone: one 256-byte row per slot (all a batch needs
    about a connection, gathered with one row copy), column views into it, and
    the index from tuple hash to slot * 2 + direction.

    Tuples whose hash another tuple already holds live in `overflow` (exact
    tuple -> slot * 2 + direction).  Row `cap` stays all zero: what a packet
    without a connection gathers.  `stats` is the engine's counters dict
    (committed, deleted, expired are counted here).
    """

    def __init__(self, capacity: int, stats: dict[str, int], compiled: bool = True):
        self.stats = stats
        self.index = HashIndex(capacity, compiled)
        self.overflow: dict[tuple, int] = {}
        self.free: list[int] = []
        self.zone_count: dict[int, int] = {}
        self.n = 0
        self.cap = 0
        self._scratch = np.zeros(0, dtype=np.int64)
        self._mark = np.zeros(0, dtype=np.int8)
        self.alloc(capacity)

    def alloc(self, cap: int) -> None:
        """(Re)allocate for `cap` slots, keeping what is there."""
        old = self.cap
        mem = np.zeros((cap + 1, _W), dtype=np.uint64)
        live = np.zeros(cap + 1, dtype=bool)
        hkey = np.zeros((cap + 1, 2), dtype=np.uint64)
        if old:
            mem[:old] = self.mem[:old]
            live[:old] = self.live[:old]
            hkey[:old] = self.hkey[:old]
        self.mem, self.live, self.hkey = mem, live, hkey
        i64, f64 = mem.view(np.int64), mem.view(np.float64)
        self.tup = mem[:, C_TUP:C_TUP + 12].reshape(cap + 1, 2, 6)
        self.tcp = i64[:, C_TCP:C_TCP + 10].reshape(cap + 1, 2, 5)
        self.exp = f64[:, C_EXP]
        self.mark = mem[:, C_MARK]
        self.label = mem[:, C_LABEL:C_LABEL + 2]
        self.zone, self.proto, self.v6 = mem[:, C_ZONE], mem[:, C_PROTO], mem[:, C_V6]
        self.nat, self.l4st = mem[:, C_NAT], mem[:, C_L4ST]
        assert np.shares_memory(self.tup, mem) and np.shares_memory(self.tcp, mem)
        self.free.extend(range(cap - 1, old - 1, -1))
        self.cap = cap

    def tuple(self, i: int, d: int) -> tuple:
        """Slot i's tuple in direction d: (zone, proto, v6, src, dst, sport, dport)."""
        r = self.tup[i, d].tolist()
        return (int(self.zone[i]), int(self.proto[i]), int(self.v6[i]),
                r[0] << 64 | r[1], r[2] << 64 | r[3], r[4], r[5])

    def lookup(self, t: tuple, now: float) -> tuple[int, int]:
        """(slot, direction) of the live connection owning tuple t, or (-1, 0)."""
        v = self.index.get(tuple_hash(t))
        if v >= 0 and self.tuple(v >> 1, v & 1) != t:
            v = -1
        if v < 0 and self.overflow:
            v = self.overflow.get(t, -1)
        if v < 0:
            return -1, 0
        i = v >> 1
        if self.exp[i] <= now:
            self.delete(i)
            self.stats["expired"] += 1
            return -1, 0
        return i, v & 1

    def taken(self, t: tuple) -> bool:
        """A connection owns tuple t (either direction, expired or not)."""
        v = self.index.get(tuple_hash(t))
        if v >= 0 and self.tuple(v >> 1, v & 1) == t:
            return True
        return t in self.overflow

    def _insert_key(self, t: tuple, val: int) -> int:
        h = tuple_hash(t)
        if h in self.index:
            self.overflow[t] = val
        else:
            self.index.insert(h, val)
        return h

    def create(self, fwd: tuple, rev: tuple, nat_action: int) -> int:
        """A new connection's slot, keyed by its two tuples (TCP peers and expiry left to the caller)."""
        if not self.free:
            self.alloc(self.cap * 2)
        i = self.free.pop()
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
        self.zone_count[zone] = self.zone_count.get(zone, 0) + 1
        self.n += 1
        self.stats["committed"] += 1
        return i

    def create_many(self, blk: np.ndarray, h: np.ndarray, rh: np.ndarray,
                    zu: np.ndarray, zc: np.ndarray) -> np.ndarray:
        """Store the rows blk of new connections whose original (h) and reply (rh) hashes
        nothing holds; zu/zc: their zones and how many per zone.  Their slots."""
        k = blk.shape[0]
        while len(self.free) < k:
            self.alloc(self.cap * 2)
        slots = np.array(self.free[-k:][::-1], dtype=np.int64)
        del self.free[-k:]
        self.mem[slots] = blk
        self.live[slots] = True
        self.hkey[slots, 0] = h
        self.hkey[slots, 1] = rh
        self.index.insert_many(np.concatenate([h, rh]), np.concatenate([slots * 2, slots * 2 + 1]))
        for z, n in zip(zu.tolist(), zc.tolist()):
            self.zone_count[z] = self.zone_count.get(z, 0) + n
        self.n += k
        self.stats["committed"] += k
        return slots

    def delete(self, i: int) -> None:
        for d in (0, 1):
            h = int(self.hkey[i, d])
            val = i * 2 + d
            if self.index.get(h) == val:
                self.index.delete(h)
            elif self.overflow:
                t = self.tuple(i, d)
                if self.overflow.get(t) == val:
                    del self.overflow[t]
        self.live[i] = False
        self.exp[i] = 0.0
        z = int(self.zone[i])
        self.zone_count[z] -= 1
        self.n -= 1
        self.free.append(i)
        self.stats["deleted"] += 1

    def delete_many(self, slots: np.ndarray) -> None:
        """delete() for many slots: index entries removed with vectorized probes."""
        if not slots.size:
            return
        vals = np.stack([slots * 2, slots * 2 + 1], axis=1).ravel()
        done = self.index.delete_many(self.hkey[slots].ravel(), vals)
        if not done.all():
            # The rest live in the overflow table (their hash was taken).
            for v in vals[~done].tolist():
                t = self.tuple(v >> 1, v & 1)
                if self.overflow.get(t) == v:
                    del self.overflow[t]
        zu, zc = np.unique(self.zone[slots], return_counts=True)
        for z, n in zip(zu.tolist(), zc.tolist()):
            self.zone_count[z] -= n
        self.live[slots] = False
        self.exp[slots] = 0.0
        self.n -= slots.size
        self.free.extend(slots.tolist())
        self.stats["deleted"] += slots.size

    def unique(self, c: np.ndarray) -> np.ndarray:
        """Which entries of c (slots) occur once in c (a scatter/gather over a scratch array)."""
        seen = self.scratch(np.int64)
        idx = np.arange(c.size)
        seen[c] = idx
        last = seen[c] == idx               # the last write wins
        seen[c[::-1]] = idx[::-1]
        return last & (seen[c] == idx)      # ... and the first

    def first_rows(self, c: np.ndarray) -> np.ndarray:
        """Which entries of c (slots) are the first of their value."""
        seen = self.scratch(np.int64)
        idx = np.arange(c.size)
        seen[c[::-1]] = idx[::-1]             # the last write wins: each value's first index
        return seen[c] == idx

    def scratch(self, dtype=np.int8) -> np.ndarray:
        """A scratch array indexable by slot (contents undefined)."""
        if dtype is np.int64:
            if self._scratch.size < self.cap + 1:
                self._scratch = np.zeros(self.cap + 1, dtype=np.int64)
            return self._scratch
        if self._mark.size < self.cap + 1:
            self._mark = np.zeros(self.cap + 1, dtype=np.int8)
        return self._mark

    def nbytes(self) -> int:
        """Bytes of the arrays, the index and the overflow dict (sys.getsizeof)."""
        return (self.mem.nbytes + self.live.nbytes + self.hkey.nbytes + self.index.nbytes()
                + sys.getsizeof(self.overflow))
