"""Conntrack NAT: the nat() spec, unique reply-tuple allocation (OVS nat_get_unique_tuple) and packet rewriting."""

from __future__ import annotations

import ipaddress
import random
import re
from dataclasses import dataclass

import numpy as np

from sbnet.datapath.checksum import csum_replace, internet_checksum
from sbnet.flows.fields import IP_ICMP, IP_ICMPV6, IP_SCTP, IP_TCP, IP_UDP, SLOT_INDEX

_S = SLOT_INDEX
SNAT, DNAT = 1, 2
PAT_PROTOS = (IP_TCP, IP_UDP, IP_SCTP)
MIN_EPHEMERAL, MAX_EPHEMERAL = 1024, 65535
_M64 = (1 << 64) - 1


@dataclass(frozen=True)
class NatSpec:
    """What ct(nat(...)) asks: `kind` "src"/"dst", or None for the bare `nat`
    (apply an existing connection's NAT, create none).

    Addresses are ints (IPv6 as 128-bit); addr_min 0 keeps the address.  A port
    range of (0, 0) means none was given.  `hash` is OVS's default port choice.
    """

    kind: str | None = None
    addr_min: int = 0
    addr_max: int = 0
    port_min: int = 0
    port_max: int = 0
    random: bool = False
    persistent: bool = False

    @property
    def action(self) -> int:
        return {"src": SNAT, "dst": DNAT}.get(self.kind or "", 0)

    @classmethod
    def from_action(cls, nat) -> NatSpec:
        """From a sbnet.flows.actions.Nat (the parsed ovs-ofctl nat(...))."""
        if isinstance(nat, NatSpec):
            return nat
        lo = int(ipaddress.ip_address(nat.addr_min)) if nat.addr_min else 0
        hi = int(ipaddress.ip_address(nat.addr_max)) if nat.addr_max else lo
        pmin = nat.port_min or 0
        pmax = nat.port_max if nat.port_max is not None else pmin
        return cls(nat.kind, lo, hi, pmin, pmax, "random" in nat.flags,
                   "persistent" in nat.flags)

    @classmethod
    def parse(cls, text: str) -> NatSpec:
        """From `nat`, `nat(src=10.0.0.1-10.0.0.3:1000-2000,random)`, `nat(dst=[fc00::1]:80)`."""
        text = text.strip()
        if text == "nat":
            return cls()
        parts = text[text.index("(") + 1:text.rindex(")")].split(",")
        kind, _, spec = parts[0].partition("=")
        flags = {p.strip() for p in parts[1:]}
        lo = hi = pmin = pmax = 0
        if spec:
            m = _SPEC.fullmatch(spec)
            if not m:
                raise ValueError(f"bad nat range {spec!r}")
            a = m.group(1) or m.group(2)
            b = m.group(3) or m.group(4) or a
            lo, hi = int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))
            if m.group(5):
                pmin = int(m.group(5))
                pmax = int(m.group(6) or pmin)
        return cls(kind, lo, hi, pmin, pmax, "random" in flags, "persistent" in flags)


_SPEC = re.compile(r"(?:\[([^\]]+)\]|([^:\-\[]+))(?:-(?:\[([^\]]+)\]|([^:\-\[]+)))?"
                   r"(?::(\d+)(?:-(\d+))?)?")


_MIX = 0x9E3779B97F4A7C15


def _mix(h, w):
    """One step of a 64-bit multiply-xor mix; numpy uint64 arrays or Python ints alike."""
    if isinstance(h, np.ndarray) or isinstance(w, np.ndarray):
        h = (np.asarray(h, dtype=np.uint64) ^ np.asarray(w, dtype=np.uint64)) * np.uint64(_MIX)
        return h ^ (h >> np.uint64(29))
    h = ((h ^ w) * _MIX) & _M64
    return h ^ (h >> 29)


