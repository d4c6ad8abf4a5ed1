"""Byte and checksum helpers over packet rows (the one home of each): big-endian fields in and out, gathers, ones-complement sums, RFC 1624 updates, CRC32c."""

from __future__ import annotations

import struct

import numpy as np

try:  # C implementation (SSE4.2/ARMv8 CRC instructions) when installed
    import crc32c as _crc32c_lib
except ImportError:  # pragma: no cover - depends on the environment
    _crc32c_lib = None


_AR = np.arange(256, dtype=np.int64)
_VIEW = {1: np.uint8, 2: ">u2", 4: ">u4", 8: ">u8"}


def be_bytes(v: np.ndarray, n: int) -> np.ndarray:
    """(m,) integers -> (m, n) big-endian bytes (the low n bytes of each)."""
    v = np.asarray(v).astype(">u8")
    return v.view(np.uint8).reshape(-1, 8)[:, 8 - n:]


def be_value(b: np.ndarray) -> np.ndarray:
    """Big-endian value of each row of an (m, k) byte array, k <= 8, as uint64."""
    k = b.shape[1]
    if k not in _VIEW:
        w = 4 if k < 4 else 8
        pad = np.zeros((b.shape[0], w), np.uint8)
        pad[:, w - k:] = b
        b, k = pad, w
    return np.ascontiguousarray(b).view(_VIEW[k])[:, 0].astype(np.uint64)


def gather(d: np.ndarray, rows: np.ndarray, col: np.ndarray, n: int) -> np.ndarray:
    """(m, n) bytes d[rows, col:col+n], reading zeros past the row's end."""
    if len(col) and col.min() == col.max() and int(col[0]) + n <= d.shape[1]:
        # One column for every row (the usual batch): a slice, no per-byte indexing.
        c = int(col[0])
        if len(rows) == d.shape[0] and rows[0] == 0 and rows[-1] == len(rows) - 1:
            return d[:, c:c + n]
        return d[rows, c:c + n]
    cols = col[:, None] + (_AR[:n] if n <= len(_AR) else np.arange(n))
    inside = cols < d.shape[1]
    out = d[rows[:, None], np.minimum(cols, d.shape[1] - 1)]
    return np.where(inside, out, 0).astype(np.uint8) if not inside.all() else out


def ones_sum_bytes(b: np.ndarray, length: np.ndarray | None = None) -> np.ndarray:
    """Folded ones-complement sum (uint64, not inverted) of each row of an (m, k) byte
    array, or of its first length[i] bytes; an odd last byte is padded with zero."""
    if length is not None and (length.min() < b.shape[1]):
        b = np.where(np.arange(b.shape[1]) < length[:, None], b, 0).astype(np.uint8)
    if b.shape[1] % 2:
        b = np.concatenate([b, np.zeros((b.shape[0], 1), np.uint8)], axis=1)
    total = np.ascontiguousarray(b).view(">u2").sum(axis=1, dtype=np.uint64)
    for _ in range(3):
        total = (total & np.uint64(0xFFFF)) + (total >> np.uint64(16))
    return total


def fold(total: np.ndarray) -> np.ndarray:
    """Fold 32/64-bit sums of 16-bit words into 16 bits with end-around carry."""
    total = np.asarray(total, dtype=np.uint64)
    # Three folds bring any sum below 2**48 down to 16 bits.
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total.astype(np.uint32)


def ones_sum(data: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Ones-complement sum (folded, not inverted) of data[i, start[i]:start[i]+length[i]].

    An odd trailing byte is padded with zero, as RFC 1071 says.  Returns uint32 in [0, 0xFFFF].
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    n = len(start)
    if n == 0:
        return np.zeros(0, dtype=np.uint32)
    width = int(length.max()) if n else 0
    width += width & 1
    cols = np.arange(width, dtype=np.int64)
    idx = start[:, None] + cols
    inside = cols < length[:, None]
    np.clip(idx, 0, data.shape[1] - 1, out=idx)
    b = np.where(inside, data[np.arange(n)[:, None], idx], 0).astype(np.uint8)
    return fold(ones_sum_bytes(b))


def internet_checksum(buf: bytes) -> int:
    """RFC 1071 checksum of one buffer (the value to store in the header), an odd last byte
    padded with zero.  Plain Python: its callers sum one header or one packet, about a
    microsecond for an IPv4 header where a pass through ones_sum's numpy costs tens."""
    if len(buf) % 2:
        buf = bytes(buf) + b"\0"
    total = sum(struct.unpack(f"!{len(buf) // 2}H", buf))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def csum_replace(csum: np.ndarray, old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """RFC 1624 eqn. 3 incremental update: HC' = ~(~HC + ~m + m') over 16-bit words.

    csum: (n,) stored checksums; old: (n, k) 16-bit words that changed; new: their
    replacements, (n, k) or (k,) when every row gets the same.  Returns (n,) uint32
    checksums to store.
    """
    csum = np.asarray(csum, dtype=np.uint32)
    old = np.asarray(old, dtype=np.uint32)
    new = np.asarray(new, dtype=np.uint32)
    k = old.shape[-1]
    # ~m summed over k words is k*0xFFFF - sum(m); columns are added one by one because
    # numpy's reduction over a short last axis is slow.  The total stays below 2**32.
    total = (csum ^ 0xFFFF) + np.uint32(k * 0xFFFF) - _sum_cols(old) + _sum_cols(new)
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return total ^ 0xFFFF


def _sum_cols(a: np.ndarray) -> np.ndarray:
    if a.ndim == 1:
        return np.uint32(a.sum(dtype=np.uint32))
    if a.shape[1] > 8:
        return a.sum(axis=1, dtype=np.uint32)
    total = a[:, 0].copy()
    for j in range(1, a.shape[1]):
        total += a[:, j]
    return total


def _crc32c_table() -> np.ndarray:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(poly), table >> 1).astype(np.uint32)
    return table


_CRC32C_TABLE = _crc32c_table()


def crc32c_rows(data: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """CRC32c (Castagnoli, as SCTP uses) of data[i, start[i]:start[i]+length[i]] for each row."""
    start = np.asarray(start, dtype=np.int64)
    length = np.asarray(length, dtype=np.int64)
    n = len(start)
    out = np.zeros(n, dtype=np.uint32)
    if n == 0:
        return out
    if _crc32c_lib is not None:
        for i in range(n):
            s = int(start[i])
            out[i] = _crc32c_lib.crc32c(data[i, s:s + int(length[i])].tobytes())
        return out
    # Table-driven, one byte column at a time across all rows.
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    rows = np.arange(n)
    for j in range(int(length.max())):
        live = j < length
        b = data[rows, np.minimum(start + j, data.shape[1] - 1)].astype(np.uint32)
        nxt = _CRC32C_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        crc = np.where(live, nxt, crc)
    return crc ^ np.uint32(0xFFFFFFFF)


def crc32c_bytes(buf: bytes) -> int:
    """CRC32c of one buffer."""
    arr = np.frombuffer(buf, dtype=np.uint8)[None, :]
    return int(crc32c_rows(arr, np.zeros(1, np.int64), np.array([len(buf)]))[0])
