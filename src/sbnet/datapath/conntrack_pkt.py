"""Conntrack's view of a batch: the per-call state, the lookup tuple of every packet (OVS conn_key_extract), TCP fields, checksum checks."""

from __future__ import annotations

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import fold
from sbnet.datapath.conntrack_table import _NAT_BITS, INV, meta_words, tuple_hashes
from sbnet.datapath.conntrack_tcp import get_wscale
from sbnet.datapath.parse import Parsed
from sbnet.flows.fields import (ETH_IP, ETH_IPV6, IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP,
                                SLOT_INDEX)

_S = SLOT_INDEX
_M64 = (1 << 64) - 1
# ICMP query types and their answers (OVS reverse_icmp_type / reverse_icmp6_type).
_ICMP_REV = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15}
_ICMP6_REV = {128: 129, 129: 128}
_ICMP_ERR = (3, 4, 5, 11, 12)
_ICMP6_ERR = (1, 2, 3, 4)
_REV4 = np.full(256, -1, dtype=np.int64)
_REV6 = np.full(256, -1, dtype=np.int64)
for _a, _b in _ICMP_REV.items():
    _REV4[_a] = _b
for _a, _b in _ICMP6_REV.items():
    _REV6[_a] = _b


class PacketInfo:
    """Per-row (local to the ct call) conntrack fields of a batch.

    words is (m, 6) uint64: src_hi, src_lo, dst_hi, dst_lo, sport, dport of the
    lookup tuple: for ICMP queries sport/dport are id << 8 | type (and the
    answer's type), for ICMP errors (related) it is the quoted packet's tuple
    reversed, as OVS builds its conn_key.
    """

    def __init__(self, m: int):
        self.ok = np.zeros(m, dtype=bool)
        self.related = np.zeros(m, dtype=bool)
        self.v6 = np.zeros(m, dtype=bool)
        self.proto = np.zeros(m, dtype=np.int64)
        self.words = np.zeros((m, 6), dtype=np.uint64)
        self.zone = np.zeros(m, dtype=np.uint64)
        self.hash = np.zeros(m, dtype=np.uint64)
        self.flags = np.zeros(m, dtype=np.int64)
        self.seq = np.zeros(m, dtype=np.int64)
        self.ack = np.zeros(m, dtype=np.int64)
        self.win = np.zeros(m, dtype=np.int64)
        self.plen = np.zeros(m, dtype=np.int64)
        self._opts: dict[int, bytes] = {}      # TCP options of SYN rows that have any

    def tuple_words(self, li: np.ndarray) -> np.ndarray:
        return self.words[li]

    def tuple(self, i: int) -> tuple:
        w = self.words[i].tolist()
        return (int(self.zone[i]), int(self.proto[i]), int(self.v6[i]),
                w[0] << 64 | w[1], w[2] << 64 | w[3], w[4], w[5])

    def rows_info(self, rows: np.ndarray) -> list[tuple]:
        rel = self.related[rows].tolist()
        fl = self.flags[rows].tolist()
        return [(self.tuple(i), r, f) for i, r, f in zip(rows.tolist(), rel, fl)]

    def wscale(self, i: int) -> int:
        return get_wscale(self._opts.get(i, b""))

    def wscales(self, idx: np.ndarray) -> np.ndarray:
        """wscale() of the rows idx (int64): zero for rows without options, so a batch of
        option-less SYNs costs no call per row."""
        out = np.zeros(len(idx), dtype=np.int64)
        if self._opts:
            opts = self._opts
            for j, i in enumerate(idx.tolist()):
                o = opts.get(i)
                if o:
                    out[j] = get_wscale(o)
        return out