def spec_seed(spec: NatSpec, basis: int) -> int:
    """The part of the NAT hash that depends on the range only (nat_range_hash's first adds)."""
    h = basis & _M64
    for v in (spec.addr_min >> 64, spec.addr_min & _M64, spec.addr_max >> 64,
              spec.addr_max & _M64, spec.port_min << 16 | spec.port_max):
        h = _mix(h, v)
    return h


def tuple_nat_hash(seed, zone, proto, v6, src_hi, src_lo, dst_hi, dst_lo, sport, dport):
    """32-bit hash of a connection's tuple under a range seed (scalars or arrays)."""
    h = _mix(seed, src_hi)
    for v in (src_lo, dst_hi, dst_lo):
        h = _mix(h, v)
    if isinstance(h, np.ndarray):
        u = np.uint64
        meta = (np.asarray(sport, u) << u(48)) | (np.asarray(dport, u) << u(32)) \
            | (np.asarray(zone, u) << u(16)) | (np.asarray(proto, u) << u(8)) | np.asarray(v6, u)
        return _mix(h, meta) & u(0xFFFFFFFF)
    return _mix(h, sport << 48 | dport << 32 | zone << 16 | proto << 8 | v6) & 0xFFFFFFFF


def nat_offsets(spec: NatSpec, basis: int, zone, proto, v6, src_hi, src_lo, dst_hi, dst_lo,
                sport, dport):
    """(h, off): the address hash and the port offset of nat_get_unique_tuple().

    `persistent` takes the address from a hash without the basis (stable across
    restarts, as OVS); the port offset always includes the basis.  `random` is
    handled by the caller.
    """
    args = (zone, proto, v6, src_hi, src_lo, dst_hi, dst_lo, sport, dport)
    if spec.persistent:
        h = tuple_nat_hash(spec_seed(spec, 0), *args)
        off = tuple_nat_hash(spec_seed(spec, basis), *args)
    else:
        h = off = tuple_nat_hash(spec_seed(spec, basis), *args)
    return h, off


def _ports_from(curr: int, lo: int, hi: int):
    """Every port of [lo, hi] once, starting at curr and wrapping (FOR_EACH_PORT_IN_RANGE)."""
    yield from range(curr, hi + 1)
    yield from range(lo, curr)


def _sport_range(spec: NatSpec, sport: int, off: int) -> tuple[int, int, int]:
    if spec.action == SNAT and spec.port_min:
        lo, hi = spec.port_min, spec.port_max
        return lo + off % (hi - lo + 1), lo, hi
    if sport < 512:
        return sport, 1, 511
    if sport < 1024:
        return sport, 600, 1023
    return sport, MIN_EPHEMERAL, MAX_EPHEMERAL


def allocate(spec: NatSpec, fwd: tuple, taken, basis: int) -> tuple | None:
    """A reply tuple for the connection `fwd` that no connection uses, or None (exhausted).

    fwd and the result are (zone, proto, v6, src, dst, sport, dport).  `taken(t)`
    says whether a connection already owns tuple t (either direction).
    """
    zone, proto, v6, src, dst, sport, dport = fwd
    act = spec.action
    h, off = nat_offsets(spec, basis, zone, proto, v6, src >> 64, src & _M64, dst >> 64,
                         dst & _M64, sport, dport)
    if spec.random:
        off = random.getrandbits(32)
    if spec.addr_min:
        lo, hi = spec.addr_min, spec.addr_max
        first = lo + h % (min(hi - lo, 0xFFFFFFFE) + 1)
        addrs = _ports_from(first, lo, hi)
    else:
        addrs = iter((src if act == SNAT else dst,))
    pat = proto in PAT_PROTOS
    for addr in addrs:
        if act == SNAT:
            rsrc, rdst = dst, addr
        else:
            rsrc, rdst = addr, src
        if not pat:
            cand = (zone, proto, v6, rsrc, rdst, dport, sport)
            if not taken(cand):
                return cand
            continue
        s_curr, s_lo, s_hi = _sport_range(spec, sport, off)
        if act == DNAT and spec.port_min:
            d_lo, d_hi = spec.port_min, spec.port_max
            d_iter = _ports_from(d_lo + off % (d_hi - d_lo + 1), d_lo, d_hi)
        else:
            d_iter = (dport,)
        for dp in d_iter:
            for sp in _ports_from(s_curr, s_lo, s_hi):
                cand = (zone, proto, v6, rsrc, rdst, dp, sp)
                if not taken(cand):
                    return cand
    return None


