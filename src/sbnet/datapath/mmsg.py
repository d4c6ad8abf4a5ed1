"""Batched packet-socket I/O: recvmmsg into one numpy buffer and sendmmsg from a batch's rows, one system call per batch."""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import binding as llvm_binding
from numba.core import types

from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch

# recvmmsg and sendmmsg for compiled code, as external symbols the JIT links against libc
# (ctypes function objects there would keep numba from caching the compiled code):
# pointers as 64-bit integers, which the x86-64 and arm64 ABIs pass alike.
_c = ctypes.CDLL(None)
for _name in ("recvmmsg", "sendmmsg", "__errno_location"):
    llvm_binding.add_symbol(_name, ctypes.cast(getattr(_c, _name), ctypes.c_void_p).value)
_recvmmsg = types.ExternalFunction(
    "recvmmsg", types.int32(types.int32, types.uint64, types.uint32, types.int32, types.uint64))
_sendmmsg = types.ExternalFunction(
    "sendmmsg", types.int32(types.int32, types.uint64, types.uint32, types.int32))
_errno_at = types.ExternalFunction("__errno_location", types.CPointer(types.int32)())
EINTR = 4
MSG_TRUNC, MSG_DONTWAIT = 0x20, 0x40
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
# struct mmsghdr on LP64 as uint64 words: msg_name, msg_namelen, msg_iov, msg_iovlen,
# msg_control, msg_controllen, msg_flags, msg_len.
_W_IOV, _W_IOVLEN, _W_CTRL, _W_CTRLLEN, _W_FLAGS, _W_LEN = 2, 3, 4, 5, 6, 7
_CTRL = 48              # CMSG_SPACE(sizeof(struct tpacket_auxdata)) = 40, rounded up
MAX_FRAME = 65536
_NO_LENS = np.zeros(0, np.int32)
_NO_ROWS = np.zeros(0, np.int64)
VNET_LEN = 10            # struct virtio_net_hdr


