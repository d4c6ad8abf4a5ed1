"""Compiled tunnel push and pop for the common case (VXLAN, Geneve without options, GRE over IPv4), the rest by tunnel.encap/decap."""

from __future__ import annotations

import weakref
from collections import Counter

import numba
import numpy as np

from sbnet.datapath import tunnel as T
from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch
from sbnet.datapath.conntrack_kernel import (_be, _fold, _pseudo4, _sum16, _sum16_in,
                                             borrowed, copy_row_bytes)
from sbnet.datapath.jit import kernel
from sbnet.datapath.underlay import Underlay
from sbnet.flows.fields import IP_UDP

_VXLAN, _GRE, _GENEVE = (T.KINDS.index(k) for k in ("vxlan", "gre", "geneve"))
_OTHER, _OK, _SLOW = 0, 1, 2          # decap verdict per row
D_OTHER, D_OK = _OTHER, _OK
# Columns of decap_kernel's per-row results.
(D_STATUS, D_INNER, D_ILEN, D_PORT, D_KEY, D_SRC, D_DST, D_TOS, D_TTL, D_SPORT, D_DPORT,
 D_FLAGS) = range(12)
D_COLS = D_FLAGS + 1
_INHERIT = -1
_IP_GRE = 47


@numba.njit(cache=True, inline="always")
def _byte(d, i, c):
    """d[i, c], zero past the row's end (as tunnel._gather reads)."""
    return np.uint64(d[i, c]) if c < d.shape[1] else np.uint64(0)


@numba.njit(cache=True, inline="always")
def _copy(d, i, c, out, o, oc, n):
    """out[o, oc:oc + n] = d[i, c:c + n]: one memcpy where the rows' bytes are contiguous,
    else by unsigned indices (numba's fix-up of a signed index
    that might be negative, on every byte, cost ten times the copy)."""
    if c >= 0 and oc >= 0 and n > 0 and d.strides[1] == 1 and out.strides[1] == 1:
        copy_row_bytes(d, i, c, out, o, oc, n)
        return
    if c < 0 or oc < 0:
        for j in range(n):
            out[o, oc + j] = d[i, c + j]
        return
    ui, uo, uc, uoc = np.uint64(i), np.uint64(o), np.uint64(c), np.uint64(oc)
    for j in range(np.uint64(max(n, 0))):
        out[uo, uoc + j] = d[ui, uc + j]


@numba.njit(cache=True, inline="always")
def _mix(a, b):
    x = (a * np.uint64(0x9E3779B97F4A7C15)) ^ b
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return x


@numba.njit(cache=True, inline="always")
def _inner_l3(d, i, start):
    """Column of the L3 header behind up to four VLAN tags, and its ethertype."""
    w = d.shape[1]
    pos = start + 12
    et = np.int64(d[i, pos]) << 8 | np.int64(d[i, pos + 1])
    for _ in range(4):
        if et != 0x8100 and et != 0x88A8:
            break
        pos += 4
        p = min(pos, w - 2)
        et = np.int64(d[i, p]) << 8 | np.int64(d[i, p + 1])
    return pos + 2, et


@numba.njit(cache=True)
def _flow_hash(d, i, start, length):
    """tunnel.flow_hash of row i."""
    l3, et = _inner_l3(d, i, start)
    h = _mix(_be(d, i, start, 8), (_be(d, i, start + 8, 4) << np.uint64(16)) | np.uint64(et))
    v4 = et == 0x0800
    v6 = et == 0x86DD
    if v4 or v6:
        ihl = np.int64(_byte(d, i, l3) & np.uint64(0x0F)) * 4
        proto = _byte(d, i, l3 + 9) if v4 else _byte(d, i, l3 + 6)
        frag = v4 and (_be(d, i, l3 + 6, 2) & np.uint64(0x3FFF)) != 0
        a = _be(d, i, l3 + 12, 8) if v4 else _be(d, i, l3 + 8, 8)
        b = _be(d, i, l3 + 16, 8) if v6 else np.uint64(0)
        c = _be(d, i, l3 + 24, 8) if v6 else np.uint64(0)
        e = _be(d, i, l3 + 32, 8) if v6 else np.uint64(0)
        l4 = l3 + (ihl if v4 else 40)
        ports = np.uint64(0)
        if not frag and (proto == 6 or proto == 17 or proto == 132) and l4 + 4 <= start + length:
            ports = _be(d, i, l4, 4)
        hi = _mix(_mix(_mix(a, b), _mix(c, e)), (proto << np.uint64(32)) | ports)
        h = _mix(h, hi)
    return h >> np.uint64(32)


