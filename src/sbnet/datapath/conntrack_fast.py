"""Conntrack's express path: established TCP/IPv4 ACK segments of a batch in a few whole-batch array passes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import fold
from sbnet.datapath.conntrack_index import stored
from sbnet.datapath.conntrack_pkt import _checksums_ok
from sbnet.datapath.conntrack_table import (
    _CT_FIRST, _CT_LAST, _NAT_BITS, _S, _W, C_EXP, C_LABEL, C_MARK, C_NAT, C_PROTO, C_TCP, C_TUP,
    EST, INV, NEW, RPL, TRK, _hash_words)
from sbnet.datapath.parse import Parsed
from sbnet.flows.fields import ETH_IP, IP_TCP

_STATE0, _STATE1 = C_TCP + 4, C_TCP + 9
_MAX_WINDOW = 128          # bytes of IPv4 packet summed with one small matrix product
_TCP_META = np.uint64(IP_TCP << 16)
_ZERO = np.uint64(0)


class ExpressPath:
    """Method of Conntrack for the bulk of steady traffic.

    A row takes the express path when it is an IPv4 TCP segment with only ACK
    among SYN/FIN/RST/ACK, of a live connection established both ways (without
    NAT when the action translates), and every other row of the batch that
    finds that connection does too: then nothing else in the batch can see the
    connection, so handling these rows first gives what batch order would.
    The update is the vectorized path's (T.established_one; connections with
    several rows: Conntrack._fast_tcp), reading each connection's table row
    once; everything else goes on to the general batch path.
    """

    def _express(self, batch: Batch, parsed: Parsed, rows: np.ndarray, zones: np.ndarray,
                 nat, now: float) -> np.ndarray:
        """Run the express rows of `rows`; the positions in `rows` of those left over."""
        m = rows.size
        keys = parsed.keys
        everything = np.arange(m)
        full = m == keys.shape[1] and rows[0] == 0 and rows[-1] == m - 1 and \
            (m < 3 or bool((np.diff(rows) == 1).all()))

        def col(a):
            return a if full else a[rows]

        l3, l4 = col(parsed.l3), col(parsed.l4)
        cand = (col(keys[_S["eth_type"]]) == ETH_IP) & (col(keys[_S["nw_proto"]]) == IP_TCP) \
            & (col(parsed.error) == 0) & (l3 >= 0) & (l4 >= 0) \
            & ((col(keys[_S["nw_frag"]]) & np.uint64(1)) == 0)
        st_in = col(keys[_S["ct_state"]])
        same_zone = col(keys[_S["ct_zone"]]) == zones
        # A packet NATed earlier in this zone is looked up by its reverse tuple:
        # leave such batches to the general path.
        if not cand.any() or (cand & same_zone & ((st_in & np.uint64(_NAT_BITS)) != 0)).any():
            return everything
        loc = None if cand.all() else np.flatnonzero(cand)
        sub = (lambda a: a) if loc is None else (lambda a: a[loc])
        l3, l4 = sub(l3), sub(l4)
        u3, u4 = int(l3[0]), int(l4[0])
        hl = u4 - u3
        data = batch.data
        if not ((l3 == u3).all() and (l4 == u4).all()) or u4 + 16 > data.shape[1]:
            return everything
        grows = sub(rows)
        sliced = full and loc is None
        hdr = data[:, u3:u4 + 16] if sliced else data[grows, u3:u4 + 16]
        tot = (hdr[:, 2].astype(np.int64) << 8) | hdr[:, 3]
        tcp = np.ascontiguousarray(hdr[:, hl + 4:hl + 16]).view(">u4").astype(np.int64)
        seq, ack, w3 = tcp[:, 0], tcp[:, 1], tcp[:, 2]
        flags = (w3 >> 16) & 0x1FF
        win = w3 & 0xFFFF
        plen = tot - hl - (w3 >> 28) * 4
        src, dst = sub(col(keys[_S["nw_src"]])), sub(col(keys[_S["nw_dst"]]))
        sp, dp = sub(col(keys[_S["tp_src"]])), sub(col(keys[_S["tp_dst"]]))
        zc = sub(zones)
        n = grows.size
        if self.checksums:
            good = _tcp4_checksums(data, grows, sliced, u3, hl, tot, src, dst, keys)
            if good is None:
                return everything
        # The lookup, as the general path's: tuple hash, index, one table row per packet.
        h = stored(_hash_words(zc | _TCP_META, _ZERO, src, _ZERO, dst,
                               (sp << np.uint64(32)) | dp))
        vals = self._index.get_many(h)
        hit = vals >= 0
        ci = np.where(hit, vals >> 1, self._cap)
        di = (vals & 1).astype(np.intp)
        R = self.table.take(ci, axis=0)
        Ri = R.view(np.int64)
        tw = R[:, C_TUP:C_TUP + 12].reshape(n, 2, 6)[np.arange(n), di]
        same = hit & ((tw[:, 0] | tw[:, 2]) == 0) & (tw[:, 1] == src) & (tw[:, 3] == dst) \
            & (tw[:, 4] == sp) & (tw[:, 5] == dp) & (R[:, C_EXP].view(np.float64) > now)
        if self.checksums:
            same &= good
        elig = same & (Ri[:, _STATE0] == T.ESTABLISHED) & (Ri[:, _STATE1] == T.ESTABLISHED) \
            & ((flags & (T.SYN | T.FIN | T.RST | T.ACK)) == T.ACK)
        if nat is not None:
            elig &= R[:, C_NAT] == 0
        bad = same & ~elig
        if bad.any():
            # A connection with any row off the express path keeps all its rows off it.
            mark = self._scratch_for(ci)
            mark[ci[elig]] = 0
            mark[ci[bad]] = 1
            elig &= mark[ci] == 0
        ex = np.flatnonzero(elig)
        if not ex.size:
            return everything
        c = ci[ex]
        rp = di[ex].astype(bool)
        ok = np.ones(ex.size, dtype=bool)
        once = self._unique(c)
        u = slice(None) if once.all() else np.flatnonzero(once)
        ok[u] = self._express_single(Ri[ex[u]], c[u], rp[u], seq[ex[u]], ack[ex[u]], win[ex[u]],
                                     plen[ex[u]], now)
        done = np.ones(ex.size, dtype=bool)
        if not isinstance(u, slice):
            # Several rows of one connection: the general path's prefix maxima, in order.
            dup = np.flatnonzero(~once)
            left = np.ones(n, dtype=bool)
            pk = SimpleNamespace(seq=seq, ack=ack, win=win, plen=plen)
            ok[dup] = self._fast_tcp(pk, ex[dup], c[dup], rp[dup], now, left) == T.VALID
            done[dup] = left[ex[dup]]
            if not done.all():
                ex, rp, ok = ex[done], rp[done], ok[done]
        s = np.where(sub(same_zone)[ex], sub(st_in)[ex], _ZERO)
        s = (s | np.uint64(EST) | np.where(rp, np.uint64(RPL), _ZERO)) & ~np.uint64(NEW)
        st = np.where(ok, s, np.uint64(INV)) | np.uint64(TRK)
        k = ex.size
        nbad = k - int(np.count_nonzero(ok))
        for name, v in (("packets", k), ("lookups_hit", k), ("fast_path", k), ("invalid", nbad)):
            self.stats[name] += v
        _write_md_tcp4(keys, grows[ex], sliced and k == m, st, zc[ex], R[ex])
        if loc is not None:
            ex = loc[ex]
        rest = np.ones(m, dtype=bool)
        rest[ex] = False
        return np.flatnonzero(rest)

    def _express_single(self, Ri, c, rp, seq, ack, win, plen, now) -> np.ndarray:
        """T.established_one on connections with one row each, from their gathered
        table rows Ri; the peers and expiration written back with flat scatters."""
        ar = np.arange(c.size) * _W
        s_off = ar + C_TCP + np.where(rp, 5, 0)
        d_off = ar + C_TCP + np.where(rp, 0, 5)
        flat = Ri.reshape(-1)
        src = [flat.take(s_off + j) for j in range(4)]
        dst = [flat.take(d_off + j) for j in range(4)]
        ok, s_lo, s_mw, d_hi = T.established_one(*src, *dst, seq, ack, win, plen,
                                                 self.tcp_liberal)
        table = self.table.view(np.int64).reshape(-1)
        base = c * _W - ar
        table[base + s_off] = s_lo
        table[base + s_off + 2] = s_mw
        table[base + d_off + 1] = d_hi
        nok = c.size - int(np.count_nonzero(ok))
        self.exp[c if not nok else c[ok]] = now + self._tmo[T.TM_TCP_EST]
        self.stats["tcp_seq_chk_failed"] += nok
        return ok

    def _scratch_for(self, ci: np.ndarray) -> np.ndarray:
        """A scratch array indexable by slot (contents undefined)."""
        if self._mark.size < self._cap + 1:
            self._mark = np.zeros(self._cap + 1, dtype=np.int8)
        return self._mark


def _tcp4_checksums(data, grows, sliced, u3, hl, tot, src, dst, keys) -> np.ndarray | None:
    """IPv4 header and TCP checksums verdicts of packets whose IP header starts at
    column u3 and is hl bytes long; None when a packet is malformed beyond what
    the express path checks (the general path decides)."""
    t0 = int(tot[0])
    if t0 <= _MAX_WINDOW and (tot == t0).all() and not u3 & 1 and t0 >= hl \
            and u3 + t0 + 1 <= data.shape[1] and data.strides[1] == 1 and not data.strides[0] & 1:
        # Same length everywhere: two row sums of native 16-bit words, as one
        # float32 matrix product (exact: sums stay below 2**24).
        w = (t0 + 1) // 2
        win = data[:, u3:u3 + 2 * w] if sliced else data[grows, u3:u3 + 2 * w]
        pick = np.zeros((2, w), dtype=np.float32)
        pick[0, :hl // 2] = 1
        pick[1] = 1
        sums = (pick @ win.view(np.uint16).astype(np.float32).T).astype(np.int64)
        hsum, total = sums[0], sums[1]
        if t0 & 1:
            # The byte after an odd-length packet is not part of it.
            pad = data[:, u3 + t0] if sliced else data[grows, u3 + t0]
            total -= pad.astype(np.int64) << (8 if np.little_endian else 0)
        ip_ok = fold(hsum) == 0xFFFF
        l4 = fold(total - hsum).astype(np.int64)
        if np.little_endian:
            l4 = ((l4 & 0xFF) << 8) | (l4 >> 8)
        pseudo = (src >> np.uint64(16)) + (src & np.uint64(0xFFFF)) + (dst >> np.uint64(16)) \
            + (dst & np.uint64(0xFFFF))
        return ip_ok & (fold(pseudo.astype(np.int64) + l4 + IP_TCP + (t0 - hl)) == 0xFFFF)
    if (tot < hl).any():
        return None
    n = grows.size
    l3 = np.full(n, u3, dtype=np.int64)
    return _checksums_ok(data, keys, grows, np.ones(n, dtype=bool), np.zeros(n, dtype=bool),
                         np.full(n, IP_TCP, dtype=np.int64), l3, l3 + hl, l3 + tot)


def _write_md_tcp4(keys, grows, whole, st, zones, R) -> None:
    """ct_* slots of the express rows: their connection's original tuple (IPv4 TCP)."""
    blk = np.empty((_CT_LAST - _CT_FIRST + 1, grows.size), dtype=np.uint64)
    blk[0] = st
    blk[1] = zones
    blk[2] = R[:, C_MARK]
    blk[3:5] = R[:, C_LABEL:C_LABEL + 2].T
    blk[5] = R[:, C_TUP + 1]
    blk[6] = R[:, C_TUP + 3]
    blk[7:11] = 0
    blk[11] = R[:, C_PROTO]
    blk[12:14] = R[:, C_TUP + 4:C_TUP + 6].T
    if whole:
        keys[_CT_FIRST:_CT_LAST + 1] = blk
    else:
        keys[_CT_FIRST:_CT_LAST + 1, grows] = blk
