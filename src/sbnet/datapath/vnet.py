"""virtio-net headers on packet sockets: a VM's GSO packets cut into the frames its NIC would have sent, and its partial checksums completed, in one native pass."""

from __future__ import annotations

import numba
import numpy as np

from sbnet.datapath.batch import HEADROOM, TAILROOM
from sbnet.datapath.conntrack_kernel import _fold, _put16, _sum16
from sbnet.datapath.mmsg import VNET_LEN, move

# struct virtio_net_hdr (PACKET_VNET_HDR), VNET_LEN bytes: flags, gso_type, hdr_len,
# gso_size, csum_start, csum_offset; host byte order (little-endian here).
F_NEEDS_CSUM = 1
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_KIND = 0x7F                 # gso_type without its ECN bit (0x80)
_TCP, _UDP = 6, 17
_FIN, _PSH, _CWR = 0x01, 0x08, 0x80


@numba.njit(cache=True, inline="always")
def _le16(d, r, c):
    return np.int64(d[r, c]) | (np.int64(d[r, c + 1]) << 8)


@numba.njit(cache=True, inline="always")
def _be16(d, r, c):
    return (np.int64(d[r, c]) << 8) | np.int64(d[r, c + 1])


@numba.njit(cache=True)
def _geometry(d, r, f, ln):
    """(l3, l4, L4 header length, IPv4?, L4 protocol) of a GSO frame at column f of row r,
    or l3 = -1 for one this cannot cut (not TCP/UDP over IPv4/IPv6 behind at most one
    VLAN tag, a fragment, headers past the frame)."""
    kind = d[r, f - VNET_LEN + 1] & GSO_KIND
    l3 = 14
    et = _be16(d, r, f + 12)
    if et == 0x8100 or et == 0x88A8:
        l3 = 18
        et = _be16(d, r, f + 16)
    l4 = _le16(d, r, f - VNET_LEN + 6)          # csum_start: where the L4 header begins
    v4 = et == 0x0800
    if not d[r, f - VNET_LEN] & F_NEEDS_CSUM:
        # Checksums complete (a GSO frame another switch coalesced): no csum_start, the
        # L4 header follows the IP header.
        l4 = l3 + (np.int64(d[r, f + l3] & 0x0F) * 4 if v4 else 40)
    if v4:
        if kind != GSO_TCPV4 and kind != GSO_UDP_L4 or l3 + 20 > ln \
                or _be16(d, r, f + l3 + 6) & 0x3FFF:
            return -1, 0, 0, v4, 0
    elif et == 0x86DD:
        if kind != GSO_TCPV6 and kind != GSO_UDP_L4 or l3 + 40 > ln:
            return -1, 0, 0, v4, 0
    else:
        return -1, 0, 0, v4, 0
    proto = _UDP if kind == GSO_UDP_L4 else _TCP
    if l4 < l3 + 20 or l4 + 8 > ln:
        return -1, 0, 0, v4, 0
    hl = 8
    if proto == _TCP:
        if l4 + 20 > ln:
            return -1, 0, 0, v4, 0
        hl = np.int64(d[r, f + l4 + 12] >> 4) * 4
        if hl < 20 or l4 + hl > ln:
            return -1, 0, 0, v4, 0
    return l3, l4, hl, v4, proto