@numba.njit(cache=True, inline="always")
def encap_fits(prm, t, length):
    """Whether an inner frame of `length` bytes fits the MTU once encapsulated (prm[t] as
    encap_kernel's; rows of a table indexed in place, as a row view costs two reference
    counts a packet)."""
    return 20 + prm[t, 1] - 34 + np.int64(length) <= prm[t, 5]


@numba.njit(cache=True, inline="always")
def encap_one(d, i, s, ln, tmpl, prm, t, out, o):
    """encap_kernel's work for one frame, row i of d from column s, ln bytes long, into
    row o of out (the caller checked encap_fits), as template row t and prm[t] say."""
    kind, hlen, ptos, pttl, csum = prm[t, 0], prm[t, 1], prm[t, 2], prm[t, 3], prm[t, 4]
    tnl = hlen - 34
    col = HEADROOM + hlen
    h0 = HEADROOM
    _copy(d, i, s, out, o, col, ln)
    _copy(tmpl, t, 0, out, o, h0, hlen)
    # TOS and TTL as tunnel._outer_tos_ttl.
    l3, et = _inner_l3(d, i, s)
    ip = (et == 0x0800 or et == 0x86DD) and l3 + 9 <= s + ln
    if et == 0x0800:
        itos = np.int64(_byte(d, i, l3 + 1))
        ittl = np.int64(_byte(d, i, l3 + 8))
    else:
        itos = np.int64((_byte(d, i, l3) & np.uint64(0x0F)) << np.uint64(4)
                        | (_byte(d, i, l3 + 1) >> np.uint64(4)))
        ittl = np.int64(_byte(d, i, l3 + 7))
    if ptos == _INHERIT:
        tos = itos & 0xFC if ip else 0
    else:
        tos = ptos
    if ip:
        ecn = itos & 3
        tos |= 2 if ecn == 3 else ecn
    if pttl == _INHERIT:
        ttl = ittl if ip else T.DEFAULT_TTL
    else:
        ttl = pttl
    total = 20 + tnl + ln
    q = h0 + 14
    out[o, q + 1] = tos
    out[o, q + 2] = total >> 8
    out[o, q + 3] = total & 0xFF
    out[o, q + 8] = ttl
    # The template's header sums to prm[t, 6] with TOS, length and TTL zero (RFC 1624).
    c = _fold(np.uint64(prm[t, 6]) + np.uint64(tos + total + (ttl << 8))) ^ np.uint64(0xFFFF)
    out[o, q + 10] = c >> np.uint64(8)
    out[o, q + 11] = c & np.uint64(0xFF)
    l4 = h0 + 34
    if kind == _GRE:
        if csum:
            sm = _fold(_fold(_sum16(out, o, l4, tnl)) + _fold(_sum16(out, o, col, ln)))
            c = sm ^ np.uint64(0xFFFF)
            out[o, l4 + 4] = c >> np.uint64(8)
            out[o, l4 + 5] = c & np.uint64(0xFF)
        return
    fh = _flow_hash(d, i, s, ln)
    sport = T.UDP_SRC_MIN + np.int64((fh * np.uint64(T.UDP_SRC_MAX - T.UDP_SRC_MIN))
                                     >> np.uint64(32))
    plen = total - 20
    out[o, l4] = sport >> 8
    out[o, l4 + 1] = sport & 0xFF
    out[o, l4 + 4] = plen >> 8
    out[o, l4 + 5] = plen & 0xFF
    if csum:
        pseudo = _fold(_pseudo4(out, o, q)) + np.uint64(17) + np.uint64(plen)
        sm = _fold(pseudo + _fold(_sum16(out, o, l4, tnl)) + _fold(_sum16(out, o, col, ln)))
        c = sm ^ np.uint64(0xFFFF)
        if c == 0:
            c = np.uint64(0xFFFF)
        out[o, l4 + 6] = c >> np.uint64(8)
        out[o, l4 + 7] = c & np.uint64(0xFF)


