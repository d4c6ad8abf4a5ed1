"""Network Service Header (RFC 8300) push, pop, set and TTL decrement over packet batches."""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np

from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch
from sbnet.datapath.checksum import be_bytes
from sbnet.flows.fields import ETH_IP, ETH_IPV6, ETH_MPLS, ETH_NSH, ETH_QINQ, ETH_VLAN

# Next Protocol values (RFC 8300 section 11.2.5) and the ethertypes they stand for.
NP_IPV4, NP_IPV6, NP_ETHERNET, NP_NSH, NP_MPLS = 1, 2, 3, 4, 5
NP_ETHERTYPE = {NP_IPV4: ETH_IP, NP_IPV6: ETH_IPV6, NP_NSH: ETH_NSH, NP_MPLS: ETH_MPLS}
ETHERTYPE_NP = {v: k for k, v in NP_ETHERTYPE.items()}
# OVS's defaults for a pushed header (encap(nsh) before any set_field).
DEFAULT_TTL, DEFAULT_SI = 63, 255
MD1_LEN = 24
DROPS = ("not_nsh", "truncated_nsh", "bad_nsh")
FIELDS = ("nsh_flags", "nsh_ttl", "nsh_mdtype", "nsh_np", "nsh_spi", "nsh_si",
          "nsh_c1", "nsh_c2", "nsh_c3", "nsh_c4")


class Popped(NamedTuple):
    batch: Batch             # the packets behind the removed headers
    rows: np.ndarray         # input rows they came from (malformed rows left out)
    fields: dict             # FIELDS of the removed NSH header, plus "md2" (list of bytes)
    counters: Counter        # "pop_packets" and DROPS reasons


def md2_tlv(md_class: int, md_type: int, value: bytes = b"") -> bytes:
    """One MD type 2 context header (RFC 8300 2.5.1): class, type, length, padded value."""
    if len(value) > 127:
        raise ValueError("an NSH metadata TLV holds at most 127 bytes")
    return (md_class.to_bytes(2, "big") + bytes([md_type & 0xFF, len(value)])
            + value + b"\0" * ((-len(value)) % 4))


def _idx(rows) -> np.ndarray:
    rows = np.asarray(rows)
    return np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)


def _col(v, n: int) -> np.ndarray:
    return np.broadcast_to(np.asarray(v, dtype=np.int64), (n,))


def _relayout(batch: Batch, idx: np.ndarray, front: np.ndarray) -> Batch:
    """Copies of packets idx with front[i] free bytes (plus HEADROOM) before each, all
    packets ending their front at one column; start points at the free bytes."""
    start = batch.start[idx].astype(np.int64)
    length = batch.length[idx].astype(np.int64)
    col = HEADROOM + (int(front.max()) if len(front) else 0)
    width = int(length.max()) if len(length) else 0
    out = np.zeros((len(idx), (col + width + TAILROOM + 7) & ~7), np.uint8)
    d = batch.data
    for s in np.unique(start):
        g = slice(None) if start.min() == start.max() else np.flatnonzero(start == s)
        s = int(s)
        w = min(width, d.shape[1] - s)
        out[g, col:col + w] = d[idx[g], s:s + w]
    if len(length) and length.min() != width:
        out[:, col:col + width][np.arange(width) >= length[:, None]] = 0
    return Batch(out, (col - front).astype(np.int32), (length + front).astype(np.int32),
                 batch.in_port[idx].copy())