def first_candidates(spec: NatSpec, basis: int, zone: np.ndarray, proto: np.ndarray,
                     words: np.ndarray) -> np.ndarray:
    """allocate()'s first choice of reply tuple for many IPv4 connections at once.

    words (k, 6) are the original tuples (src_hi, src_lo, dst_hi, dst_lo, sport,
    dport); returns the reply tuples in the same layout.  Only the first
    candidate: callers fall back to allocate() where it is taken.
    """
    u = np.uint64
    w = words.astype(u)
    zone = zone.astype(u)
    proto_u = proto.astype(u)
    h, off = nat_offsets(spec, basis, zone, proto_u, np.zeros_like(zone), w[:, 0], w[:, 1],
                         w[:, 2], w[:, 3], w[:, 4], w[:, 5])
    act = spec.action
    if spec.addr_min:
        span = min(spec.addr_max - spec.addr_min, 0xFFFFFFFE) + 1
        addr = u(spec.addr_min) + h % u(span)
    else:
        addr = w[:, 1] if act == SNAT else w[:, 3]
    pat = np.isin(proto, PAT_PROTOS)
    sport, dport = w[:, 4], w[:, 5]
    out = np.zeros_like(w)
    if spec.port_min:
        ported = u(spec.port_min) + off % u(spec.port_max - spec.port_min + 1)
    if act == SNAT:
        new_s = np.where(pat, ported, sport) if spec.port_min else sport
        out[:, 1], out[:, 3], out[:, 4], out[:, 5] = w[:, 3], addr, dport, new_s
    else:
        new_d = np.where(pat, ported, dport) if spec.port_min else dport
        out[:, 1], out[:, 3], out[:, 4], out[:, 5] = addr, w[:, 1], new_d, sport
    return out


# -- packet rewriting --------------------------------------------------------

def _cols(data: np.ndarray, rows: np.ndarray, col: np.ndarray, k: int) -> np.ndarray:
    return data[rows[:, None], col[:, None] + np.arange(k)]


def _get16(data, rows, col) -> np.ndarray:
    return (data[rows, col].astype(np.uint32) << 8) | data[rows, col + 1]


def _put16(data, rows, col, val) -> None:
    val = np.asarray(val, dtype=np.uint32)
    data[rows, col] = (val >> 8).astype(np.uint8)
    data[rows, col + 1] = (val & 0xFF).astype(np.uint8)


def _addr_words(hi: np.ndarray, lo: np.ndarray, v6: bool) -> list[np.ndarray]:
    lo = lo.astype(np.uint64)
    if not v6:
        return [(lo >> np.uint64(16)) & np.uint64(0xFFFF), lo & np.uint64(0xFFFF)]
    hi = hi.astype(np.uint64)
    return [(x >> np.uint64(s)) & np.uint64(0xFFFF) for x in (hi, lo) for s in (48, 32, 16, 0)]


def _put_addr(data, rows, col, hi, lo, v6) -> None:
    for j, w in enumerate(_addr_words(hi, lo, v6)):
        _put16(data, rows, col + 2 * j, w.astype(np.uint32))