# Kernels with one signature each, compiled (or loaded from the on-disk cache) at import,
# never in the middle of a packet burst; callers pass exactly these types.
@kernel("int64(uint8[:, :], int32[:], int32[:], uint8[:, :], int64[:, :], uint8[:, :])")
def encap_kernel(d, start, length, tmpl, prm, out):
    """Outer IPv4 headers (from the template tmpl[0], hdr_len bytes) and inner frames of
    every row into out; prm[0]: kind, hdr_len, tos (or -1: inherit), ttl (or -1), checksum,
    mtu, the template's IPv4 header sum (push_plan's).  The inner frame starts at column
    HEADROOM + hdr_len.  Returns -1, writing nothing, when any packet would exceed the
    MTU."""
    n = start.shape[0]
    for i in range(n):
        if not encap_fits(prm, 0, length[i]):
            return -1
    for i in range(n):
        encap_one(d, i, np.int64(start[i]), np.int64(length[i]), tmpl, prm, 0, out, i)
    return 0


# The frames and the plan C-contiguous: an 'A' array's every byte read multiplies by a
# stride kept on the stack.
@kernel("int64(uint8[:, ::1], int32[:], int32[:], uint64[::1], uint64[:, ::1], int64[::1],"
        " int64[::1], int64[:, ::1], int64[:, :])")
