"""Conntrack's express path compiled: established TCP/IPv4 ACK segments (the rows and results of conntrack_fast.express), UDP/IPv4 and ICMP/IPv4 queries of two-way connections, and their NAT, in one native pass."""

from __future__ import annotations

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from sbnet.datapath import conntrack_tcp as T
from sbnet.datapath.conntrack_nat import SNAT
from sbnet.datapath.conntrack_pkt import _REV4, CtBatch
from sbnet.datapath.conntrack_table import (
    _CT_FIRST, _NAT_BITS, _P, _S, C_EXP, C_L4ST, C_LABEL, C_MARK, C_NAT, C_PROTO, C_TCP, C_TUP,
    C_V6,
    DNAT_BIT, EST, ICMP_REPLY, INV, NEW, OTHER_BIDIR, RPL, SNAT_BIT, TM_ICMP_REPLY,
    TM_OTHER_BIDIR, TRK)
from sbnet.datapath.jit import kernel
from sbnet.flows.fields import ETH_IP, IP_ICMP, IP_ICMPV6, IP_TCP, IP_UDP

_ETH_TYPE, _NW_PROTO, _NW_FRAG = _S["eth_type"], _S["nw_proto"], _S["nw_frag"]
_NW_SRC, _NW_DST, _TP_SRC, _TP_DST = _S["nw_src"], _S["nw_dst"], _S["tp_src"], _S["tp_dst"]
_CT_STATE, _CT_ZONE = _S["ct_state"], _S["ct_zone"]
_LAYERS = 4            # rows of one connection conntrack_fast settles without prefix maxima
# express_kernel's flags argument.
F_NAT, F_CHECKSUMS, F_LIBERAL, F_COMMIT = 1, 2, 4, 8
# express_kernel's per-row work columns, and its stats.
W_CAND, W_CONN, W_DIR, W_ELIG, W_FOUND, W_MISS = range(6)
WORK_W = 6
S_ROWS, S_BAD, S_MISS = range(3)
_TCP_ROW, _UDP_ROW, _ICMP_ROW = 1, 2, 3      # work[r, W_CAND]
_PROTO = np.array([0, IP_TCP, IP_UDP, IP_ICMP], np.uint64)     # by work[r, W_CAND]
_ICMP_NEW = np.zeros(256, np.bool_)     # the ICMP types that may start a connection
_ICMP_NEW[[8, 13, 15]] = True
# The timeouts express_kernel takes (its tmo argument), in this order.
TIMEOUTS = [T.TM_TCP_EST, TM_OTHER_BIDIR, TM_ICMP_REPLY]


@numba.njit(cache=True, inline="always")
def _be(d, i, c, k):
    """Big-endian value of k bytes of row i from column c, zero past the row's end."""
    if c >= 0 and c + k <= d.shape[1]:
        # Unsigned indices: no negative-index fix-up per byte (see _sum16).
        v = np.uint64(0)
        ui, uc = np.uint64(i), np.uint64(c)
        for j in range(np.uint64(k)):
            v = (v << np.uint64(8)) | np.uint64(d[ui, uc + j])
        return v
    return _be_edge(d, i, c, k)


# _be_edge and _sum16 take one signature: called with a constant length (_be(d, i, c, 2),
# _sum16(d, i, c, 8)), numba would compile one copy of each per constant (compile time).
@kernel("uint64(uint8[:, :], int64, int64, int64)")
def _be_edge(d, i, c, k):
    """_be of a field running past the row's end (or before its start): a call of its
    own, so the loop is not copied into every place _be is inlined (compile time)."""
    v = np.uint64(0)
    for j in range(k):
        b = np.uint64(d[i, c + j]) if c + j < d.shape[1] else np.uint64(0)
        v = (v << np.uint64(8)) | b
    return v


@numba.njit(cache=True, inline="always")
def _fold(s):
    while s >> np.uint64(16):
        s = (s & np.uint64(0xFFFF)) + (s >> np.uint64(16))
    return s


def borrowed(a):
    """a itself, for a kernel that hands it on to helpers it calls row by row.  Compiled,
    the same array without its reference count (a borrowed view: it must not outlive a):
    numba counts a reference to each array argument on entry to a called helper and drops
    it on return, two atomic operations per call, where a borrowed view's are a null test."""
    return a


@intrinsic
def _borrow(typingctx, a):
    if not isinstance(a, types.Array):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        out = context.make_array(sig.return_type)(context, builder)
        context.populate_array(out, data=src.data, shape=src.shape, strides=src.strides,
                               itemsize=src.itemsize, meminfo=None)
        return out._getvalue()
    return a(a), codegen


@overload(borrowed, inline="always")
def _borrowed_compiled(a):
    return lambda a: _borrow(a)


