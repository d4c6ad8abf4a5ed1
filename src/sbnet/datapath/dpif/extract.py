"""Compiled miniflow extract: the flow keys of common packets in one native pass, the rest by the numpy parser."""

from __future__ import annotations

import numba
import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.jit import kernel
from sbnet.datapath.parse import Parsed, parse
from sbnet.flows.fields import (ETH_ARP, ETH_IP, ETH_IPV6, ETH_QINQ, ETH_RARP, ETH_VLAN, IP_ICMP,
                                IP_ICMPV6, IP_IGMP, IP_SCTP, IP_TCP, IP_UDP, N_SLOTS, SLOT_INDEX, VLAN_CFI)

_S = SLOT_INDEX
IN_PORT, ETH_SRC, ETH_DST, ETH_TYPE = _S["in_port"], _S["eth_src"], _S["eth_dst"], _S["eth_type"]
VLAN_TCI, VLAN_TPID, VLAN_TCI2, VLAN_TPID2 = (_S["vlan_tci"], _S["vlan_tpid"], _S["vlan_tci2"],
                                              _S["vlan_tpid2"])
NW_SRC, NW_DST, NW_PROTO, NW_TOS, NW_TTL = (_S["nw_src"], _S["nw_dst"], _S["nw_proto"],
                                            _S["nw_tos"], _S["nw_ttl"])
V6_SRC_HI, V6_SRC_LO, V6_DST_HI, V6_DST_LO, V6_LABEL = (
    _S["ipv6_src_hi"], _S["ipv6_src_lo"], _S["ipv6_dst_hi"], _S["ipv6_dst_lo"], _S["ipv6_label"])
TP_SRC, TP_DST, TCP_FLAGS = _S["tp_src"], _S["tp_dst"], _S["tcp_flags"]
ARP_SHA, ARP_THA = _S["arp_sha"], _S["arp_tha"]
_ND_SOLICIT, _ND_ADVERT = 135, 136
# The slots extract_kernel writes (all others it leaves as they are).
EXTRACT_SLOTS = (IN_PORT, ETH_SRC, ETH_DST, ETH_TYPE, VLAN_TCI, VLAN_TPID, VLAN_TCI2, VLAN_TPID2,
                 NW_SRC, NW_DST, NW_PROTO, NW_TOS, NW_TTL, V6_SRC_HI, V6_SRC_LO, V6_DST_HI,
                 V6_DST_LO, V6_LABEL, TP_SRC, TP_DST, TCP_FLAGS, ARP_SHA, ARP_THA)


@numba.njit(cache=True, inline="always")
def _be(d, i, pos, k):
    """Big-endian integer of k bytes at column pos (never negative) of row i.  Unsigned
    indices: numba's fix-up of an index that might be negative cost several instructions
    a byte, and kept LLVM from reading a field's bytes as one load."""
    v = np.uint64(0)
    ui, up = np.uint64(i), np.uint64(pos)
    for j in range(np.uint64(k)):
        v = (v << np.uint64(8)) | np.uint64(d[ui, up + j])
    return v


@numba.njit(cache=True, inline="always")
def _b(d, i, pos):
    """The byte at column pos (never negative) of row i, by unsigned indices (see _be)."""
    return d[np.uint64(i), np.uint64(pos)]


# One signature, compiled (or loaded from the on-disk cache) when this module is imported,
# never in the middle of a packet burst; callers pass exactly these types.  The frames and
# keys C-contiguous: a field's bytes are then one load (and a byte swap) where with any
# layout each byte's address took the run-time strides (11.2 against 4.6 ns a row for
# seven fields).
@kernel("int64(uint8[:, ::1], int32[:], int32[:], uint32[:], uint64[:, ::1], int32[:],"
        " int32[:], boolean[:])")