def decap_kernel(d, start, length, local4, local6, udp_ports, udp_kinds, ports, res):
    """tunnel.decap of VXLAN over IPv4 for every row, or its verdict that the numpy code
    must decide: res[i, D_STATUS] is _OTHER (not addressed to a tunnel: switched as
    usual), _OK (the other columns filled) or _SLOW (IPv6 to a local address, GRE,
    Geneve, any packet decap would drop or count).  ports: the tunnel ports in OVS's lookup order, rows
    (kind, dst_port, remote family (0: any), remote, local family, local, fixed key
    (-1: any), ofport).  Returns the number of _SLOW rows."""
    # Borrowed: the inlined header sum counts a reference to it on every row (borrowed(),
    # two atomic operations each).
    d = borrowed(d)
    n = start.shape[0]
    n_slow = 0
    for i in range(n):
        res[i, D_STATUS] = _OTHER
        s = np.int64(start[i])
        ln = np.int64(length[i])
        et = _be(d, i, s + 12, 2)
        if et == 0x86DD and ln >= 54:
            hi, lo = _be(d, i, s + 38, 8), _be(d, i, s + 46, 8)
            for j in range(local6.shape[0]):
                if local6[j, 0] == hi and local6[j, 1] == lo:
                    res[i, D_STATUS] = _SLOW
                    n_slow += 1
                    break
            continue
        if et != 0x0800 or ln < 34:
            continue
        q = s + 14
        dst = _be(d, i, q + 16, 4)
        local = False
        for a in local4:
            if a == dst:
                local = True
        proto = np.int64(_byte(d, i, q + 9))      # int64: a uint64 compared with 17 is a float
        if not local or (proto != 17 and proto != 47):
            continue
        if proto == 47:
            res[i, D_STATUS] = _SLOW      # GRE (or a GRE packet without a GRE port: numpy)
            n_slow += 1
            continue
        if udp_ports.shape[0] == 0:
            continue
        v0 = _byte(d, i, q)
        ihl = np.int64(v0 & np.uint64(0x0F)) * 4
        tot = np.int64(_be(d, i, q + 2, 2))
        frag = _be(d, i, q + 6, 2) & np.uint64(0x3FFF)
        if (v0 >> np.uint64(4)) != 4 or ihl < 20 or tot < ihl or 14 + tot > ln \
                or _fold(_sum16_in(d, i, q, ihl) if q >= 0 and q + ihl <= d.shape[1]
                         else _sum16(d, i, q, ihl)) != 0xFFFF or frag != 0:
            res[i, D_STATUS] = _SLOW
            n_slow += 1
            continue
        l4 = 14 + ihl
        ip_end = 14 + tot
        u = s + l4
        dport = np.int64(_be(d, i, u + 2, 2))
        if ip_end - l4 < 8:
            res[i, D_STATUS] = _SLOW
            n_slow += 1
            continue
        kind = -1
        for j in range(udp_ports.shape[0]):
            if udp_ports[j] == dport:
                kind = udp_kinds[j]
                break
        if kind < 0:
            continue                      # UDP to no tunnel's port: not ours
        ulen = np.int64(_be(d, i, u + 4, 2))
        ucs = _be(d, i, u + 6, 2)
        if kind != _VXLAN or ulen < 8 or ulen > ip_end - l4 or ulen < 16:
            res[i, D_STATUS] = _SLOW
            n_slow += 1
            continue
        src = _be(d, i, q + 12, 4)
        if ucs != 0:
            pseudo = _fold(_pseudo4(d, i, q))
            sm = _fold(_fold(_sum16(d, i, u, ulen)) + pseudo + np.uint64(17) + np.uint64(ulen))
            if sm != 0xFFFF:
                res[i, D_STATUS] = _SLOW
                n_slow += 1
                continue
        key = _be(d, i, u + 12, 3)
        if _be(d, i, u + 8, 4) != T.VXLAN_FLAGS or _byte(d, i, u + 15) != 0 or ulen - 16 < 14:
            res[i, D_STATUS] = _SLOW
            n_slow += 1
            continue
        ofport = np.int64(0)
        for p in range(ports.shape[0]):
            if ports[p, 0] != kind or ports[p, 1] != dport:
                continue
            if ports[p, 2] != 0 and (ports[p, 2] != 4 or np.uint64(ports[p, 3]) != src):
                continue
            if ports[p, 4] != 0 and (ports[p, 4] != 4 or np.uint64(ports[p, 5]) != dst):
                continue
            if ports[p, 6] >= 0 and np.uint64(ports[p, 6]) != key:
                continue
            ofport = ports[p, 7]
            break
        if ofport == 0:
            res[i, D_STATUS] = _SLOW      # unknown_key or no_tunnel_port: counted by numpy
            n_slow += 1
            continue
        flags = T.TNL_F_KEY
        if _byte(d, i, q + 6) & np.uint64(0x40):
            flags |= T.TNL_F_DONT_FRAGMENT
        if ucs != 0:
            flags |= T.TNL_F_CSUM
        res[i, D_STATUS] = _OK
        res[i, D_INNER] = s + l4 + 16
        res[i, D_ILEN] = ulen - 16
        res[i, D_PORT] = ofport
        res[i, D_KEY] = np.int64(key)
        res[i, D_SRC] = np.int64(src)
        res[i, D_DST] = np.int64(dst)
        res[i, D_TOS] = np.int64(_byte(d, i, q + 1))
        res[i, D_TTL] = np.int64(_byte(d, i, q + 8))
        res[i, D_SPORT] = np.int64(_be(d, i, u, 2))
        res[i, D_DPORT] = dport
        res[i, D_FLAGS] = flags
    return n_slow


@kernel("void(uint8[:, :], int64[:], int64[:], int64[:], uint8[:, :], int64)")
def copy_kernel(d, rows, col, length, out, out_col):
    """out[r, out_col:out_col + length[r]] = d[rows[r], col[r]:col[r] + length[r]]."""
    for r in range(rows.shape[0]):
        _copy(d, rows[r], col[r], out, r, out_col, length[r])