def _headers(n: int, iovs: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """n mmsghdrs, each with `iovs` iovecs of its own (zeroed; iov[i, 2k:2k+2] is the
    k-th iovec of message i)."""
    mm = np.zeros((n, 8), np.uint64)
    iov = np.zeros((n, 2 * iovs), np.uint64)
    mm[:, _W_IOV] = iov.ctypes.data + 16 * iovs * np.arange(n, dtype=np.uint64)
    mm[:, _W_IOVLEN] = iovs
    return mm, iov


class Receiver:
    """Up to n frames of one packet socket per call, each into its own row of a buffer at
    column HEADROOM, with the VLAN tag the kernel took off (PACKET_AUXDATA).  With
    `vnet` (a socket with PACKET_VNET_HDR) each frame's virtio-net header lands in the
    VNET_LEN bytes before it."""

    def __init__(self, n: int, frame: int = MAX_FRAME, vnet: bool = False) -> None:
        self.n = n
        self.vnet = VNET_LEN if vnet else 0
        self.stride = (HEADROOM + frame + TAILROOM + 63) & ~63
        self.buf = np.zeros((n, self.stride), np.uint8)
        self.mm, self.iov = _headers(n)
        self.ctrl = np.zeros((n, _CTRL), np.uint8)
        self.iov[:, 0] = self.buf.ctypes.data + HEADROOM - self.vnet \
            + self.stride * np.arange(n, dtype=np.uint64)
        self.iov[:, 1] = frame + self.vnet
        self.mm[:, _W_CTRL] = self.ctrl.ctypes.data + _CTRL * np.arange(n, dtype=np.uint64)
        self.truncated = 0
        self._mm_at = self.mm.ctypes.data
        self._tags = np.zeros((n, 3), np.int64)

    def receive(self, fd: int) -> tuple[int, np.ndarray, list[tuple[int, int, int]]]:
        """(frames read, their lengths, (row, tpid, tci) of frames whose tag was taken off).
        Frames longer than a row are dropped and counted in `truncated`."""
        got, lens, tags, _, _ = self._receive(fd)
        return got, lens, tags

    def receive_rows(self, fd: int) -> tuple[int, np.ndarray | None, np.ndarray, list, bool]:
        """One recvmmsg, compiled with what follows it: (frames read, a copy of them as
        rows (frame at column HEADROOM, zero behind) or None when some virtio-net header
        asks for work (the caller reads self.buf), lengths (-1: longer than a row),
        (row, tpid, tci) of tagged frames, whether any header asks for work)."""
        got, lens, tags, work, longest = self._receive(fd)
        if got <= 0 or work:
            return got, None, lens, tags, bool(work)
        out = np.zeros((got, (HEADROOM + max(longest, 0) + TAILROOM + 7) & ~7), np.uint8)
        _copy_out(self.buf, self.mm, got, out)
        return got, out, lens, tags, False

    def _receive(self, fd: int) -> tuple[int, np.ndarray, list, int, int]:
        """_rx_kernel's call: (frames read, lengths, tags, frames with offload work,
        longest frame)."""
        got, n_tag, work, longest, big = _rx_kernel(
            fd, self.mm, self._mm_at, self.ctrl, self.buf, self.vnet,
            self.stride - HEADROOM - TAILROOM, self._tags)
        if got <= 0:
            return 0, _NO_LENS, [], 0, 0
        self.truncated += big
        lens = (self.mm[:got, _W_LEN] & 0xFFFFFFFF).astype(np.uint32).view(np.int32)
        tags = [] if not n_tag else \
            [(r, int(self._tags[r, 1]), int(self._tags[r, 2]))
             for r in np.flatnonzero(self._tags[:got, 0]).tolist()]
        return got, lens, tags, work, longest


@numba.njit(cache=True, nogil=True)
def _rx_kernel(fd, mm, mm_at, ctrl, buf, vnet, cap, tags):
    """recvmmsg into buf, then per frame: its length (-1: longer than a row), its VLAN
    tag from PACKET_AUXDATA (tags[r] = valid, tpid, tci) and whether its virtio-net
    header asks for work (a GSO packet or a partial checksum).  Returns (frames read,
    tagged frames, frames with offload work, longest frame, frames too long)."""
    n = mm.shape[0]
    for r in range(n):
        mm[r, _W_CTRLLEN] = _CTRL
    got = _recvmmsg(fd, mm_at, n, MSG_DONTWAIT | MSG_TRUNC, 0)
    n_tag = 0
    work = 0
    longest = 0
    big = 0
    for r in range(max(got, 0)):
        ln = np.int64(mm[r, _W_LEN] & np.uint64(0xFFFFFFFF)) - vnet
        if ln > cap:
            ln = -1
            big += 1
        mm[r, _W_LEN] = np.uint64(ln & 0xFFFFFFFF)
        tags[r, 0] = 0
        c = ctrl[r]
        level = np.int64(c[8]) | np.int64(c[9]) << 8 | np.int64(c[10]) << 16
        kind = np.int64(c[12]) | np.int64(c[13]) << 8 | np.int64(c[14]) << 16
        status = np.int64(c[16]) | np.int64(c[17]) << 8
        if level == SOL_PACKET and kind == PACKET_AUXDATA and mm[r, _W_CTRLLEN] >= 36 \
                and status & TP_STATUS_VLAN_VALID:
            tags[r, 0] = 1
            tags[r, 1] = (np.int64(c[34]) | np.int64(c[35]) << 8) \
                if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
            tags[r, 2] = np.int64(c[32]) | np.int64(c[33]) << 8
            n_tag += 1
        if vnet and ((buf[r, HEADROOM - vnet] & 1) or buf[r, HEADROOM - vnet + 1]):
            work += 1
        longest = max(longest, ln)
    return got, n_tag, work, longest, big


@numba.njit(cache=True, inline="always")
def move(dst, dc, src, sc, n):
    """n bytes of 1-D src from column sc to dst from column dc.  Unsigned indices on
    rows taken apart: numba fixes up a signed 2-D index that could be negative on
    every byte, which keeps the loop from vectorizing (twenty times slower)."""
    d0 = np.uint64(dc)
    s0 = np.uint64(sc)
    for j in range(np.uint64(max(n, 0))):
        dst[d0 + j] = src[s0 + j]


@numba.njit(cache=True, nogil=True)
def _copy_out(buf, mm, got, out):
    """Each frame read (at column HEADROOM of its row) into the same place of out, whose
    rows are zero; lengths from the mmsghdrs as _rx_kernel left them."""
    for r in range(got):
        ln = np.int64(np.int32(mm[r, _W_LEN] & np.uint64(0xFFFFFFFF)))
        move(out[r], HEADROOM, buf[r], HEADROOM, ln)


@numba.njit(cache=True, nogil=True)
def _tx_kernel(fd, mm, iov, col, d, start, length, rows, k):
    """Frames k of a batch's rows d (rows[i], or i when rows is empty) into iovec col of
    the messages, then sendmmsg until every frame went or failed: returns how many failed
    (a full queue or a down interface drops the frame it stopped at, as a NIC's would)."""
    # Addresses taken here: numpy's .ctypes costs microseconds a call in Python.
    data_at = np.int64(d.ctypes.data)
    stride = np.int64(d.strides[0])
    for i in range(k):
        g = rows[i] if rows.shape[0] else i
        iov[i, col] = np.uint64(data_at + g * stride + start[g])
        iov[i, col + 1] = np.uint64(length[g])
    return send_all(fd, mm.ctypes.data, k, rows[:0])


@numba.njit(cache=True, inline="always")
def send_all(fd, mm_at, k, frames):
    """sendmmsg the k messages at mm_at until each went or failed; returns how many
    frames failed (frames[i] in message i, or one each when frames is empty): a full
    queue or a down interface drops the message it stopped at, as a NIC's would."""
    failed = 0
    i = 0
    while i < k:
        sent = _sendmmsg(fd, np.uint64(mm_at) + np.uint64(64 * i), k - i, MSG_DONTWAIT)
        if sent < 0 and _errno_at()[0] == EINTR:
            continue
        if sent <= 0:
            failed += frames[i] if frames.shape[0] else 1
            i += 1
            continue
        i += sent
    return failed


class Sender:
    """A batch's frames to one packet socket in as few sendmmsg calls as the queue takes
    (a socket with virtio-net headers sends through gro.Coalescer)."""

    def __init__(self, n: int = 256) -> None:
        self.n = n
        self.mm, self.iov = _headers(n)

    def send(self, fd: int, batch: Batch, rows: np.ndarray | None = None) -> int:
        """Send the batch's frames (or the given rows); returns how many could not go."""
        data = batch.data if batch.data.flags.c_contiguous else np.ascontiguousarray(batch.data)
        k = len(batch) if rows is None else rows.size
        if k > self.n:
            self.n = k
            self.mm, self.iov = _headers(k)
        return _tx_kernel(fd, self.mm, self.iov, 0, data,
                          batch.start.astype(np.int32, copy=False),
                          batch.length.astype(np.int32, copy=False),
                          _NO_ROWS if rows is None else rows.astype(np.int64, copy=False), k)


def warm() -> None:
    """Compile (or load) the kernels for the argument types the sockets pass, before the
    first frame waits on them: a switch process forked from a warmed zygote inherits them."""
    rx = Receiver(1, 64)
    rx.receive_rows(-1)
    Sender(1).send(-1, Batch.empty())
    _copy_out(rx.buf, rx.mm, 0, rx.buf)
