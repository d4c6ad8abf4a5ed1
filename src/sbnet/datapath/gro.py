"""Receive coalescing on a port's packet socket: runs of one TCP flow's segments sent as one GSO frame behind a virtio-net header, as a host's GRO hands them to a virtio VM."""

from __future__ import annotations

import numba
import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack_kernel import _fold, _sum16
from sbnet.datapath.mmsg import VNET_LEN, send_all

GSO_TCPV4, GSO_UDP_L4, F_NEEDS_CSUM = 1, 5, 1
_ACK, _PSH = 0x10, 0x08
_MAX_SEGS = 64                  # segments in one frame at most (the kernel's GSO_MAX_SEGS is higher)
_HEAD = 128                     # room for one frame's Ethernet, IPv4 and TCP headers
# UDP datagrams join a run when their first bytes match the run's first's this far: the
# headers, and a VXLAN header and inner MACs (what a hold filter on the receiving side
# reads, so every datagram in a GSO frame gets the first's verdict).
_UDP_SAME = 42 + 20
# mmsghdr words (mmsg's layout): msg_iov, msg_iovlen.
_W_IOV, _W_IOVLEN = 2, 3


@numba.njit(cache=True, inline="always")
def _b16(d, r, c):
    return (np.int64(d[r, c]) << 8) | np.int64(d[r, c + 1])


@numba.njit(cache=True)
def _tcp4(d, r, s, ln):
    """(headers' length, payload length) of a frame at column s of row r that may be
    merged: TCP over IPv4 without options or fragmentation behind an untagged Ethernet
    header, flags ACK (PSH too), some payload, no padding; else (-1, 0)."""
    if ln < 55 or d[r, s + 12] != 8 or d[r, s + 13] != 0 or d[r, s + 14] != 0x45 \
            or d[r, s + 23] != 6 or _b16(d, r, s + 20) & 0x3FFF or 14 + _b16(d, r, s + 16) != ln:
        return -1, 0
    hl = 34 + np.int64(d[r, s + 46] >> 4) * 4
    fl = np.int64(d[r, s + 47])
    if hl < 54 or hl >= ln or fl & ~(_ACK | _PSH) or not fl & _ACK:
        return -1, 0
    return hl, ln - hl


@numba.njit(cache=True)
def _joins(d, a, sa, b, sb, hl, tcp):
    """Whether frame b's first hl bytes equal frame a's but for what differs between a
    flow's consecutive segments: IPv4 length, id and checksum, TCP sequence, flags and
    checksum, or UDP length and checksum."""
    for c in range(hl):
        if c == 16 or c == 17 or c == 18 or c == 19 or c == 24 or c == 25 or 38 <= c <= 41 \
                or tcp and (c == 47 or c == 50 or c == 51):
            continue
        if d[a, sa + c] != d[b, sb + c]:
            return False
    return True


@numba.njit(cache=True)
def _payload_sum(d, r, s, hl, ln):
    """The ones-complement sum of a segment's payload, or -1 if its TCP checksum is
    wrong (GRO checks each segment: a bad one goes alone, for the receiver to drop)."""
    t = hl - 34
    pseudo = _sum16(d, r, s + 26, 8) + np.uint64(6) + np.uint64(ln - 34)
    want = np.int64(_fold(pseudo + _sum16(d, r, s + 34, t)) ^ np.uint64(0xFFFF))
    got = np.int64(_fold(_sum16(d, r, s + hl, ln - hl)))
    if got != want and got + want != 0xFFFF:
        return -1
    return got


@numba.njit(cache=True)
def _tcp_run(d, start, length, i, k, sums):
    """(segments, headers' length, payload size, bytes) of the run of one flow's in-order
    TCP segments from row i (equal payloads but the last, ids counting up, checksums
    right, the run within IPv4's length); 1 segment when nothing joins."""
    s = np.int64(start[i])
    ln = np.int64(length[i])
    hl, size = _tcp4(d, i, s, ln)
    n = 1
    total = ln
    if hl < 0 or d[i, s + 47] & _PSH:
        return 1, hl, size, total
    sums[i] = _payload_sum(d, i, s, hl, ln)
    if sums[i] < 0:
        return 1, hl, size, total
    seq = (_b16(d, i, s + 38) << 16) | _b16(d, i, s + 40)
    ip_id = _b16(d, i, s + 18)
    nxt = (seq + size) & 0xFFFFFFFF
    while i + n < k and n < _MAX_SEGS:
        j = i + n
        sj = np.int64(start[j])
        lj = np.int64(length[j])
        hj, pj = _tcp4(d, j, sj, lj)
        if hj != hl or pj > size or total + pj - 14 > 65535 \
                or (_b16(d, j, sj + 38) << 16 | _b16(d, j, sj + 40)) != nxt \
                or _b16(d, j, sj + 18) != (ip_id + n) & 0xFFFF \
                or not _joins(d, i, s, j, sj, hl, True):
            break
        sums[j] = _payload_sum(d, j, sj, hj, lj)
        if sums[j] < 0:
            break
        n += 1
        total += pj
        nxt = (nxt + pj) & 0xFFFFFFFF
        if pj < size or d[j, sj + 47] & _PSH:
            break
    return n, hl, size, total