class CtBatch:
    """The state of one ct() call, handed from stage to stage of the engine.

    The action's arguments (batch, parsed, rows, zones, commit, nat, now,
    force), then, once the packets are keyed (start()), per row of `rows`
    (local numbering): p (PacketInfo), the ct_state being built (st), the
    connection slot (conn, -1 none) and its direction (reply), whether the
    lookup found it (found), where the ct_* tuple comes from (tsrc: 0 none,
    1 the connection, 2 the packet), packets NATed before in this zone
    (natted), the gathered table rows (R) and the rows to translate (jobs).
    """

    def __init__(self, batch: Batch, parsed: Parsed, rows: np.ndarray, zones: np.ndarray,
                 commit: bool, nat, now: float, force: bool):
        self.batch, self.parsed, self.rows, self.zones = batch, parsed, rows, zones
        self.commit, self.nat, self.now, self.force = commit, nat, now, force

    def narrow(self, left: np.ndarray) -> None:
        """Keep only the rows at positions `left` (what the express path left)."""
        self.rows, self.zones = self.rows[left], self.zones[left]

    def start(self, checksums: bool, p: PacketInfo | None = None) -> None:
        """Key the packets (p: keyed already) and set up the per-row verdict arrays."""
        rows, zones = self.rows, self.zones
        m = rows.size
        keys = self.parsed.keys
        if p is None:
            p = extract(self.batch, self.parsed, rows, zones, checksums)
        self.p = p
        st_in = keys[_S["ct_state"], rows]
        same_zone = keys[_S["ct_zone"], rows] == zones
        st = np.where(same_zone, st_in, 0).astype(np.uint64)
        self.natted = (st & _NAT_BITS) != 0
        st[~p.ok] = INV
        self.st = st
        self.conn = np.full(m, -1, dtype=np.int64)
        self.reply = np.zeros(m, dtype=bool)
        self.found = np.zeros(m, dtype=bool)
        self.tsrc = np.where(p.ok, 2, 0).astype(np.int8)
        self.R = None
        self.jobs: list[np.ndarray] = []


def _hash(p: PacketInfo, rows: np.ndarray) -> None:
    w = p.words[rows]
    p.hash[rows] = tuple_hashes(meta_words(p.zone[rows], p.proto[rows], p.v6[rows]),
                                w[:, 0], w[:, 1], w[:, 2], w[:, 3], w[:, 4], w[:, 5])


def _gather(data: np.ndarray, rows: np.ndarray, col: np.ndarray, k: int) -> np.ndarray:
    """Bytes col..col+k of each row, (m, k): one record copy per row through a void view."""
    if not data.flags.c_contiguous:
        idx = np.minimum(col[:, None] + np.arange(k), data.shape[1] - 1)
        return data[rows[:, None], idx]
    flat = data.reshape(-1)
    pos = np.minimum(rows * data.shape[1] + col, flat.size - k)
    view = np.ndarray((flat.size - k + 1,), dtype=np.dtype((np.void, k)), buffer=flat,
                      strides=(1,))
    return view[pos].view(np.uint8).reshape(-1, k)


_WINDOW_MAX = 128


def _ones_sum(data, rows, start, length) -> np.ndarray:
    """Folded ones-complement sums of data[rows[i], start[i]:start[i]+length[i]].

    Sums 16-bit words with np.add.reduceat over a big-endian word view of the
    whole buffer, one view per start parity, so no per-row copies are made.
    """
    if not rows.size:
        return np.zeros(0, dtype=np.uint64)
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    length = np.maximum(length, 0)
    width = int(length.max())
    if width <= _WINDOW_MAX:
        # Short headers: one fixed-width window per row, bytes past the end zeroed.
        width += width & 1
        b = _gather(data, rows, start, max(width, 2))
        b[np.arange(b.shape[1]) >= length[:, None]] = 0
        total = b.view(">u2").sum(axis=1, dtype=np.uint64)
        return fold(total).astype(np.uint64)
    flat = data.reshape(-1)
    absstart = rows.astype(np.int64) * data.shape[1] + start
    length = np.maximum(length, 0)
    nw = length // 2
    total = np.zeros(rows.size, dtype=np.uint64)
    for parity in (0, 1):
        sel = np.flatnonzero((absstart & 1) == parity)
        if not sel.size:
            continue
        # Native-order words: a ones-complement sum is byte-order independent,
        # so the sum of swapped words is the swapped sum (RFC 1071), swapped back below.
        words = flat[parity:parity + (flat.size - parity) // 2 * 2].view(np.uint16)
        a = absstart[sel] // 2
        b = a + nw[sel]
        ind = np.empty(2 * sel.size, dtype=np.intp)
        ind[0::2] = a
        ind[1::2] = np.minimum(b, words.size - 1)
        sums = np.add.reduceat(words, ind, dtype=np.uint64)[0::2]
        sums[nw[sel] == 0] = 0
        total[sel] = sums
    total = fold(total).astype(np.uint64)
    if np.little_endian:
        total = ((total & np.uint64(0xFF)) << np.uint64(8)) | (total >> np.uint64(8))
    odd = np.flatnonzero(length & 1)
    if odd.size:
        total[odd] += flat[absstart[odd] + length[odd] - 1].astype(np.uint64) << np.uint64(8)
        total = fold(total).astype(np.uint64)
    return total


def _words_sum(x: np.ndarray) -> np.ndarray:
    """Sum of the four 16-bit words of each uint64."""
    w = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint16).reshape(-1, 4)
    return (w[:, 0].astype(np.uint64) + w[:, 1] + w[:, 2] + w[:, 3])