def rewrite(data: np.ndarray, keys: np.ndarray, rows: np.ndarray, l3: np.ndarray,
            l4: np.ndarray, v6: bool, proto: np.ndarray, new: dict[str, np.ndarray]) -> None:
    """Rewrite addresses/ports of packets `rows` (all IPv4, or all IPv6) in place.

    `new` holds arrays for "src_hi", "src_lo", "dst_hi", "dst_lo", "sport",
    "dport" (one value per row).  The IPv4 header checksum and the TCP, UDP and
    ICMPv6 checksums are updated incrementally (RFC 1624); the key slots too, so
    later lookups see the translated packet.
    """
    if not len(rows):
        return
    if v6:
        old_src = (keys[_S["ipv6_src_hi"], rows], keys[_S["ipv6_src_lo"], rows])
        old_dst = (keys[_S["ipv6_dst_hi"], rows], keys[_S["ipv6_dst_lo"], rows])
    else:
        z = np.zeros(len(rows), dtype=np.uint64)
        old_src = (z, keys[_S["nw_src"], rows])
        old_dst = (z, keys[_S["nw_dst"], rows])
    old_sp = keys[_S["tp_src"], rows]
    old_dp = keys[_S["tp_dst"], rows]
    ow = np.stack(_addr_words(*old_src, v6) + _addr_words(*old_dst, v6), axis=1)
    nw = np.stack(_addr_words(new["src_hi"], new["src_lo"], v6)
                  + _addr_words(new["dst_hi"], new["dst_lo"], v6), axis=1)
    if not v6:
        ck = _get16(data, rows, l3 + 10)
        _put16(data, rows, l3 + 10, csum_replace(ck, ow, nw))
        _put_addr(data, rows, l3 + 12, None, new["src_lo"], False)
        _put_addr(data, rows, l3 + 16, None, new["dst_lo"], False)
        keys[_S["nw_src"], rows] = new["src_lo"]
        keys[_S["nw_dst"], rows] = new["dst_lo"]
    else:
        _put_addr(data, rows, l3 + 8, new["src_hi"], new["src_lo"], True)
        _put_addr(data, rows, l3 + 24, new["dst_hi"], new["dst_lo"], True)
        keys[_S["ipv6_src_hi"], rows] = new["src_hi"]
        keys[_S["ipv6_src_lo"], rows] = new["src_lo"]
        keys[_S["ipv6_dst_hi"], rows] = new["dst_hi"]
        keys[_S["ipv6_dst_lo"], rows] = new["dst_lo"]
    pat = (proto == IP_TCP) | (proto == IP_UDP)
    if pat.any():
        p = np.flatnonzero(pat)
        r = rows[p]
        off = np.where(proto[p] == IP_TCP, 16, 6)
        ck = _get16(data, r, l4[p] + off)
        ow2 = np.concatenate([ow[p], np.stack([old_sp[p], old_dp[p]], axis=1)], axis=1)
        nw2 = np.concatenate([nw[p], np.stack([new["sport"][p], new["dport"][p]], axis=1)],
                             axis=1)
        upd = csum_replace(ck, ow2, nw2)
        udp = proto[p] == IP_UDP
        upd = np.where(udp & (upd == 0), 0xFFFF, upd)
        if not v6:
            upd = np.where(udp & (ck == 0), 0, upd)     # no UDP checksum stays none
        _put16(data, r, l4[p] + off, upd)
        _put16(data, r, l4[p], new["sport"][p])
        _put16(data, r, l4[p] + 2, new["dport"][p])
        keys[_S["tp_src"], r] = new["sport"][p]
        keys[_S["tp_dst"], r] = new["dport"][p]
    if v6:
        ic = np.flatnonzero(proto == IP_ICMPV6)
        if ic.size:
            r = rows[ic]
            ck = _get16(data, r, l4[ic] + 2)
            _put16(data, r, l4[ic] + 2, csum_replace(ck, ow[ic], nw[ic]))