# --- encap ----------------------------------------------------------------------------------


def _scalar(tun: dict, name: str) -> int | None:
    v = tun.get(name, 0)
    if isinstance(v, (int, np.integer)):
        return int(v)
    return None


class _Route:
    __slots__ = ("ok", "port", "dst_mac", "src_mac", "src", "mtu")


# Per underlay (weakly: an id() can be reused by a later object), its resolved routes,
# header templates and decap plans, keyed by its generation among others.
_caches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cache(underlay: Underlay) -> dict:
    c = _caches.get(underlay)
    if c is None or c.get("generation") != underlay.generation or len(c) > 4096:
        c = _caches[underlay] = {"generation": underlay.generation}
    return c


def _route(underlay: Underlay, dst: int) -> _Route:
    """The underlay's route to an IPv4 destination, resolved once per configuration."""
    cache = _cache(underlay)
    k = ("route", dst)
    r = cache.get(k)
    if r is None:
        res = underlay.resolve(4, np.zeros(1, np.uint64), np.full(1, dst, np.uint64))
        r = _Route()
        r.ok = bool(res.ok[0])
        r.port, r.dst_mac, r.src_mac = int(res.ofport[0]), int(res.dst_mac[0]), int(res.src_mac[0])
        r.src, r.mtu = int(res.src_lo[0]), int(res.mtu[0])
        cache[k] = r
    return r


def encap(batch: Batch, rows, port: T.TunnelPort, tun: dict | None,
          underlay: Underlay) -> T.EncapResult:
    """tunnel.encap, compiled for every row of a batch going to one IPv4 destination that
    resolves, from a known source, without Geneve options or a given hash, within the
    MTU; anything else is tunnel.encap's (the reference this is checked against)."""
    tun = tun or {}
    n = len(batch)
    fast = _encap_fast(batch, rows, port, tun, underlay, n)
    return fast if fast is not None else T.encap(batch, rows, port, tun, underlay)


def _encap_fast(batch, rows, port, tun, underlay, n) -> T.EncapResult | None:
    if n == 0 or not _every_row(rows, n):
        return None
    plan = push_plan(port, tun, underlay)
    if plan is None:
        return None
    tmpl, prm, out_port = plan
    hlen = tmpl.size
    length = batch.length.astype(np.int32, copy=False)
    width = int(length.max())
    cap = (HEADROOM + hlen + width + TAILROOM + 7) & ~7
    out = np.zeros((n, cap), np.uint8)
    if encap_kernel(batch.data, batch.start.astype(np.int32, copy=False), length, tmpl[None],
                    prm[None], out) < 0:
        return None
    res = Batch(out, np.full(n, HEADROOM, np.int32), (length + hlen).astype(np.int32),
                batch.in_port.copy())
    return T.EncapResult(res, np.full(n, out_port, np.uint32), np.arange(n),
                         Counter(encap_packets=n))