@numba.njit(cache=True)
def _tcp_head(d, start, length, i, n, hl, total, sums, heads, m, vh):
    """The GSO frame's headers (the first segment's, lengths, PSH and checksums redone;
    the TCP checksum complete, from the payloads' sums) and virtio-net header."""
    s = np.int64(start[i])
    for c in range(hl):
        heads[m, c] = d[i, s + c]
    last = i + n - 1
    heads[m, 47] |= d[last, np.int64(start[last]) + 47] & _PSH
    tot = total - 14
    _ipv4_total(heads, m, tot)
    # Each payload's sum, byte-swapped where it starts at an odd offset.
    acc = np.uint64(0)
    off = 0
    for j in range(i, i + n):
        ps = np.uint64(sums[j])
        if off & 1:
            ps = ((ps & np.uint64(0xFF)) << np.uint64(8)) | (ps >> np.uint64(8))
        acc += ps
        off += np.int64(length[j]) - hl
    heads[m, 50] = 0
    heads[m, 51] = 0
    pseudo = _sum16(heads, m, 26, 8) + np.uint64(6) + np.uint64(tot - 20)
    ck = _fold(pseudo + _sum16(heads, m, 34, hl - 34) + acc) ^ np.uint64(0xFFFF)
    heads[m, 50] = ck >> np.uint64(8)
    heads[m, 51] = ck & np.uint64(0xFF)
    vh[m, 1] = GSO_TCPV4


@numba.njit(cache=True, inline="always")
def _ipv4_total(heads, m, tot):
    """A merged frame's IPv4 total length and header checksum."""
    heads[m, 16] = tot >> 8
    heads[m, 17] = tot & 0xFF
    heads[m, 24] = 0
    heads[m, 25] = 0
    c4 = _fold(_sum16(heads, m, 14, 20)) ^ np.uint64(0xFFFF)
    heads[m, 24] = c4 >> np.uint64(8)
    heads[m, 25] = c4 & np.uint64(0xFF)


@numba.njit(cache=True)
def _udp4(d, r, s, ln):
    """The UDP payload length of a frame that may be merged: UDP over IPv4 without
    options or fragmentation behind an untagged Ethernet header, a checksum that is
    absent or right, no padding; else -1."""
    if ln < _UDP_SAME + 1 or d[r, s + 12] != 8 or d[r, s + 13] != 0 or d[r, s + 14] != 0x45 \
            or d[r, s + 23] != 17 or _b16(d, r, s + 20) & 0x3FFF \
            or 14 + _b16(d, r, s + 16) != ln or 34 + _b16(d, r, s + 38) != ln:
        return -1
    if _b16(d, r, s + 40):
        pseudo = _sum16(d, r, s + 26, 8) + np.uint64(17) + np.uint64(ln - 34)
        if _fold(pseudo + _sum16(d, r, s + 34, ln - 34)) != 0xFFFF:
            return -1
    return ln - 42


@numba.njit(cache=True)
def _udp_run(d, start, length, i, k):
    """(datagrams, payload size, bytes) of the run of UDP datagrams from row i that one
    UDP segmentation offload frame carries: the same addresses, ports and first payload
    bytes (a tunnel's header and inner MACs: one tunnel, one inner destination), equal
    payloads but the last, ids counting up unless DF; 1 when nothing joins."""
    s = np.int64(start[i])
    ln = np.int64(length[i])
    size = _udp4(d, i, s, ln)
    n = 1
    total = ln
    if size < 0:
        return 1, size, total
    df = d[i, s + 20] & 0x40
    ip_id = _b16(d, i, s + 18)
    while i + n < k and n < _MAX_SEGS:
        j = i + n
        sj = np.int64(start[j])
        lj = np.int64(length[j])
        pj = _udp4(d, j, sj, lj)
        if pj < 0 or pj > size or total + pj - 14 > 65535 \
                or (not df and _b16(d, j, sj + 18) != (ip_id + n) & 0xFFFF) \
                or not _joins(d, i, s, j, sj, _UDP_SAME, False):
            break
        n += 1
        total += pj
        if pj < size:
            break
    return n, size, total


@numba.njit(cache=True)
def _udp_head(d, start, i, total, heads, m, vh):
    """The UDP GSO frame's headers (the first datagram's, lengths redone, the UDP
    checksum field holding the pseudo-header's sum for whoever cuts it to complete per
    datagram) and virtio-net header."""
    s = np.int64(start[i])
    for c in range(42):
        heads[m, c] = d[i, s + c]
    tot = total - 14
    _ipv4_total(heads, m, tot)
    heads[m, 38] = (tot - 20) >> 8
    heads[m, 39] = (tot - 20) & 0xFF
    ps = _fold(_sum16(heads, m, 26, 8) + np.uint64(17) + np.uint64(tot - 20))
    heads[m, 40] = ps >> np.uint64(8)
    heads[m, 41] = ps & np.uint64(0xFF)
    vh[m, 0] = F_NEEDS_CSUM
    vh[m, 1] = GSO_UDP_L4
    vh[m, 6] = 34
    vh[m, 8] = 6