def copy_row_bytes(d, i, c, out, o, oc, n):
    """out[o, oc:oc + n] = d[i, c:c + n], for a caller that has checked both arrays'
    strides[1] == 1 and the bounds: compiled, one memcpy (a loop over row_bytes views,
    whose pointers LLVM cannot tell apart, was slower than copying byte by byte)."""
    out[o, oc:oc + n] = d[i, c:c + n]


@intrinsic
def _memcpy_rows(typingctx, d, i, c, out, o, oc, n):
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.uint8
               for a in (d, out)):
        return None
    sig = types.void(d, types.intp, types.intp, out, types.intp, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(sig.args[3])(context, builder, args[3])
        s_at = builder.add(builder.mul(args[1], builder.extract_value(src.strides, 0)),
                           args[2])
        d_at = builder.add(builder.mul(args[4], builder.extract_value(dst.strides, 0)),
                           args[5])
        cgutils.raw_memcpy(builder, builder.gep(dst.data, [d_at]),
                           builder.gep(src.data, [s_at]), args[6], 1)
        return context.get_dummy_value()
    return sig, codegen


@overload(copy_row_bytes, inline="always")
def _copy_row_bytes_compiled(d, i, c, out, o, oc, n):
    return lambda d, i, c, out, o, oc, n: _memcpy_rows(d, i, c, out, o, oc, n)


@intrinsic
def _le64(typingctx, d, i, c):
    """The 8 bytes of row i from column c as one little-endian uint64, for a caller that
    has checked d.strides[1] == 1 and the bounds (an unaligned load)."""
    if not (isinstance(d, types.Array) and d.ndim == 2 and d.dtype == types.uint8):
        return None
    sig = types.uint64(d, types.intp, types.intp)

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        at = builder.add(builder.mul(args[1], builder.extract_value(ary.strides, 0)), args[2])
        ptr = builder.bitcast(builder.gep(ary.data, [at]),
                              context.get_value_type(types.uint64).as_pointer())
        return builder.load(ptr, align=1)
    return sig, codegen


@numba.njit(cache=True, inline="always")
def _sum16_in(d, i, c, m):
    """_sum16 of m bytes inside row i from column c >= 0, for a caller that has checked
    d.strides[1] == 1 and the bounds: inlined where a call's cost would matter.  The
    ones-complement sum does not depend on byte order (RFC 1071 2(B)): the little-endian
    32-bit halves of 8-byte loads summed, folded, then its two bytes swapped."""
    s = np.uint64(0)
    for j in range(m // 8):
        w = _le64(d, i, c + 8 * j)
        s += (w & np.uint64(0xFFFFFFFF)) + (w >> np.uint64(32))
    k = m & ~7
    if k < m and m >= 8:
        # The last 1-7 bytes: the last eight with the k - (m - 8) already summed shifted
        # out, which leaves the byte at c + k (an even place, low in its word) lowest.
        w = _le64(d, i, c + m - 8) >> np.uint64(8 * (k - m + 8))
        s += (w & np.uint64(0xFFFFFFFF)) + (w >> np.uint64(32))
    elif k < m:
        for j in range(m):
            s += np.uint64(d[i, c + j]) << np.uint64(8 * (j & 1))
    s = _fold(s)
    return ((s & np.uint64(0xFF)) << np.uint64(8)) | (s >> np.uint64(8))


@kernel("uint64(uint8[:, :], int64, int64, int64)")
def _sum16(d, i, c, n):
    """Ones-complement sum of n bytes of row i from column c as big-endian words, an
    odd last byte padded with zero; zero past the row's end.  For callers that fold it:
    congruent to the plain sum modulo 0xFFFF and zero only when that is (a row read eight
    bytes a load comes back folded), so _fold of it plus other sums is _fold of the plain
    sum plus them."""
    if c < 0:
        s = np.uint64(0)
        j = 0
        while j + 1 < n:
            s += _be(d, i, c + j, 2)
            j += 2
        if j < n:
            s += _be(d, i, c + j, 1) << np.uint64(8)
        return s
    end = min(c + n, d.shape[1])
    m = end - c if end > c else 0
    if d.strides[1] == 1:
        return _sum16_in(d, i, c, m)
    # Even and odd bytes summed apart with unsigned indices: numba fixes up a signed
    # index that could be negative on every access, which keeps this loop from
    # vectorizing (about three times slower).
    ui = np.uint64(i)
    base = np.uint64(c)
    hi = np.uint64(0)
    lo = np.uint64(0)
    for k in range(np.uint64(m // 2)):
        hi += np.uint64(d[ui, base + np.uint64(2) * k])
        lo += np.uint64(d[ui, base + np.uint64(2) * k + np.uint64(1)])
    if m & 1:
        hi += np.uint64(d[ui, base + np.uint64(m - 1)])
    return (hi << np.uint64(8)) + lo


@numba.njit(cache=True, inline="always")
def _srel(x):
    return (x << np.int64(32)) >> np.int64(32)


@numba.njit(cache=True, inline="always")
def _tuple_hash(meta, src, dst, ports):
    """conntrack_table.tuple_hashes of one IPv4 tuple (high address words zero)."""
    p = np.uint64(_P)
    h = meta * p
    for w in (np.uint64(0), src, np.uint64(0), dst, ports):
        h = (h ^ w) * p
        h ^= h >> np.uint64(29)
    return h | np.uint64(1 << 63)


@numba.njit(cache=True, inline="always")
def _get(kv, h):
    """HashIndex.get: the value stored under h, -1 when absent."""
    mask = np.uint64(kv.shape[0] - 1)
    i = np.int64(h & mask)
    while True:
        k = kv[i, 0]
        if k == h:
            return np.int64(kv[i, 1])
        if k == 0:
            return np.int64(-1)
        i = (i + 1) & np.int64(mask)


@numba.njit(cache=True, inline="always")
def _pseudo4(data, g, l3):
    """The IPv4 addresses' words of row g summed (the pseudo-header's), read as two
    32-bit fields rather than a call of _sum16."""
    a, b = _be(data, g, l3 + 12, 4), _be(data, g, l3 + 16, 4)
    m = np.uint64(0xFFFF)
    return (a >> np.uint64(16)) + (a & m) + (b >> np.uint64(16)) + (b & m)


# _checksums_ok and _established_one inlined (each has one call site, express_kernel's):
# a call of numba's passes each array as its seven fields and counts references to it,
# which cost more than either function's work (the kernel 20% faster inlined).
@numba.njit(cache=True, inline="always")
def _checksums_ok(data, g, u3, hl):
    """IPv4 header and TCP checksums of row g (IP header at u3, hl bytes long)."""
    tot = np.int64(_be(data, g, u3 + 2, 2))
    if tot < hl:
        return False
    ln = tot - hl
    # The express path's every segment: the sums inlined (a call costs as much as one).
    inside = data.strides[1] == 1 and u3 + tot <= data.shape[1]
    h = _sum16_in(data, g, u3, hl) if inside else _sum16(data, g, u3, hl)
    if _fold(h) != 0xFFFF:
        return False
    s = _sum16_in(data, g, u3 + hl, ln) if inside else _sum16(data, g, u3 + hl, ln)
    return _fold(s + _pseudo4(data, g, u3) + np.uint64(IP_TCP) + np.uint64(ln)) == 0xFFFF


@numba.njit(cache=True, inline="always")
def _established_one(tcp, ci, s_col, d_col, seq, ack, win, plen, liberal):
    """conntrack_tcp.established_one of one segment, written back into the table row."""
    s_lo, s_hi, s_mw, s_ws = tcp[ci, s_col], tcp[ci, s_col + 1], tcp[ci, s_col + 2], \
        tcp[ci, s_col + 3]
    d_lo, d_hi, d_mw, d_ws = tcp[ci, d_col], tcp[ci, d_col + 1], tcp[ci, d_col + 2], \
        tcp[ci, d_col + 3]
    both = s_ws & d_ws
    if both & T.WSCALE_FLAG:
        sws, dws = s_ws & T.WSCALE_MASK, d_ws & T.WSCALE_MASK
    elif both & T.WSCALE_UNKNOWN:
        sws, dws = np.int64(T.MAX_WSCALE), np.int64(T.MAX_WSCALE)
    else:
        sws, dws = np.int64(0), np.int64(0)
    swin, dmw, ack_max = win << sws, d_mw << dws, np.int64(T.MAXACKWINDOW) << sws
    seq_r = _srel(seq - s_lo)
    end_rel = _srel(seq + plen - s_lo)
    hi_rel = _srel(ack + max(swin, 1) - d_lo)
    ackskew = _srel(d_lo - ack)
    end_r = end_rel
    if plen == 0:
        seq_r = 0
        end_r = 0
    # As conntrack_tcp.established_one: each check signed 32-bit, as update()'s SEQ_GEQ.
    ok = liberal or (_srel(_srel(s_hi - s_lo) - end_r) >= 0 and _srel(seq_r + dmw) >= 0
                     and ackskew >= -T.MAXACKWINDOW and ackskew <= ack_max)
    if ok:
        tcp[ci, s_col] = s_lo if plen == 0 else (s_lo + max(end_rel, 0)) & 0xFFFFFFFF
        tcp[ci, s_col + 2] = max(win, s_mw)
        tcp[ci, d_col + 1] = (d_lo + max(hi_rel, _srel(d_hi - d_lo))) & 0xFFFFFFFF
    return ok


@numba.njit(cache=True)
def _udp_checksums_ok(data, g, l3, l4):
    """IPv4 header and UDP checksums of row g (a zero UDP checksum is none)."""
    tot = np.int64(_be(data, g, l3 + 2, 2))
    hl = l4 - l3
    if _fold(_sum16(data, g, l3, hl)) != 0xFFFF:
        return False
    if _be(data, g, l4 + 6, 2) == 0:
        return True
    ln = tot - hl
    s = _sum16(data, g, l4, ln) + _pseudo4(data, g, l3) + np.uint64(IP_UDP) + np.uint64(ln)
    return _fold(s) == 0xFFFF


@numba.njit(cache=True)
def _icmp_checksums_ok(data, g, l3, l4):
    """IPv4 header and ICMP checksums of row g (ICMP has no pseudo-header)."""
    tot = np.int64(_be(data, g, l3 + 2, 2))
    if _fold(_sum16(data, g, l3, l4 - l3)) != 0xFFFF:
        return False
    return _fold(_sum16(data, g, l4, l3 + tot - l4)) == 0xFFFF


@numba.njit(cache=True, inline="always")
def _ports(kind, keys, data, g, l4):
    """The tuple's port words of row g: its ports, or an ICMP query's id << 8 | type and
    the answer's (conntrack_pkt.extract)."""
    if kind != _ICMP_ROW:
        return keys[_TP_SRC, g], keys[_TP_DST, g]
    typ = keys[_TP_SRC, g]
    ident = _be(data, g, l4 + 4, 2) << np.uint64(8)
    return ident | typ, ident | np.uint64(_REV4[typ])


@numba.njit(cache=True, inline="always")
def _put16(data, g, c, v):
    data[g, c] = np.uint8((v >> 8) & 0xFF)
    data[g, c + 1] = np.uint8(v & 0xFF)


@numba.njit(cache=True, inline="always")
def _csum_replace(ck, old_sum, new_sum, k):
    """checksum.csum_replace of one checksum: k words summing to old_sum became new_sum."""
    t = (ck ^ 0xFFFF) + k * 0xFFFF - old_sum + new_sum
    t = (t & 0xFFFF) + (t >> 16)
    t = (t & 0xFFFF) + (t >> 16)
    return t ^ 0xFFFF


@numba.njit(cache=True)
def _nat4(data, keys, g, l3, l4, kind, src, dst, sp, dp):
    """conntrack_nat.rewrite of one IPv4 packet to (src, dst, sp, dp): addresses, the
    header checksum, TCP/UDP ports and checksum (RFC 1624), and the key slots."""
    osrc, odst = np.int64(keys[_NW_SRC, g]), np.int64(keys[_NW_DST, g])
    src, dst = np.int64(src), np.int64(dst)
    o_sum = (osrc >> 16) + (osrc & 0xFFFF) + (odst >> 16) + (odst & 0xFFFF)
    n_sum = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF)
    _put16(data, g, l3 + 10, _csum_replace(np.int64(_be(data, g, l3 + 10, 2)), o_sum, n_sum, 4))
    for c, v in ((l3 + 12, src), (l3 + 16, dst)):
        _put16(data, g, c, v >> 16)
        _put16(data, g, c + 2, v & 0xFFFF)
    keys[_NW_SRC, g] = np.uint64(src)
    keys[_NW_DST, g] = np.uint64(dst)
    if kind == _ICMP_ROW:
        return
    osp, odp = np.int64(keys[_TP_SRC, g]), np.int64(keys[_TP_DST, g])
    sp, dp = np.int64(sp), np.int64(dp)
    at = l4 + (16 if kind == _TCP_ROW else 6)
    ck = np.int64(_be(data, g, at, 2))
    upd = _csum_replace(ck, o_sum + osp + odp, n_sum + sp + dp, 6)
    if kind == _UDP_ROW:
        if upd == 0:
            upd = 0xFFFF
        if ck == 0:
            upd = 0             # no UDP checksum stays none
    _put16(data, g, at, upd)
    _put16(data, g, l4, sp)
    _put16(data, g, l4 + 2, dp)
    keys[_TP_SRC, g] = np.uint64(sp)
    keys[_TP_DST, g] = np.uint64(dp)


# One signature, compiled (or loaded from the on-disk cache) at import, never in the
# middle of a packet burst; callers pass exactly these types.  C-contiguous arrays (but
# l3, l4 and error, which the express lane holds as strided views): an 'A' array's every
# access multiplies by a stride kept on the stack (the kernel about 20% slower).
@kernel("int64(uint8[:, ::1], int64[::1], int32[:], int32[:], uint64[:, ::1], uint8[:],"
        " uint64[::1], uint64[:, ::1], uint64[:, ::1], int64[:, ::1], float64[:, ::1], float64,"
        " int64, float64[::1], int64[:, ::1], int8[::1], int64[::1], int64[::1], boolean[::1])")
def express_kernel(data, rows, l3, l4, keys, error, zones, kv, mem, memi, memf, now, flags, tmo,
                   work, mark, count, stats, good):
    """conntrack_fast.express for the rows `rows`: the same choice of TCP express rows,
    their updates in batch order (which is what that function's layered passes compute),
    ct_* metadata and table writes; and the UDP/IPv4 and ICMP/IPv4 query rows of
    connections seen both ways, which the batch path would update as steady() does
    (timeout, +est, [+rpl]).  With F_NAT (a ct(nat) action), rows of NATed connections
    are translated as Conntrack._nat_rewrite does.  Without F_COMMIT, a row whose tuple
    the index does not hold at all is +new, as conn_not_found() says without a commit
    (a mid-stream ACK, UDP, an ICMP query), and changes nothing.  A connection with any
    row off the express path keeps all its rows off it.  tmo: the timeouts named by
    TIMEOUTS.  work[r, W_ELIG] is 1 for the rows it handled; stats gets (express rows,
    invalid among them, misses among them).  good[g]: row g's checksums were found good
    and its bytes are unchanged since (a caller running several ct actions on the same
    rows, as the express lane does, keeps it across calls; NAT clears it); rows found
    good here are marked.  Returns the number of express rows."""
    # Borrowed: passed row by row to the checksum and TCP helpers (see borrowed()).
    data, memi = borrowed(data), borrowed(memi)
    m = rows.shape[0]
    width = data.shape[1]
    cap = mem.shape[0] - 1
    u3 = np.int64(-1)
    u4 = np.int64(-1)
    n_cand = 0
    for r in range(m):
        g = rows[r]
        work[r, W_CAND] = 0
        work[r, W_ELIG] = 0
        work[r, W_CONN] = -1
        work[r, W_MISS] = 0
        if keys[_ETH_TYPE, g] == ETH_IP and error[g] == 0 and l3[g] >= 0 and l4[g] >= 0 \
                and (keys[_NW_FRAG, g] & np.uint64(1)) == 0:
            proto = keys[_NW_PROTO, g]
            if proto == IP_TCP:
                work[r, W_CAND] = _TCP_ROW
                if u3 < 0:
                    u3, u4 = np.int64(l3[g]), np.int64(l4[g])
            elif proto == IP_UDP:
                work[r, W_CAND] = _UDP_ROW
            elif proto == IP_ICMP and keys[_TP_SRC, g] < 256 and _REV4[keys[_TP_SRC, g]] >= 0 \
                    and keys[_TP_DST, g] == 0 \
                    and l4[g] + 8 <= min(width, l3[g] + np.int64(_be(data, g, l3[g] + 2, 2))):
                # A query or its answer, whole: errors (related) are the batch path's.
                work[r, W_CAND] = _ICMP_ROW
            n_cand += work[r, W_CAND] != 0
    if n_cand == 0:
        return 0
    hl = u4 - u3
    if u3 >= 0 and (u4 + 16 > width or hl < 20 or hl & 3):
        # conntrack_fast.express takes no TCP row of this batch.
        for r in range(m):
            if work[r, W_CAND] == _TCP_ROW:
                work[r, W_CAND] = 0
    # Pass 1: lookup and eligibility; connections with a row off the express path marked
    # (mark and count are scratch arrays indexed by slot).  Hashes, index probes and
    # table rows in separate loops, so the random loads of many rows overlap.
    for r in range(m):
        kind = work[r, W_CAND]
        if kind:
            g = rows[r]
            sp, dp = _ports(kind, keys, data, g, np.int64(l4[g]))
            meta = zones[r] | (_PROTO[kind] << np.uint64(16))
            work[r, W_DIR] = np.int64(_tuple_hash(meta, keys[_NW_SRC, g], keys[_NW_DST, g],
                                                  (sp << np.uint64(32)) | dp))
    for r in range(m):
        if work[r, W_CAND]:
            work[r, W_CONN] = _get(kv, np.uint64(work[r, W_DIR]))
    for r in range(m):
        kind = work[r, W_CAND]
        if not kind:
            continue
        g = rows[r]
        zc = zones[r]
        src, dst = keys[_NW_SRC, g], keys[_NW_DST, g]
        sp, dp = _ports(kind, keys, data, g, np.int64(l4[g]))
        st_in = keys[_CT_STATE, g]
        natted = keys[_CT_ZONE, g] == zc and (st_in & np.uint64(_NAT_BITS)) != 0
        if kind == _TCP_ROW:
            geo = l3[g] == u3 and l4[g] == u4
            fl = (_be(data, g, u4 + 12, 4) >> np.uint64(16)) \
                & np.uint64(T.SYN | T.FIN | T.RST | T.ACK)
            ok_pkt = geo and fl == T.ACK and not natted
        else:
            ok_pkt = not natted
        v = work[r, W_CONN]
        ci = v >> 1 if v >= 0 else cap
        di = v & 1 if v >= 0 else 0
        t = C_TUP + 6 * di
        found = v >= 0 and (mem[ci, t] | mem[ci, t + 2]) == 0 and mem[ci, t + 1] == src \
            and mem[ci, t + 3] == dst and mem[ci, t + 4] == sp and mem[ci, t + 5] == dp \
            and memf[ci, C_EXP] > now
        if kind == _TCP_ROW:
            elig = found and ok_pkt and memi[ci, C_TCP + 4] == T.ESTABLISHED \
                and memi[ci, C_TCP + 9] == T.ESTABLISHED
        elif kind == _UDP_ROW:
            elig = found and ok_pkt and mem[ci, C_L4ST] == OTHER_BIDIR
        else:
            elig = found and ok_pkt and mem[ci, C_L4ST] == ICMP_REPLY
        if v < 0 and ok_pkt and not flags & F_COMMIT \
                and (kind != _ICMP_ROW or _ICMP_NEW[keys[_TP_SRC, g]]):
            elig = True
            work[r, W_MISS] = 1
        work[r, W_CONN] = ci
        work[r, W_DIR] = di
        work[r, W_ELIG] = 1 if elig else 0
        work[r, W_FOUND] = 1 if found else 0
        mark[ci] = 0
    for r in range(m):
        kind = work[r, W_CAND]
        if kind and not work[r, W_ELIG]:
            g = rows[r]
            ci = work[r, W_CONN]
            if ci < cap and work[r, W_FOUND]:
                mark[ci] = 1
            zc = zones[r]
            if keys[_CT_ZONE, g] == zc and (keys[_CT_STATE, g] & np.uint64(_NAT_BITS)) != 0:
                src, dst = keys[_NW_SRC, g], keys[_NW_DST, g]
                sp, dp = _ports(kind, keys, data, g, np.int64(l4[g]))
                meta = zc | (_PROTO[kind] << np.uint64(16))
                rv = _get(kv, _tuple_hash(meta, dst, src, (dp << np.uint64(32)) | sp))
                if rv >= 0:
                    mark[rv >> 1] = 1
    # Pass 2: busy connections off, then the checksums of the rows still express, and
    # each TCP connection's count of express rows.
    k = 0
    check = flags & F_CHECKSUMS
    for r in range(m):
        if work[r, W_ELIG]:
            ci = work[r, W_CONN]
            g = rows[r]
            kind = work[r, W_CAND]
            if not check or good[g]:
                bad = False
            elif kind == _TCP_ROW:
                bad = not _checksums_ok(data, g, u3, hl)
            elif kind == _UDP_ROW:
                bad = not _udp_checksums_ok(data, g, np.int64(l3[g]), np.int64(l4[g]))
            else:
                bad = not _icmp_checksums_ok(data, g, np.int64(l3[g]), np.int64(l4[g]))
            if check and not bad:
                good[g] = True
            if mark[ci] or bad:
                work[r, W_ELIG] = 0
            else:
                count[ci] = 0
                k += 1
    if k == 0:
        return 0
    # Each TCP row's place among its connection's express rows (W_FOUND, from 1), and
    # their number (count).
    for r in range(m):
        if work[r, W_ELIG] and work[r, W_CAND] == _TCP_ROW and not work[r, W_MISS]:
            ci = work[r, W_CONN]
            count[ci] += 1
            work[r, W_FOUND] = count[ci]
    # Pass 3: the updates, in batch order, the metadata and NAT.
    nbad = 0
    nmiss = 0
    liberal = flags & F_LIBERAL
    for r in range(m):
        if not work[r, W_ELIG]:
            continue
        g = rows[r]
        ci = work[r, W_CONN]
        di = work[r, W_DIR]
        kind = work[r, W_CAND]
        if work[r, W_MISS]:
            # No connection: the packet's own tuple as the original (write_ct_md).
            nmiss += 1
            sp, dp = _ports(kind, keys, data, g, np.int64(l4[g]))
            keys[_CT_FIRST, g] = np.uint64(NEW | TRK)
            keys[_CT_FIRST + 1, g] = zones[r]
            for j in range(2, 5):
                keys[_CT_FIRST + j, g] = 0
            keys[_CT_FIRST + 5, g] = keys[_NW_SRC, g]
            keys[_CT_FIRST + 6, g] = keys[_NW_DST, g]
            for j in range(7, 11):
                keys[_CT_FIRST + j, g] = 0
            keys[_CT_FIRST + 11, g] = _PROTO[kind]
            keys[_CT_FIRST + 12, g] = sp & np.uint64(0xFF) if kind == _ICMP_ROW else sp
            keys[_CT_FIRST + 13, g] = 0 if kind == _ICMP_ROW else dp
            continue
        if kind == _TCP_ROW:
            # conntrack_fast settles a connection's rows past the _LAYERS-th in prefix-
            # maxima rounds, each up to its next invalid row; with several such rows,
            # the rows after the _LAYERS-th of their invalid ones are left to the batch
            # path.  mark (zero for express connections) counts those invalid rows.
            beyond = work[r, W_FOUND] > _LAYERS and count[ci] > _LAYERS + 1
            if beyond and mark[ci] >= _LAYERS:
                work[r, W_ELIG] = 0
                k -= 1
                continue
            w3 = np.int64(_be(data, g, u4 + 12, 4))
            tot = np.int64(_be(data, g, u3 + 2, 2))
            ok = _established_one(memi, ci, C_TCP + 5 * di, C_TCP + 5 - 5 * di,
                                  np.int64(_be(data, g, u4 + 4, 4)),
                                  np.int64(_be(data, g, u4 + 8, 4)),
                                  w3 & 0xFFFF, tot - hl - (w3 >> 28) * 4, liberal)
            if ok:
                memf[ci, C_EXP] = now + tmo[0]
            else:
                nbad += 1
                if beyond:
                    mark[ci] += 1
        else:
            ok = True
            memf[ci, C_EXP] = now + tmo[1 if kind == _UDP_ROW else 2]
        zc = zones[r]
        s = keys[_CT_STATE, g] if keys[_CT_ZONE, g] == zc else np.uint64(0)
        s = (s | np.uint64(EST) | (np.uint64(RPL) if di else np.uint64(0))) & ~np.uint64(NEW)
        st = (s if ok else np.uint64(INV)) | np.uint64(TRK)
        natc = mem[ci, C_NAT]
        nat = flags & F_NAT and natc != 0
        if nat:
            # OVS translates whatever the update said, invalid packets included.
            st |= np.uint64(SNAT_BIT) if ((natc & SNAT) != 0) != (di == 1) \
                else np.uint64(DNAT_BIT)
        keys[_CT_FIRST, g] = st
        keys[_CT_FIRST + 1, g] = zc
        keys[_CT_FIRST + 2, g] = mem[ci, C_MARK]
        keys[_CT_FIRST + 3, g] = mem[ci, C_LABEL]
        keys[_CT_FIRST + 4, g] = mem[ci, C_LABEL + 1]
        keys[_CT_FIRST + 5, g] = mem[ci, C_TUP + 1]
        keys[_CT_FIRST + 6, g] = mem[ci, C_TUP + 3]
        for j in range(7, 11):
            keys[_CT_FIRST + j, g] = 0
        keys[_CT_FIRST + 11, g] = mem[ci, C_PROTO]
        if kind == _ICMP_ROW:
            keys[_CT_FIRST + 12, g] = mem[ci, C_TUP + 4] & np.uint64(0xFF)
            keys[_CT_FIRST + 13, g] = 0
        else:
            keys[_CT_FIRST + 12, g] = mem[ci, C_TUP + 4]
            keys[_CT_FIRST + 13, g] = mem[ci, C_TUP + 5]
        if nat:
            # To the other direction's tuple, reversed.
            o = C_TUP + 6 - 6 * di
            _nat4(data, keys, g, np.int64(l3[g]), np.int64(l4[g]), kind, mem[ci, o + 3],
                  mem[ci, o + 1], mem[ci, o + 5], mem[ci, o + 4])
            good[g] = False        # its bytes changed: checked again by a later ct
    stats[S_ROWS] = k
    stats[S_BAD] = nbad
    stats[S_MISS] = nmiss
    return k


@kernel("void(uint8[:, :], uint64[:, :], int64[:], int32[:], int32[:], int64[:],"
        " uint64[:, :])")
def nat4_rows(data, keys, rows, l3, l4, proto, w):
    """conntrack_nat.rewrite of the IPv4 packets `rows` to their connection's other tuple
    reversed (w: that tuple's words per row, as Conntrack._nat_rewrite takes them)."""
    for t in range(rows.shape[0]):
        g = rows[t]
        kind = _TCP_ROW if proto[t] == IP_TCP else _UDP_ROW if proto[t] == IP_UDP \
            else _ICMP_ROW          # no ports: addresses and the header checksum only
        _nat4(data, keys, g, np.int64(l3[g]), np.int64(l4[g]), kind, w[t, 3], w[t, 1],
              w[t, 5], w[t, 4])


@kernel("int64(uint64[:, :], uint64[:, :], float64[:, :], uint64[:], uint64[:, :], boolean[:],"
        " float64, uint64[:, :], boolean[:], int64[:], boolean[:])")
def lookup_rows(kv, mem, memf, hashes, words, look, now, R, found, conn, reply):
    """conntrack_batch.lookup compiled: each row of `look` whose tuple a live connection
    holds gets its table row in R (zeroed beforehand), found, its slot and direction;
    returns how many."""
    hits = 0
    for i in range(hashes.shape[0]):
        if not look[i]:
            continue
        v = _get(kv, hashes[i])
        if v < 0:
            continue
        ci = v >> 1
        o = C_TUP + 6 * (v & 1)
        same = memf[ci, C_EXP] > now
        for j in range(6):
            if mem[ci, o + j] != words[i, j]:
                same = False
        if not same:
            continue
        for j in range(R.shape[1]):
            R[i, j] = mem[ci, j]
        found[i] = True
        conn[i] = ci
        reply[i] = (v & 1) == 1
        hits += 1
    return hits


@kernel("void(uint64[:, :], int64[:], uint64[:, :], int64[:], uint64[:], uint64[:],"
        " uint64[:, :], int64[:], boolean[:], int8[:])")
def write_md_rows(keys, rows, R, conn, st, zones, words, proto, v6, tsrc):
    """conntrack._write_md compiled: each row's ct_state, zone, mark, label and original
    tuple (its connection's, else the packet's, else none) into its key slots."""
    w = np.empty(6, np.uint64)
    for i in range(rows.shape[0]):
        g = rows[i]
        if conn[i] >= 0:
            for j in range(6):
                w[j] = R[i, C_TUP + j]
            pr = R[i, C_PROTO]
            six = R[i, C_V6] != 0
        else:
            none = tsrc[i] == 0
            for j in range(6):
                w[j] = np.uint64(0) if none else words[i, j]
            pr = np.uint64(0) if none else np.uint64(proto[i])
            six = v6[i]
        keys[_CT_FIRST, g] = st[i]
        keys[_CT_FIRST + 1, g] = zones[i]
        keys[_CT_FIRST + 2, g] = R[i, C_MARK]
        keys[_CT_FIRST + 3, g] = R[i, C_LABEL]
        keys[_CT_FIRST + 4, g] = R[i, C_LABEL + 1]
        if six:
            keys[_CT_FIRST + 5, g] = 0
            keys[_CT_FIRST + 6, g] = 0
            for j in range(4):
                keys[_CT_FIRST + 7 + j, g] = w[j]
        else:
            keys[_CT_FIRST + 5, g] = w[1]
            keys[_CT_FIRST + 6, g] = w[3]
            for j in range(4):
                keys[_CT_FIRST + 7 + j, g] = 0
        keys[_CT_FIRST + 11, g] = pr
        if pr == IP_ICMP or pr == IP_ICMPV6:
            keys[_CT_FIRST + 12, g] = w[4] & np.uint64(0xFF)
            keys[_CT_FIRST + 13, g] = 0
        else:
            keys[_CT_FIRST + 12, g] = w[4]
            keys[_CT_FIRST + 13, g] = w[5]


def express(ct, b: CtBatch) -> np.ndarray:
    """conntrack_fast.express compiled, UDP/IPv4 and ICMP/IPv4 queries of two-way
    connections and NAT included (same contract: the positions in b.rows of the rows left
    over)."""
    tab = ct.table
    m = b.rows.size
    if tab.overflow:
        return np.arange(m)
    parsed = b.parsed
    mem = tab.mem
    work = np.empty((m, WORK_W), np.int64)
    stats = np.zeros(3, np.int64)
    fl = (F_NAT if b.nat is not None else 0) | (F_CHECKSUMS if ct.checksums else 0) \
        | (F_LIBERAL if ct.tcp_liberal else 0) | (F_COMMIT if b.commit else 0)
    # The kernel writes data (NAT) and keys: copies of strided ones are written back.
    data, keys = b.batch.data, parsed.keys
    cdata, ckeys = np.ascontiguousarray(data), np.ascontiguousarray(keys)
    k = express_kernel(cdata, np.ascontiguousarray(b.rows, np.int64),
                       parsed.l3.astype(np.int32, copy=False),
                       parsed.l4.astype(np.int32, copy=False), ckeys,
                       parsed.error.astype(np.uint8, copy=False),
                       np.ascontiguousarray(b.zones, np.uint64), tab.index.kv, mem,
                       mem.view(np.int64), mem.view(np.float64), float(b.now), fl,
                       ct.tmo[TIMEOUTS], work, tab.scratch(np.int8),
                       tab.scratch(np.int64), stats, np.zeros(data.shape[0], np.bool_))
    if cdata is not data:
        data[...] = cdata
    if ckeys is not keys:
        keys[...] = ckeys
    if k == 0:
        return np.arange(m)
    count_express(ct.stats, stats)
    return np.flatnonzero(work[:, W_ELIG] == 0)


def count_express(s: dict, stats) -> None:
    """Conntrack's counters for what express_kernel did, as the batch path counts them
    (stats: numpy's or, from the lane, Python ints; a counter with nothing to add is not
    touched: each update is a dict lookup and store, once a batch)."""
    k, nbad, miss = int(stats[S_ROWS]), int(stats[S_BAD]), int(stats[S_MISS])
    s["packets"] += k
    if k != miss:
        s["lookups_hit"] += k - miss
        s["fast_path"] += k - miss
    if nbad:
        s["invalid"] += nbad
        s["tcp_seq_chk_failed"] += nbad
