"""Tunnel ports (VXLAN, GRE, Geneve over IPv4/IPv6): batch encapsulation and decapsulation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch
from sbnet.datapath.checksum import be_bytes, be_value, fold, gather, ones_sum_bytes
from sbnet.datapath.underlay import Underlay, ip_int
from sbnet.flows.fields import ETH_IP, ETH_IPV6, ETH_QINQ, ETH_TEB, ETH_VLAN, IP_GRE, IP_UDP

KINDS = ("vxlan", "gre", "geneve")
DEFAULT_DST_PORT = {"vxlan": 4789, "geneve": 6081}
GRE_CSUM, GRE_KEY, GRE_SEQ = 0x8000, 0x2000, 0x1000
VXLAN_FLAGS = 0x08000000
# OVS's struct flow_tnl flags (lib/packets.h): set on receive, read on send.
TNL_F_OAM, TNL_F_DONT_FRAGMENT, TNL_F_CSUM, TNL_F_KEY = 1, 2, 4, 8
# The source port range OVS's userspace datapath draws from (tnl_udp_port_min/max).
UDP_SRC_MIN, UDP_SRC_MAX = 32768, 61000
DEFAULT_TTL = 64

# Why encap() did not send a packet.
ENCAP_DROPS = ("no_tunnel_dst", "no_route", "no_neighbour", "no_source", "mtu_exceeded",
               "bad_geneve_options")
# Why decap() dropped a packet that was addressed to one of our tunnel endpoints.
DECAP_DROPS = ("bad_ip_header", "bad_ip_length", "bad_ip_checksum", "ip_fragment",
               "bad_udp_length", "bad_udp_checksum", "truncated_vxlan", "bad_vxlan_header",
               "truncated_geneve", "bad_geneve_version", "bad_geneve_length",
               "bad_geneve_protocol", "bad_geneve_option", "truncated_gre", "bad_gre_version",
               "bad_gre_flags", "bad_gre_protocol", "bad_gre_checksum", "truncated_inner",
               "unknown_key", "no_tunnel_port")

_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class TunnelPort:
    """A tunnel port as OVS configures one (Interface type and options:*).

    - remote_ip: an address (text or int), or "flow" (taken from tun_dst/tun_ipv6_dst).
    - local_ip: an address; "flow" (tun_src where non-zero); None: the route's source.
    - key: VNI/GRE key; an int, "flow" (tun_id), or None (GRE: no key field; VXLAN and
      Geneve: VNI 0).  On receive a fixed key must match, "flow" accepts any.
    - csum: UDP/GRE checksum on send (see checksum(): UDP over IPv6 always has one).
      Received checksums are verified whenever present.
    - tos: DSCP value (ECN bits zero) or "inherit" (the inner IP DSCP); ECN is always
      inherited from an inner IP packet (CE sent as ECT(0)), as OVS does.
    - ttl: value or "inherit" (the inner IP TTL/hop limit; 64 for non-IP inner packets).
    - df_default: DF on the outer IPv4 header.
    """

    ofport: int
    kind: str
    remote_ip: str | int = "flow"
    local_ip: str | int | None = None
    key: int | str | None = None
    dst_port: int | None = None
    csum: bool | None = None
    tos: int | str = 0
    ttl: int | str = DEFAULT_TTL
    df_default: bool = True
    # Derived in __post_init__.
    remote: tuple[int, int] | None = field(default=None, init=False, repr=False)
    local: tuple[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"tunnel kind must be one of {KINDS}, not {self.kind!r}")
        if self.kind == "gre" and self.dst_port is not None:
            raise ValueError("GRE has no destination port")
        if self.kind != "gre" and self.dst_port is None:
            object.__setattr__(self, "dst_port", DEFAULT_DST_PORT[self.kind])
        if self.key not in (None, "flow") and not 0 <= int(self.key) < (1 << self.key_bits):
            raise ValueError(f"{self.kind} key {self.key} does not fit {self.key_bits} bits")
        if self.tos != "inherit" and (int(self.tos) & ~0xFC):
            raise ValueError(f"tos {self.tos} must be a DSCP value (ECN bits zero) or 'inherit'")
        if self.ttl != "inherit" and not 0 < int(self.ttl) < 256:
            raise ValueError(f"ttl {self.ttl} out of range")
        if self.remote_ip != "flow":
            object.__setattr__(self, "remote", ip_int(self.remote_ip))
        if self.local_ip not in (None, "flow"):
            object.__setattr__(self, "local", ip_int(self.local_ip))
        if self.remote and self.local and self.remote[0] != self.local[0]:
            raise ValueError("remote_ip and local_ip of different address families")

    @property
    def key_bits(self) -> int:
        return 32 if self.kind == "gre" else 24

    @property
    def fixed_key(self) -> int | None:
        """The key a received packet must carry (None: any, key=flow)."""
        if self.key == "flow":
            return None
        return 0 if self.key is None else int(self.key)

    def checksum(self, family: int) -> bool:
        """Whether sent packets carry a UDP/GRE checksum.  As OVS 3.1 does: UDP over IPv6
        always (csum=false is not honoured there), otherwise only with csum=true."""
        if self.kind != "gre" and family == 6:
            return True
        return bool(self.csum)


class EncapResult(NamedTuple):
    batch: Batch              # complete underlay frames, one per sent row
    out_port: np.ndarray      # uint32 underlay ofport of each frame
    rows: np.ndarray          # the input rows the frames came from (dropped rows left out)
    counters: Counter         # "encap_packets" and ENCAP_DROPS reasons


class DecapResult(NamedTuple):
    batch: Batch              # inner Ethernet frames
    in_port: np.ndarray       # uint32 the tunnel port's ofport, per inner frame
    tun: dict                 # tunnel metadata arrays aligned with batch (see decap)
    rows: np.ndarray          # input rows the inner frames came from
    other: np.ndarray         # input rows not addressed to any tunnel: switch them as usual
    counters: Counter         # "decap_packets", "not_tunnel" and DECAP_DROPS reasons


def geneve_option(opt_class: int, opt_type: int, data: bytes = b"") -> bytes:
    """One Geneve option TLV (RFC 8926 3.5); data is padded to 4 bytes.  The critical bit
    is opt_type's top bit."""
    pad = (-len(data)) % 4
    words = (len(data) + pad) // 4
    if words > 31:
        raise ValueError("a Geneve option holds at most 124 data bytes")
    return (opt_class.to_bytes(2, "big") + bytes([opt_type & 0xFF, words])
            + data + b"\0" * pad)


