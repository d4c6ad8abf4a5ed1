"""Conntrack's packet keys (conntrack_pkt.extract) compiled for small batches: tuples, TCP fields, ICMP query words, checksums and tuple hashes in one native pass."""

from __future__ import annotations

import numba
import numpy as np

from sbnet.datapath.conntrack_kernel import _be, _fold, _sum16
from sbnet.datapath.conntrack_pkt import _ICMP6_ERR, _ICMP_ERR, _REV4, _REV6, PacketInfo
from sbnet.datapath.conntrack_table import _P, _S
from sbnet.datapath.jit import kernel
from sbnet.flows.fields import ETH_IP, ETH_IPV6, IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP

COMPILED_MAX = 1 << 16      # keyed here at any batch size the datapath makes
_ETH_TYPE, _NW_PROTO, _NW_FRAG = _S["eth_type"], _S["nw_proto"], _S["nw_frag"]
_NW_SRC, _NW_DST, _TP_SRC, _TP_DST = _S["nw_src"], _S["nw_dst"], _S["tp_src"], _S["tp_dst"]
_V6 = np.array([_S[n] for n in ("ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo")],
               np.int64)
_ERR4 = np.zeros(256, np.bool_)
_ERR4[list(_ICMP_ERR)] = True
_ERR6 = np.zeros(256, np.bool_)
_ERR6[list(_ICMP6_ERR)] = True
# Per-row flags the kernel hands back: keyed here, and what Python still adds.
X_SYN, X_RELATED = 1, 2


@numba.njit(cache=True, inline="always")
def _words(x):
    m = np.uint64(0xFFFF)
    return (x & m) + ((x >> np.uint64(16)) & m) + ((x >> np.uint64(32)) & m) + (x >> np.uint64(48))


@numba.njit(cache=True)
def _clean(data, g, l3, l4, keys, error):
    """Whether row g is one the kernel keys exactly as numpy does: a whole IPv4 or IPv6
    header and, for a transport it reads, a whole header inside the IP length."""
    width = data.shape[1]
    if error[g] != 0 or l3 < 0:
        return True         # numpy's verdict (not ok) needs no bytes
    eth = keys[_ETH_TYPE, g]
    if eth == ETH_IP:
        if l3 + 20 > width or l4 >= 0 and l4 - l3 != (data[g, l3] & 15) * 4:
            return False
        end = l3 + np.int64(_be(data, g, l3 + 2, 2))
    elif eth == ETH_IPV6:
        if l3 + 40 > width:
            return False
        end = l3 + 40 + np.int64(_be(data, g, l3 + 4, 2))
    else:
        return True
    if end > width or (l4 >= 0 and l4 > end):
        return False
    proto = keys[_NW_PROTO, g]
    if l4 < 0 and proto in (IP_ICMP, IP_ICMPV6):
        return False
    need = 20 if proto == IP_TCP else 8
    if l4 >= 0 and proto in (IP_TCP, IP_UDP, IP_ICMP, IP_ICMPV6, IP_SCTP) \
            and l4 + need > min(end, width):
        return False
    return True


# One signature, compiled (or loaded from the on-disk cache) at import, never in the
# middle of a packet burst; extract_compiled passes exactly these types.
@kernel("boolean(uint8[:, :], int64[:], int32[:], int32[:], uint64[:, :], uint8[:], uint64[:],"
        " boolean, boolean[:], boolean[:], int64[:], uint64[:, :], uint64[:], int64[:],"
        " int64[:], int64[:], int64[:], int64[:], int8[:])")