def push_plan(port: T.TunnelPort, tun: dict, underlay: Underlay):
    """(outer-header template, encap_kernel parameters, underlay port) of a push to one
    IPv4 destination that resolves, from a known source, without Geneve options or a
    given hash; None for anything else (tunnel.encap's)."""
    if "geneve_opts" in tun or "hash" in tun:
        return None
    if port.remote is not None:
        if port.remote[0] != 4:
            return None
        dst = port.remote[1]
    else:
        hi, lo, d4 = (_scalar(tun, k) for k in ("tun_ipv6_dst_hi", "tun_ipv6_dst_lo", "tun_dst"))
        if hi is None or lo is None or d4 is None or hi or lo:
            return None
        dst = d4 & 0xFFFFFFFF
    if not dst:
        return None
    r = _route(underlay, dst)
    if not r.ok:
        return None
    src = r.src
    if port.local is not None:
        if port.local[0] != 4:
            return None
        src = port.local[1]
    elif port.local_ip == "flow":
        t4 = _scalar(tun, "tun_src")
        s6 = (_scalar(tun, "tun_ipv6_src_hi"), _scalar(tun, "tun_ipv6_src_lo"))
        if t4 is None or None in s6:
            return None
        if t4 & 0xFFFFFFFF:
            src = t4 & 0xFFFFFFFF
    if not src:
        return None
    if port.key == "flow":
        key = _scalar(tun, "tun_id")
        if key is None:
            return None
    else:
        key = port.fixed_key
    key &= (1 << port.key_bits) - 1
    csum = port.checksum(4)
    kind = T.KINDS.index(port.kind)
    cache = _cache(underlay)
    tk = ("template", port, dst, src, key)
    tmpl = cache.get(tk)
    if tmpl is None:
        tmpl = cache[tk] = _template(port, kind, r, src, dst, key, csum)
    ip = tmpl[14:34].astype(np.int64)
    prm = np.array([kind, tmpl.size, _INHERIT if port.tos == "inherit" else int(port.tos),
                    _INHERIT if port.ttl == "inherit" else int(port.ttl), csum, r.mtu,
                    int((ip[0::2] << 8 | ip[1::2]).sum())], np.int64)
    return tmpl, prm, r.port


def _every_row(rows, n: int) -> bool:
    rows = np.asarray(rows)
    if rows.dtype == bool:
        return rows.size == n and bool(rows.all())
    return rows.size == n and (n == 0 or (int(rows[0]) == 0 and int(rows[-1]) == n - 1
                                          and (n < 3 or bool((np.diff(rows) == 1).all()))))


def _template(port: T.TunnelPort, kind: int, r: _Route, src: int, dst: int, key: int,
              csum: bool) -> np.ndarray:
    """The outer headers' bytes that are the same for every packet of the batch."""
    h = bytearray(r.dst_mac.to_bytes(6, "big") + r.src_mac.to_bytes(6, "big") + b"\x08\x00")
    gre_key = port.key is not None
    h += bytes([0x45, 0, 0, 0, 0, 0, 0x40 if port.df_default else 0, 0, 0,
                _IP_GRE if kind == _GRE else IP_UDP, 0, 0])
    h += src.to_bytes(4, "big") + dst.to_bytes(4, "big")
    if kind == _GRE:
        flags = (T.GRE_CSUM if csum else 0) | (T.GRE_KEY if gre_key else 0)
        h += flags.to_bytes(2, "big") + T.ETH_TEB.to_bytes(2, "big")
        if csum:
            h += b"\0" * 4
        if gre_key:
            h += key.to_bytes(4, "big")
    else:
        h += b"\0\0" + port.dst_port.to_bytes(2, "big") + b"\0" * 4
        if kind == _VXLAN:
            h += b"\x08\0\0\0" + key.to_bytes(3, "big") + b"\0"
        else:
            h += b"\0\0" + T.ETH_TEB.to_bytes(2, "big") + key.to_bytes(3, "big") + b"\0"
    return np.frombuffer(bytes(h), np.uint8).copy()


# --- decap ----------------------------------------------------------------------------------


def _plan(ports: tuple, underlay: Underlay):
    """The kernel's view of the tunnel ports and local addresses, per configuration."""
    cache = _cache(underlay)
    k = ("plan", ports)
    p = cache.get(k)
    if p is None:
        order = sorted(ports, key=T.match_order)
        udp: dict[int, int] = {}
        for tp in order:
            if tp.kind != "gre":
                udp.setdefault(tp.dst_port, T.KINDS.index(tp.kind))
        rows = []
        for tp in order:
            r = tp.remote or (0, 0)
            lo = tp.local or (0, 0)
            fk = tp.fixed_key
            rows.append((T.KINDS.index(tp.kind), tp.dst_port or 0,
                         r[0], r[1] if r[0] == 4 else 0, lo[0], lo[1] if lo[0] == 4 else 0,
                         -1 if fk is None else fk, tp.ofport))
        local4 = np.array(sorted(v for f, v in underlay.local if f == 4), np.uint64)
        local6 = np.array([(v >> 64, v & 0xFFFFFFFFFFFFFFFF)
                           for f, v in sorted(underlay.local) if f == 6], np.uint64).reshape(-1, 2)
        p = cache[k] = (local4, local6, np.array(list(udp), np.int64),
                         np.array(list(udp.values()), np.int64),
                         np.array(rows, np.int64).reshape(-1, 8))
    return p


