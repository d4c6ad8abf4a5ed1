"""Batch packet parser: a Batch in, OVS flow keys (slot-major) and header offsets out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.flows.fields import (
    ETH_ARP, ETH_IP, ETH_IPV6, ETH_MPLS, ETH_MPLS_MC, ETH_NSH, ETH_QINQ, ETH_RARP, ETH_VLAN,
    IP_ICMP, IP_ICMPV6, IP_IGMP, IP_SCTP, IP_TCP, IP_UDP, N_SLOTS, SLOT_INDEX, VLAN_CFI, lookup,
)

# Why a packet could not be parsed completely; Parsed.error indexes this tuple
# and 0 means the packet is fine.  The switch counts and drops the others.
ERROR_REASONS: tuple[str, ...] = (
    "ok",
    "truncated_eth",           # shorter than an Ethernet header
    "truncated_vlan",          # a VLAN TPID with no room for the tag and next ethertype
    "truncated_mpls",          # the label stack ends before a bottom-of-stack entry
    "truncated_arp",           # shorter than an Ethernet/IPv4 ARP header
    "truncated_ipv4",          # shorter than 20 bytes, its IHL, or its total length
    "bad_ipv4_ihl",            # IHL below 5
    "bad_ipv4_total_length",   # total length smaller than the header
    "truncated_ipv6",          # shorter than 40 bytes plus the payload length
    "bad_ipv6_ext_header",     # an extension header runs past the payload
    "truncated_tcp",           # shorter than 20 bytes or than the data offset
    "bad_tcp_offset",          # data offset below 5
    "truncated_udp",
    "truncated_sctp",
    "truncated_icmp",
    "truncated_igmp",
    "truncated_icmpv6",
    "truncated_nd",            # neighbor solicit/advert without a whole target address
    "bad_nd_option",           # a zero-length ND option, or one running past the packet
    "truncated_nsh",           # shorter than the NSH base header or its length field
    "bad_nsh",                 # NSH version not 0, or an MD type 1 header not 24 bytes
)
ERROR_CODE: dict[str, int] = {name: i for i, name in enumerate(ERROR_REASONS)}

_E = ERROR_CODE
_S = SLOT_INDEX
_ALL = slice(None)
_MAC = 0xFFFFFFFFFFFF
_IPV6_EXT = (0, 43, 60, 51, 44)   # hop-by-hop, routing, dst options, AH, fragment
_IPV6_FRAG, _IPV6_AH = 44, 51
# Windows are read from 2 bytes before the Ethernet header (so both MACs land
# in 8-byte words) up to this many bytes past the last header start.
_PRE = 2
_WMAX = 64
_WIN = 40     # bytes every header window holds (the IPv6 header is the widest)
_WIN_DTYPE = np.dtype((np.void, _WIN))


def _rows(*names: str) -> slice:
    """The key rows of slots that SLOTS declares next to each other, as one slice,
    so a layer stores them in one assignment."""
    first = _S[names[0]]
    if [_S[n] for n in names] != list(range(first, first + len(names))):
        raise AssertionError(f"slots {names} are not adjacent in SLOTS")
    return slice(first, first + len(names))


_R_ADDR4 = _rows("nw_src", "nw_dst")
_R_ADDR6 = _rows("ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo")
_R_PROTO_TOS_TTL = _rows("nw_proto", "nw_tos", "nw_ttl")
_R_PORTS = _rows("tp_src", "tp_dst")
_L3_SLOTS_V4 = np.array([_S[s] for s in ("nw_src", "nw_dst", "nw_proto", "nw_tos",
                                          "nw_ttl", "nw_frag")])
_L3_SLOTS_V6_TAIL = np.array([_S[s] for s in ("ipv6_label", "nw_proto", "nw_tos",
                                               "nw_ttl", "nw_frag")])
_ND_SLOTS = np.array([_S[s] for s in ("nd_target_hi", "nd_target_lo",
                                       "arp_sha", "arp_tha", "nd_reserved", "nd_options_type")])


# Lookup tables replace chains of comparisons: one gather per packet field.
_C_OTHER, _C_IPV4, _C_IPV6, _C_ARP, _C_MPLS, _C_NSH, _C_VLAN, _C_LLC = range(8)
_ETYPE_CLASS = np.zeros(1 << 16, dtype=np.uint8)
_ETYPE_CLASS[:0x600] = _C_LLC
for _t, _c in ((ETH_IP, _C_IPV4), (ETH_IPV6, _C_IPV6), (ETH_ARP, _C_ARP),
               (ETH_RARP, _C_ARP), (ETH_MPLS, _C_MPLS), (ETH_MPLS_MC, _C_MPLS),
               (ETH_NSH, _C_NSH), (ETH_VLAN, _C_VLAN), (ETH_QINQ, _C_VLAN)):
    _ETYPE_CLASS[_t] = _c
# IPv4 header length in bytes from the version/IHL byte; IHL < 5 maps past any
# total length so a single comparison rejects it.
_IHL = (np.arange(256, dtype=np.int64) & 15) * 4
_IHL[_IHL < 20] = 1 << 20


def _l4_tables():
    """Indexed by IP protocol (+256 for IPv6): bytes the key fields need, whether they
    are ICMP-style type/code bytes rather than 16-bit ports, and the error when short."""
    need = np.zeros(512, dtype=np.int64)
    icmpish = np.zeros(512, dtype=bool)
    err = np.zeros(512, dtype=np.uint8)
    for fam in (0, 256):
        for proto, n_bytes, name in ((IP_TCP, 20, "truncated_tcp"), (IP_UDP, 8, "truncated_udp"),
                                     (IP_SCTP, 12, "truncated_sctp")):
            need[fam + proto], err[fam + proto] = n_bytes, ERROR_CODE[name]
    for proto, name in ((IP_ICMP, "truncated_icmp"), (IP_IGMP, "truncated_igmp"),
                        (256 + IP_ICMPV6, "truncated_icmpv6")):
        need[proto], err[proto], icmpish[proto] = 8, ERROR_CODE[name], True
    return need, icmpish, err


_L4_NEED, _L4_ICMP, _L4_ERR = _l4_tables()
_V6 = 256
_IPV6_EXT_TABLE = np.zeros(256, dtype=bool)
_IPV6_EXT_TABLE[list(_IPV6_EXT)] = True
for _table in (_ETYPE_CLASS, _IHL, _L4_NEED, _L4_ICMP, _L4_ERR, _IPV6_EXT_TABLE):
    _table.flags.writeable = False


@dataclass(eq=False)
class Parsed:
    """Flow keys and header offsets of a parsed batch.

    keys is (len(SLOTS), n) uint64, one contiguous row per slot.  l2_5, l3 and
    l4 are absolute columns of batch.data where the MPLS, network and
    transport headers start, -1 where there is none.  error indexes
    ERROR_REASONS (0 = parsed fine).
    """

    keys: np.ndarray
    l2_5: np.ndarray
    l3: np.ndarray
    l4: np.ndarray
    error: np.ndarray

    def __len__(self) -> int:
        return self.keys.shape[1]

    @property
    def ok(self) -> np.ndarray:
        return self.error == 0

    def field(self, name: str) -> np.ndarray:
        """The values of one registry field (at most 64 bits wide) for every packet."""
        fld = lookup(name)
        if fld.hi_lo:
            raise ValueError(f"{name} is 128 bits wide; read its {fld.hi_lo} slots")
        row = self.keys[_S[fld.slot]]
        return (row >> np.uint64(fld.shift)) & np.uint64(fld.max)

    def reasons(self) -> list[str]:
        return [ERROR_REASONS[e] for e in self.error]


def parse(batch: Batch) -> Parsed:
    """Parse every packet of `batch` into OVS flow-key semantics; never raises on bad packets."""
    return _Parser(batch).run()


def _narrow(ix, mask: np.ndarray):
    """Rows of `ix` where `mask` holds, and the local positions picking them."""
    if mask.all():
        return ix, _ALL
    loc = np.flatnonzero(mask)
    return (loc if isinstance(ix, slice) else ix[loc]), loc


def _be(w: np.ndarray, off: int, k: int) -> np.ndarray:
    """The big-endian integer in bytes off..off+k of each window row."""
    t = np.zeros((w.shape[0], 8), dtype=np.uint8)
    t[:, 8 - k:] = w[:, off:off + k]
    return t.view(">u8")[:, 0]


def ipv6_ext(win, ext: np.ndarray, proto: np.ndarray, pos: np.ndarray, end: np.ndarray):
    """Walk IPv6 extension headers, one header depth per pass, for the packets where ext
    holds: proto (next header) and pos (where it starts) are updated in place; end is
    where each payload ends, win(positions, 8) reads 8 bytes at each position.

    Returns (bad, frag): an extension header runs past the payload; nw_frag bits (1 any
    fragment, 2 a later one).  A later fragment stops the walk with proto 44, as OVS.
    """
    n = len(proto)
    bad = np.zeros(n, dtype=bool)
    frag = np.zeros(n, dtype=np.uint8)
    act = np.flatnonzero(ext)
    while act.size:
        p = pos[act]
        rem = end[act] - p
        t = proto[act]
        w = win(p, 8)
        is_frag = t == _IPV6_FRAG
        hlen = np.where(is_frag, 8,
                        np.where(t == _IPV6_AH, (w[:, 1].astype(np.int64) + 2) * 4,
                                 (w[:, 1].astype(np.int64) + 1) * 8))
        broken = (rem < 8) | (hlen > rem)
        bad[act[broken]] = True
        offlg = w.view(">u2")[:, 1]
        f_any = is_frag & ~broken & (offlg != 0)
        f_later = f_any & ((offlg & 0xFFF8) != 0)
        frag[act] |= f_any.view(np.uint8) | (f_later.view(np.uint8) << 1)
        # Later fragments stop the walk with nw_proto = 44, as OVS does.
        nxt = np.where(f_later, _IPV6_FRAG, w[:, 0].astype(np.intp))
        proto[act] = np.where(broken, t, nxt)
        pos[act] = p + hlen
        go = ~broken & ~f_later & _IPV6_EXT_TABLE[nxt]
        act = act[go]
    return bad, frag


def ipv6_upper(data: np.ndarray, rows: np.ndarray, l3: np.ndarray,
               end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nw_proto and L4 column of IPv6 packets as parse() finds them, for code that has
    changed a packet since (execute): the IPv6 header at columns l3 of rows, each packet
    ending at column end.  nw_proto is 0 when the header or an extension header is
    truncated and 44 for a later fragment; the column is -1 where there is no L4 header."""
    rows = np.asarray(rows, dtype=np.intp)
    l3 = np.asarray(l3, dtype=np.int64)
    end = np.asarray(end, dtype=np.int64)
    if not rows.size:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    width = data.shape[1]
    flat = np.ascontiguousarray(data).reshape(-1)

    def win(pos: np.ndarray, k: int) -> np.ndarray:
        return flat[np.clip(pos, 0, flat.size - k)[:, None] + np.arange(k)]

    base = rows.astype(np.int64) * width
    h = win(base + l3, 8).astype(np.int64)
    plen = h[:, 4] << 8 | h[:, 5]
    proto = h[:, 6].astype(np.intp)
    good = (l3 >= 0) & (end - l3 >= 40) & (l3 + 40 + plen <= end)
    pos = base + l3 + 40
    pend = pos + plen
    later = np.zeros(rows.size, dtype=bool)
    ext = _IPV6_EXT_TABLE[proto] & good
    if ext.any():
        bad, frag = ipv6_ext(win, ext, proto, pos, pend)
        later = (frag & 2) != 0
        good &= ~bad
    return np.where(good, proto, 0), np.where(good & ~later, pos - base, -1)