def push_nsh(batch: Batch, rows, md_type: int = 1, next_proto=NP_ETHERNET, spi=0,
             si=DEFAULT_SI, flags=0, ttl=DEFAULT_TTL, context=(0, 0, 0, 0), md2=b"") -> Batch:
    """OVS push_nsh: an NSH header in front of each packet of rows; the result is an NSH
    packet (packet_type (1, 0x894F), no Ethernet header: push_eth adds one).

    Fields are scalars or arrays aligned with rows.  MD type 1 carries `context`
    (c1..c4); MD type 2 carries `md2`, whole TLVs (see md2_tlv), bytes or one per row.
    """
    idx = _idx(rows)
    n = len(idx)
    if md_type == 1:
        tlvs = None
        hlen = np.full(n, 8 + 16, np.int64)
    elif md_type == 2:
        tlvs = [md2] * n if isinstance(md2, (bytes, bytearray)) else list(md2)
        hlen = 8 + np.fromiter((len(t) for t in tlvs), np.int64, n)
        if n and ((hlen % 4).any() or hlen.max() > 252):
            raise ValueError("MD type 2 metadata must be whole 4-byte words, at most 244 bytes")
    else:
        raise ValueError(f"NSH MD type must be 1 or 2, not {md_type}")
    out = _relayout(batch, idx, hlen)
    if n == 0:
        return out
    d = out.data
    r = np.arange(n)
    s = out.start.astype(np.int64)
    word0 = ((_col(flags, n) & 3) << 28 | (_col(ttl, n) & 0x3F) << 22
             | (hlen // 4) << 16 | md_type << 8 | (_col(next_proto, n) & 0xFF))
    word1 = (_col(spi, n) & 0xFFFFFF) << 8 | (_col(si, n) & 0xFF)
    words = [word0, word1]
    if md_type == 1:
        words += [_col(c, n) & 0xFFFFFFFF for c in context]
    hdr = np.concatenate([be_bytes(w, 4) for w in words], axis=1)
    cols = s[:, None] + np.arange(hdr.shape[1])
    d[r[:, None], cols] = hdr
    if tlvs is not None:
        for ln in np.unique(hlen):
            g = np.flatnonzero(hlen == ln)
            if ln == 8:
                continue
            tb = np.frombuffer(b"".join(tlvs[i] for i in g), np.uint8).reshape(len(g), ln - 8)
            d[g[:, None], s[g][:, None] + 8 + np.arange(ln - 8)] = tb
    return out


def push_eth(batch: Batch, rows, src=0, dst=0, ethertype: int = ETH_NSH) -> Batch:
    """OVS push_eth (encap(ethernet)): an Ethernet header in front of each packet of rows."""
    idx = _idx(rows)
    n = len(idx)
    out = _relayout(batch, idx, np.full(n, 14, np.int64))
    if n:
        hdr = np.concatenate([be_bytes(_col(dst, n), 6), be_bytes(_col(src, n), 6),
                              be_bytes(np.full(n, ethertype), 2)], axis=1)
        s = out.start.astype(np.int64)
        out.data[np.arange(n)[:, None], s[:, None] + np.arange(14)] = hdr
    return out


def pop_eth(batch: Batch, rows) -> Batch:
    """OVS pop_eth: drop each packet's Ethernet header (and VLAN tags); no copy of data."""
    out = batch.take(_idx(rows))
    pos, _ = _l3(out, np.arange(len(out)))
    hl = (pos - out.start).astype(np.int32)
    out.start += hl
    out.length -= hl
    return out


def encap(batch: Batch, rows, md_type: int = 1, eth_src=0, eth_dst=0, **fields) -> Batch:
    """OVS encap(nsh(md_type=...)) then encap(ethernet): Ethernet/NSH frames around the
    Ethernet frames of rows (next protocol 3).  fields: push_nsh's keywords."""
    pushed = push_nsh(batch, rows, md_type=md_type, **fields)
    return push_eth(pushed, np.arange(len(pushed)), eth_src, eth_dst)


def _l3(batch: Batch, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column behind Ethernet and VLAN tags, and the ethertype there."""
    d = batch.data
    pos = batch.start[idx].astype(np.int64) + 12
    w = d.shape[1] - 2
    et = d[idx, np.minimum(pos, w)].astype(np.int64) << 8 | d[idx, np.minimum(pos + 1, w)]
    for _ in range(4):
        tag = (et == ETH_VLAN) | (et == ETH_QINQ)
        if not tag.any():
            break
        pos = np.where(tag, pos + 4, pos)
        p = np.minimum(pos, w)
        et = np.where(tag, d[idx, p].astype(np.int64) << 8 | d[idx, p + 1], et)
    return pos + 2, et


def _nsh_at(batch: Batch, idx: np.ndarray, col: np.ndarray) -> tuple[dict, np.ndarray, np.ndarray]:
    """Fields of the NSH headers at col, each header's length, and an error per row
    (0 ok, else 1 + index into DROPS)."""
    d = batch.data
    end = (batch.start[idx] + batch.length[idx]).astype(np.int64)
    cols = np.minimum(col[:, None] + np.arange(24), d.shape[1] - 1)
    h = d[idx[:, None], cols].astype(np.int64)
    w0 = h[:, 0] << 24 | h[:, 1] << 16 | h[:, 2] << 8 | h[:, 3]
    hlen = ((w0 >> 16) & 0x3F) * 4
    md = (w0 >> 8) & 0x0F
    err = np.zeros(len(idx), np.int64)
    trunc = (end - col < 8) | (col + hlen > end)
    bad = ((w0 >> 30) != 0) | (hlen < 8) | ((md == 1) & (hlen != MD1_LEN)) \
        | ~np.isin(md, (1, 2))
    err[trunc] = 2
    err[~trunc & bad] = 3
    ctx = [h[:, 8 + 4 * i] << 24 | h[:, 9 + 4 * i] << 16 | h[:, 10 + 4 * i] << 8 | h[:, 11 + 4 * i]
           for i in range(4)]
    f = {"nsh_flags": (w0 >> 28) & 3, "nsh_ttl": (w0 >> 22) & 0x3F, "nsh_mdtype": md,
         "nsh_np": w0 & 0xFF, "nsh_spi": h[:, 4] << 16 | h[:, 5] << 8 | h[:, 6],
         "nsh_si": h[:, 7]}
    for i in range(4):
        f[f"nsh_c{i + 1}"] = np.where(md == 1, ctx[i], 0)
    return f, hlen, err


def _pop(batch: Batch, idx: np.ndarray, col: np.ndarray, err: np.ndarray,
         fields: dict, hlen: np.ndarray) -> Popped:
    counters: Counter = Counter()
    for i in np.unique(err[err > 0]):
        counters[DROPS[i - 1]] += int((err == i).sum())
    keep = np.flatnonzero(err == 0)
    counters["pop_packets"] += len(keep)
    out = batch.take(idx[keep])
    new_start = col[keep] + hlen[keep]
    out.length -= (new_start - out.start).astype(np.int32)
    out.start = new_start.astype(np.int32)
    f = {k: v[keep] for k, v in fields.items()}
    d = batch.data
    f["md2"] = [d[idx[k], int(col[k]) + 8:int(col[k] + hlen[k])].tobytes()
                if fields["nsh_mdtype"][k] == 2 else b"" for k in keep]
    return Popped(out, idx[keep], f, +counters)


def pop_nsh(batch: Batch, rows) -> Popped:
    """OVS pop_nsh on NSH packets (starting with the NSH header): the inner packets, whose
    type the returned nsh_np says (NP_* values).  Malformed headers are counted, dropped."""
    idx = _idx(rows)
    col = batch.start[idx].astype(np.int64)
    f, hlen, err = _nsh_at(batch, idx, col)
    return _pop(batch, idx, col, err, f, hlen)


def decap(batch: Batch, rows) -> Popped:
    """OVS decap() twice on Ethernet/NSH frames: Ethernet (and VLAN tags) and NSH removed.
    Frames whose ethertype is not NSH are counted as not_nsh and dropped."""
    idx = _idx(rows)
    col, et = _l3(batch, idx)
    f, hlen, err = _nsh_at(batch, idx, col)
    err = np.where(et != ETH_NSH, 1, err)
    return _pop(batch, idx, col, err, f, hlen)


def fields(batch: Batch, rows) -> dict:
    """The NSH fields of Ethernet/NSH frames (zeros where a row is not NSH), plus "ok"."""
    idx = _idx(rows)
    col, et = _l3(batch, idx)
    f, _, err = _nsh_at(batch, idx, col)
    ok = (et == ETH_NSH) & (err == 0)
    f = {k: np.where(ok, v, 0) for k, v in f.items()}
    f["ok"] = ok
    return f


def set_nsh(batch: Batch, rows, **values) -> np.ndarray:
    """set_field on nsh_flags/nsh_ttl/nsh_spi/nsh_si/nsh_c1..c4 of Ethernet/NSH frames, in
    place (contexts only on MD type 1).  Values: scalars or arrays aligned with rows.
    Returns the mask of rows that had a well-formed NSH header (others are untouched)."""
    bad = set(values) - {"nsh_flags", "nsh_ttl", "nsh_spi", "nsh_si",
                         "nsh_c1", "nsh_c2", "nsh_c3", "nsh_c4"}
    if bad:
        raise ValueError(f"cannot set {', '.join(sorted(bad))}")
    idx = _idx(rows)
    col, et = _l3(batch, idx)
    f, _, err = _nsh_at(batch, idx, col)
    ok = (et == ETH_NSH) & (err == 0)
    n = len(idx)
    for name, v in values.items():
        f[name] = np.where(ok, _col(v, n), f[name])
    _write(batch, idx[ok], col[ok], {k: v[ok] for k, v in f.items()})
    return ok


def _write(batch: Batch, idx: np.ndarray, col: np.ndarray, f: dict) -> None:
    d = batch.data
    if len(idx) == 0:
        return
    r = idx[:, None]
    old0 = d[r, col[:, None] + np.arange(4)].astype(np.int64)
    w0 = old0[:, 0] << 24 | old0[:, 1] << 16 | old0[:, 2] << 8 | old0[:, 3]
    w0 = (w0 & ~0x3FC00000) | (f["nsh_flags"] & 3) << 28 | (f["nsh_ttl"] & 0x3F) << 22
    w1 = (f["nsh_spi"] & 0xFFFFFF) << 8 | (f["nsh_si"] & 0xFF)
    d[r, col[:, None] + np.arange(8)] = np.concatenate([be_bytes(w0, 4), be_bytes(w1, 4)], 1)
    md1 = np.flatnonzero(f["nsh_mdtype"] == 1)
    if len(md1):
        ctx = np.concatenate([be_bytes(f[f"nsh_c{i + 1}"][md1], 4) for i in range(4)], 1)
        d[idx[md1][:, None], col[md1][:, None] + 8 + np.arange(16)] = ctx


def dec_nsh_ttl(batch: Batch, rows) -> np.ndarray:
    """OVS dec_nsh_ttl on Ethernet/NSH frames, in place: rows whose TTL is 0 or 1 are not
    decremented and are returned as expired (OVS sends them to the controller with reason
    invalid_ttl and does not forward them); returns that mask aligned with rows."""
    idx = _idx(rows)
    col, et = _l3(batch, idx)
    f, _, err = _nsh_at(batch, idx, col)
    ok = (et == ETH_NSH) & (err == 0)
    expired = ok & (f["nsh_ttl"] <= 1)
    live = ok & ~expired
    f["nsh_ttl"] = f["nsh_ttl"] - 1
    _write(batch, idx[live], col[live], {k: v[live] for k, v in f.items()})
    return expired
