"""TCP connection tracking as OVS's userspace conntrack-tcp.c (pf's sequence tracking): scalar and vectorized updates."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Per-peer states, numbered as OVS's CT_DPIF_TCPS_* (ct-dpif.h); order matters,
# the state machine compares them with < and >=.
CLOSED, LISTEN, SYN_SENT, SYN_RECV, ESTABLISHED, CLOSE_WAIT = 0, 1, 2, 3, 4, 5
FIN_WAIT_1, CLOSING, LAST_ACK, FIN_WAIT_2, TIME_WAIT = 6, 7, 8, 9, 10
STATE_NAMES = ("CLOSED", "LISTEN", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "CLOSE_WAIT",
               "FIN_WAIT_1", "CLOSING", "LAST_ACK", "FIN_WAIT_2", "TIME_WAIT")

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

# Update results (OVS enum ct_update_res).
VALID, INVALID, NEW, VALID_NEW = 0, 1, 2, 3

# Timeout classes (OVS enum ct_timeout); conntrack.Timeouts maps them to seconds.
TM_TCP_FIRST, TM_TCP_OPENING, TM_TCP_EST, TM_TCP_CLOSING, TM_TCP_FIN_WAIT, TM_TCP_CLOSED = range(6)

WSCALE_FLAG, WSCALE_UNKNOWN, WSCALE_MASK = 0x80, 0x40, 0x0F
MAX_WSCALE = 14
MAXACKWINDOW = 0xFFFF + 1500
_M32 = 0xFFFFFFFF

# Peer arrays of a connection table: column 0 is the original direction's
# sender, column 1 the reply direction's.
PEER_FIELDS = ("seqlo", "seqhi", "max_win", "wscale", "state")


def coalesced_state(orig: int, reply: int) -> str:
    """The one state dpctl/dump-conntrack prints (ct_dpif_coalesce_tcp_state)."""
    s = max(orig, reply)
    s = {FIN_WAIT_2: TIME_WAIT, SYN_RECV: ESTABLISHED}.get(s, s)
    return STATE_NAMES[s]


def invalid_flags(flags: int) -> bool:
    """tcp_invalid_flags(): flag combinations no stack sends."""
    if flags & SYN:
        if flags & (RST | FIN):
            return True
    elif not flags & (ACK | RST):
        return True
    return not flags & ACK and bool(flags & (FIN | PSH | URG))


def valid_new(flags: int) -> bool:
    """A SYN, or a mid-stream segment; never a SYN+ACK (tcp_valid_new)."""
    return not invalid_flags(flags) and (flags & (SYN | ACK)) != (SYN | ACK)


def get_wscale(options: bytes) -> int:
    """Window scale option of a SYN, with WSCALE_FLAG when present (tcp_get_wscale)."""
    i, n, ws = 0, len(options), 0
    while n - i >= 3:
        kind = options[i]
        if kind == 0:
            return ws
        if kind == 1:
            i += 1
            continue
        if kind == 3:
            ws = min(options[i + 2], MAX_WSCALE) | WSCALE_FLAG
        i += max(options[i + 1], 2)
    return ws


def _geq(a: int, b: int) -> bool:
    """SEQ_GEQ: a >= b in 32-bit sequence space."""
    return ((a - b) & _M32) < 0x80000000


def _gt(a: int, b: int) -> bool:
    d = (a - b) & _M32
    return 0 < d < 0x80000000


def new_peers(p: "TcpPacket") -> list[list[int]]:
    """Peer state [seqlo, seqhi, max_win, wscale, state] x 2 of a new connection (tcp_new_conn)."""
    src = [p.seq, (p.seq + p.plen + 1) & _M32, 0, 0, SYN_SENT]
    dst = [0, 1, 1, 0, CLOSED]
    if p.flags & SYN:
        src[1] = (src[1] + 1) & _M32
        src[3] = p.wscale
    else:
        src[3] = dst[3] = WSCALE_UNKNOWN
    mw = max(p.win, 1)
    if src[3] & WSCALE_MASK:
        sws = src[3] & WSCALE_MASK
        mw = -(-mw // (1 << sws))
    src[2] = mw
    if p.flags & FIN:
        src[1] = (src[1] + 1) & _M32
    return [src, dst]


def new_peers_many(flags, seq, win, plen, wscale) -> np.ndarray:
    """new_peers() for many first segments: (k, 2, 5) int64.  wscale: the SYN
    option of each (get_wscale), ignored for non-SYN segments."""
    k = len(seq)
    out = np.zeros((k, 2, 5), dtype=np.int64)
    syn = (flags & SYN) != 0
    fin = (flags & FIN) != 0
    ws = np.where(syn, np.asarray(wscale, dtype=np.int64).reshape(k), WSCALE_UNKNOWN)
    out[:, 0, 0] = seq
    out[:, 0, 1] = (seq + plen + 1 + syn + fin) & _M32
    sws = np.where(syn, ws & WSCALE_MASK, 0)
    mw = np.maximum(win, 1)
    out[:, 0, 2] = -(-mw // (1 << sws))
    out[:, 0, 3] = ws
    out[:, 0, 4] = SYN_SENT
    out[:, 1, 1] = 1
    out[:, 1, 2] = 1
    out[:, 1, 3] = np.where(syn, 0, WSCALE_UNKNOWN)
    out[:, 1, 4] = CLOSED
    return out


class TcpPacket:
    """The TCP header fields the state machine reads."""

    __slots__ = ("flags", "seq", "ack", "win", "plen", "wscale")

    def __init__(self, flags, seq, ack, win, plen, wscale=0):
        self.flags, self.seq, self.ack, self.win, self.plen = flags, seq, ack, win, plen
        self.wscale = wscale


class Segments(NamedTuple):
    """seq, ack, window and payload length of many TCP segments (int64 arrays)."""

    seq: np.ndarray
    ack: np.ndarray
    win: np.ndarray
    plen: np.ndarray

    def take(self, i) -> Segments:
        return Segments(self.seq[i], self.ack[i], self.win[i], self.plen[i])


def timeout_class(s_state: int, d_state: int) -> int:
    if s_state >= FIN_WAIT_2 and d_state >= FIN_WAIT_2:
        return TM_TCP_CLOSED
    if s_state >= CLOSING and d_state >= CLOSING:
        return TM_TCP_FIN_WAIT
    if s_state < ESTABLISHED or d_state < ESTABLISHED:
        return TM_TCP_OPENING
    if s_state >= CLOSING or d_state >= CLOSING:
        return TM_TCP_CLOSING
    return TM_TCP_EST


def timeout_classes(s_state: np.ndarray, d_state: np.ndarray) -> np.ndarray:
    """timeout_class() of many connections (peer states as arrays)."""
    return np.select([(s_state >= FIN_WAIT_2) & (d_state >= FIN_WAIT_2),
                      (s_state >= CLOSING) & (d_state >= CLOSING),
                      (s_state < ESTABLISHED) | (d_state < ESTABLISHED),
                      (s_state >= CLOSING) | (d_state >= CLOSING)],
                     [TM_TCP_CLOSED, TM_TCP_FIN_WAIT, TM_TCP_OPENING, TM_TCP_CLOSING],
                     TM_TCP_EST)


def update(peers: list[list[int]], reply: bool, p: TcpPacket, liberal: bool
           ) -> tuple[int, int | None]:
    """tcp_conn_update() on one segment; mutates `peers`.

    Returns (result, timeout class to refresh or None to keep the expiration).
    """
    src = peers[1 if reply else 0]
    dst = peers[0 if reply else 1]
    flags = p.flags
    if invalid_flags(flags):
        return INVALID, None
    if flags & (SYN | ACK) == SYN:
        if dst[4] >= FIN_WAIT_2 and src[4] >= FIN_WAIT_2:
            src[4] = dst[4] = CLOSED
            return NEW, None
        if src[4] <= SYN_SENT:
            src[4] = SYN_SENT
            return VALID_NEW, TM_TCP_FIRST
    sws = dws = 0
    if src[3] & WSCALE_FLAG and dst[3] & WSCALE_FLAG and not flags & SYN:
        sws, dws = src[3] & WSCALE_MASK, dst[3] & WSCALE_MASK
    elif src[3] & WSCALE_UNKNOWN and dst[3] & WSCALE_UNKNOWN and not flags & SYN:
        sws = dws = MAX_WSCALE
    win = p.win
    seq = orig_seq = p.seq
    ack = p.ack
    end = (seq + p.plen) & _M32
    if flags & SYN:
        end = (end + 1) & _M32
    if flags & FIN:
        end = (end + 1) & _M32
    check_ackskew = True
    if src[4] < SYN_SENT:
        # First packet from this end.
        if flags & SYN and dst[3] & WSCALE_FLAG:
            src[3] = p.wscale
            if src[3] & WSCALE_FLAG:
                sws = src[3] & WSCALE_MASK
                win = -(-win // (1 << sws))
                dws = dst[3] & WSCALE_MASK
            else:
                dst[2] = (dst[2] << (dst[3] & WSCALE_MASK)) & 0xFFFF
                dst[3] = 0
        src[0] = seq
        src[4] = SYN_SENT
        lim = (end + max(1, dst[2] << dws)) & _M32
        if src[1] == 1 or _geq(lim, src[1]):
            src[1] = lim
            check_ackskew = False
        if win > src[2]:
            src[2] = win
    if not flags & ACK:
        ack = dst[0]
    elif ack == 0 and flags & (ACK | RST) == ACK | RST:
        ack = dst[0]
    if seq == end:
        seq = end = src[0]
    ackskew = ((dst[0] - ack + 0x80000000) & _M32) - 0x80000000 if check_ackskew else 0
    in_window = (_geq(src[1], end)
                 and _geq(seq, (src[0] - (dst[2] << dws)) & _M32)
                 and ackskew >= -MAXACKWINDOW
                 and ackskew <= (MAXACKWINDOW << sws)
                 and (not flags & RST or orig_seq == src[0]
                      or orig_seq == (src[0] + 1) & _M32 or (orig_seq + 1) & _M32 == src[0]))
    if in_window or liberal:
        _slide(src, dst, win, end, ack, sws)
        if flags & SYN and src[4] < SYN_SENT:
            src[4] = SYN_SENT
        if flags & FIN and src[4] < CLOSING:
            src[4] = CLOSING
        if flags & ACK:
            if dst[4] == SYN_SENT:
                dst[4] = ESTABLISHED
            elif dst[4] == CLOSING:
                dst[4] = FIN_WAIT_2
        if flags & RST:
            src[4] = dst[4] = TIME_WAIT
        return VALID, timeout_class(src[4], dst[4])
    if ((dst[4] < SYN_SENT or dst[4] >= FIN_WAIT_2 or src[4] >= FIN_WAIT_2)
            and _geq((src[1] + MAXACKWINDOW) & _M32, end)
            and _geq(seq, (src[0] - MAXACKWINDOW) & _M32)):
        # Shotgunned SYNs, a picked-up stream, or funk right after close:
        # accepted, but the timeout is not refreshed.
        _slide(src, dst, win, end, ack, sws)
        if flags & FIN and src[4] < CLOSING:
            src[4] = CLOSING
        if flags & RST:
            src[4] = dst[4] = TIME_WAIT
        return VALID, None
    return INVALID, None


def _slide(src, dst, win, end, ack, sws) -> None:
    if src[2] < win:
        src[2] = win
    if _gt(end, src[0]):
        src[0] = end
    lim = (ack + (win << sws)) & _M32
    if _geq(lim, dst[1]):
        dst[1] = (ack + max(win << sws, 1)) & _M32


_NEG = -(1 << 40)
_BIG = 1 << 44


def _rel(x: np.ndarray, base: np.ndarray) -> np.ndarray:
    """x - base in 32-bit sequence space, as a signed int64."""
    return ((x - base + 0x80000000) & _M32) - 0x80000000


def _excl_max(vals: np.ndarray, g: np.ndarray, start: np.ndarray, init: np.ndarray) -> np.ndarray:
    """Per row, the max of its group's init and of the values of the group's earlier rows.

    Rows are sorted by group g; an offset per group keeps one running maximum
    from leaking into the next group.
    """
    off = g * _BIG
    inc = np.maximum.accumulate(vals + off) - off
    excl = np.empty_like(inc)
    excl[1:] = inc[:-1]
    excl[start] = _NEG
    return np.maximum(excl, init[g])


def established_runs(tcp: np.ndarray, conn: np.ndarray, reply: np.ndarray, seg: Segments,
                     liberal: bool, unique: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """update() for established ACK segments, any number per connection, in order.

    Between SYN and FIN such a segment only raises three running maxima per
    peer (seqlo, seqhi in sequence space, max_win), so the state each segment
    sees is the max of the connection's state and of the earlier segments'
    contributions: segmented prefix maxima.  That holds while every segment is
    valid; rows after a connection's first invalid segment are returned
    unresolved (the caller runs them again on the updated state).

    Returns (valid, resolved), both in the input order; `tcp` is updated with
    the resolved rows.  `unique` says no connection has two rows (the common
    case, computed without the prefix maxima).
    """
    if unique:
        return _established_single(tcp, conn, reply, seg, liberal)
    seq, ack, win, plen = seg
    n = conn.size
    order = np.argsort(conn, kind="stable")
    c = conn[order]
    start = np.empty(n, dtype=bool)
    start[0] = True
    np.not_equal(c[1:], c[:-1], out=start[1:])
    g = np.cumsum(start) - 1
    gc = c[start]
    peers = tcp[gc]                                   # (G, 2, 5)
    s = reply[order].astype(np.intp)
    d = 1 - s
    ws = peers[:, :, 3]
    both_flag = ((ws[:, 0] & ws[:, 1]) & WSCALE_FLAG) != 0
    both_unk = ((ws[:, 0] & ws[:, 1]) & WSCALE_UNKNOWN) != 0
    scale = np.where(both_flag[:, None], ws & WSCALE_MASK,
                     np.where(both_unk[:, None], MAX_WSCALE, 0))   # (G, 2) per sender
    base = peers[:, :, 0]                            # each peer's seqlo: its rel origin
    sq, ak, wn, pl = seq[order], ack[order], win[order], plen[order]
    sws = scale[g, s]
    b_s, b_d = base[g, s], base[g, d]
    end_rel = _rel((sq + pl) & _M32, b_s)
    hi_rel = _rel((ak + np.maximum(wn << sws, 1)) & _M32, b_d)
    state = {}
    for p in (0, 1):
        mine, theirs = s == p, d == p
        state["lo", p] = _excl_max(np.where(mine & (pl > 0), end_rel, _NEG), g, start,
                                   np.zeros(gc.size, dtype=np.int64))
        state["hi", p] = _excl_max(np.where(theirs, hi_rel, _NEG), g, start,
                                   _rel(peers[:, p, 1], base[:, p]))
        state["mw", p] = _excl_max(np.where(mine, wn, _NEG), g, start, peers[:, p, 2])
    pick = lambda k, who: np.where(who == 0, state[k, 0], state[k, 1])  # noqa: E731
    s_lo, s_hi = pick("lo", s), pick("hi", s)
    d_lo, d_mw = pick("lo", d), pick("mw", d)
    dws = scale[g, d]
    # The checks of update(), relative to the sender's (and for ackskew the receiver's) origin.
    empty = pl == 0
    seq_r = np.where(empty, s_lo, _rel(sq, b_s))
    end_r = np.where(empty, s_lo, end_rel)
    # Each check is SEQ_GEQ in 32-bit sequence space, as update() makes it: the difference
    # of two values relative to one origin, taken as signed 32-bit.
    ackskew = _srel(d_lo - _rel(ak, b_d))
    ok = ((_srel(s_hi - end_r) >= 0) & (_srel(seq_r - (s_lo - (d_mw << dws))) >= 0)
          & (ackskew >= -MAXACKWINDOW) & (ackskew <= (MAXACKWINDOW << sws)))
    if liberal:
        ok[:] = True
    resolved = np.ones(n, dtype=bool)
    if not ok.all():
        # Rows after the first invalid one of their connection saw wrong maxima.
        bad_pos = np.where(ok, n, np.arange(n))
        first_bad = np.minimum.reduceat(bad_pos, np.flatnonzero(start))
        resolved = np.arange(n) <= first_bad[g]
    use = ok & resolved
    starts = np.flatnonzero(start)
    for p in (0, 1):
        mine, theirs = (s == p) & use, (d == p) & use
        lo = np.maximum.reduceat(np.where(mine & (pl > 0), end_rel, _NEG), starts)
        hi = np.maximum.reduceat(np.where(theirs, hi_rel, _NEG), starts)
        mw = np.maximum.reduceat(np.where(mine, wn, _NEG), starts)
        tcp[gc, p, 0] = (base[:, p] + np.maximum(lo, 0)) & _M32
        tcp[gc, p, 1] = (base[:, p] + np.maximum(hi, _rel(peers[:, p, 1], base[:, p]))) & _M32
        tcp[gc, p, 2] = np.maximum(mw, peers[:, p, 2])
    out_ok = np.empty(n, dtype=bool)
    out_res = np.empty(n, dtype=bool)
    out_ok[order] = ok
    out_res[order] = resolved
    return out_ok, out_res


def _established_single(tcp, conn, reply, seg: Segments, liberal):
    """established_runs() when every connection has one row: no prefix maxima."""
    n = conn.size
    peers = tcp[conn]
    s = reply.astype(np.intp)
    d = 1 - s
    rp = reply[:, None]
    src = np.where(rp, peers[:, 1], peers[:, 0])
    dst = np.where(rp, peers[:, 0], peers[:, 1])
    ok, s_lo, s_mw, d_hi = established_one(src.T[:4], dst.T[:4], seg, liberal)
    tcp[conn, s, 0] = s_lo
    tcp[conn, s, 2] = s_mw
    tcp[conn, d, 1] = d_hi
    return ok, np.ones(n, dtype=bool)


def established_one(src, dst, seg: Segments, liberal: bool):
    """update() of one ACK segment per connection, both peers ESTABLISHED, from the
    sender's (src) and receiver's (dst) peer fields (seqlo, seqhi, max_win, wscale).

    Returns (valid, new sender seqlo, new sender max_win, new receiver seqhi);
    invalid segments get their peer's fields back unchanged.  Positions are
    taken relative to the sender's seqlo (the receiver's for acks), as
    signed 32-bit differences.
    """
    s_lo, s_hi, s_mw, s_ws = src
    d_lo, d_hi, d_mw, d_ws = dst
    seq, ack, win, plen = seg
    if not ((s_ws | d_ws) & (WSCALE_FLAG | WSCALE_UNKNOWN)).any():
        sws = dws = 0          # no scaling anywhere: the usual case
        swin, dmw, ack_max = win, d_mw, MAXACKWINDOW
    else:
        both_flag = ((s_ws & d_ws) & WSCALE_FLAG) != 0
        both_unk = ((s_ws & d_ws) & WSCALE_UNKNOWN) != 0
        sws = np.where(both_flag, s_ws & WSCALE_MASK, np.where(both_unk, MAX_WSCALE, 0))
        dws = np.where(both_flag, d_ws & WSCALE_MASK, np.where(both_unk, MAX_WSCALE, 0))
        swin, dmw, ack_max = win << sws, d_mw << dws, MAXACKWINDOW << sws
    seq_r = _srel(seq - s_lo)
    end_rel = _srel(seq + plen - s_lo)
    hi_rel = _srel(ack + np.maximum(swin, 1) - d_lo)
    ackskew = _srel(d_lo - ack)
    empty = plen == 0
    if empty.any():
        seq_r = np.where(empty, 0, seq_r)
        end_r = np.where(empty, 0, end_rel)
    else:
        end_r = end_rel
    # SEQ_GEQ(seqhi, end) and SEQ_GEQ(seq, seqlo - max_win) as update() takes them: the
    # differences signed 32-bit (a segment about 2^31 away straddles the relative origin:
    # its seq_r and end_r fall on either side of it).
    ok = ((_srel(_srel(s_hi - s_lo) - end_r) >= 0) & (_srel(seq_r + dmw) >= 0)
          & (ackskew >= -MAXACKWINDOW) & (ackskew <= ack_max))
    if liberal:
        ok[:] = True
    new_lo = (s_lo + np.maximum(end_rel, 0)) & _M32
    new_mw = np.maximum(win, s_mw)
    new_hi = (d_lo + np.maximum(hi_rel, _srel(d_hi - d_lo))) & _M32
    if empty.any():
        new_lo = np.where(empty, s_lo, new_lo)
    if not ok.all():
        new_lo = np.where(ok, new_lo, s_lo)
        new_mw = np.where(ok, new_mw, s_mw)
        new_hi = np.where(ok, new_hi, d_hi)
    return ok, new_lo, new_mw, new_hi


def _srel(x: np.ndarray) -> np.ndarray:
    """A difference of 32-bit sequence numbers as signed 32-bit, in int64 (_rel(a, b) = _srel(a - b))."""
    return (x << 32) >> 32


def _vgeq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SEQ_GEQ over arrays of 32-bit sequence numbers held in int64."""
    return ((a - b) & _M32) < 0x80000000