def extract_kernel(d, start, length, in_port, keys, l3, l4, slow):
    """Keys and header offsets of every packet this pass understands completely and
    finds well-formed: Ethernet with up to two VLAN tags, then IPv4 (no fragments),
    IPv6 (no extension headers) or Ethernet/IPv4 ARP, then TCP, UDP, SCTP, ICMP,
    IGMP or ICMPv6 other than neighbour discovery.  Every other packet (MPLS, NSH,
    802.3 frames, fragments, extension headers, ND, anything malformed) is marked
    slow and left to the numpy parser, which is the reference for all of them.
    keys must be zero; l3 and l4 -1."""
    n = start.shape[0]
    n_slow = 0
    for i in range(n):
        keys[IN_PORT, i] = in_port[i]
        p = np.int64(start[i])
        end = p + np.int64(length[i])
        if end - p < 14:
            slow[i] = True
            n_slow += 1
            continue
        keys[ETH_DST, i] = _be(d, i, p, 6)
        keys[ETH_SRC, i] = _be(d, i, p + 6, 6)
        etype = np.int64(_be(d, i, p + 12, 2))
        q = p + 14
        if etype == ETH_VLAN or etype == ETH_QINQ:
            if end - p < 18:
                slow[i] = True
                n_slow += 1
                continue
            keys[VLAN_TCI, i] = _be(d, i, p + 14, 2) | VLAN_CFI
            keys[VLAN_TPID, i] = etype
            t1 = np.int64(_be(d, i, p + 16, 2))
            if t1 == ETH_VLAN or t1 == ETH_QINQ:
                if end - p < 22:
                    slow[i] = True
                    n_slow += 1
                    continue
                keys[VLAN_TCI2, i] = _be(d, i, p + 18, 2) | VLAN_CFI
                keys[VLAN_TPID2, i] = t1
                etype = np.int64(_be(d, i, p + 20, 2))
                q = p + 22
            else:
                etype = t1
                q = p + 18
        if etype < 0x600:
            slow[i] = True
            n_slow += 1
            continue
        keys[ETH_TYPE, i] = etype
        size = end - q
        l4pos = np.int64(-1)
        l4end = np.int64(0)
        proto = np.int64(0)
        v6 = False
        if etype == ETH_IP:
            if size < 20:
                slow[i] = True
                n_slow += 1
                continue
            ihl = np.int64(_b(d, i, q) & 15) * 4
            tot = np.int64(_be(d, i, q + 2, 2))
            frag = _be(d, i, q + 6, 2) & np.uint64(0x3FFF)
            if ihl < 20 or ihl > tot or tot > size or frag != 0:
                slow[i] = True
                n_slow += 1
                continue
            l3[i] = q
            keys[NW_SRC, i] = _be(d, i, q + 12, 4)
            keys[NW_DST, i] = _be(d, i, q + 16, 4)
            proto = np.int64(_b(d, i, q + 9))
            keys[NW_PROTO, i] = proto
            keys[NW_TOS, i] = _b(d, i, q + 1)
            keys[NW_TTL, i] = _b(d, i, q + 8)
            l4pos = q + ihl
            l4end = q + tot
        elif etype == ETH_IPV6:
            if size < 40:
                slow[i] = True
                n_slow += 1
                continue
            plen = np.int64(_be(d, i, q + 4, 2))
            proto = np.int64(_b(d, i, q + 6))
            # Extension headers (hop-by-hop, routing, fragment, AH, destination options).
            if plen + 40 > size or proto == 0 or proto == 43 or proto == 60 or proto == 51 \
                    or proto == 44:
                slow[i] = True
                n_slow += 1
                continue
            l3[i] = q
            vtf = _be(d, i, q, 4)
            keys[V6_SRC_HI, i] = _be(d, i, q + 8, 8)
            keys[V6_SRC_LO, i] = _be(d, i, q + 16, 8)
            keys[V6_DST_HI, i] = _be(d, i, q + 24, 8)
            keys[V6_DST_LO, i] = _be(d, i, q + 32, 8)
            keys[V6_LABEL, i] = vtf & np.uint64(0xFFFFF)
            keys[NW_TOS, i] = (vtf >> np.uint64(20)) & np.uint64(0xFF)
            keys[NW_TTL, i] = _b(d, i, q + 7)
            keys[NW_PROTO, i] = proto
            l4pos = q + 40
            l4end = l4pos + plen
            v6 = True
        elif etype == ETH_ARP or etype == ETH_RARP:
            if size < 28:
                slow[i] = True
                n_slow += 1
                continue
            l3[i] = q
            if _be(d, i, q, 2) == 1 and _be(d, i, q + 2, 2) == ETH_IP and _b(d, i, q + 4) == 6 \
                    and _b(d, i, q + 5) == 4:
                op = _be(d, i, q + 6, 2)
                keys[NW_SRC, i] = _be(d, i, q + 14, 4)
                keys[NW_DST, i] = _be(d, i, q + 24, 4)
                keys[NW_PROTO, i] = op if op <= 0xFF else 0
                keys[ARP_SHA, i] = _be(d, i, q + 8, 6)
                keys[ARP_THA, i] = _be(d, i, q + 18, 6)
            continue
        elif etype == 0x8847 or etype == 0x8848 or etype == 0x894F:
            slow[i] = True          # MPLS and NSH: the numpy parser
            n_slow += 1
            continue
        else:
            continue                # no network header the key knows
        l4[i] = l4pos
        rem = l4end - l4pos
        if proto == IP_TCP:
            off = np.int64(_b(d, i, l4pos + 12) >> 4) * 4 if rem >= 20 else np.int64(0)
            if off < 20 or off > rem:
                slow[i] = True
                n_slow += 1
                continue
            keys[TP_SRC, i] = _be(d, i, l4pos, 2)
            keys[TP_DST, i] = _be(d, i, l4pos + 2, 2)
            keys[TCP_FLAGS, i] = _be(d, i, l4pos + 12, 2) & np.uint64(0x0FFF)
        elif proto == IP_UDP or proto == IP_SCTP:
            if rem < (8 if proto == IP_UDP else 12):
                slow[i] = True
                n_slow += 1
                continue
            keys[TP_SRC, i] = _be(d, i, l4pos, 2)
            keys[TP_DST, i] = _be(d, i, l4pos + 2, 2)
        elif (not v6 and (proto == IP_ICMP or proto == IP_IGMP)) or (v6 and proto == IP_ICMPV6):
            if rem < 8:
                slow[i] = True
                n_slow += 1
                continue
            typ = _b(d, i, l4pos)
            code = _b(d, i, l4pos + 1)
            if v6 and code == 0 and (typ == _ND_SOLICIT or typ == _ND_ADVERT):
                slow[i] = True      # neighbour discovery: target and options, the numpy parser
                n_slow += 1
                continue
            keys[TP_SRC, i] = typ
            keys[TP_DST, i] = code
    return n_slow


def extract(batch: Batch) -> Parsed:
    """Parse a batch: the compiled pass for common packets, the numpy parser for the rest
    (rows parsed again there on a copy holding only them, then scattered back)."""
    n = len(batch)
    keys = np.zeros((N_SLOTS, n), dtype=np.uint64)
    off = np.full((3, n), -1, dtype=np.int32)
    slow = np.zeros(n, dtype=np.bool_)
    error = np.zeros(n, dtype=np.uint8)
    n_slow = extract_kernel(np.ascontiguousarray(batch.data),
                            batch.start.astype(np.int32, copy=False),
                            batch.length.astype(np.int32, copy=False),
                            batch.in_port.astype(np.uint32, copy=False), keys,
                            off[1], off[2], slow) if n else 0
    if n_slow:
        rows = np.flatnonzero(slow)
        ref = parse(batch if n_slow == n else batch.take(rows))
        keys[:, rows] = ref.keys
        off[0, rows], off[1, rows], off[2, rows] = ref.l2_5, ref.l3, ref.l4
        error[rows] = ref.error
    return Parsed(keys, off[0], off[1], off[2], error)