def extract(batch: Batch, parsed: Parsed, rows: np.ndarray, zones: np.ndarray,
            checksums: bool) -> PacketInfo:
    """The conntrack key of each row; rows OVS could not key (non-IP, fragments,
    truncated, bad checksum, ICMP types without a connection) have ok False."""
    m = len(rows)
    p = PacketInfo(m)
    p.zone[:] = zones
    keys = parsed.keys
    data = batch.data
    eth = keys[_S["eth_type"], rows]
    v6 = eth == ETH_IPV6
    ok = ((eth == ETH_IP) | v6) & (parsed.error[rows] == 0) & (parsed.l3[rows] >= 0) \
        & ((keys[_S["nw_frag"], rows] & np.uint64(1)) == 0)
    proto = keys[_S["nw_proto"], rows].astype(np.int64)
    l3 = parsed.l3[rows].astype(np.int64)
    l4 = parsed.l4[rows].astype(np.int64)
    p.v6 = v6
    p.proto = proto
    w = p.words
    w[:, 0] = np.where(v6, keys[_S["ipv6_src_hi"], rows], 0)
    w[:, 1] = np.where(v6, keys[_S["ipv6_src_lo"], rows], keys[_S["nw_src"], rows])
    w[:, 2] = np.where(v6, keys[_S["ipv6_dst_hi"], rows], 0)
    w[:, 3] = np.where(v6, keys[_S["ipv6_dst_lo"], rows], keys[_S["nw_dst"], rows])
    hdr = _gather(data, rows, np.maximum(l3, 0), 6).astype(np.int64)
    tot = np.where(v6, (hdr[:, 4] << 8) | hdr[:, 5], (hdr[:, 2] << 8) | hdr[:, 3])
    l3end = np.where(v6, l3 + 40 + tot, l3 + tot)
    tp_src = keys[_S["tp_src"], rows]
    tp_dst = keys[_S["tp_dst"], rows]
    ports = (proto == IP_TCP) | (proto == IP_UDP) | (proto == IP_SCTP)
    ok &= ~ports | (l4 >= 0)
    w[:, 4] = np.where(ports, tp_src, 0)
    w[:, 5] = np.where(ports, tp_dst, 0)
    tcp = ok & (proto == IP_TCP)
    if tcp.any():
        ti = np.flatnonzero(tcp)
        h = _gather(data, rows[ti], l4[ti], 16).astype(np.int64)
        p.seq[ti] = (h[:, 4] << 24) | (h[:, 5] << 16) | (h[:, 6] << 8) | h[:, 7]
        p.ack[ti] = (h[:, 8] << 24) | (h[:, 9] << 16) | (h[:, 10] << 8) | h[:, 11]
        doff = (h[:, 12] >> 4) * 4
        p.flags[ti] = ((h[:, 12] & 1) << 8) | h[:, 13]
        p.win[ti] = (h[:, 14] << 8) | h[:, 15]
        p.plen[ti] = l3end[ti] - l4[ti] - doff
        syn = np.flatnonzero(((h[:, 13] & 2) != 0) & (doff > 20))
        for j in syn.tolist():
            r = int(rows[ti[j]])
            s = int(l4[ti[j]]) + 20
            p._opts[int(ti[j])] = data[r, s:s + int(doff[j]) - 20].tobytes()
    icmp4 = ok & (proto == IP_ICMP) & ~v6
    icmp6 = ok & (proto == IP_ICMPV6) & v6
    icmp = icmp4 | icmp6
    if icmp.any():
        ii = np.flatnonzero(icmp)
        typ = tp_src[ii].astype(np.int64)
        code = tp_dst[ii].astype(np.int64)
        h = _gather(data, rows[ii], l4[ii], 6).astype(np.int64)
        ident = (h[:, 4] << 8) | h[:, 5]
        is6 = icmp6[ii]
        rev = np.where(is6, _REV6[typ], _REV4[typ])
        query = (rev >= 0) & (code == 0)
        err = np.where(is6, np.isin(typ, _ICMP6_ERR), np.isin(typ, _ICMP_ERR))
        w[ii, 4] = np.where(query, (ident << 8) | typ, 0).astype(np.uint64)
        w[ii, 5] = np.where(query, (ident << 8) | np.maximum(rev, 0), 0).astype(np.uint64)
        ok[ii[~query & ~err]] = False
        p.related[ii[err]] = True
    if checksums:
        ok &= _checksums_ok(data, keys, rows, ok, v6, proto, l3, l4, l3end)
    p.ok = ok
    p.related &= ok
    for i in np.flatnonzero(p.related).tolist():
        if not _inner(p, data, int(rows[i]), i, int(l4[i]), int(l3end[i])):
            p.ok[i] = False
            p.related[i] = False
    plain = np.flatnonzero(p.ok & ~p.related)
    if plain.size:
        _hash(p, plain)
    return p