def invalid_flags_many(fl: np.ndarray) -> np.ndarray:
    bad = np.where(fl & SYN, (fl & (RST | FIN)) != 0, (fl & (ACK | RST)) == 0)
    return bad | (((fl & ACK) == 0) & ((fl & (FIN | PSH | URG)) != 0))


def update_many(tcp: np.ndarray, conn: np.ndarray, reply: np.ndarray, flags: np.ndarray,
                seq: np.ndarray, ack: np.ndarray, win: np.ndarray, plen: np.ndarray,
                wscale: np.ndarray, liberal: bool) -> tuple[np.ndarray, np.ndarray]:
    """update() for segments of distinct connections, any flags and states, at once.

    The caller keeps out a pure SYN on a connection closed both ways (update()
    answers NEW: the connection is replaced).  `wscale` is get_wscale() of
    each SYN's options.  Returns (result, timeout class or -1 to keep), and
    writes the peers back into `tcp` (first-packet set-up sticks even when the
    segment then fails the window check, as in OVS).
    """
    k = conn.size
    ar = np.arange(k)
    P = tcp[conn]
    s = reply.astype(np.intp)
    d = 1 - s
    src, dst = P[ar, s], P[ar, d]           # copies; written back at the end
    s_lo, s_hi, s_mw, s_ws, s_st = (src[:, j].copy() for j in range(5))
    d_lo, d_hi, d_mw, d_ws, d_st = (dst[:, j].copy() for j in range(5))
    fl = flags
    syn, fin, rst, ackf = (fl & SYN) != 0, (fl & FIN) != 0, (fl & RST) != 0, (fl & ACK) != 0
    res = np.full(k, VALID, dtype=np.int64)
    tm = np.full(k, -1, dtype=np.int64)
    bad = invalid_flags_many(fl)
    res[bad] = INVALID
    vnew = ~bad & syn & ~ackf & (s_st <= SYN_SENT)
    s_st[vnew] = SYN_SENT
    res[vnew] = VALID_NEW
    tm[vnew] = TM_TCP_FIRST
    go = ~bad & ~vnew
    both_flag = ((s_ws & d_ws) & WSCALE_FLAG) != 0
    both_unk = ((s_ws & d_ws) & WSCALE_UNKNOWN) != 0
    sws = np.where(~syn & both_flag, s_ws & WSCALE_MASK, np.where(~syn & both_unk, MAX_WSCALE, 0))
    dws = np.where(~syn & both_flag, d_ws & WSCALE_MASK, np.where(~syn & both_unk, MAX_WSCALE, 0))
    win = win.copy()
    end = (seq + plen + syn + fin) & _M32
    check = np.ones(k, dtype=bool)
    first = go & (s_st < SYN_SENT)
    if first.any():
        scale = first & syn & ((d_ws & WSCALE_FLAG) != 0)
        s_ws = np.where(scale, wscale, s_ws)
        has = scale & ((s_ws & WSCALE_FLAG) != 0)
        sws = np.where(has, s_ws & WSCALE_MASK, sws)
        win = np.where(has, -(-win // (1 << sws)), win)
        dws = np.where(has, d_ws & WSCALE_MASK, dws)
        fix = scale & ~has
        d_mw = np.where(fix, (d_mw << (d_ws & WSCALE_MASK)) & 0xFFFF, d_mw)
        d_ws = np.where(fix, 0, d_ws)
        s_lo = np.where(first, seq, s_lo)
        s_st = np.where(first, SYN_SENT, s_st)
        lim = (end + np.maximum(1, d_mw << dws)) & _M32
        slide = first & ((s_hi == 1) | _vgeq(lim, s_hi))
        s_hi = np.where(slide, lim, s_hi)
        check &= ~slide
        s_mw = np.where(first & (win > s_mw), win, s_mw)
    a = np.where(~ackf | ((ack == 0) & ackf & rst), d_lo, ack)
    empty = seq == end
    sq = np.where(empty, s_lo, seq)
    en = np.where(empty, s_lo, end)
    skew = np.where(check, ((d_lo - a + 0x80000000) & _M32) - 0x80000000, 0)
    inwin = (_vgeq(s_hi, en) & _vgeq(sq, (s_lo - (d_mw << dws)) & _M32)
             & (skew >= -MAXACKWINDOW) & (skew <= (MAXACKWINDOW << sws))
             & (~rst | (seq == s_lo) | (seq == ((s_lo + 1) & _M32))
                | (((seq + 1) & _M32) == s_lo)))
    b1 = go & (inwin | liberal)
    b2 = go & ~b1 & ((d_st < SYN_SENT) | (d_st >= FIN_WAIT_2) | (s_st >= FIN_WAIT_2)) \
        & _vgeq((s_hi + MAXACKWINDOW) & _M32, en) & _vgeq(sq, (s_lo - MAXACKWINDOW) & _M32)
    res[go & ~b1 & ~b2] = INVALID
    acc = b1 | b2
    s_mw = np.where(acc & (s_mw < win), win, s_mw)
    s_lo = np.where(acc & _vgeq(en, s_lo) & (en != s_lo), en, s_lo)
    ws = win << sws
    d_hi = np.where(acc & _vgeq((a + ws) & _M32, d_hi), (a + np.maximum(ws, 1)) & _M32, d_hi)
    s_st = np.where(b1 & syn & (s_st < SYN_SENT), SYN_SENT, s_st)
    s_st = np.where(acc & fin & (s_st < CLOSING), CLOSING, s_st)
    d_st = np.where(b1 & ackf & (d_st == SYN_SENT), ESTABLISHED,
                    np.where(b1 & ackf & (d_st == CLOSING), FIN_WAIT_2, d_st))
    s_st = np.where(acc & rst, TIME_WAIT, s_st)
    d_st = np.where(acc & rst, TIME_WAIT, d_st)
    cls = np.select([(s_st >= FIN_WAIT_2) & (d_st >= FIN_WAIT_2),
                     (s_st >= CLOSING) & (d_st >= CLOSING),
                     (s_st < ESTABLISHED) | (d_st < ESTABLISHED),
                     (s_st >= CLOSING) | (d_st >= CLOSING)],
                    [TM_TCP_CLOSED, TM_TCP_FIN_WAIT, TM_TCP_OPENING, TM_TCP_CLOSING],
                    TM_TCP_EST)
    tm = np.where(b1, cls, tm)
    P[ar, s] = np.stack([s_lo, s_hi, s_mw, s_ws, s_st], axis=1)
    P[ar, d] = np.stack([d_lo, d_hi, d_mw, d_ws, d_st], axis=1)
    tcp[conn] = P
    return res, tm