@numba.njit(cache=True, nogil=True)
def _gro_kernel(fd, d, start, length, k, mm, iov, heads, vh, segs, sums, udp_runs):
    """Frames 0..k-1 of the rows as messages (a virtio-net header, then a frame) and send
    them with sendmmsg: a run of one TCP flow's segments (_tcp_run) or of one tunnel's
    datagrams (_udp_run, when udp_runs) becomes one GSO frame, its headers in heads, then
    each frame's payload from its row.  Returns (frames that could not go, frames sent merged)."""
    # Addresses taken here: numpy's .ctypes costs microseconds a call in Python.
    data_at = np.int64(d.ctypes.data)
    stride = np.int64(d.strides[0])
    mm_at = np.uint64(mm.ctypes.data)
    iov_at = np.uint64(iov.ctypes.data)
    heads_at = np.uint64(heads.ctypes.data)
    vh_at = np.uint64(vh.ctypes.data)
    m = 0
    p = 0
    i = 0
    merged = 0
    while i < k:
        s = np.int64(start[i])
        ln = np.int64(length[i])
        n, hl, size, total = _tcp_run(d, start, length, i, k, sums)
        udp = False
        if n == 1 and hl < 0 and udp_runs:
            n, size, total = _udp_run(d, start, length, i, k)
            hl = 42
            udp = True
        for c in range(VNET_LEN):
            vh[m, c] = 0
        iov[p, 0] = vh_at + np.uint64(16 * m)
        iov[p, 1] = VNET_LEN
        mm[m, _W_IOV] = iov_at + np.uint64(16 * p)
        if n == 1:
            iov[p + 1, 0] = np.uint64(data_at + i * stride + s)
            iov[p + 1, 1] = np.uint64(ln)
            mm[m, _W_IOVLEN] = 2
            p += 2
        else:
            if udp:
                _udp_head(d, start, i, total, heads, m, vh)
            else:
                _tcp_head(d, start, length, i, n, hl, total, sums, heads, m, vh)
            vh[m, 2] = hl & 0xFF
            vh[m, 3] = hl >> 8
            vh[m, 4] = size & 0xFF
            vh[m, 5] = size >> 8
            iov[p + 1, 0] = heads_at + np.uint64(_HEAD * m)
            iov[p + 1, 1] = np.uint64(hl)
            for j in range(i, i + n):
                sj = np.int64(start[j])
                iov[p + 2 + j - i, 0] = np.uint64(data_at + j * stride + sj + hl)
                iov[p + 2 + j - i, 1] = np.uint64(np.int64(length[j]) - hl)
            mm[m, _W_IOVLEN] = 2 + n
            p += 2 + n
            merged += n
        segs[m] = n
        m += 1
        i += n
    failed = send_all(fd, mm_at, m, segs[:m])
    return failed, merged


class Coalescer:
    """A batch's frames to one packet socket with PACKET_VNET_HDR, each run of a TCP
    flow's segments (and with `udp`, of a tunnel's datagrams) as one GSO frame (the
    kernel, or the receiving VM, takes it as GRO's output), the other frames whole behind
    an empty header; `merged` counts the frames that went in GSO frames."""

    def __init__(self, n: int = 256) -> None:
        self.merged = 0
        # Runs of UDP datagrams (a tunnel's) too: only where whoever reads the link takes
        # GSO frames.  A NIC cuts them on the wire; a veth hands them over whole, and a
        # reader without virtio-net headers (Open vSwitch's netdev) drops them.
        self.udp = False
        self._size(n)

    def _size(self, n: int) -> None:
        self.n = n
        self.mm = np.zeros((n, 8), np.uint64)
        self.iov = np.zeros((3 * n, 2), np.uint64)
        self.heads = np.zeros((n, _HEAD), np.uint8)
        self.vh = np.zeros((n, 16), np.uint8)
        self.segs = np.zeros(n, np.int64)
        self.sums = np.zeros(n, np.int64)

    def send(self, fd: int, batch: Batch) -> int:
        """Send the batch's frames; returns how many could not go."""
        data = batch.data if batch.data.flags.c_contiguous else np.ascontiguousarray(batch.data)
        k = len(batch)
        if k > self.n:
            self._size(k)
        failed, merged = _gro_kernel(
            fd, data, batch.start.astype(np.int32, copy=False),
            batch.length.astype(np.int32, copy=False), k, self.mm, self.iov, self.heads, self.vh,
            self.segs, self.sums, self.udp)
        self.merged += merged
        return failed


def warm() -> None:
    """Compile (or load) the kernel before the first batch waits on it."""
    Coalescer(1).send(-1, Batch.empty())