def decap(batch: Batch, rows, ports, underlay: Underlay) -> T.DecapResult:
    """tunnel.decap, compiled for batches whose tunnel packets are all well-formed VXLAN over
    IPv4 to a configured port; any other tunnel packet (IPv6, GRE, Geneve, one decap
    drops) sends the whole batch to tunnel.decap, the reference this is checked against."""
    ports = tuple(ports)
    n = len(batch)
    if n and _every_row(rows, n):
        res = np.empty((n, D_COLS), np.int64)
        if not decap_kernel(np.ascontiguousarray(batch.data),
                            batch.start.astype(np.int32, copy=False),
                            batch.length.astype(np.int32, copy=False), *_plan(ports, underlay),
                            res):
            return _decap_result(batch, res)
    return T.decap(batch, rows, list(ports), underlay)


def decap_plan(ports, underlay: Underlay) -> tuple:
    """decap_kernel's view of these tunnel ports and the underlay (for decap_rows); valid
    until either changes."""
    return _plan(tuple(ports), underlay)


def decap_rows(batch: Batch, plan: tuple) -> np.ndarray | None:
    """decap_kernel's per-row results (D_* columns) for a batch it takes whole (no row for
    tunnel.decap), else None."""
    n = len(batch)
    res = np.empty((n, D_COLS), np.int64)
    if decap_kernel(np.ascontiguousarray(batch.data), batch.start.astype(np.int32, copy=False),
                    batch.length.astype(np.int32, copy=False), *plan, res):
        return None
    return res


def _decap_result(batch: Batch, res: np.ndarray) -> T.DecapResult:
    st = res[:, D_STATUS]
    keep = np.flatnonzero(st == _OK)
    other = np.flatnonzero(st == _OTHER)
    counters = Counter()
    if other.size:
        counters["not_tunnel"] = other.size
    if keep.size:
        counters["decap_packets"] = keep.size
    r = res[keep]
    ilen = r[:, D_ILEN]
    width = int(ilen.max()) if keep.size else 0
    out = np.zeros((keep.size, (HEADROOM + width + TAILROOM + 7) & ~7), np.uint8)
    if keep.size:
        copy_kernel(batch.data, keep, r[:, D_INNER].copy(), ilen.copy(), out, HEADROOM)
    in_port = r[:, D_PORT].astype(np.uint32)
    inner = Batch(out, np.full(keep.size, HEADROOM, np.int32), ilen.astype(np.int32),
                  in_port.copy())
    z64 = np.zeros(keep.size, np.uint64)
    tun = {
        "tun_id": r[:, D_KEY].astype(np.uint64),
        "tun_src": r[:, D_SRC].astype(np.uint32),
        "tun_dst": r[:, D_DST].astype(np.uint32),
        "tun_ipv6_src_hi": z64, "tun_ipv6_src_lo": z64.copy(),
        "tun_ipv6_dst_hi": z64.copy(), "tun_ipv6_dst_lo": z64.copy(),
        "tun_tos": r[:, D_TOS].astype(np.uint8),
        "tun_ttl": r[:, D_TTL].astype(np.uint8),
        "tun_tp_src": r[:, D_SPORT].astype(np.uint16),
        "tun_tp_dst": r[:, D_DPORT].astype(np.uint16),
        "tun_flags": r[:, D_FLAGS].astype(np.uint16),
        "geneve_opts": [b""] * keep.size,
    }
    return T.DecapResult(inner, in_port, tun, keep, other, counters)
