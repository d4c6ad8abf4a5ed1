"""Conntrack's shared definitions: ct_state bits, timeout classes, the connection-table layout, tuple hashing."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from sbnet.datapath.conntrack_index import stored
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


def tuple_hash(t: tuple) -> int:
    """Hash of (zone, proto, v6, src, dst, sport, dport) as the batch lookup computes it."""
    zone, proto, v6, src, dst, sport, dport = t
    return stored(_hash_words(zone | proto << 16 | v6 << 24, src >> 64, src & _M64, dst >> 64,
                              dst & _M64, sport << 32 | dport))


def _reverse(t: tuple) -> tuple:
    zone, proto, v6, src, dst, sport, dport = t
    return (zone, proto, v6, dst, src, dport, sport)