class _Parser:
    """One parse of one batch: per-layer vectorized passes over row subsets."""

    def __init__(self, batch: Batch):
        n = len(batch)
        self.n = n
        self.keys = np.zeros((N_SLOTS, n), dtype=np.uint64)
        self.error = np.zeros(n, dtype=np.uint8)
        offsets = np.empty((3, n), dtype=np.int32)
        offsets.fill(-1)
        self.l2_5, self.l3, self.l4 = offsets
        self.batch = batch
        self._view: np.ndarray | None = None

    # -- buffer access -------------------------------------------------------

    def _setup(self) -> None:
        b = self.batch
        data = b.data
        n, cap = data.shape
        start = b.start.astype(np.int64)
        length = b.length.astype(np.int64)
        end = start + length
        if (data.flags.c_contiguous and start.min() >= _PRE
                and end.max() + _WMAX <= cap):
            buf, shift = data, 0
        else:
            # Rare: no room around some packet; read from a padded copy.
            width = cap + _PRE + _WMAX
            buf = np.zeros((n, width), dtype=np.uint8)
            buf[:, _PRE:_PRE + cap] = data
            shift, cap = _PRE, width
        self.flat = buf.reshape(-1)
        # Absolute position of column 0 of each row in the flat buffer.
        self.base = np.arange(n, dtype=np.int64) * cap + shift
        self.length = length
        self.start = self.base + start
        self.end = self.base + end

    def win(self, pos: np.ndarray, w: int) -> np.ndarray:
        """At least bytes pos..pos+w of the flat buffer for each position, as (m, _WIN) uint8.

        A void dtype of _WIN bytes over a 1-byte stride makes this one
        fancy-index copy of m small records instead of m*w single-byte gathers;
        every layer shares the one view, whatever width it needs.
        """
        view = self._view
        if view is None:
            view = self._view = np.ndarray((self.flat.size - _WIN + 1,),
                                           dtype=_WIN_DTYPE,
                                           buffer=self.flat, strides=(1,))
        return view[pos].view(np.uint8).reshape(-1, _WIN)

    def fail(self, ix, loc_mask: np.ndarray, code: int) -> None:
        rows = ix[loc_mask] if not isinstance(ix, slice) else np.flatnonzero(loc_mask)
        self.error[rows] = code

    def col(self, ix, pos: np.ndarray) -> np.ndarray:
        return pos - self.base[ix]

    # -- layers --------------------------------------------------------------

    def run(self) -> Parsed:
        keys = self.keys
        if self.n:
            keys[_S["in_port"]] = self.batch.in_port
            self._setup()
            self.ethernet()
        return Parsed(keys, self.l2_5, self.l3, self.l4, self.error)

    def ethernet(self) -> None:
        keys = self.keys
        ok = self.length >= 14
        ix, _ = _narrow(_ALL, ok)
        if not isinstance(ix, slice):
            self.error[~ok] = _E["truncated_eth"]
            if not ix.size:
                return
        pos = self.start[ix]
        end = self.end[ix]
        # Window from 2 bytes before the frame: words of 8 bytes hold
        # [pad, dst] and [src, type]; 16-bit column 7 is the first ethertype.
        w = self.win(pos - 2, 24)
        q = w.view(">u8")
        keys[_S["eth_dst"], ix] = q[:, 0] & _MAC
        keys[_S["eth_src"], ix] = q[:, 1] >> 16
        h = w.view(">u2")
        etype = h[:, 7].astype(np.intp)
        l3pos = pos + 14
        cls = _ETYPE_CLASS[etype]
        if not (cls == _C_IPV4).all():
            if (cls == _C_VLAN).any():
                etype, l3pos = self.vlan(ix, h, etype, cls == _C_VLAN, end - pos, pos)
                cls = _ETYPE_CLASS[etype]
            llc = cls == _C_LLC
            if llc.any():
                self.llc(llc, etype, l3pos, end)
                cls = _ETYPE_CLASS[etype]
        keys[_S["eth_type"], ix] = etype
        self.network(ix, cls, l3pos, end)

    def vlan(self, ix, h, etype, tagged, size, pos):
        """Up to two tags (OVS with vlan-limit=2): either TPID may be 0x8100 or 0x88a8."""
        keys = self.keys
        t1 = h[:, 9].astype(np.intp)
        tag0 = tagged & (size >= 18)
        more = tag0 & (_ETYPE_CLASS[t1] == _C_VLAN)
        tag1 = more & (size >= 22)
        trunc = (tagged & ~tag0) | (more & ~tag1)
        if trunc.any():
            self.fail(ix, trunc, _E["truncated_vlan"])
        keys[_S["vlan_tci"], ix] = np.where(tag0, h[:, 8] | VLAN_CFI, 0)
        keys[_S["vlan_tpid"], ix] = np.where(tag0, etype, 0)
        keys[_S["vlan_tci2"], ix] = np.where(tag1, h[:, 10] | VLAN_CFI, 0)
        keys[_S["vlan_tpid2"], ix] = np.where(tag1, t1, 0)
        # A truncated tag leaves its TPID as the ethertype, as OVS does.
        etype = np.where(tag1, h[:, 11].astype(np.intp), np.where(tag0, t1, etype))
        return etype, pos + 14 + 4 * (tag0.astype(np.int64) + tag1)

    def llc(self, llc, etype, l3pos, end) -> None:
        """802.3 length field: SNAP with OUI 0 gives its type, anything else 0x05ff."""
        sub = np.flatnonzero(llc)
        p = l3pos[sub]
        w = self.win(p, 8)
        snap = ((end[sub] - p >= 8) & (w[:, 0] == 0xAA) & (w[:, 1] == 0xAA)
                & (w[:, 2] == 0x03) & (w[:, 3] == 0) & (w[:, 4] == 0) & (w[:, 5] == 0))
        stype = w.view(">u2")[:, 3].astype(np.intp)
        etype[sub] = np.where(snap & (stype >= 0x600), stype, 0x05FF)
        l3pos[sub] = np.where(snap, p + 8, p)

    def network(self, ix, cls, l3pos, end) -> None:
        layers = {_C_IPV4: self.ipv4, _C_IPV6: self.ipv6, _C_ARP: self.arp,
                  _C_MPLS: self.mpls, _C_NSH: self.nsh}
        first = int(cls[0])
        if first in layers and (cls == first).all():
            l4 = [layers[first](ix, l3pos, end)]
        else:
            present = np.bincount(cls, minlength=8)
            l4 = []
            for c, layer in layers.items():
                if present[c]:
                    rows, loc = _narrow(ix, cls == c)
                    l4.append(layer(rows, l3pos[loc], end[loc]))
        # IPv4 and IPv6 transport headers are parsed in one pass.
        l4 = [x for x in l4 if x is not None]
        if len(l4) == 1:
            self.transport(*l4[0])
        elif l4:
            rows = [np.arange(self.n)[r] if isinstance(r, slice) else r for r, *_ in l4]
            self.transport(np.concatenate(rows),
                           *(np.concatenate([x[i] for x in l4]) for i in (1, 2, 3)))

    def ipv4(self, ix, p, end) -> None:
        keys = self.keys
        self.l3[ix] = self.col(ix, p)
        w = self.win(p, 20)
        h = w.view(">u2")
        u = w.view(">u4")
        ihl = _IHL[w[:, 0].astype(np.intp)]
        tot = h[:, 1].astype(np.int64)
        keys[_R_ADDR4, ix] = u[:, 3:5].T
        keys[_R_PROTO_TOS_TTL, ix] = w[:, [9, 1, 8]].T
        proto = w[:, 9].astype(np.intp)
        frag = h[:, 3] & 0x3FFF
        if frag.any():
            later = (frag & 0x1FFF) != 0
            keys[_S["nw_frag"], ix] = (frag != 0).view(np.uint8) | (later.view(np.uint8) << 1)
        else:
            later = None
        # ihl >= 20 (see _IHL) and ihl <= tot <= size imply the 20 bytes are there.
        good = (ihl <= tot) & (tot <= end - p)
        if not good.all():
            self.ipv4_errors(ix, good, w, tot, end - p)
        if later is not None:
            good &= ~later
        rows, loc = _narrow(ix, good)
        if isinstance(loc, slice) or loc.size:
            return rows, proto[loc], (p + ihl)[loc], (p + tot)[loc]
        return None

    def ipv4_errors(self, ix, good, w, tot, size) -> None:
        bad = ~good
        ihl = (w[:, 0] & 15).astype(np.int64) * 4
        code = np.select(
            [size < 20, ihl < 20, ihl > size, tot > size],
            [_E["truncated_ipv4"], _E["bad_ipv4_ihl"], _E["truncated_ipv4"],
             _E["truncated_ipv4"]], _E["bad_ipv4_total_length"])
        rows = np.flatnonzero(bad) if isinstance(ix, slice) else ix[bad]
        self.error[rows] = code[bad]
        # OVS keeps no L3 fields of a packet failing its sanity check.
        self.keys[_L3_SLOTS_V4[:, None], rows] = 0

    def ipv6(self, ix, p, end) -> None:
        keys = self.keys
        self.l3[ix] = self.col(ix, p)
        size = end - p
        w = self.win(p, 40)
        q = w.view(">u8")
        vtf = w.view(">u4")[:, 0]
        plen = w.view(">u2")[:, 2].astype(np.int64)
        keys[_R_ADDR6, ix] = q[:, 1:5].T
        keys[_S["ipv6_label"], ix] = vtf & 0xFFFFF
        keys[_S["nw_tos"], ix] = (vtf >> 20) & 0xFF
        keys[_S["nw_ttl"], ix] = w[:, 7]
        proto = w[:, 6].astype(np.intp)
        good = (size >= 40) & (plen + 40 <= size)
        if not good.all():
            self.fail(ix, ~good, _E["truncated_ipv6"])
            rows = np.flatnonzero(~good) if isinstance(ix, slice) else ix[~good]
            keys[_R_ADDR6, rows] = 0
            keys[_L3_SLOTS_V6_TAIL[:, None], rows] = 0
        l4pos = p + 40
        pend = l4pos + plen
        later = np.zeros(len(p), dtype=bool)
        ext = _IPV6_EXT_TABLE[proto] & good
        if ext.any():
            bad, frag = ipv6_ext(self.win, ext, proto, l4pos, pend)
            keys[_S["nw_frag"], ix] = frag
            later = (frag & 2) != 0
            if bad.any():
                # OVS keeps the addresses but no other L3 field of such a packet.
                self.fail(ix, bad, _E["bad_ipv6_ext_header"])
                rows = np.flatnonzero(bad) if isinstance(ix, slice) else ix[bad]
                keys[_L3_SLOTS_V6_TAIL[:, None], rows] = 0
                good &= ~bad
        keys[_S["nw_proto"], ix] = np.where(good, proto, 0)
        rows, loc = _narrow(ix, good & ~later)
        if isinstance(loc, slice) or loc.size:
            return rows, proto[loc] + _V6, l4pos[loc], pend[loc]
        return None

    def transport(self, ix, kp, p, end) -> None:
        """TCP/UDP/SCTP ports, ICMP/ICMPv6/IGMP type and code; kp is proto (+256 for IPv6)."""
        keys = self.keys
        self.l4[ix] = self.col(ix, p)
        size = end - p
        w = self.win(p, 24)
        h = w.view(">u2")
        k0 = int(kp[0])
        if (kp == k0).all():
            # One protocol in the whole pass (the usual burst): scalar decisions.
            need, icmp, tcp = int(_L4_NEED[k0]), bool(_L4_ICMP[k0]), k0 in (IP_TCP, _V6 + IP_TCP)
            if not need:
                return
            ok = size >= need
            if tcp:
                off = (w[:, 12] >> 4).astype(np.int64) * 4
                ok &= (off >= 20) & (off <= size)
            ports = (w[:, 0:2] if icmp else h[:, 0:2]).T
            all_ok = ok.all()
            keys[_R_PORTS, ix] = ports if all_ok else ports * ok
            if tcp:
                flags = h[:, 6] & 0x0FFF
                keys[_S["tcp_flags"], ix] = flags if all_ok else flags * ok
            if not all_ok:
                self.transport_errors(ix, ~ok, kp, size, w, tcp)
            nd_cand = ok if k0 == _V6 + IP_ICMPV6 else None
        else:
            need = _L4_NEED[kp]
            ok = size >= need
            tcp = (kp == IP_TCP) | (kp == _V6 + IP_TCP)
            if tcp.any():
                off = (w[:, 12] >> 4).astype(np.int64) * 4
                ok &= ~tcp | ((off >= 20) & (off <= size))
            src = h[:, 0].astype(np.uint64)
            dst = h[:, 1].astype(np.uint64)
            icmp = _L4_ICMP[kp]
            if icmp.any():
                # ICMP type and code are the first two bytes, not 16-bit ports.
                dst = np.where(icmp, src & 0xFF, dst)
                src = np.where(icmp, src >> 8, src)
            known = need > 0
            ok &= known
            keys[_S["tp_src"], ix] = src * ok
            keys[_S["tp_dst"], ix] = dst * ok
            keys[_S["tcp_flags"], ix] = (h[:, 6] & 0x0FFF) * (ok & tcp)
            bad = known & ~ok
            if bad.any():
                self.transport_errors(ix, bad, kp, size, w, tcp)
            nd_cand = ok & (kp == _V6 + IP_ICMPV6)
        if nd_cand is not None:
            nd = nd_cand & (w[:, 1] == 0) & ((w[:, 0] == 135) | (w[:, 0] == 136))
            if nd.any():
                rows, loc = _narrow(ix, nd)
                self.nd(rows, p[loc], end[loc], w[loc])

    def transport_errors(self, ix, bad, kp, size, w, tcp) -> None:
        off = (w[:, 12] >> 4).astype(np.int64) * 4
        code = np.where(tcp & (size >= 20) & (off < 20), _E["bad_tcp_offset"], _L4_ERR[kp])
        rows = np.flatnonzero(bad) if isinstance(ix, slice) else ix[bad]
        self.error[rows] = code[bad]

    def nd(self, ix, p, end, w) -> None:
        """Neighbor solicit/advert: target, then SLL/TLL options as OVS's parse_icmpv6."""
        keys = self.keys
        m = len(p)
        has_target = end - p >= 24
        if not has_target.all():
            self.fail(ix, ~has_target, _E["truncated_nd"])
        q = w.view(">u8")
        hi = np.where(has_target, q[:, 1], 0)
        lo = np.where(has_target, q[:, 2], 0)
        sll = np.zeros(m, dtype=np.uint64)
        tll = np.zeros(m, dtype=np.uint64)
        reserved = np.where(has_target, q[:, 0] & np.uint64(0xFFFFFFFF), np.uint64(0))
        # The type of the first link-layer address option (SLL or TLL), as OVS keeps it.
        opt_type = np.zeros(m, dtype=np.uint64)
        invalid = np.zeros(m, dtype=bool)
        malformed = np.zeros(m, dtype=bool)
        opt = p + 24
        act = np.flatnonzero(has_target & (end - opt >= 8))
        while act.size:
            o = opt[act]
            rem = end[act] - o
            ow = self.win(o, 8)
            olen = ow[:, 1].astype(np.int64) * 8
            stop = (olen == 0) | (olen > rem)
            malformed[act[stop]] = True
            mac = ow.view(">u8")[:, 0] & _MAC
            is_s = ~stop & (ow[:, 0] == 1) & (olen == 8)
            is_t = ~stop & (ow[:, 0] == 2) & (olen == 8)
            # A second SLL (or TLL) after a non-zero one voids the ND fields.
            dup = (is_s & (sll[act] != 0)) | (is_t & (tll[act] != 0))
            invalid[act[dup]] = True
            first = (is_s | is_t) & (opt_type[act] == 0)
            opt_type[act[first]] = ow[first, 0]
            set_s = is_s & ~dup
            set_t = is_t & ~dup
            sll[act[set_s]] = mac[set_s]
            tll[act[set_t]] = mac[set_t]
            opt[act] = o + olen
            act = act[~stop & ~dup & (rem - olen >= 8)]
        if invalid.any():
            hi[invalid] = lo[invalid] = sll[invalid] = tll[invalid] = 0
        if malformed.any():
            self.fail(ix, malformed & has_target, _E["bad_nd_option"])
            reserved[malformed] = opt_type[malformed] = 0
        vals = np.stack([hi, lo, sll, tll, reserved, opt_type])
        if isinstance(ix, slice):
            keys[_ND_SLOTS] = vals
        else:
            keys[_ND_SLOTS[:, None], ix] = vals

    def arp(self, ix, p, end) -> None:
        """ARP/RARP, Ethernet/IPv4 only; opcodes above 255 leave nw_proto 0, as OVS."""
        keys = self.keys
        self.l3[ix] = self.col(ix, p)
        w = self.win(p, 28)
        h = w.view(">u2")
        whole = end - p >= 28
        if not whole.all():
            self.fail(ix, ~whole, _E["truncated_arp"])
        ok = whole & (h[:, 0] == 1) & (h[:, 1] == ETH_IP) & (w[:, 4] == 6) & (w[:, 5] == 4)
        rows, loc = _narrow(ix, ok)
        w = w[loc]
        op = h[loc, 3]
        keys[_S["nw_src"], rows] = _be(w, 14, 4)
        keys[_S["nw_dst"], rows] = _be(w, 24, 4)
        keys[_S["nw_proto"], rows] = np.where(op <= 0xFF, op, 0)
        keys[_S["arp_sha"], rows] = _be(w, 8, 6)
        keys[_S["arp_tha"], rows] = _be(w, 18, 6)

    def mpls(self, ix, p, end) -> None:
        """Label stack entries until bottom of stack; the first three go in the key."""
        keys = self.keys
        self.l2_5[ix] = self.col(ix, p)
        m = len(p)
        lse = np.zeros((3, m), dtype=np.uint64)
        found = np.zeros(m, dtype=bool)
        cur = p.copy()
        act = np.arange(m)
        depth = 0
        while act.size:
            act = act[end[act] - cur[act] >= 4]
            if not act.size:
                break
            v = self.win(cur[act], 4).view(">u4")[:, 0]
            if depth < 3:
                lse[depth, act] = v
            cur[act] += 4
            bos = (v & 0x100) != 0
            found[act[bos]] = True
            act = act[~bos]
            depth += 1
        keys[_S["mpls_lse0"]:_S["mpls_lse2"] + 1, ix] = lse
        if not found.all():
            self.fail(ix, ~found, _E["truncated_mpls"])
        rows, loc = _narrow(ix, found)
        self.l3[rows] = self.col(rows, cur[loc])

    def nsh(self, ix, p, end) -> None:
        """NSH base and service path headers, MD type 1 contexts; nothing past NSH."""
        keys = self.keys
        self.l3[ix] = self.col(ix, p)
        size = end - p
        w = self.win(p, 24)
        u = w.view(">u4")
        vftl = w.view(">u2")[:, 0].astype(np.int64)
        length = (vftl & 0x3F) << 2
        md = w[:, 2]
        trunc = (size < 8) | (length > size)
        bad = ~trunc & (((vftl >> 14) != 0) | ((md == 1) & (length != 24))
                        | ((md == 2) & (length < 8)))
        if trunc.any():
            self.fail(ix, trunc, _E["truncated_nsh"])
        if bad.any():
            self.fail(ix, bad, _E["bad_nsh"])
        rows, loc = _narrow(ix, ~trunc & ~bad)
        vftl, u, w, md = vftl[loc], u[loc], w[loc], md[loc]
        keys[_S["nsh_flags"], rows] = (vftl >> 12) & 3
        keys[_S["nsh_ttl"], rows] = (vftl >> 6) & 0x3F
        keys[_S["nsh_mdtype"], rows] = md
        keys[_S["nsh_np"], rows] = w[:, 3]
        keys[_S["nsh_spi"], rows] = u[:, 1] >> 8
        keys[_S["nsh_si"], rows] = u[:, 1] & 0xFF
        md1 = md == 1
        for i in range(4):
            keys[_S[f"nsh_c{i + 1}"], rows] = np.where(md1, u[:, 2 + i], 0)
