"""A batch of packets held in one 2-D uint8 array, the unit every datapath stage works on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Bytes kept free in front of every packet so later stages can push VLAN, MPLS
# or tunnel headers by moving `start` back instead of copying the packet.
HEADROOM = 64
# Bytes kept free behind every packet: the parser reads fixed-width header
# windows, and a window may run past the end of a short packet.
TAILROOM = 64
# Up to this many packets, from_packets copies them row by row.
_FEW = 16


def _capacity(headroom: int, max_len: int) -> int:
    cap = headroom + max_len + TAILROOM
    return (cap + 7) & ~7


class Batch:
    """Packets stored row-wise: packet i is data[i, start[i]:start[i] + length[i]]."""

    __slots__ = ("data", "start", "length", "in_port")

    def __init__(self, data: np.ndarray, start: np.ndarray, length: np.ndarray,
                 in_port: np.ndarray):
        self.data = data
        self.start = start
        self.length = length
        self.in_port = in_port

    @classmethod
    def from_packets(cls, packets: Sequence[bytes], in_port: int | Sequence[int],
                     headroom: int = HEADROOM) -> Batch:
        n = len(packets)
        if 0 < n <= _FEW:
            return cls._from_few(packets, in_port, headroom)
        lengths = np.fromiter((len(p) for p in packets), dtype=np.int32, count=n)
        max_len = int(lengths.max()) if n else 0
        data = np.zeros((n, _capacity(headroom, max_len)), dtype=np.uint8)
        if n and max_len:
            # One boolean-mask store fills every row from the concatenation,
            # because a mask assignment walks the array in row-major order.
            joined = np.frombuffer(b"".join(packets), dtype=np.uint8)
            used = np.arange(max_len, dtype=np.int32) < lengths[:, None]
            data[:, headroom:headroom + max_len][used] = joined
        return cls(data, filled(n, headroom, np.int32), lengths, _ports(in_port, n))

    @classmethod
    def _from_few(cls, packets: Sequence[bytes], in_port: int | Sequence[int],
                  headroom: int) -> Batch:
        # A few packets (the common case on a quiet port): a row copy each costs less
        # than the mask and the arrays the bulk path builds (5 against 14 us for one).
        lens = [len(p) for p in packets]
        n = len(lens)
        data = np.zeros((n, _capacity(headroom, max(lens))), dtype=np.uint8)
        for i, p in enumerate(packets):
            data[i, headroom:headroom + lens[i]] = np.frombuffer(p, np.uint8)
        return cls(data, filled(n, headroom, np.int32), np.array(lens, np.int32),
                   _ports(in_port, n))

    @classmethod
    def from_array(cls, frames: np.ndarray, lengths: np.ndarray | Sequence[int] | int | None = None,
                   in_port: int | Sequence[int] = 0, headroom: int = HEADROOM) -> Batch:
        """A batch from equal-width frames (n, L): one bulk copy, no per-packet work."""
        frames = np.asarray(frames, dtype=np.uint8)
        n, width = frames.shape
        if lengths is None:
            lengths = width
        lengths = np.broadcast_to(np.asarray(lengths, dtype=np.int32), (n,)).copy()
        if n and (lengths.min() < 0 or lengths.max() > width):
            raise ValueError("lengths must lie within the frame width")
        data = np.zeros((n, _capacity(headroom, width)), dtype=np.uint8)
        data[:, headroom:headroom + width] = frames
        return cls(data, np.full(n, headroom, dtype=np.int32), lengths, _ports(in_port, n))

    @classmethod
    def empty(cls, headroom: int = HEADROOM) -> Batch:
        """A batch holding no packets."""
        return cls(np.zeros((0, _capacity(headroom, 0)), dtype=np.uint8),
                   np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.int32),
                   np.zeros(0, dtype=np.uint32))

    def __len__(self) -> int:
        return len(self.length)

    def single_port(self) -> int | None:
        """The in_port every row shares (a port's receive batch), None when they differ or
        there are no rows: one bytes comparison, where a numpy reduction costs 1-5 us
        whatever the batch's size."""
        return same_value(self.in_port)

    def packet(self, i: int) -> bytes:
        s = int(self.start[i])
        return self.data[i, s:s + int(self.length[i])].tobytes()

    def packets(self) -> list[bytes]:
        return [self.packet(i) for i in range(len(self))]

    def take(self, rows: np.ndarray) -> Batch:
        """A new batch holding copies of the given rows (indices or a boolean mask)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return Batch(self.data[rows], self.start[rows].copy(), self.length[rows].copy(),
                     self.in_port[rows].copy())

    def __repr__(self) -> str:
        return f"Batch({len(self)} packets, capacity {self.data.shape[1]})"


def filled(n: int, value: int, dtype) -> np.ndarray:
    """np.full(n, value, dtype) for the per-batch columns: numpy's full is Python code
    costing about 2 us, a copy of a slice of a filled template a third of that."""
    t = _FILLED.get((value, dtype))
    if t is None or t.size < n:
        if n > _TEMPLATE or len(_FILLED) >= _TEMPLATES:
            a = np.empty(n, dtype)
            a.fill(value)
            return a
        t = _FILLED[value, dtype] = np.full(_TEMPLATE, value, dtype)
    return t[:n].copy()


_TEMPLATE = 4096
_TEMPLATES = 1024         # (value, dtype) pairs kept: headroom and each port's number
_FILLED: dict = {}


def same_value(a: np.ndarray) -> int | None:
    """The value every element of the 1-D array a holds; None when they differ or a is empty."""
    n = len(a)
    if not n:
        return None
    b = a.tobytes()
    return a.item(0) if b == b[:a.itemsize] * n else None


def _ports(in_port: int | Sequence[int], n: int) -> np.ndarray:
    if isinstance(in_port, (int, np.integer)):
        return filled(n, in_port, np.uint32)
    if np.isscalar(in_port):
        return np.full(n, in_port, dtype=np.uint32)
    ports = np.asarray(in_port, dtype=np.uint32)
    if ports.shape != (n,):
        raise ValueError(f"need {n} in_port values, got {ports.shape}")
    return ports.copy()
