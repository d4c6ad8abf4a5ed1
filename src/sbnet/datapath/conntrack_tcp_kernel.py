"""conntrack_tcp.update_many compiled: TCP updates of distinct connections in one native pass."""

from __future__ import annotations

import numpy as np

from sbnet.datapath.conntrack_tcp import (ACK, CLOSING, ESTABLISHED, FIN, FIN_WAIT_2, INVALID,
                                          MAX_WSCALE, MAXACKWINDOW, PSH, RST, SYN, SYN_SENT,
                                          TIME_WAIT, TM_TCP_CLOSED, TM_TCP_CLOSING, TM_TCP_EST,
                                          TM_TCP_FIN_WAIT, TM_TCP_FIRST, TM_TCP_OPENING, URG,
                                          VALID, VALID_NEW, WSCALE_FLAG, WSCALE_MASK,
                                          WSCALE_UNKNOWN)
from sbnet.datapath.jit import kernel

_M32 = 0xFFFFFFFF
_HALF = 0x80000000


@kernel("void(int64[:, :, :], int64[:], boolean[:], int64[:], int64[:], int64[:], int64[:],"
        " int64[:], int64[:], boolean, int64[:], int64[:])")
def update_kernel(tcp, conn, reply, flags, seq, ack, win, plen, wscale, liberal, res, tm):
    """Row i: segment i on connection conn[i] (distinct), as update_many's arrays do it."""
    for i in range(conn.size):
        c = conn[i]
        s = 1 if reply[i] else 0
        d = 1 - s
        s_lo, s_hi, s_mw, s_ws, s_st = tcp[c, s, 0], tcp[c, s, 1], tcp[c, s, 2], tcp[c, s, 3], \
            tcp[c, s, 4]
        d_lo, d_hi, d_mw, d_ws, d_st = tcp[c, d, 0], tcp[c, d, 1], tcp[c, d, 2], tcp[c, d, 3], \
            tcp[c, d, 4]
        fl = flags[i]
        syn, fin, rst, ackf = (fl & SYN) != 0, (fl & FIN) != 0, (fl & RST) != 0, (fl & ACK) != 0
        res[i] = VALID
        tm[i] = -1
        if syn:
            bad = (fl & (RST | FIN)) != 0
        else:
            bad = (fl & (ACK | RST)) == 0
        bad = bad or (not ackf and (fl & (FIN | PSH | URG)) != 0)
        if bad:
            res[i] = INVALID
            continue
        if syn and not ackf and s_st <= SYN_SENT:
            tcp[c, s, 4] = SYN_SENT
            res[i] = VALID_NEW
            tm[i] = TM_TCP_FIRST
            continue
        both = s_ws & d_ws
        sws = dws = 0
        if not syn and both & WSCALE_FLAG:
            sws, dws = s_ws & WSCALE_MASK, d_ws & WSCALE_MASK
        elif not syn and both & WSCALE_UNKNOWN:
            sws = dws = MAX_WSCALE
        w = win[i]
        q = seq[i]
        end = (q + plen[i] + (1 if syn else 0) + (1 if fin else 0)) & _M32
        check = True
        if s_st < SYN_SENT:
            scale = syn and (d_ws & WSCALE_FLAG) != 0
            if scale:
                s_ws = wscale[i]
                if s_ws & WSCALE_FLAG:
                    sws = s_ws & WSCALE_MASK
                    w = -(-w // (1 << sws))
                    dws = d_ws & WSCALE_MASK
                else:
                    d_mw = (d_mw << (d_ws & WSCALE_MASK)) & 0xFFFF
                    d_ws = 0
            s_lo = q
            s_st = SYN_SENT
            lim = (end + max(1, d_mw << dws)) & _M32
            if s_hi == 1 or ((lim - s_hi) & _M32) < _HALF:
                s_hi = lim
                check = False
            if w > s_mw:
                s_mw = w
        a = ack[i]
        if not ackf or (a == 0 and rst):
            a = d_lo
        sq, en = (s_lo, s_lo) if q == end else (q, end)
        skew = (((d_lo - a + _HALF) & _M32) - _HALF) if check else 0
        inwin = (((s_hi - en) & _M32) < _HALF
                 and ((sq - ((s_lo - (d_mw << dws)) & _M32)) & _M32) < _HALF
                 and skew >= -MAXACKWINDOW and skew <= (MAXACKWINDOW << sws)
                 and (not rst or q == s_lo or q == ((s_lo + 1) & _M32) or ((q + 1) & _M32) == s_lo))
        b1 = inwin or liberal
        acc = b1
        if not b1:
            acc = ((d_st < SYN_SENT or d_st >= FIN_WAIT_2 or s_st >= FIN_WAIT_2)
                   and ((((s_hi + MAXACKWINDOW) & _M32) - en) & _M32) < _HALF
                   and ((sq - ((s_lo - MAXACKWINDOW) & _M32)) & _M32) < _HALF)
            if not acc:
                res[i] = INVALID
        if acc:
            if s_mw < w:
                s_mw = w
            if ((en - s_lo) & _M32) < _HALF and en != s_lo:
                s_lo = en
            ws = w << sws
            if ((((a + ws) & _M32) - d_hi) & _M32) < _HALF:
                d_hi = (a + max(ws, 1)) & _M32
            if b1 and syn and s_st < SYN_SENT:
                s_st = SYN_SENT
            if fin and s_st < CLOSING:
                s_st = CLOSING
            if b1 and ackf:
                if d_st == SYN_SENT:
                    d_st = ESTABLISHED
                elif d_st == CLOSING:
                    d_st = FIN_WAIT_2
            if rst:
                s_st = TIME_WAIT
                d_st = TIME_WAIT
        if b1:
            if s_st >= FIN_WAIT_2 and d_st >= FIN_WAIT_2:
                tm[i] = TM_TCP_CLOSED
            elif s_st >= CLOSING and d_st >= CLOSING:
                tm[i] = TM_TCP_FIN_WAIT
            elif s_st < ESTABLISHED or d_st < ESTABLISHED:
                tm[i] = TM_TCP_OPENING
            elif s_st >= CLOSING or d_st >= CLOSING:
                tm[i] = TM_TCP_CLOSING
            else:
                tm[i] = TM_TCP_EST
        tcp[c, s, 0], tcp[c, s, 1], tcp[c, s, 2], tcp[c, s, 3], tcp[c, s, 4] = \
            s_lo, s_hi, s_mw, s_ws, s_st
        tcp[c, d, 0], tcp[c, d, 1], tcp[c, d, 2], tcp[c, d, 3], tcp[c, d, 4] = \
            d_lo, d_hi, d_mw, d_ws, d_st


def update_many_compiled(tcp: np.ndarray, conn: np.ndarray, reply: np.ndarray,
                         flags: np.ndarray, seq: np.ndarray, ack: np.ndarray, win: np.ndarray,
                         plen: np.ndarray, wscale: np.ndarray,
                         liberal: bool) -> tuple[np.ndarray, np.ndarray]:
    """conntrack_tcp.update_many (same arguments, results and writes) through update_kernel."""
    k = conn.size
    res = np.empty(k, np.int64)
    tm = np.empty(k, np.int64)
    i64 = np.int64
    update_kernel(tcp, conn.astype(i64, copy=False), reply.astype(np.bool_, copy=False),
                  flags.astype(i64, copy=False), seq.astype(i64, copy=False),
                  ack.astype(i64, copy=False), win.astype(i64, copy=False),
                  plen.astype(i64, copy=False), np.asarray(wscale, i64), bool(liberal), res, tm)
    return res, tm