def ct_extract_kernel(data, rows, l3s, l4s, keys, error, zones, checksums, ok, v6o, proto_o,
                      words, hashes, flags, seq, ack, win, plen, extra):
    """conntrack_pkt.extract of the rows `rows` into the PacketInfo arrays, ICMP errors'
    quoted packets and SYN options left to Python (extra).  Returns False, having
    written nothing that matters, when a row is not one it keys exactly (see _clean)."""
    m = rows.shape[0]
    for i in range(m):
        g = rows[i]
        if not _clean(data, g, np.int64(l3s[g]), np.int64(l4s[g]), keys, error):
            return False
    for i in range(m):
        g = rows[i]
        l3 = np.int64(l3s[g])
        l4 = np.int64(l4s[g])
        eth = keys[_ETH_TYPE, g]
        v6 = eth == ETH_IPV6
        okv = (eth == ETH_IP or v6) and error[g] == 0 and l3 >= 0 \
            and (keys[_NW_FRAG, g] & np.uint64(1)) == 0
        proto = np.int64(keys[_NW_PROTO, g])
        v6o[i] = v6
        proto_o[i] = proto
        extra[i] = 0
        if v6:
            for j in range(4):
                words[i, j] = keys[_V6[j], g]
        else:
            words[i, 0] = 0
            words[i, 1] = keys[_NW_SRC, g]
            words[i, 2] = 0
            words[i, 3] = keys[_NW_DST, g]
        ports = proto == IP_TCP or proto == IP_UDP or proto == IP_SCTP
        words[i, 4] = keys[_TP_SRC, g] if ports else 0
        words[i, 5] = keys[_TP_DST, g] if ports else 0
        if not okv or (ports and l4 < 0):
            ok[i] = False
            continue
        end = l3 + 40 + np.int64(_be(data, g, l3 + 4, 2)) if v6 \
            else l3 + np.int64(_be(data, g, l3 + 2, 2))
        if proto == IP_TCP:
            seq[i] = np.int64(_be(data, g, l4 + 4, 4))
            ack[i] = np.int64(_be(data, g, l4 + 8, 4))
            doff = np.int64(data[g, l4 + 12] >> 4) * 4
            flags[i] = (np.int64(data[g, l4 + 12] & 1) << 8) | np.int64(data[g, l4 + 13])
            win[i] = np.int64(_be(data, g, l4 + 14, 2))
            plen[i] = end - l4 - doff
            if data[g, l4 + 13] & 2:
                extra[i] |= X_SYN
        icmp = (proto == IP_ICMP and not v6) or (proto == IP_ICMPV6 and v6)
        if icmp and l4 >= 0:
            typ = np.int64(keys[_TP_SRC, g])
            code = keys[_TP_DST, g]
            ident = np.int64(_be(data, g, l4 + 4, 2))
            rev = _REV6[typ] if v6 else _REV4[typ]
            if rev >= 0 and code == 0:
                words[i, 4] = np.uint64((ident << 8) | typ)
                words[i, 5] = np.uint64((ident << 8) | rev)
            elif _ERR6[typ] if v6 else _ERR4[typ]:
                extra[i] |= X_RELATED
            else:
                ok[i] = False
                continue
        good = True
        if checksums:
            if not v6:
                good = _fold(_sum16(data, g, l3, l4 - l3 if l4 >= 0
                                  else np.int64(data[g, l3] & 15) * 4)) == 0xFFFF
            if l4 >= 0 and (proto == IP_TCP or proto == IP_UDP or proto == IP_ICMP
                            or proto == IP_ICMPV6):
                ln = end - l4
                s = _sum16(data, g, l4, ln)
                if proto != IP_ICMP:
                    s += _words(keys[_NW_SRC, g]) + _words(keys[_NW_DST, g])
                    for j in range(4):
                        s += _words(keys[_V6[j], g])
                    s += np.uint64(proto) + (np.uint64(ln) >> np.uint64(16)) \
                        + (np.uint64(ln) & np.uint64(0xFFFF))
                res = _fold(s) == 0xFFFF
                if proto == IP_UDP and not v6 and _be(data, g, l4 + 6, 2) == 0:
                    res = True
                good = good and res
        ok[i] = good
        if not good:
            extra[i] &= X_SYN
            continue
        if not (extra[i] & X_RELATED):
            meta = zones[i] | (np.uint64(proto) << np.uint64(16)) \
                | (np.uint64(1 if v6 else 0) << np.uint64(24))
            p = np.uint64(_P)
            h = meta * p
            for w in (words[i, 0], words[i, 1], words[i, 2], words[i, 3],
                      (words[i, 4] << np.uint64(32)) | words[i, 5]):
                h = (h ^ w) * p
                h ^= h >> np.uint64(29)
            hashes[i] = h | np.uint64(1 << 63)
    return True


def extract_compiled(batch, parsed, rows: np.ndarray, zones: np.ndarray,
                     checksums: bool) -> PacketInfo | None:
    """conntrack_pkt.extract through ct_extract_kernel; None when a row needs numpy's."""
    m = rows.size
    p = PacketInfo(m)
    p.zone[:] = zones
    extra = np.empty(m, np.int8)
    data = batch.data
    i32 = np.int32
    if not ct_extract_kernel(data, rows.astype(np.int64, copy=False),
                             parsed.l3.astype(i32, copy=False), parsed.l4.astype(i32, copy=False),
                             parsed.keys, parsed.error.astype(np.uint8, copy=False), p.zone,
                             bool(checksums), p.ok, p.v6, p.proto,
                             p.words, p.hash, p.flags, p.seq, p.ack, p.win, p.plen, extra):
        return None
    if extra.any():
        from sbnet.datapath.conntrack_pkt import _hash, _inner
        syn = np.flatnonzero(extra & X_SYN)
        if syn.size:
            r = rows[syn]
            s = parsed.l4[r].astype(np.int64) + 20
            doff = (data[r, s - 8].astype(np.int64) >> 4) * 4
            opt = doff > 20           # rows without options are not kept (wscale 0)
            for i, r, s, doff in zip(syn[opt].tolist(), r[opt].tolist(), s[opt].tolist(),
                                     doff[opt].tolist()):
                p._opts[i] = data[r, s:s + doff - 20].tobytes()
        rel = np.flatnonzero(extra & X_RELATED)
        if rel.size:
            p.related[rel] = True
            l3, l4 = parsed.l3, parsed.l4
            for i in rel.tolist():
                r = int(rows[i])
                v6 = bool(p.v6[i])
                end = int(l3[r]) + (40 + int.from_bytes(data[r, l3[r] + 4:l3[r] + 6], "big")
                                    if v6 else int.from_bytes(data[r, l3[r] + 2:l3[r] + 4], "big"))
                if not _inner(p, data, r, i, int(l4[r]), end):
                    p.ok[i] = False
                    p.related[i] = False
            # the quoted tuple's hash is not a lookup key (related packets are not looked up)
    return p
