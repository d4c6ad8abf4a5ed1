"""Batched packet-socket I/O: recvmmsg into one numpy buffer and sendmmsg from a batch's rows, one system call per batch."""

from __future__ import annotations

import ctypes

import numpy as np

from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch

_libc = ctypes.CDLL(None, use_errno=True)
_libc.recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int,
                           ctypes.c_void_p]
_libc.sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
MSG_TRUNC, MSG_DONTWAIT = 0x20, 0x40
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
# struct mmsghdr on LP64 as uint64 words: msg_name, msg_namelen, msg_iov, msg_iovlen,
# msg_control, msg_controllen, msg_flags, msg_len.
_W_IOV, _W_IOVLEN, _W_CTRL, _W_CTRLLEN, _W_FLAGS, _W_LEN = 2, 3, 4, 5, 6, 7
_CTRL = 48              # CMSG_SPACE(sizeof(struct tpacket_auxdata)) = 40, rounded up
MAX_FRAME = 65536


def _headers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n mmsghdrs, each with one iovec of its own (zeroed)."""
    mm = np.zeros((n, 8), np.uint64)
    iov = np.zeros((n, 2), np.uint64)
    mm[:, _W_IOV] = iov.ctypes.data + 16 * np.arange(n, dtype=np.uint64)
    mm[:, _W_IOVLEN] = 1
    return mm, iov


class Receiver:
    """Up to n frames of one packet socket per call, each into its own row of a buffer at
    column HEADROOM, with the VLAN tag the kernel took off (PACKET_AUXDATA)."""

    def __init__(self, n: int, frame: int = MAX_FRAME) -> None:
        self.n = n
        self.stride = (HEADROOM + frame + TAILROOM + 63) & ~63
        self.buf = np.zeros((n, self.stride), np.uint8)
        self.mm, self.iov = _headers(n)
        self.ctrl = np.zeros((n, _CTRL), np.uint8)
        self.iov[:, 0] = self.buf.ctypes.data + HEADROOM + self.stride * np.arange(n, dtype=np.uint64)
        self.iov[:, 1] = frame
        self.mm[:, _W_CTRL] = self.ctrl.ctypes.data + _CTRL * np.arange(n, dtype=np.uint64)
        self.truncated = 0

    def receive(self, fd: int) -> tuple[int, np.ndarray, list[tuple[int, int, int]]]:
        """(frames read, their lengths, (row, tpid, tci) of frames whose tag was taken off).
        Frames longer than a row are dropped and counted in `truncated`."""
        mm = self.mm
        mm[:, _W_CTRLLEN] = _CTRL
        got = _libc.recvmmsg(fd, mm.ctypes.data, self.n, MSG_DONTWAIT | MSG_TRUNC, None)
        if got <= 0:
            return 0, np.zeros(0, np.int32), []
        lens = (mm[:got, _W_LEN] & 0xFFFFFFFF).astype(np.int32)
        tags = []
        aux = self.ctrl[:got]
        status = aux[:, 16:20].copy().view(np.uint32).ravel()
        level = aux[:, 8:12].copy().view(np.int32).ravel()
        kind = aux[:, 12:16].copy().view(np.int32).ravel()
        vlan = (level == SOL_PACKET) & (kind == PACKET_AUXDATA) & \
            ((status & TP_STATUS_VLAN_VALID) != 0) & (mm[:got, _W_CTRLLEN] >= 36)
        for r in np.flatnonzero(vlan).tolist():
            tci = int(aux[r, 32]) | int(aux[r, 33]) << 8
            tpid = int(aux[r, 34]) | int(aux[r, 35]) << 8
            tags.append((r, tpid if status[r] & TP_STATUS_VLAN_TPID_VALID else 0x8100, tci))
        big = lens > self.stride - HEADROOM - TAILROOM
        if big.any():
            self.truncated += int(np.count_nonzero(big))
            lens[big] = -1
        return got, lens, tags


class Sender:
    """A batch's frames to one packet socket in as few sendmmsg calls as the queue takes."""

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
        idx = np.arange(k, dtype=np.uint64) if rows is None else rows.astype(np.uint64)
        start = batch.start.astype(np.uint64) if rows is None else batch.start[rows].astype(np.uint64)
        length = batch.length.astype(np.uint64) if rows is None else \
            batch.length[rows].astype(np.uint64)
        self.iov[:k, 0] = data.ctypes.data + idx * np.uint64(data.strides[0]) + start
        self.iov[:k, 1] = length
        base = self.mm.ctypes.data
        failed = 0
        i = 0
        while i < k:
            sent = _libc.sendmmsg(fd, base + 64 * i, k - i, MSG_DONTWAIT)
            if sent < 0 and ctypes.get_errno() == 4:      # EINTR: try again
                continue
            if sent <= 0:
                failed += 1           # a full queue or a down interface: a transmit drop
                i += 1
                continue
            i += sent
        return failed