def _arr(tun: dict, name: str, m: int, default: int = 0) -> np.ndarray:
    v = tun.get(name, default)
    return np.broadcast_to(np.asarray(v, dtype=np.uint64), (m,))


def _inner_l3(d: np.ndarray, rows: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: column of the L3 header behind any VLAN tags, and its ethertype."""
    pos = start + 12
    et = d[rows, pos].astype(np.int64) << 8 | d[rows, pos + 1]
    for _ in range(4):
        tag = (et == ETH_VLAN) | (et == ETH_QINQ)
        if not tag.any():
            break
        pos = np.where(tag, pos + 4, pos)
        p = np.minimum(pos, d.shape[1] - 2)
        et = np.where(tag, d[rows, p].astype(np.int64) << 8 | d[rows, p + 1], et)
    return pos + 2, et


def flow_hash(d: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """A 32-bit hash of each inner frame's flow: MACs, ethertype, IP addresses and protocol,
    TCP/UDP/SCTP ports; the entropy source of the outer UDP source port."""
    l3, et = _inner_l3(d, rows, start)
    h = _mix(be_value(gather(d, rows, start, 8)), be_value(gather(d, rows, start + 8, 4)) << 16
             | et.astype(np.uint64))
    v4 = et == ETH_IP
    v6 = et == ETH_IPV6
    ip = v4 | v6
    if ip.any():
        w = gather(d, rows, l3, 40)
        ihl = (w[:, 0] & 0x0F).astype(np.int64) * 4
        proto = np.where(v4, w[:, 9], w[:, 6]).astype(np.uint64)
        frag = v4 & (((w[:, 6].astype(np.int64) << 8 | w[:, 7]) & 0x3FFF) != 0)
        a = np.where(v4, be_value(w[:, 12:20]), be_value(w[:, 8:16]))
        b = np.where(v6, be_value(w[:, 16:24]), 0)
        c = np.where(v6, be_value(w[:, 24:32]), 0)
        e = np.where(v6, be_value(w[:, 32:40]), 0)
        l4 = l3 + np.where(v4, ihl, 40)
        ports = be_value(gather(d, rows, l4, 4))
        has_ports = ip & ~frag & np.isin(proto, (6, 17, 132)) & (l4 + 4 <= start + length)
        ports = np.where(has_ports, ports, 0)
        hi = _mix(_mix(_mix(a, b), _mix(c, e)), proto << np.uint64(32) | ports)
        h = np.where(ip, _mix(h, hi), h)
    return (h >> np.uint64(32)).astype(np.uint32)


def _mix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x = (np.asarray(a, np.uint64) * np.uint64(0x9E3779B97F4A7C15)) ^ np.asarray(b, np.uint64)
    x ^= x >> np.uint64(29)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(32)
    return x


# --- encap ----------------------------------------------------------------------------------


def encap(batch: Batch, rows, port: TunnelPort, tun: dict | None, underlay: Underlay) -> EncapResult:
    """Output of the packets `rows` of `batch` to tunnel `port`: complete underlay frames.

    tun: the flow's tunnel fields, each an array aligned with rows or a scalar:
    tun_id (used when key="flow"), tun_dst or tun_ipv6_dst_hi/_lo (when remote_ip="flow";
    a non-zero IPv6 destination wins), tun_src or tun_ipv6_src_hi/_lo (used when
    local_ip="flow"; else local_ip, else the route's source), geneve_opts (bytes, or a list of bytes per
    row: whole TLVs, see geneve_option), hash (uint32 flow hash for the UDP source port;
    computed from the inner frame when absent).
    Drops (counted per ENCAP_DROPS reason): no destination, no route, no neighbour
    entry for the next hop, no source address, and outer IP packets longer than the
    underlay port's MTU (the userspace datapath of OVS does not fragment).
    """
    tun = tun or {}
    rows = np.asarray(rows)
    idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)
    m = len(idx)
    counters: Counter = Counter()
    if m == 0:
        return EncapResult(Batch.empty(), np.zeros(0, np.uint32), idx, counters)
    d = batch.data
    start = batch.start[idx].astype(np.int64)
    length = batch.length[idx].astype(np.int64)
    # Destination and family per row.
    if port.remote is not None:
        fam6 = np.full(m, port.remote[0] == 6)
        dhi = np.full(m, port.remote[1] >> 64, np.uint64)
        dlo = np.full(m, port.remote[1] & _M64, np.uint64)
    else:
        d6hi, d6lo = _arr(tun, "tun_ipv6_dst_hi", m), _arr(tun, "tun_ipv6_dst_lo", m)
        fam6 = (d6hi != 0) | (d6lo != 0)
        dhi = np.where(fam6, d6hi, 0).astype(np.uint64)
        dlo = np.where(fam6, d6lo, _arr(tun, "tun_dst", m) & np.uint64(0xFFFFFFFF))
    ok = (dhi != 0) | (dlo != 0)
    counters["no_tunnel_dst"] += int((~ok).sum())
    dst_mac = np.zeros(m, np.uint64)
    src_mac = np.zeros(m, np.uint64)
    out_port = np.zeros(m, np.uint32)
    mtu = np.zeros(m, np.int64)
    shi = np.zeros(m, np.uint64)
    slo = np.zeros(m, np.uint64)
    for fam, sel in ((4, ok & ~fam6), (6, ok & fam6)):
        if not sel.any():
            continue
        if port.remote is not None:   # one destination: resolve it once
            r = underlay.resolve(fam, dhi[:1], dlo[:1])
            t = np.zeros(int(sel.sum()), np.intp)
        else:
            r = underlay.resolve(fam, dhi[sel], dlo[sel])
            t = slice(None)
        for reason, code in (("no_route", 1), ("no_neighbour", 2)):
            counters[reason] += int((r.reason[t] == code).sum())
        good = np.flatnonzero(sel)
        ok[good[~r.ok[t]]] = False
        dst_mac[sel], src_mac[sel], out_port[sel] = r.dst_mac[t], r.src_mac[t], r.ofport[t]
        mtu[sel], shi[sel], slo[sel] = r.mtu[t], r.src_hi[t], r.src_lo[t]
    # Source address, as OVS: local_ip; with local_ip=flow the flow's tun_src; else
    # (or where that is zero) the route's source address.
    if port.local is not None:
        shi[:] = port.local[1] >> 64
        slo[:] = port.local[1] & _M64
    elif port.local_ip == "flow":
        t4 = _arr(tun, "tun_src", m) & np.uint64(0xFFFFFFFF)
        t6hi, t6lo = _arr(tun, "tun_ipv6_src_hi", m), _arr(tun, "tun_ipv6_src_lo", m)
        use = np.where(fam6, (t6hi != 0) | (t6lo != 0), t4 != 0)
        shi = np.where(use, np.where(fam6, t6hi, 0), shi).astype(np.uint64)
        slo = np.where(use, np.where(fam6, t6lo, t4), slo).astype(np.uint64)
    no_src = ok & (shi == 0) & (slo == 0)
    counters["no_source"] += int(no_src.sum())
    ok &= ~no_src
    # Geneve options per row.
    optlen = np.zeros(m, np.int64)
    opts = None
    if port.kind == "geneve" and "geneve_opts" in tun:
        g = tun["geneve_opts"]
        opts = [bytes(g)] * m if isinstance(g, (bytes, bytearray)) else list(g)
        optlen = np.fromiter((len(o) for o in opts), np.int64, m)
        bad = (optlen % 4 != 0) | (optlen > 252)
        counters["bad_geneve_options"] += int((ok & bad).sum())
        ok &= ~bad
    # Sizes: tunnel header after the IP header, IP payload and total length.
    key = _arr(tun, "tun_id", m) if port.key == "flow" else np.full(m, port.fixed_key, np.uint64)
    key = key & np.uint64((1 << port.key_bits) - 1)
    csum = {4: port.checksum(4), 6: port.checksum(6)}
    if port.kind == "gre":
        gre_key = port.key is not None
        gre_csum_v = np.where(fam6, csum[6], csum[4])
        tnl_len = 4 + 4 * gre_csum_v.astype(np.int64) + (4 if gre_key else 0)
    else:
        tnl_len = 16 + optlen
    ip_len = np.where(fam6, 40, 20)
    ip_total = ip_len + tnl_len + length
    over = ok & (ip_total > mtu)
    counters["mtu_exceeded"] += int(over.sum())
    ok &= ~over
    keep = np.flatnonzero(ok)
    if len(keep) == 0:
        return EncapResult(Batch.empty(), np.zeros(0, np.uint32), idx[:0], +counters)
    if len(keep) < m:
        def sub(a):
            return a[keep]
        idx, start, length, fam6, dhi, dlo, shi, slo, key, tnl_len, ip_len, ip_total = map(
            sub, (idx, start, length, fam6, dhi, dlo, shi, slo, key, tnl_len, ip_len, ip_total))
        dst_mac, src_mac, out_port, optlen = map(sub, (dst_mac, src_mac, out_port, optlen))
        if opts is not None:
            opts = [opts[i] for i in keep]
    m = len(idx)
    counters["encap_packets"] += m
    hdr_len = 14 + ip_len + tnl_len
    # Outer headers end at one column for every row, so inner frames copy as one block.
    inner_col = HEADROOM + int(hdr_len.max())
    width = int(length.max())
    cap = (inner_col + width + TAILROOM + 7) & ~7
    out = np.zeros((m, cap), np.uint8)
    _copy_rows(out, inner_col, d, idx, start, length, width)
    # TOS/TTL from the inner frame where inherited or ECN applies.
    tos, ttl = _outer_tos_ttl(d, idx, start, length, port)
    h = tun.get("hash")
    if h is None:
        fh = flow_hash(d, idx, start, length)
    else:
        fh = np.broadcast_to(np.asarray(h, np.uint64), (len(ok),))[keep] & np.uint64(0xFFFFFFFF)
    sport = (UDP_SRC_MIN + ((fh.astype(np.uint64) * np.uint64(UDP_SRC_MAX - UDP_SRC_MIN))
                            >> np.uint64(32))).astype(np.int64)
    for fam in (4, 6):
        for ol in ([optlen[0]] if optlen.min() == optlen.max() else np.unique(optlen)):
            g = np.flatnonzero((fam6 == (fam == 6)) & (optlen == ol))
            if len(g) == 0:
                continue
            hb = _build_headers(port, fam, g, int(hdr_len[g[0]]), dst_mac, src_mac, shi, slo,
                                dhi, dlo, tos, ttl, ip_total, length, key, sport, csum[fam],
                                opts, out, inner_col)
            out[g, inner_col - hb.shape[1]:inner_col] = hb
    res = Batch(out, (inner_col - hdr_len).astype(np.int32), (hdr_len + length).astype(np.int32),
                batch.in_port[idx].copy())
    return EncapResult(res, out_port, idx, +counters)


def _copy_rows(out: np.ndarray, col: int, d: np.ndarray, idx: np.ndarray, start: np.ndarray,
               length: np.ndarray, width: int) -> None:
    """out[i, col:col+length[i]] = packet idx[i] of d; bytes past each packet are zero."""
    uniform = start.min() == start.max()
    for s in ([start[0]] if uniform else np.unique(start)):
        g = slice(None) if uniform else np.flatnonzero(start == s)
        s = int(s)
        w = min(width, d.shape[1] - s)
        if uniform and len(idx) == d.shape[0] and (idx == np.arange(len(idx))).all():
            out[:, col:col + w] = d[:, s:s + w]    # every row in order: no gather copy
        else:
            out[g, col:col + w] = d[idx[g], s:s + w]
    if length.min() != width:
        tail = np.arange(width) >= length[:, None]
        out[:, col:col + width][tail] = 0


def _outer_tos_ttl(d, idx, start, length, port: TunnelPort) -> tuple[np.ndarray, np.ndarray]:
    """Outer TOS and TTL as OVS's tnl_port_send sets them."""
    m = len(idx)
    l3, et = _inner_l3(d, idx, start)
    v4, v6 = et == ETH_IP, et == ETH_IPV6
    ip = (v4 | v6) & (l3 + 9 <= start + length)
    w = gather(d, idx, l3, 9)
    inner_tos = np.where(v4, w[:, 1], (w[:, 0].astype(np.int64) & 0x0F) << 4 | w[:, 1] >> 4)
    inner_ttl = np.where(v4, w[:, 8], w[:, 7]).astype(np.int64)
    if port.tos == "inherit":
        tos = np.where(ip, inner_tos & 0xFC, 0)
    else:
        tos = np.full(m, int(port.tos), np.int64)
    ecn = inner_tos & 3
    tos = np.where(ip, tos | np.where(ecn == 3, 2, ecn), tos)
    if port.ttl == "inherit":
        ttl = np.where(ip, inner_ttl, DEFAULT_TTL)
    else:
        ttl = np.full(m, int(port.ttl), np.int64)
    return tos.astype(np.int64), ttl


def _build_headers(port, fam, g, hlen, dst_mac, src_mac, shi, slo, dhi, dlo, tos, ttl,
                   ip_total, length, key, sport, want_csum, opts, out, inner_col) -> np.ndarray:
    """The (len(g), hlen) outer header bytes of the rows g, checksums included."""
    n = len(g)
    h = np.zeros((n, hlen), np.uint8)
    h[:, 0:6] = be_bytes(dst_mac[g], 6)
    h[:, 6:12] = be_bytes(src_mac[g], 6)
    proto = IP_GRE if port.kind == "gre" else IP_UDP
    if fam == 4:
        h[:, 12:14] = (0x08, 0x00)
        h[:, 14] = 0x45
        h[:, 15] = tos[g]
        h[:, 16:18] = be_bytes(ip_total[g], 2)
        h[:, 20] = 0x40 if port.df_default else 0
        h[:, 22] = ttl[g]
        h[:, 23] = proto
        h[:, 26:30] = be_bytes(slo[g], 4)
        h[:, 30:34] = be_bytes(dlo[g], 4)
        c = ones_sum_bytes(h[:, 14:34]) ^ np.uint64(0xFFFF)
        h[:, 24:26] = be_bytes(c, 2)
        l4 = 34
    else:
        h[:, 12:14] = (0x86, 0xDD)
        tc = tos[g]
        h[:, 14] = 0x60 | (tc >> 4)
        h[:, 15] = (tc & 0x0F) << 4
        h[:, 18:20] = be_bytes(ip_total[g] - 40, 2)
        h[:, 20] = proto
        h[:, 21] = ttl[g]
        h[:, 22:30] = be_bytes(shi[g], 8)
        h[:, 30:38] = be_bytes(slo[g], 8)
        h[:, 38:46] = be_bytes(dhi[g], 8)
        h[:, 46:54] = be_bytes(dlo[g], 8)
        l4 = 54
    payload_len = ip_total[g] - (20 if fam == 4 else 40)
    if port.kind == "gre":
        flags = (GRE_CSUM if want_csum else 0) | (GRE_KEY if port.key is not None else 0)
        h[:, l4:l4 + 4] = (flags >> 8, flags & 0xFF, ETH_TEB >> 8, ETH_TEB & 0xFF)
        p = l4 + 4 + (4 if want_csum else 0)
        if port.key is not None:
            h[:, p:p + 4] = be_bytes(key[g], 4)
        if want_csum:
            s = fold(ones_sum_bytes(h[:, l4:]) + _inner_sum(out, g, inner_col, length))
            h[:, l4 + 4:l4 + 6] = be_bytes(s ^ np.uint64(0xFFFF), 2)
        return h
    h[:, l4:l4 + 2] = be_bytes(sport[g], 2)
    h[:, l4 + 2:l4 + 4] = (port.dst_port >> 8, port.dst_port & 0xFF)
    h[:, l4 + 4:l4 + 6] = be_bytes(payload_len, 2)
    t = l4 + 8
    if port.kind == "vxlan":
        h[:, t] = 0x08
        h[:, t + 4:t + 7] = be_bytes(key[g], 3)
    else:
        ol = hlen - t - 8
        h[:, t] = ol // 4
        h[:, t + 2:t + 4] = (ETH_TEB >> 8, ETH_TEB & 0xFF)
        h[:, t + 4:t + 7] = be_bytes(key[g], 3)
        if ol:
            if all(o is opts[0] for o in opts):    # one option list for every row
                ob = np.broadcast_to(np.frombuffer(opts[0], np.uint8), (n, ol))
            else:
                ob = np.frombuffer(b"".join([opts[i] for i in g]), np.uint8).reshape(n, ol)
            h[:, t + 8:] = ob
            h[:, t + 1] = np.where(_critical(ob), 0x40, 0)
    if want_csum:
        pseudo = ones_sum_bytes(h[:, 26:34] if fam == 4 else h[:, 22:54]) \
            + np.uint64(IP_UDP) + payload_len.astype(np.uint64)
        s = fold(pseudo + ones_sum_bytes(h[:, l4:]) + _inner_sum(out, g, inner_col, length))
        c = s ^ np.uint64(0xFFFF)
        c[c == 0] = 0xFFFF
        h[:, l4 + 6:l4 + 8] = be_bytes(c, 2)
    return h


def _critical(ob: np.ndarray) -> np.ndarray:
    """Per row of Geneve option bytes: does any option have the critical bit?"""
    n, ol = ob.shape
    pos = np.zeros(n, np.int64)
    crit = np.zeros(n, bool)
    r = np.arange(n)
    for _ in range(ol // 4):
        live = pos + 4 <= ol
        if not live.any():
            break
        p = np.minimum(pos, ol - 4)
        crit |= live & ((ob[r, p + 2] & 0x80) != 0)
        pos = np.where(live, pos + 4 + (ob[r, p + 3] & 0x1F).astype(np.int64) * 4, pos)
    return crit


def _inner_sum(out: np.ndarray, g: np.ndarray, col: int, length: np.ndarray) -> np.ndarray:
    """Ones-complement sum of the inner frames (zero past each end: see _copy_rows)."""
    w = int(length[g].max())
    w += w & 1
    block = out[g, col:col + w]
    return fold(np.ascontiguousarray(block).view(">u2").sum(axis=1, dtype=np.uint64))


# --- decap ----------------------------------------------------------------------------------


def match_order(port: TunnelPort) -> tuple[int, int, int]:
    """OVS's tnl_find order: exact key before key=flow, then exact local before any, then
    exact remote before remote=flow."""
    return (port.fixed_key is None, port.local is None, port.remote is None)


def decap(batch: Batch, rows, ports, underlay: Underlay) -> DecapResult:
    """Strip the tunnel headers of the packets `rows` of `batch` received from the underlay.

    A packet is ours when it is Ethernet/IPv4 or IPv6 addressed to a local address of
    `underlay`, and GRE (with a GRE port configured) or UDP to a tunnel port's dst_port.
    Others are returned in `other`, untouched.  Ours are validated (IPv4 header length
    and checksum, no fragments, lengths, UDP checksum when non-zero, VXLAN I flag and
    reserved bits, Geneve version, option lengths and payload type, GRE version, flags,
    payload type and checksum when present) and matched to a port in OVS's order; the
    failures are counted per DECAP_DROPS reason and dropped.  Never raises on packets.

    tun (arrays aligned with the returned batch): tun_id (uint64: VNI or GRE key, 0
    without), tun_src, tun_dst (uint32, 0 over IPv6), tun_ipv6_src_hi/_lo,
    tun_ipv6_dst_hi/_lo (uint64, 0 over IPv4), tun_tos, tun_ttl, tun_tp_src, tun_tp_dst
    (0 for GRE), tun_flags (TNL_F_* bits), geneve_opts (list of bytes, raw option TLVs).
    """
    rows = np.asarray(rows)
    idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)
    ports = sorted(ports, key=match_order)
    counters: Counter = Counter()
    m = len(idx)
    d = batch.data
    start = batch.start[idx].astype(np.int64)
    length = batch.length[idx].astype(np.int64)
    udp_kind: dict[int, str] = {}
    for p in ports:
        if p.kind != "gre":
            udp_kind.setdefault(p.dst_port, p.kind)
    has_gre = any(p.kind == "gre" for p in ports)
    eth = gather(d, idx, start + 12, 2)
    et = eth[:, 0].astype(np.int64) << 8 | eth[:, 1]
    v4 = (et == ETH_IP) & (length >= 34)
    v6 = (et == ETH_IPV6) & (length >= 54)
    hdr = gather(d, idx, start + 14, 60)
    ihl = (hdr[:, 0] & 0x0F).astype(np.int64) * 4
    proto = np.where(v4, hdr[:, 9], hdr[:, 6]).astype(np.int64)
    src_hi = np.where(v6, be_value(hdr[:, 8:16]), 0).astype(np.uint64)
    src_lo = np.where(v6, be_value(hdr[:, 16:24]), be_value(hdr[:, 12:16])).astype(np.uint64)
    dst_hi = np.where(v6, be_value(hdr[:, 24:32]), 0).astype(np.uint64)
    dst_lo = np.where(v6, be_value(hdr[:, 32:40]), be_value(hdr[:, 16:20])).astype(np.uint64)
    local = np.zeros(m, bool)
    if v4.any():
        local[v4] = underlay.is_local(4, dst_hi[v4], dst_lo[v4])
    if v6.any():
        local[v6] = underlay.is_local(6, dst_hi[v6], dst_lo[v6])
    want = np.zeros(m, bool)
    if udp_kind:
        want |= proto == IP_UDP
    if has_gre:
        want |= proto == IP_GRE
    cand = (v4 | v6) & local & want
    err = np.zeros(m, np.int64)       # index into DECAP_DROPS + 1; 0 ok

    def fail(mask: np.ndarray, reason: str) -> None:
        err[(err == 0) & cand & mask] = DECAP_DROPS.index(reason) + 1

    # Outer IP.
    tot = (hdr[:, 2].astype(np.int64) << 8) | hdr[:, 3]
    plen = (hdr[:, 4].astype(np.int64) << 8) | hdr[:, 5]
    fail(v4 & (((hdr[:, 0] >> 4) != 4) | (ihl < 20)), "bad_ip_header")
    fail(v6 & ((hdr[:, 0] >> 4) != 6), "bad_ip_header")
    fail(v4 & ((tot < ihl) | (14 + tot > length)), "bad_ip_length")
    fail(v6 & (54 + plen > length), "bad_ip_length")
    chk = np.flatnonzero(cand & v4 & (err == 0))
    if len(chk):
        h20 = ihl[chk].max() == 20     # no options anywhere: sum the fixed 20 bytes
        s = ones_sum_bytes(hdr[chk, :20]) if h20 else ones_sum_bytes(hdr[chk], ihl[chk])
        bad = np.zeros(m, bool)
        bad[chk] = s != 0xFFFF
        fail(bad, "bad_ip_checksum")
    frag = ((hdr[:, 6].astype(np.int64) << 8) | hdr[:, 7]) & 0x3FFF
    fail(v4 & (frag != 0), "ip_fragment")
    l4 = 14 + np.where(v4, ihl, 40)
    ip_end = 14 + np.where(v4, tot, 40 + plen)
    l4h = gather(d, idx, start + l4, 16)
    # UDP: rows whose destination port is no tunnel's are not ours after all.
    udp = proto == IP_UDP
    dport = (l4h[:, 2].astype(np.int64) << 8) | l4h[:, 3]
    sport = (l4h[:, 0].astype(np.int64) << 8) | l4h[:, 1]
    udp_ok = udp & (err == 0) & (ip_end - l4 >= 8)
    ours = np.isin(dport, list(udp_kind)) if udp_kind else np.zeros(m, bool)
    cand &= ~(udp_ok & ~ours)
    fail(udp & (ip_end - l4 < 8), "bad_udp_length")
    ulen = (l4h[:, 4].astype(np.int64) << 8) | l4h[:, 5]
    fail(udp & ((ulen < 8) | (ulen > ip_end - l4)), "bad_udp_length")
    ip_end = np.where(udp & (err == 0), l4 + ulen, ip_end)
    ucs = (l4h[:, 6].astype(np.int64) << 8) | l4h[:, 7]
    chk = np.flatnonzero(cand & udp & (err == 0) & (ucs != 0))
    if len(chk):
        seg = gather(d, idx[chk], start[chk] + l4[chk], int(ulen[chk].max()))
        pseudo = np.where(v6[chk], ones_sum_bytes(hdr[chk, 8:40]), ones_sum_bytes(hdr[chk, 12:20]))
        s = fold(ones_sum_bytes(seg, ulen[chk]) + pseudo + np.uint64(IP_UDP)
                  + ulen[chk].astype(np.uint64))
        bad = np.zeros(m, bool)
        bad[chk] = s != 0xFFFF
        fail(bad, "bad_udp_checksum")
    kind = np.full(m, -1, np.int64)
    for dp_, k in udp_kind.items():
        kind[udp & (dport == dp_)] = KINDS.index(k)
    kind[proto == IP_GRE] = KINDS.index("gre")
    avail = ip_end - l4
    key = np.zeros(m, np.uint64)
    flags = np.where(v4 & ((hdr[:, 6] & 0x40) != 0), TNL_F_DONT_FRAGMENT, 0).astype(np.int64)
    inner = np.zeros(m, np.int64)
    optlen = np.zeros(m, np.int64)
    # VXLAN.
    vx = kind == KINDS.index("vxlan")
    fail(vx & (avail < 16), "truncated_vxlan")
    fail(vx & ((be_value(l4h[:, 8:12]) != VXLAN_FLAGS) | (l4h[:, 15] != 0)), "bad_vxlan_header")
    # Geneve.
    gn = kind == KINDS.index("geneve")
    fail(gn & (avail < 16), "truncated_geneve")
    fail(gn & ((l4h[:, 8] >> 6) != 0), "bad_geneve_version")
    optlen = np.where(gn, (l4h[:, 8] & 0x3F).astype(np.int64) * 4, 0)
    fail(gn & (16 + optlen > avail), "bad_geneve_length")
    fail(gn & (be_value(l4h[:, 10:12]) != ETH_TEB), "bad_geneve_protocol")
    chk = np.flatnonzero(cand & gn & (err == 0) & (optlen > 0))
    if len(chk):
        ob = gather(d, idx[chk], start[chk] + l4[chk] + 16, int(optlen[chk].max()))
        bad = np.zeros(m, bool)
        bad[chk] = ~_options_tile(ob, optlen[chk])
        fail(bad, "bad_geneve_option")
    flags |= np.where(gn & ((l4h[:, 9] & 0x80) != 0), TNL_F_OAM, 0)
    vni = be_value(l4h[:, 12:15])
    key = np.where(vx | gn, vni, key)
    flags |= np.where(vx | gn, TNL_F_KEY, 0)
    flags |= np.where(udp & (ucs != 0), TNL_F_CSUM, 0)
    inner = np.where(vx | gn, l4 + 16 + optlen, inner)
    # GRE.
    gr = kind == KINDS.index("gre")
    fail(gr & (avail < 4), "truncated_gre")
    fw = (l4h[:, 0].astype(np.int64) << 8) | l4h[:, 1]
    fail(gr & ((fw & 7) != 0), "bad_gre_version")
    fail(gr & ((fw & 0xFFF8 & ~(GRE_CSUM | GRE_KEY | GRE_SEQ)) != 0), "bad_gre_flags")
    has_c, has_k, has_s = (fw & GRE_CSUM) != 0, (fw & GRE_KEY) != 0, (fw & GRE_SEQ) != 0
    glen = 4 + 4 * (has_c.astype(np.int64) + has_k + has_s)
    fail(gr & (glen > avail), "truncated_gre")
    fail(gr & (be_value(l4h[:, 2:4]) != ETH_TEB), "bad_gre_protocol")
    chk = np.flatnonzero(cand & gr & has_c & (err == 0))
    if len(chk):
        seg = gather(d, idx[chk], start[chk] + l4[chk], int(avail[chk].max()))
        bad = np.zeros(m, bool)
        bad[chk] = ones_sum_bytes(seg, avail[chk]) != 0xFFFF
        fail(bad, "bad_gre_checksum")
    kpos = 4 + 4 * has_c.astype(np.int64)
    gkey = np.where(kpos == 4, be_value(l4h[:, 4:8]), be_value(l4h[:, 8:12]))
    key = np.where(gr & has_k, gkey, key)
    flags |= np.where(gr & has_k, TNL_F_KEY, 0) | np.where(gr & has_c, TNL_F_CSUM, 0)
    inner = np.where(gr, l4 + glen, inner)
    fail(ip_end - inner < 14, "truncated_inner")
    # Tunnel port, in OVS's lookup order.
    in_port = np.zeros(m, np.uint32)
    live = cand & (err == 0)
    near = np.zeros(m, bool)
    for p in ports:
        sel = live & (in_port == 0) & (kind == KINDS.index(p.kind))
        if p.kind != "gre":
            sel &= dport == p.dst_port
        for addr, hi, lo in ((p.remote, src_hi, src_lo), (p.local, dst_hi, dst_lo)):
            if addr is not None:
                fam_ok = v6 if addr[0] == 6 else v4
                sel &= fam_ok & (hi == np.uint64(addr[1] >> 64)) & (lo == np.uint64(addr[1] & _M64))
        fk = p.fixed_key
        if fk is not None:
            near |= sel
            sel &= key == np.uint64(fk)
        in_port[sel] = p.ofport
    miss = live & (in_port == 0)
    fail(miss & near, "unknown_key")
    fail(miss, "no_tunnel_port")
    for i in np.unique(err[err > 0]):
        counters[DECAP_DROPS[i - 1]] += int((err == i).sum())
    other = idx[~cand]
    counters["not_tunnel"] += len(other)
    keep = np.flatnonzero(cand & (err == 0))
    counters["decap_packets"] += len(keep)
    k_idx = idx[keep]
    ilen = (ip_end - inner)[keep]
    icol = (start + inner)[keep]
    width = int(ilen.max()) if len(keep) else 0
    out = np.zeros((len(keep), (HEADROOM + width + TAILROOM + 7) & ~7), np.uint8)
    if len(keep):
        _copy_rows(out, HEADROOM, d, k_idx, icol, ilen, width)
    res = Batch(out, np.full(len(keep), HEADROOM, np.int32), ilen.astype(np.int32),
                in_port[keep].copy())
    six = v6[keep]
    tos = np.where(v6, (hdr[:, 0].astype(np.int64) & 0x0F) << 4 | hdr[:, 1] >> 4, hdr[:, 1])
    ttl = np.where(v6, hdr[:, 7], hdr[:, 8])
    tun = {
        "tun_id": key[keep],
        "tun_src": np.where(six, 0, src_lo[keep]).astype(np.uint32),
        "tun_dst": np.where(six, 0, dst_lo[keep]).astype(np.uint32),
        "tun_ipv6_src_hi": np.where(six, src_hi[keep], 0).astype(np.uint64),
        "tun_ipv6_src_lo": np.where(six, src_lo[keep], 0).astype(np.uint64),
        "tun_ipv6_dst_hi": np.where(six, dst_hi[keep], 0).astype(np.uint64),
        "tun_ipv6_dst_lo": np.where(six, dst_lo[keep], 0).astype(np.uint64),
        "tun_tos": tos[keep].astype(np.uint8),
        "tun_ttl": ttl[keep].astype(np.uint8),
        "tun_tp_src": np.where(udp, sport, 0)[keep].astype(np.uint16),
        "tun_tp_dst": np.where(udp, dport, 0)[keep].astype(np.uint16),
        "tun_flags": flags[keep].astype(np.uint16),
        "geneve_opts": _options_list(d, k_idx, (start + l4 + 16)[keep], optlen[keep]),
    }
    return DecapResult(res, in_port[keep].copy(), tun, k_idx, other, +counters)


def _options_tile(ob: np.ndarray, optlen: np.ndarray) -> np.ndarray:
    """Per row: do the option TLVs exactly fill optlen bytes?"""
    n = len(optlen)
    r = np.arange(n)
    pos = np.zeros(n, np.int64)
    w = ob.shape[1]
    for _ in range(w // 4 + 1):
        live = pos < optlen
        if not live.any():
            break
        p = np.minimum(pos, max(w - 4, 0))
        size = 4 + (ob[r, np.minimum(p + 3, w - 1)] & 0x1F).astype(np.int64) * 4
        pos = np.where(live & (pos + 4 <= optlen), pos + size, np.where(live, optlen + 1, pos))
    return pos == optlen


def _options_list(d: np.ndarray, rows: np.ndarray, col: np.ndarray, optlen: np.ndarray) -> list:
    out = [b""] * len(rows)
    if len(rows) and optlen.min() == optlen.max() > 0 and col.min() == col.max():
        # One block, cut in Python: far cheaper than a tobytes() per row.
        n, c = int(optlen[0]), int(col[0])
        raw = d[rows, c:c + n].tobytes()
        return [raw[i:i + n] for i in range(0, len(raw), n)]
    for i in np.flatnonzero(optlen):
        c = int(col[i])
        out[i] = d[rows[i], c:c + int(optlen[i])].tobytes()
    return out