def _swap16(x: np.ndarray) -> np.ndarray:
    return ((x & np.uint64(0xFF)) << np.uint64(8)) | (x >> np.uint64(8))


def _checksums_small(data, keys, rows, v6, proto, l3, l4, l3end):
    """IPv4 header and L4 checksums of short packets from one window per packet.

    Prefix sums of the packet's 16-bit words give the header sum and the L4 sum
    (total minus header) at once.  Words are summed in native order: a
    ones-complement sum of byte-swapped words is the swapped sum (RFC 1071).
    """
    tot = l3end - l3
    width = max(int(tot.max()) + 1, 2) & ~1
    b = _gather(data, rows, l3, width)
    odd = np.flatnonzero(tot & 1)
    if odd.size:
        b[odd, tot[odd]] = 0
    # Word-major, so each cumsum step adds one word of every packet at once.
    csum = np.cumsum(b.view(np.uint16).T, axis=0, dtype=np.uint64)
    ar = np.arange(rows.size)
    hlen = l4 - l3
    hsum = csum[hlen // 2 - 1, ar]
    l4sum = csum[(tot + 1) // 2 - 1, ar] - hsum
    if np.little_endian:
        hsum, l4sum = _swap16(fold(hsum).astype(np.uint64)), _swap16(fold(l4sum).astype(np.uint64))
    good = v6 | (fold(hsum) == 0xFFFF)
    return good, fold(l4sum).astype(np.uint64)


def _checksums_ok(data, keys, rows, ok, v6, proto, l3, l4, l3end) -> np.ndarray:
    good = np.ones(len(rows), dtype=bool)
    l4p = ok & np.isin(proto, (IP_TCP, IP_UDP, IP_ICMP, IP_ICMPV6)) & (l4 >= 0)
    if ok.any() and (l4p == ok).all() and int((l3end - l3)[ok].max()) <= _WINDOW_MAX:
        idx = np.flatnonzero(ok)
        hdr_ok, total = _checksums_small(data, keys, rows[idx], v6[idx], proto[idx], l3[idx],
                                         l4[idx], l3end[idx])
        good[idx] = hdr_ok
        return _l4_verdict(data, keys, rows, idx, v6, proto, l4, l3end, total, good)
    v4 = np.flatnonzero(ok & ~v6)
    if v4.size:
        ihl = (_gather(data, rows[v4], l3[v4], 1)[:, 0].astype(np.int64) & 15) * 4
        good[v4] = _ones_sum(data, rows[v4], l3[v4], ihl) == 0xFFFF
    l4p = np.flatnonzero(ok & np.isin(proto, (IP_TCP, IP_UDP, IP_ICMP, IP_ICMPV6)) & (l4 >= 0))
    if not l4p.size:
        return good
    total = _ones_sum(data, rows[l4p], l4[l4p], l3end[l4p] - l4[l4p])
    return _l4_verdict(data, keys, rows, l4p, v6, proto, l4, l3end, total, good)


def _l4_verdict(data, keys, rows, l4p, v6, proto, l4, l3end, total, good) -> np.ndarray:
    """Add the pseudo-header to the L4 sums of rows l4p and check them."""
    r = rows[l4p]
    pr = proto[l4p].astype(np.uint64)
    ln = l3end[l4p] - l4[l4p]
    is6 = v6[l4p]
    lnu = ln.astype(np.uint64)
    # nw_src/nw_dst are zero for IPv6 and the ipv6 slots zero for IPv4: add all.
    pseudo = _words_sum(keys[_S["nw_src"], r]) + _words_sum(keys[_S["nw_dst"], r])
    if is6.any():
        for n in ("ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo"):
            pseudo += _words_sum(keys[_S[n], r])
    pseudo += pr + (lnu >> np.uint64(16)) + (lnu & np.uint64(0xFFFF))
    icmp4 = pr == IP_ICMP
    if icmp4.any():
        pseudo[icmp4] = 0
    res = fold(total + pseudo) == 0xFFFF
    udp0 = (pr == IP_UDP) & ~is6
    if udp0.any():
        u = np.flatnonzero(udp0)
        ck = _gather(data, r[u], l4[l4p][u] + 6, 2).astype(np.int64)
        res[u] |= (ck[:, 0] == 0) & (ck[:, 1] == 0)
    good[l4p] &= res
    return good


def _inner(p: PacketInfo, data, row: int, i: int, l4: int, end: int) -> bool:
    """Key an ICMP error by the packet it quotes, reversed (OVS extract_l4_icmp)."""
    buf = data[row, l4 + 8:end].tobytes()
    v6 = bool(p.v6[i])
    if v6:
        if len(buf) < 40 or buf[0] >> 4 != 6:
            return False
        src, dst = int.from_bytes(buf[8:24], "big"), int.from_bytes(buf[24:40], "big")
        proto, il4 = buf[6], 40
        outer_dst = int(p.words[i, 2]) << 64 | int(p.words[i, 3])
    else:
        if len(buf) < 20 or buf[0] >> 4 != 4 or (buf[0] & 15) < 5:
            return False
        src, dst = int.from_bytes(buf[12:16], "big"), int.from_bytes(buf[16:20], "big")
        proto, il4 = buf[9], (buf[0] & 15) * 4
        outer_dst = int(p.words[i, 3])
    if src != outer_dst:
        return False
    l4b = buf[il4:]
    if proto in (IP_TCP, IP_UDP, IP_SCTP):
        if len(l4b) < 8:
            return False
        sport, dport = int.from_bytes(l4b[0:2], "big"), int.from_bytes(l4b[2:4], "big")
    elif proto in (IP_ICMP, IP_ICMPV6):
        rev = _ICMP6_REV if v6 else _ICMP_REV
        if len(l4b) < 8 or l4b[0] not in rev or l4b[1] != 0:
            return False
        ident = int.from_bytes(l4b[4:6], "big")
        sport, dport = ident << 8 | l4b[0], ident << 8 | rev[l4b[0]]
    else:
        sport = dport = 0
    # The quoted packet went the other way: reverse it.
    p.proto[i] = proto
    p.words[i] = (dst >> 64, dst & _M64, src >> 64, src & _M64, dport, sport)
    return True