@numba.njit(cache=True)
def vnet_plan(buf, lens, counts):
    """Per received row (virtio-net header just before column HEADROOM, frame at it): how
    many frames it becomes (0: a GSO kind this cannot cut, dropped).  Returns (frames in
    all, the longest)."""
    total = 0
    longest = 0
    f = HEADROOM
    for r in range(lens.shape[0]):
        ln = np.int64(lens[r])
        counts[r] = 0
        if ln < 0:
            continue
        kind = buf[r, f - VNET_LEN + 1] & GSO_KIND
        size = _le16(buf, r, f - VNET_LEN + 4)
        if kind == GSO_NONE:
            counts[r] = 1
            longest = max(longest, ln)
        else:
            l3, l4, hl, v4, proto = _geometry(buf, r, f, ln)
            pay = ln - l4 - hl
            if l3 < 0 or size <= 0:
                continue
            k = max(1, (pay + size - 1) // size)
            counts[r] = k
            longest = max(longest, l4 + hl + min(size, pay))
        total += counts[r]
    return total, longest


@numba.njit(cache=True)
def _l4_checksum(out, o, f, l3, l4, v4, proto, l4len):
    """The full TCP/UDP checksum of out[o] (frame at column f), pseudo-header included."""
    if v4:
        s = _sum16(out, o, f + l3 + 12, 8)
    else:
        s = _sum16(out, o, f + l3 + 8, 32)
    s += np.uint64(proto) + np.uint64(l4len)
    c = l4 + (16 if proto == _TCP else 6)
    _put16(out, o, f + c, 0)
    s += _sum16(out, o, f + l4, l4len)
    v = np.int64(_fold(s) ^ np.uint64(0xFFFF))
    if v == 0 and proto == _UDP:
        v = 0xFFFF
    _put16(out, o, f + c, v)


@numba.njit(cache=True)
def vnet_fill(buf, lens, counts, out, out_len, src):
    """Each received row into out (frame at column HEADROOM), as vnet_plan counted it: a
    GSO packet as its segments (headers copied; IPv4 length, id and header checksum or
    IPv6 payload length per segment; TCP sequence advanced, FIN and PSH on the last, CWR
    on the first only; UDP lengths; every L4 checksum in full), another with a partial
    checksum (F_NEEDS_CSUM) completed from csum_start over the rest of the frame.  src:
    the received row of each output row."""
    f = HEADROOM
    o = 0
    for r in range(lens.shape[0]):
        k = counts[r]
        if k == 0:
            continue
        ln = np.int64(lens[r])
        kind = buf[r, f - VNET_LEN + 1] & GSO_KIND
        flags = buf[r, f - VNET_LEN]
        if kind == GSO_NONE:
            move(out[o], f, buf[r], f, ln)
            cs = _le16(buf, r, f - VNET_LEN + 6)
            co = _le16(buf, r, f - VNET_LEN + 8)
            if flags & F_NEEDS_CSUM and cs + co + 2 <= ln:
                # The field holds the pseudo-header sum; the NIC (here, us) adds the rest.
                v = np.int64(_fold(_sum16(out, o, f + cs, ln - cs)) ^ np.uint64(0xFFFF))
                _put16(out, o, f + cs + co, v)
            out_len[o] = ln
            src[o] = r
            o += 1
            continue
        size = _le16(buf, r, f - VNET_LEN + 4)
        l3, l4, hl, v4, proto = _geometry(buf, r, f, ln)
        head = l4 + hl
        pay = ln - head
        seq = (_be16(buf, r, f + l4 + 4) << 16) | _be16(buf, r, f + l4 + 6)
        ip_id = _be16(buf, r, f + l3 + 4) if v4 else 0
        tflags = np.int64(buf[r, f + l4 + 13]) if proto == _TCP else 0
        for i in range(k):
            at = i * size
            seg = min(size, pay - at) if pay > 0 else 0
            move(out[o], f, buf[r], f, head)
            move(out[o], f + head, buf[r], f + head + at, seg)
            if v4:
                ihl = l4 - l3
                _put16(out, o, f + l3 + 2, ihl + hl + seg)
                _put16(out, o, f + l3 + 4, (ip_id + i) & 0xFFFF)
                _put16(out, o, f + l3 + 10, 0)
                _put16(out, o, f + l3 + 10,
                       np.int64(_fold(_sum16(out, o, f + l3, ihl)) ^ np.uint64(0xFFFF)))
            else:
                _put16(out, o, f + l3 + 4, l4 - l3 - 40 + hl + seg)
            if proto == _TCP:
                s = (seq + i * size) & 0xFFFFFFFF
                _put16(out, o, f + l4 + 4, s >> 16)
                _put16(out, o, f + l4 + 6, s & 0xFFFF)
                fl = tflags
                if i < k - 1:
                    fl &= ~(_FIN | _PSH)
                if i:
                    fl &= ~_CWR
                out[o, f + l4 + 13] = np.uint8(fl)
            else:
                _put16(out, o, f + l4 + 4, hl + seg)
            _l4_checksum(out, o, f, l3, l4, v4, proto, hl + seg)
            out_len[o] = head + seg
            src[o] = r
            o += 1


def expand(buf: np.ndarray, lens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The received rows as the frames the wire would carry: (rows, lengths, received row
    of each, packets dropped: GSO kinds this cannot cut, frames too long for a row)."""
    n = len(lens)
    counts = np.zeros(n, np.int64)
    total, longest = vnet_plan(buf, lens, counts)
    width = (HEADROOM + int(longest) + TAILROOM + 7) & ~7
    out = np.zeros((int(total), width), np.uint8)
    out_len = np.zeros(int(total), np.int32)
    src = np.zeros(int(total), np.int64)
    vnet_fill(buf, lens, counts, out, out_len, src)
    dropped = int(np.count_nonzero(counts == 0))
    return out, out_len, src, dropped


def warm() -> None:
    """Compile (or load) the kernels before a VM's first GSO packet waits on them."""
    expand(np.zeros((0, HEADROOM + TAILROOM), np.uint8), np.zeros(0, np.int32))
