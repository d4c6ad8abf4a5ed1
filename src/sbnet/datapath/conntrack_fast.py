"""Conntrack's express path: established TCP/IPv4 ACK segments of a batch in a few whole-batch array passes."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import conntrack_table as CT
from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack_batch import established_rows
from sbnet.datapath.conntrack_pkt import CtBatch, _checksums_ok
from sbnet.datapath.conntrack_table import (
    _CT_FIRST, _CT_LAST, _NAT_BITS, _S, _W, C_EXP, C_LABEL, C_MARK, C_NAT, C_TCP, C_TUP, EST,
    INV, NEW, RPL, TRK)
from sbnet.flows.fields import ETH_IP, IP_TCP

_STATE0, _STATE1 = C_TCP + 4, C_TCP + 9
_MAX_WINDOW = 128          # bytes of IPv4 packet summed with one small matrix product
_LAYERS = 4                # k-th rows of a connection run as k-th vectorized pass, up to this
_TCP_META = np.uint64(IP_TCP << 16)
_ZERO = np.uint64(0)


def express(ct, b: CtBatch) -> np.ndarray:
    """Run the express rows of b.rows through ct (the Conntrack engine); the positions
    in b.rows of the rows left over.

    A row takes the express path when it is an IPv4 TCP segment with only ACK
    among SYN/FIN/RST/ACK, of a live connection established both ways (without
    NAT when the action translates), and every other row of the batch that
    finds that connection does too: then nothing else in the batch can see the
    connection, so handling these rows first gives what batch order would.
    Each connection's table row is gathered once; its first rows in the batch
    are updated together (T.established_one), then its second rows, and so on;
    rows past the _LAYERS-th of a connection take the prefix-maxima passes
    (conntrack_batch.established_rows).  Everything else goes on to the
    general batch path.
    """
    rows, zones, now = b.rows, b.zones, b.now
    tab = ct.table
    m = rows.size
    if tab.overflow:
        # Tuples whose hash was taken are found only by exact lookups.
        return np.arange(m)
    parsed = b.parsed
    keys = parsed.keys
    full = m == keys.shape[1] and rows[0] == 0 and rows[-1] == m - 1 and \
        (m < 3 or bool((np.diff(rows) == 1).all()))

    def col(a):
        return a if full else a[rows]

    l3, l4 = col(parsed.l3), col(parsed.l4)
    cand = (col(keys[_S["eth_type"]]) == ETH_IP) & (col(keys[_S["nw_proto"]]) == IP_TCP) \
        & (col(parsed.error) == 0) & (l3 >= 0) & (l4 >= 0) \
        & ((col(keys[_S["nw_frag"]]) & np.uint64(1)) == 0)
    if not cand.any():
        return np.arange(m)
    loc = None if cand.all() else np.flatnonzero(cand)

    def sub(a):
        return a if loc is None else a[loc]

    l3, l4 = sub(l3), sub(l4)
    u3, u4 = int(l3[0]), int(l4[0])
    data = b.batch.data
    hl = u4 - u3
    if u4 + 16 > data.shape[1] or hl < 20 or hl & 3:
        return np.arange(m)
    # Rows with other header offsets are looked up (their connections stay
    # off the express path) but not read.
    geo = (l3 == u3) & (l4 == u4)
    grows = sub(rows)
    sliced = full and loc is None
    # IPv4 header and TCP header up to the window, one contiguous copy read
    # as big-endian words (hl is a multiple of 4).
    hdr = np.ascontiguousarray(data[:, u3:u4 + 16] if sliced else data[grows, u3:u4 + 16])
    tot = hdr.view(">u2")[:, 1].astype(np.int64)
    words = hdr.view(">u4")
    seq, ack, w3 = (words[:, hl // 4 + j].astype(np.int64) for j in (1, 2, 3))
    src, dst = sub(col(keys[_S["nw_src"]])), sub(col(keys[_S["nw_dst"]]))
    sp, dp = sub(col(keys[_S["tp_src"]])), sub(col(keys[_S["tp_dst"]]))
    zc = sub(zones)
    st_in = sub(col(keys[_S["ct_state"]]))
    same_zone = sub(col(keys[_S["ct_zone"]])) == zc
    ok_pkt = geo & (((w3 >> 16) & (T.SYN | T.FIN | T.RST | T.ACK)) == T.ACK)
    # Packets NATed before in this zone are looked up by their reverse tuple.
    natted = same_zone & ((st_in & np.uint64(_NAT_BITS)) != 0)
    ok_pkt &= ~natted
    # The lookup, as the general path's: tuple hash, index, the table row.
    h = CT.tuple_hashes(zc | _TCP_META, _ZERO, src, _ZERO, dst, sp, dp)
    vals = tab.index.get_many(h)
    hit = vals >= 0
    ci = np.where(hit, vals >> 1, tab.cap)
    di = (np.maximum(vals, 0) & 1).astype(np.intp)
    R = tab.mem.take(ci, axis=0)
    Ri = R.view(np.int64)
    n = ci.size
    # Each packet's direction of its connection's tuple, copied out contiguous.
    if not di.any() or di.all():
        tw = R[:, C_TUP + 6 * int(di[0]):C_TUP + 6 * int(di[0]) + 6].copy()
    else:
        tw = np.where(di[:, None] != 0, R[:, C_TUP + 6:C_TUP + 12], R[:, C_TUP:C_TUP + 6])
    found = hit & ((tw[:, 0] | tw[:, 2]) == 0) & (tw[:, 1] == src) & (tw[:, 3] == dst) \
        & (tw[:, 4] == sp) & (tw[:, 5] == dp) & (R[:, C_EXP].view(np.float64) > now)
    elig = found & ok_pkt & (Ri[:, _STATE0] == T.ESTABLISHED) \
        & (Ri[:, _STATE1] == T.ESTABLISHED)
    if b.nat is not None:
        elig &= R[:, C_NAT] == 0
    busy = ci[found & ~elig]
    if natted.any():
        j = np.flatnonzero(natted)
        rv = tab.index.get_many(CT.tuple_hashes(zc[j] | _TCP_META, _ZERO, dst[j], _ZERO, src[j],
                                                dp[j], sp[j]))
        busy = np.concatenate([busy, rv[rv >= 0] >> 1])
    if busy.size:
        # A connection with any row off the express path keeps all its rows off it.
        mark = tab.scratch()
        mark[ci[elig]] = 0
        mark[busy] = 1
        elig &= mark[ci] == 0
    if ct.checksums and elig.any():
        # Checked last, on the rows still express: a packet failing it is
        # +inv on the general path and touches no connection.
        elig &= _tcp4_checksums(data, grows, sliced, u3, hl, tot, keys, elig)
    ex = np.flatnonzero(elig)
    if not ex.size:
        return np.arange(m)
    c = ci[ex]
    rp = di[ex].astype(bool)
    seg = T.Segments(seq, ack, w3 & 0xFFFF, tot - hl - (w3 >> 28) * 4)
    ok, done = _express_tcp(ct, Ri, ex, c, rp, seg, now)
    if not done.all():
        ex, rp, ok = ex[done], rp[done], ok[done]
    k = ex.size

    def sel(a):
        return a if k == n else a[ex]       # every candidate: no copies

    s = np.where(sel(same_zone), sel(st_in), _ZERO)
    s = (s | np.uint64(EST) | np.where(rp, np.uint64(RPL), _ZERO)) & ~np.uint64(NEW)
    st = np.where(ok, s, np.uint64(INV)) | np.uint64(TRK)
    nbad = k - int(np.count_nonzero(ok))
    stats = ct.stats
    for name, v in (("packets", k), ("lookups_hit", k), ("fast_path", k), ("invalid", nbad)):
        stats[name] += v
    # The original tuple: the packet's own for rows in the original direction.
    tup = None if rp.any() else [sel(x) for x in (src, dst, sp, dp)]
    _write_md_tcp4(keys, sel(grows), sliced and k == m, st, sel(zc), sel(R), tup)
    if k == m:
        return np.zeros(0, dtype=np.intp)
    if loc is not None:
        ex = loc[ex]
    rest = np.ones(m, dtype=bool)
    rest[ex] = False
    return np.flatnonzero(rest)


def _express_tcp(ct, Ri, ex, c, rp, seg: T.Segments, now: float):
    """The TCP update of the express rows ex (gathered table rows Ri, segments seg of
    every candidate); returns (valid, settled) per express row.  Unsettled rows (a
    connection's rows after an invalid one, past the prefix-maxima passes) go to the
    general path."""
    tab = ct.table
    k = ex.size
    done = np.ones(k, dtype=bool)
    # Pass 1 runs every row on the state before the batch; only each
    # connection's first row keeps its result (later rows are redone below).
    first = tab.first_rows(c)
    if k == Ri.shape[0]:
        ok = _express_update(ct, Ri, c, rp, seg, now, first)
    else:
        ok = _express_update(ct, Ri[ex], c, rp, seg.take(ex), now, first)
    todo = np.flatnonzero(~first)
    for _ in range(1, _LAYERS):
        if not todo.size:
            return ok, done
        first = tab.first_rows(c[todo])
        now_rows = todo if first.all() else todo[first]
        cn = c[now_rows]
        ok[now_rows] = _express_update(ct, tab.mem.take(cn, axis=0).view(np.int64), cn,
                                       rp[now_rows], seg.take(ex[now_rows]), now)
        todo = todo[~first]
    if todo.size:
        # Busy connections: the rest of their rows, in order, by prefix maxima.
        left = np.ones(Ri.shape[0], dtype=bool)
        ok[todo] = established_rows(ct, seg, ex[todo], c[todo], rp[todo], now, left) == T.VALID
        done[todo] = left[ex[todo]]
    return ok, done


def _express_update(ct, Ri, c, rp, seg: T.Segments, now: float, first=None) -> np.ndarray:
    """T.established_one on the connections c from their table rows Ri; the
    peers and expiration written back with flat scatters.  With `first`, c
    may repeat and only the rows where `first` holds are written."""
    one_way = not rp.any() or rp.all()
    if one_way:
        # Every row from the same side: the peers are plain columns.
        s_col = C_TCP + (5 if rp[0] else 0)
        d_col = C_TCP + 5 - (s_col - C_TCP)
        # seqlo columns are read several times: copied out of the rows once.
        src = [Ri[:, s_col + j] if j else Ri[:, s_col].copy() for j in range(4)]
        dst = [Ri[:, d_col + j] if j else Ri[:, d_col].copy() for j in range(4)]
    else:
        ar = np.arange(c.size) * _W
        s_off = ar + C_TCP + np.where(rp, 5, 0)
        d_off = ar + C_TCP + np.where(rp, 0, 5)
        flat = Ri.reshape(-1)
        src = [flat.take(s_off + j) for j in range(4)]
        dst = [flat.take(d_off + j) for j in range(4)]
    ok, s_lo, s_mw, d_hi = T.established_one(src, dst, seg, ct.tcp_liberal)
    if one_way:
        base = c * _W
        s_at, d_at = base + s_col, base + d_col
    else:
        base = c * _W - ar
        s_at, d_at = base + s_off, base + d_off
    keep = ok
    if first is not None and not first.all():
        keep = ok & first
        if one_way:
            # Same addresses for a connection's rows: written last to first,
            # its first row's values land.
            s_at, d_at, s_lo, s_mw, d_hi = (x[::-1] for x in (s_at, d_at, s_lo, s_mw, d_hi))
        else:
            s_at, d_at, s_lo, s_mw, d_hi = (x[first] for x in (s_at, d_at, s_lo, s_mw, d_hi))
        c, nbad = c[keep], int(np.count_nonzero(first)) - int(np.count_nonzero(keep))
    else:
        nbad = c.size - int(np.count_nonzero(ok))
        if nbad:
            c = c[ok]
    tab = ct.table
    flat = tab.mem.view(np.int64).reshape(-1)
    flat[s_at] = s_lo
    flat[s_at + 2] = s_mw
    flat[d_at + 1] = d_hi
    tab.exp[c] = now + ct.tmo[T.TM_TCP_EST]
    ct.stats["tcp_seq_chk_failed"] += nbad
    return ok


def _tcp4_checksums(data, grows, sliced, u3, hl, tot, keys, geo) -> np.ndarray:
    """IPv4 header and TCP checksum verdicts of the packets where geo holds (False
    elsewhere), whose IP header is at column u3, hl bytes long."""
    good = np.zeros(grows.size, dtype=bool)
    small = geo & (tot <= _MAX_WINDOW) & (tot >= hl)
    every = small.all()
    if (every or small.any()) and not u3 & 1 and data.strides[1] == 1 \
            and not data.strides[0] & 1 \
            and u3 + (int((tot if every else tot[small]).max()) + 1) // 2 * 2 <= data.shape[1]:
        if every:
            good = _tcp4_small(data, None if sliced else grows, u3, hl, tot)
        else:
            j = np.flatnonzero(small)
            good[j] = _tcp4_small(data, grows[j], u3, hl, tot[j])
        geo = geo & ~small
    j = np.flatnonzero(geo & (tot >= hl))
    if j.size:
        l3 = np.full(j.size, u3, dtype=np.int64)
        good[j] = _checksums_ok(data, keys, grows[j], np.ones(j.size, dtype=bool),
                                np.zeros(j.size, dtype=bool), np.full(j.size, IP_TCP), l3,
                                l3 + hl, l3 + tot[j])
    return good


def _tcp4_small(data, grows, u3, hl, tot) -> np.ndarray:
    """_tcp4_checksums of packets of at most _MAX_WINDOW bytes (grows None: every row).

    Two row sums of native 16-bit words, as one float32 matrix product (exact:
    sums stay below 2**24), bytes past each packet's end masked out: the IPv4
    header, and the TCP segment with the pseudo-header (its addresses are
    header words 6-9; protocol and length are added byte-swapped, as a
    ones-complement sum of swapped words is the swapped sum, RFC 1071).  A
    positive sum folds to 0xFFFF exactly when 0xFFFF divides it.
    """
    t0 = int(tot.max())
    w = (t0 + 1) // 2
    win = data[:, u3:u3 + 2 * w] if grows is None else data[grows, u3:u3 + 2 * w]
    uniform = not (tot != t0).any()
    if t0 & 1 or not uniform:
        win = win * (np.arange(2 * w) < tot[:, None])
    pick = np.zeros((2, w), dtype=np.float32)
    pick[0, :hl // 2] = 1
    pick[1, 6:10] = 1
    pick[1, hl // 2:] = 1
    sums = pick @ win.view(np.uint16).astype(np.float32).T
    rest = IP_TCP + (t0 if uniform else tot) - hl
    if np.little_endian:
        rest = ((rest & 0xFF) << 8) | (rest >> 8)
    sums[1] += rest
    ok = np.fmod(sums, np.float32(0xFFFF)) == 0
    return ok[0] & ok[1]


def _write_md_tcp4(keys, grows, whole, st, zones, R, tup) -> None:
    """ct_* slots of the express rows: their connection's original tuple (IPv4
    TCP), tup (src, dst, sport, dport) or else read from the table rows R."""
    blk = keys[_CT_FIRST:_CT_LAST + 1] if whole else \
        np.empty((_CT_LAST - _CT_FIRST + 1, grows.size), dtype=np.uint64)
    blk[0] = st
    blk[1] = zones
    blk[2] = R[:, C_MARK]
    blk[3:5] = R[:, C_LABEL:C_LABEL + 2].T
    if tup is None:
        tup = [R[:, C_TUP + j] for j in (1, 3, 4, 5)]
    blk[5], blk[6], blk[12], blk[13] = tup
    blk[7:11] = 0
    blk[11] = IP_TCP
    if not whole:
        keys[_CT_FIRST:_CT_LAST + 1, grows] = blk