def rewrite_related(pkt: bytearray, l3: int, v6: bool, outer_src: int | None,
                    outer_dst: int | None, inner: dict) -> bytearray:
    """Translate an ICMP error (one packet as bytes, l3 its IP header offset).

    outer_src/outer_dst: new outer addresses (None keeps).  inner: new values
    for the quoted header: "src", "dst", "sport", "dport" (absent keeps).
    Header checksums are recomputed: outer and inner IPv4, the quoted L4 where
    whole, and the ICMP checksum over the message.
    """
    alen = 16 if v6 else 4
    so, do = (8, 24) if v6 else (12, 16)
    if outer_src is not None:
        pkt[l3 + so:l3 + so + alen] = outer_src.to_bytes(alen, "big")
    if outer_dst is not None:
        pkt[l3 + do:l3 + do + alen] = outer_dst.to_bytes(alen, "big")
    if v6:
        l4 = l3 + 40
        end = l3 + 40 + int.from_bytes(pkt[l3 + 4:l3 + 6], "big")
    else:
        ihl = (pkt[l3] & 15) * 4
        l4 = l3 + ihl
        end = l3 + int.from_bytes(pkt[l3 + 2:l3 + 4], "big")
        pkt[l3 + 10:l3 + 12] = b"\0\0"
        pkt[l3 + 10:l3 + 12] = internet_checksum(bytes(pkt[l3:l3 + ihl])).to_bytes(2, "big")
    il3 = l4 + 8
    if v6:
        il4 = il3 + 40
        iproto = pkt[il3 + 6]
    else:
        il4 = il3 + (pkt[il3] & 15) * 4
        iproto = pkt[il3 + 9]
    for name, off in (("src", so), ("dst", do)):
        if name in inner:
            pkt[il3 + off:il3 + off + alen] = inner[name].to_bytes(alen, "big")
    if iproto in PAT_PROTOS:
        for name, off in (("sport", 0), ("dport", 2)):
            if name in inner and il4 + off + 2 <= end:
                pkt[il4 + off:il4 + off + 2] = inner[name].to_bytes(2, "big")
        _inner_l4_csum(pkt, il3, il4, end, v6, iproto)
    if not v6:
        ihl = (pkt[il3] & 15) * 4
        if il3 + ihl <= end:
            pkt[il3 + 10:il3 + 12] = b"\0\0"
            pkt[il3 + 10:il3 + 12] = internet_checksum(bytes(pkt[il3:il3 + ihl])).to_bytes(2, "big")
    pkt[l4 + 2:l4 + 4] = b"\0\0"
    body = bytes(pkt[l4:end])
    if v6:
        body = bytes(pkt[l3 + 8:l3 + 40]) + (end - l4).to_bytes(4, "big") + \
            b"\0\0\0" + bytes([IP_ICMPV6]) + body
    pkt[l4 + 2:l4 + 4] = internet_checksum(body).to_bytes(2, "big")
    return pkt


def _inner_l4_csum(pkt, il3, il4, end, v6, proto) -> None:
    """Recompute the quoted TCP/UDP checksum when the whole quoted segment is there."""
    if v6:
        tot = il3 + 40 + int.from_bytes(pkt[il3 + 4:il3 + 6], "big")
    else:
        tot = il3 + int.from_bytes(pkt[il3 + 2:il3 + 4], "big")
    off = 16 if proto == IP_TCP else 6
    if tot > end or il4 + off + 2 > end:
        return
    if proto == IP_UDP and not v6 and pkt[il4 + 6:il4 + 8] == b"\0\0":
        return
    pkt[il4 + off:il4 + off + 2] = b"\0\0"
    seg = bytes(pkt[il4:tot])
    if v6:
        pseudo = bytes(pkt[il3 + 8:il3 + 40]) + len(seg).to_bytes(4, "big") + b"\0\0\0" + \
            bytes([proto])
    else:
        pseudo = bytes(pkt[il3 + 12:il3 + 20]) + bytes([0, proto]) + len(seg).to_bytes(2, "big")
    c = internet_checksum(pseudo + seg)
    if proto == IP_UDP and c == 0:
        c = 0xFFFF
    pkt[il4 + off:il4 + off + 2] = c.to_bytes(2, "big")


ICMP_PROTOS = (IP_ICMP, IP_ICMPV6)
