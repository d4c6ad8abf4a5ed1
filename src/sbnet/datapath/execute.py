"""Datapath action execution: one ODP action list applied at once to a group of packets."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from sbnet.datapath import checksum as ck
from sbnet.datapath.odp import (Meter, OdpAction, Output, PopMpls, PopVlan, PushMpls,
                                PushVlan, Recirc, SetFields, Userspace)
from sbnet.datapath.parse import ipv6_upper
from sbnet.flows.fields import (ETH_IP, ETH_IPV6, ETH_MPLS, ETH_MPLS_MC, ETH_QINQ, ETH_VLAN,
                                IP_ICMPV6, IP_TCP, IP_UDP)

if TYPE_CHECKING:
    from sbnet.datapath.batch import Batch

_NOT_EDITS = (Meter, Recirc, Userspace)
_VLAN_TPIDS = (ETH_VLAN, ETH_QINQ)
_MPLS_TYPES = (ETH_MPLS, ETH_MPLS_MC)
_ND_OPT = {"nd_sll": 1, "nd_tll": 2}
_ARANGE = np.arange(64, dtype=np.int64)


def execute(batch: Batch, rows: np.ndarray, l3: np.ndarray, l4: np.ndarray,
            actions: tuple[OdpAction, ...]) -> list[tuple[int, Batch]]:
    """Apply `actions` to the packets `rows` of `batch`; [(port, emitted batch)] in action order.

    - rows: indices (or a boolean mask) into `batch` of the packets sharing `actions`.
    - l3, l4: the parser's header offsets for the *whole* batch (shape (n,)), absolute
      columns of batch.data, -1 where absent (Parsed.l3, Parsed.l4).  MPLS needs none:
      the label stack is found from the Ethernet header.
    - The group is gathered once with batch.take(rows) and edited there with numpy
      operations over all its rows; the input batch is never written.  After a push or
      pop the offsets are kept current, so later set()s find their headers.
    - Each Output emits the packets as they are at that point.  Consecutive Outputs with
      no edit between them share one Batch object: treat emitted batches as read-only.
      Empty actions drop (returns []); so does an empty group.
    - Checksums: the IPv4 header checksum and the TCP/UDP/ICMPv6 checksums that cover
      changed fields are updated incrementally (RFC 1624), so a packet that arrived with
      a bad checksum stays bad; a UDP checksum of 0 (none) stays 0; SCTP's CRC32c is
      recomputed.  ICMPv4 has no pseudo-header and is left alone.
    - Meter, Recirc and Userspace are not packet edits: the switch handles them before
      calling here, and they raise NotImplementedError.
    """
    for a in actions:
        if isinstance(a, _NOT_EDITS):
            raise NotImplementedError(f"{type(a).__name__} is not a packet edit: "
                                      "the switch must handle it before execute()")
    rows = np.asarray(rows)
    rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.intp, copy=False)
    if not actions or len(rows) == 0:
        return []
    work = batch.take(rows)
    if all(type(a) is Output for a in actions):
        return [(a.port, work) for a in actions]
    # Batch.take keeps each packet at its columns, so the offsets carry over as they are.
    st = _Work(work, np.asarray(l3)[rows], np.asarray(l4)[rows])
    out: list[tuple[int, Batch]] = []
    last = max((i for i, a in enumerate(actions) if type(a) is Output), default=-1)
    for a in actions[:last + 1]:   # edits after the last Output would reach no port
        if type(a) is Output:
            out.append((a.port, st.batch))
            st.shared = True
            continue
        st.own()
        match a:
            case SetFields(header, fields):
                if header not in _SETTERS:
                    raise ValueError(f"set() of unknown header {header!r}")
                _SETTERS[header](st, dict(fields))
            case PushVlan(tpid, tci):
                _push_vlan(st, tpid, tci)
            case PopVlan():
                _pop_vlan(st)
            case PushMpls(lse, ethertype):
                _push_mpls(st, lse, ethertype)
            case PopMpls(ethertype):
                _pop_mpls(st, ethertype)
            case _:
                raise TypeError(f"not a datapath action: {a!r}")
    return out


class _Work:
    """The group's own batch plus its current per-row header offsets."""

    def __init__(self, batch: Batch, l3: np.ndarray, l4: np.ndarray):
        self.batch = batch
        self.l3 = l3
        self.l4 = l4
        self.shared = False      # emitted by an Output: copy before the next edit

    def own(self) -> None:
        if not self.shared:
            return
        self.batch = self.batch.take(np.arange(len(self.batch.start)))
        self.shared = False

    def headroom(self, need: int) -> None:
        """Make sure every row has `need` free bytes before its packet."""
        b = self.batch
        if int(b.start.min()) >= need:
            return
        pad = 64
        data = np.zeros((b.data.shape[0], b.data.shape[1] + pad), dtype=np.uint8)
        data[:, pad:] = b.data
        b.data = data
        b.start += pad
        self.l3 = np.where(self.l3 >= 0, self.l3 + pad, -1)
        self.l4 = np.where(self.l4 >= 0, self.l4 + pad, -1)


# --- byte access ---------------------------------------------------------------------------
# A "site" is (rows, col): rows None for every row of the group or an index array; col an
# int when every selected row has the header at the same column (plain slicing, the
# common case) or an array aligned with rows.


def _site(rows: np.ndarray | None, col: np.ndarray):
    if len(col) and col.min() == col.max():
        return rows, int(col[0])
    return rows, col


def _ix(site, off: int, n: int):
    rows, col = site
    if isinstance(col, int):
        return (slice(None) if rows is None else rows, slice(col + off, col + off + n))
    r = np.arange(len(col)) if rows is None else rows
    return r[:, None], (col + off)[:, None] + _ARANGE[:n]


def _get(d: np.ndarray, site, off: int, n: int) -> np.ndarray:
    return d[_ix(site, off, n)]


def _put(d: np.ndarray, site, off: int, n: int, value) -> None:
    d[_ix(site, off, n)] = value


def _words(b: np.ndarray) -> np.ndarray:
    """(m, 2k) bytes -> (m, k) big-endian 16-bit words as uint32."""
    return np.ascontiguousarray(b).view(">u2").astype(np.uint32)


def _words_at(d: np.ndarray, site, off: int, k: int) -> tuple[np.ndarray, bool]:
    """k big-endian 16-bit words at `off` of a site, and whether they are a view into d.

    A view (uniform even column, every row) is read and written in place; otherwise the
    words are a copy to store back with _words_put.
    """
    rows, col = site
    if rows is None and isinstance(col, int) and (col + off) % 2 == 0 \
            and d.flags.c_contiguous and d.shape[1] % 2 == 0:
        c = (col + off) // 2
        return d.view(">u2")[:, c:c + k], True
    return np.ascontiguousarray(_get(d, site, off, 2 * k)).view(">u2"), False


def _words_put(d: np.ndarray, site, off: int, w: np.ndarray, is_view: bool) -> None:
    if not is_view:
        _put(d, site, off, 2 * w.shape[1], w.view(np.uint8))


def _udp_csum(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """UDP: 0 means "no checksum" and stays so; a computed 0 is sent as 0xFFFF."""
    zero = new == 0
    if zero.any():
        new[zero] = 0xFFFF
    none = old == 0
    if none.any():
        new[none] = 0
    return new


def _const(value: int, n: int) -> np.ndarray:
    return np.frombuffer(value.to_bytes(n, "big"), dtype=np.uint8)


def _valid(off: np.ndarray) -> np.ndarray | None:
    """Rows that have the header (None: all of them)."""
    ok = off >= 0
    if ok.all():
        return None
    return np.flatnonzero(ok)


def _sub(off: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return off if rows is None else off[rows]


def _l4_update(st: _Work, rows: np.ndarray | None, proto: np.ndarray, old_w: np.ndarray,
               new_w: np.ndarray, icmp6: bool) -> None:
    """Fold a pseudo-header change (old/new 16-bit words per row) into TCP/UDP(/ICMPv6) checksums.

    rows: group rows the words belong to (None: all); proto: their L4 protocol.
    """
    d = st.batch.data
    l4 = _sub(st.l4, rows)
    for number, csum_off in ((IP_TCP, 16), (IP_UDP, 6), (IP_ICMPV6, 2)):
        if number == IP_ICMPV6 and not icmp6:
            continue
        pick = (proto == number) & (l4 >= 0)
        if pick.all():   # the usual case: one protocol per group
            site, ow, nw = _site(rows, l4), old_w, new_w
        elif pick.any():
            r = np.flatnonzero(pick)
            site = _site(r if rows is None else rows[r], l4[r])
            ow, nw = old_w[r], (new_w if new_w.ndim == 1 else new_w[r])
        else:
            continue
        cw, is_view = _words_at(d, site, csum_off, 1)
        old = cw[:, 0].astype(np.uint32)
        new = ck.csum_replace(old, ow, nw)
        cw[:, 0] = _udp_csum(old, new) if number == IP_UDP else new
        _words_put(d, site, csum_off, cw, is_view)


# --- set() per header ----------------------------------------------------------------------


def _fields_check(header: str, f: dict[str, int], known: set[str]) -> None:
    bad = set(f) - known
    if bad:
        raise ValueError(f"set({header}) cannot write {', '.join(sorted(bad))}")


def _set_eth(st: _Work, f: dict[str, int]) -> None:
    _fields_check("eth", f, {"eth_src", "eth_dst"})
    site = _site(None, st.batch.start.astype(np.int64))
    d = st.batch.data
    if "eth_dst" in f:
        _put(d, site, 0, 6, _const(f["eth_dst"], 6))
    if "eth_src" in f:
        _put(d, site, 6, 6, _const(f["eth_src"], 6))


def _set_ipv4(st: _Work, f: dict[str, int]) -> None:
    _fields_check("ipv4", f, {"ip_src", "ip_dst", "nw_tos", "ip_dscp", "ip_ecn", "ip_ttl"})
    rows = _valid(st.l3)
    site = _site(rows, _sub(st.l3, rows))
    d = st.batch.data
    hdr, is_view = _words_at(d, site, 0, 10)   # the 10 header words
    touched = ([0] if {"nw_tos", "ip_dscp", "ip_ecn"} & f.keys() else []) \
        + ([4] if "ip_ttl" in f else [])
    addr = ([6, 7] if "ip_src" in f else []) + ([8, 9] if "ip_dst" in f else [])
    touched += addr
    old = hdr[:, touched].astype(np.uint32)
    csum = hdr[:, 5].astype(np.uint32)
    if addr:
        # Later fragments carry no L4 header.
        proto = np.where((hdr[:, 3] & 0x1FFF) == 0, hdr[:, 4] & 0xFF, 0)
    if touched[0] == 0:
        tos = hdr[:, 0] & 0xFF
        if "nw_tos" in f:
            tos[:] = f["nw_tos"] & 0xFF
        if "ip_dscp" in f:
            tos = (tos & 0x03) | ((f["ip_dscp"] << 2) & 0xFC)
        if "ip_ecn" in f:
            tos = (tos & 0xFC) | (f["ip_ecn"] & 0x03)
        hdr[:, 0] = (hdr[:, 0] & 0xFF00) | tos
    if "ip_ttl" in f:
        hdr[:, 4] = (hdr[:, 4] & 0x00FF) | ((f["ip_ttl"] & 0xFF) << 8)
    addr_new: list[int] = []
    for name, word in (("ip_src", 6), ("ip_dst", 8)):
        if name in f:
            value = f[name] & 0xFFFFFFFF
            hdr[:, word] = value >> 16
            hdr[:, word + 1] = value & 0xFFFF
            addr_new += [value >> 16, value & 0xFFFF]
    hdr[:, 5] = ck.csum_replace(csum, old, hdr[:, touched])
    _words_put(d, site, 0, hdr, is_view)
    if addr:
        _l4_update(st, rows, proto, old[:, len(touched) - len(addr):],
                   np.array(addr_new, np.uint32), icmp6=False)


def _set_ipv6(st: _Work, f: dict[str, int]) -> None:
    _fields_check("ipv6", f, {"ipv6_src", "ipv6_dst", "ipv6_label", "nw_tos", "ip_dscp",
                              "ip_ecn", "ip_ttl"})
    rows = _valid(st.l3)
    site = _site(rows, _sub(st.l3, rows))
    d = st.batch.data
    h = _get(d, site, 0, 40)
    old = h.copy()
    vtc = ck.be_value(h[:, 0:4])           # version(4) tclass(8) label(20)
    tclass = (vtc >> np.uint64(20)) & np.uint64(0xFF)
    if "nw_tos" in f:
        tclass[:] = f["nw_tos"]
    if "ip_dscp" in f:
        tclass = (tclass & np.uint64(0x03)) | np.uint64((f["ip_dscp"] << 2) & 0xFC)
    if "ip_ecn" in f:
        tclass = (tclass & np.uint64(0xFC)) | np.uint64(f["ip_ecn"] & 0x03)
    label = vtc & np.uint64(0xFFFFF)
    if "ipv6_label" in f:
        label[:] = f["ipv6_label"] & 0xFFFFF
    vtc = (vtc & np.uint64(0xF0000000)) | (tclass << np.uint64(20)) | label
    for j in range(4):
        h[:, j] = (vtc >> np.uint64(24 - 8 * j)) & np.uint64(0xFF)
    if "ip_ttl" in f:
        h[:, 7] = f["ip_ttl"]
    if "ipv6_src" in f:
        h[:, 8:24] = _const(f["ipv6_src"], 16)
    if "ipv6_dst" in f:
        h[:, 24:40] = _const(f["ipv6_dst"], 16)
    _put(d, site, 0, 40, h)
    if "ipv6_src" in f or "ipv6_dst" in f:
        idx = np.arange(len(st.l3)) if rows is None else rows
        b = st.batch
        proto, _ = ipv6_upper(d, idx, st.l3[idx], b.start[idx].astype(np.int64) + b.length[idx])
        _l4_update(st, rows, proto, _words(old[:, 8:40]), _words(h[:, 8:40]), icmp6=True)


def _set_ports(proto: str):
    src, dst = f"{proto}_src", f"{proto}_dst"

    def setter(st: _Work, f: dict[str, int]) -> None:
        _fields_check(proto, f, {src, dst})
        rows = _valid(st.l4)
        site = _site(rows, _sub(st.l4, rows))
        d = st.batch.data
        ports, is_view = _words_at(d, site, 0, 2)
        old = ports.astype(np.uint32)
        if src in f:
            ports[:, 0] = f[src] & 0xFFFF
        if dst in f:
            ports[:, 1] = f[dst] & 0xFFFF
        _words_put(d, site, 0, ports, is_view)
        if proto == "sctp":
            _sctp_crc(st, rows)
            return
        csum_off = 16 if proto == "tcp" else 6
        cw, is_view = _words_at(d, site, csum_off, 1)
        c = cw[:, 0].astype(np.uint32)
        new = ck.csum_replace(c, old, ports)
        cw[:, 0] = _udp_csum(c, new) if proto == "udp" else new
        _words_put(d, site, csum_off, cw, is_view)

    return setter


def _l4_end(st: _Work, idx: np.ndarray) -> np.ndarray:
    """Column one past the L4 payload, from the IP length (Ethernet padding excluded)."""
    d, b = st.batch.data, st.batch
    l3 = st.l3[idx]
    end = (b.start[idx] + b.length[idx]).astype(np.int64)
    has = l3 >= 0
    if has.any():
        r, c = idx[has], l3[has]
        ver = d[r, c] >> 4
        v4_len = (d[r, c + 2].astype(np.int64) << 8) | d[r, c + 3]
        v6_len = ((d[r, c + 4].astype(np.int64) << 8) | d[r, c + 5]) + 40
        ip_end = c + np.where(ver == 4, v4_len, v6_len)
        end[has] = np.minimum(end[has], ip_end)
    return end


def _sctp_crc(st: _Work, rows: np.ndarray | None) -> None:
    d = st.batch.data
    idx = np.arange(len(st.l4)) if rows is None else rows
    l4 = st.l4[idx]
    d[idx, l4 + 8] = 0
    d[idx, l4 + 9] = 0
    d[idx, l4 + 10] = 0
    d[idx, l4 + 11] = 0
    crc = ck.crc32c_rows(d[idx], l4, _l4_end(st, idx) - l4)
    # SCTP stores the CRC32c least significant byte first.
    for j in range(4):
        d[idx, l4 + 8 + j] = (crc >> (8 * j)) & 0xFF


def _set_arp(st: _Work, f: dict[str, int]) -> None:
    layout = {"arp_op": (6, 2), "arp_sha": (8, 6), "arp_spa": (14, 4),
              "arp_tha": (18, 6), "arp_tpa": (24, 4)}
    _fields_check("arp", f, set(layout))
    rows = _valid(st.l3)
    site = _site(rows, _sub(st.l3, rows))
    for name, value in f.items():
        off, n = layout[name]
        _put(st.batch.data, site, off, n, _const(value, n))


def _set_nd(st: _Work, f: dict[str, int]) -> None:
    _fields_check("nd", f, {"nd_target", "nd_sll", "nd_tll"})
    rows = _valid(st.l4)
    idx = np.arange(len(st.l4)) if rows is None else rows
    d = st.batch.data
    site = _site(rows, st.l4[idx])
    csum = _words(_get(d, site, 2, 2))[:, 0]
    if "nd_target" in f:
        old = _words(_get(d, site, 8, 16))
        new = _const(f["nd_target"], 16)
        _put(d, site, 8, 16, new)
        csum = ck.csum_replace(csum, old, np.broadcast_to(_words(new[None, :]), old.shape))
    for name in ("nd_sll", "nd_tll"):
        if name in f:
            csum = _set_nd_option(st, idx, _ND_OPT[name], f[name], csum)
    _put(d, site, 2, 2, ck.be_bytes(csum, 2))


def _set_nd_option(st: _Work, idx: np.ndarray, opt_type: int, mac: int,
                   csum: np.ndarray) -> np.ndarray:
    """Rewrite the first link-layer address option of `opt_type`, where there is one."""
    d = st.batch.data
    l4 = st.l4[idx]
    end = _l4_end(st, idx)
    pos = l4 + 24
    live = np.ones(len(idx), dtype=bool)
    new = _const(mac, 6)
    new_w = _words(new[None, :])
    for _ in range(16):
        live &= pos + 8 <= end
        if not live.any():
            break
        p = np.where(live, pos, 0)
        typ = d[idx, p]
        olen = d[idx, p + 1].astype(np.int64)
        hit = live & (typ == opt_type) & (olen == 1)
        if hit.any():
            r, c = idx[hit], p[hit]
            cols = c[:, None] + 2 + _ARANGE[:6]
            old_w = _words(d[r[:, None], cols])
            d[r[:, None], cols] = new
            csum[hit] = ck.csum_replace(csum[hit], old_w, np.broadcast_to(new_w, old_w.shape))
        live &= ~hit & (olen > 0)
        pos = pos + olen * 8
    return csum


def _set_nd_ext(st: _Work, f: dict[str, int]) -> None:
    """nd_reserved (the flags word) and the first option's type; then, as OVS's
    packet_set_nd_ext, the ICMPv6 checksum is computed afresh over the pseudo-header
    (first next-header and payload length of the IPv6 header) and the message."""
    _fields_check("nd_ext", f, {"nd_reserved", "nd_options_type"})
    rows = _valid(st.l4)
    idx = np.arange(len(st.l4)) if rows is None else rows
    l4, l3 = st.l4[idx], st.l3[idx]
    end = _l4_end(st, idx)
    idx, l4, l3, end = (a[end - l4 >= 24] for a in (idx, l4, l3, end))
    if not len(idx):
        return
    d = st.batch.data
    site = _site(idx, l4)
    if "nd_reserved" in f:
        _put(d, site, 4, 4, _const(f["nd_reserved"], 4))
    if "nd_options_type" in f:
        opt = end - l4 > 24
        d[idx[opt], l4[opt] + 24] = f["nd_options_type"]
    _put(d, site, 2, 2, np.zeros(2, dtype=np.uint8))
    rows = d[idx]
    r = np.arange(len(idx))
    total = (ck.ones_sum(rows, l3 + 8, np.full(len(idx), 32)).astype(np.uint64)
             + rows[r, l3 + 6].astype(np.uint64)
             + ((rows[r, l3 + 4].astype(np.uint64) << 8) | rows[r, l3 + 5])
             + ck.ones_sum(rows, l4, end - l4))
    _put(d, site, 2, 2, ck.be_bytes(ck.fold(total) ^ 0xFFFF, 2))


def _set_icmp(header: str):
    names = (f"{header}_type", f"{header}_code")

    def setter(st: _Work, f: dict[str, int]) -> None:
        """Type and code, the checksum updated incrementally (as OVS's packet_set_icmp)."""
        _fields_check(header, f, set(names))
        rows = _valid(st.l4)
        site = _site(rows, _sub(st.l4, rows))
        d = st.batch.data
        tc = _get(d, site, 0, 2).copy()
        old = _words(tc)
        for j, name in enumerate(names):
            if name in f:
                tc[:, j] = f[name]
        csum = _words(_get(d, site, 2, 2))[:, 0]
        _put(d, site, 0, 2, tc)
        _put(d, site, 2, 2, ck.be_bytes(ck.csum_replace(csum, old, _words(tc)), 2))
    return setter


def _ethertype_pos(st: _Work) -> tuple[np.ndarray, np.ndarray]:
    """Per row: column of the innermost Ethernet/VLAN ethertype field, and its value."""
    d, start = st.batch.data, st.batch.start.astype(np.int64)
    r = np.arange(len(start))
    pos = start + 12
    et = (d[r, pos].astype(np.int64) << 8) | d[r, pos + 1]
    for _ in range(8):
        tag = np.isin(et, _VLAN_TPIDS)
        if not tag.any():
            break
        pos = np.where(tag, pos + 4, pos)
        et = np.where(tag, (d[r, pos].astype(np.int64) << 8) | d[r, pos + 1], et)
    return pos, et


def _set_mpls(st: _Work, f: dict[str, int]) -> None:
    _fields_check("mpls", f, {"mpls_label", "mpls_tc", "mpls_ttl"})
    pos, et = _ethertype_pos(st)
    rows = np.flatnonzero(np.isin(et, _MPLS_TYPES))
    if len(rows) == 0:
        return
    d = st.batch.data
    site = _site(rows, pos[rows] + 2)
    lse = ck.be_value(_get(d, site, 0, 4))
    for name, shift, width in (("mpls_label", 12, 20), ("mpls_tc", 9, 3), ("mpls_ttl", 0, 8)):
        if name in f:
            m = np.uint64(((1 << width) - 1) << shift)
            lse = (lse & ~m) | (np.uint64(f[name] << shift) & m)
    _put(d, site, 0, 4, np.stack([(lse >> np.uint64(s)) & np.uint64(0xFF)
                                  for s in (24, 16, 8, 0)], axis=1).astype(np.uint8))


def _set_skb_mark(st: _Work, f: dict[str, int]) -> None:
    # pkt_mark is skb metadata; the Batch carries none, so the packet bytes do not change.
    _fields_check("skb_mark", f, {"pkt_mark"})


_SETTERS = {
    "eth": _set_eth, "ipv4": _set_ipv4, "ipv6": _set_ipv6,
    "tcp": _set_ports("tcp"), "udp": _set_ports("udp"), "sctp": _set_ports("sctp"),
    "arp": _set_arp, "nd": _set_nd, "nd_ext": _set_nd_ext, "icmp": _set_icmp("icmp"),
    "icmpv6": _set_icmp("icmpv6"), "mpls": _set_mpls, "skb_mark": _set_skb_mark,
}


# --- push/pop ------------------------------------------------------------------------------


def _move(d: np.ndarray, rows: np.ndarray, start: np.ndarray, n: np.ndarray | int,
          by: int) -> None:
    """Move data[r, start:start+n] by `by` columns (n an int or one per row)."""
    if isinstance(n, int):
        groups = [(n, rows, start)]
    elif n.min() == n.max():
        groups = [(int(n[0]), rows, start)]
    else:
        groups = [(int(w), rows[n == w], start[n == w]) for w in np.unique(n)]
    for width, r, s in groups:
        if len(r) == len(d) and s.min() == s.max():
            c = int(s[0])
            d[:, c + by:c + by + width] = d[:, c:c + width].copy()
            continue
        cols = s[:, None] + np.arange(width)
        d[r[:, None], cols + by] = d[r[:, None], cols]


def _push_vlan(st: _Work, tpid: int, tci: int) -> None:
    st.headroom(4)
    b = st.batch
    start = b.start.astype(np.int64)
    r = np.arange(len(start))
    _move(b.data, r, start, 12, -4)
    site = _site(None, start)
    # The CFI bit of a flow's TCI means "a tag is present"; on the wire it is DEI and OVS's
    # eth_push_vlan clears it.
    _put(b.data, site, 8, 4, _const(tpid << 16 | (tci & 0xEFFF), 4))
    b.start -= 4
    b.length += 4


def _pop_vlan(st: _Work) -> None:
    b = st.batch
    start = b.start.astype(np.int64)
    r = np.arange(len(start))
    et = (b.data[r, start + 12].astype(np.int64) << 8) | b.data[r, start + 13]
    pick = np.isin(et, _VLAN_TPIDS)
    if not pick.any():
        return
    r = r[pick]
    _move(b.data, r, start[pick], 12, 4)
    b.start[r] += 4
    b.length[r] -= 4


def _push_mpls(st: _Work, lse: int, ethertype: int) -> None:
    st.headroom(4)
    b = st.batch
    pos, _ = _ethertype_pos(st)
    start = b.start.astype(np.int64)
    r = np.arange(len(start))
    # MACs and VLAN tags move back 4; the old ethertype's place takes the new one, and
    # the LSE goes where the old ethertype's last 2 bytes and 2 freed bytes meet.
    _move(b.data, r, start, pos - start, -4)
    site = _site(None, pos)
    _put(b.data, site, -4, 6, _const(ethertype << 32 | lse, 6))
    b.start -= 4
    b.length += 4


def _pop_mpls(st: _Work, ethertype: int) -> None:
    b = st.batch
    pos, et = _ethertype_pos(st)
    pick = np.isin(et, _MPLS_TYPES)
    if not pick.any():
        return
    r = np.flatnonzero(pick)
    start, pos = b.start[r].astype(np.int64), pos[r]
    _move(b.data, r, start, pos - start, 4)
    site = _site(r, pos)
    _put(b.data, site, 4, 2, _const(ethertype, 2))
    b.start[r] += 4
    b.length[r] -= 4
    if ethertype in (ETH_IP, ETH_IPV6):
        # The payload did not move and is the L3 header now; the parser may have
        # stopped at the labels, so find its L4 header here.
        d, c = b.data, pos + 6
        st.l3[r] = c
        if ethertype == ETH_IP:
            later = ((d[r, c + 6].astype(np.int64) << 8 | d[r, c + 7]) & 0x1FFF) != 0
            st.l4[r] = np.where(later, -1, c + (d[r, c] & 0x0F).astype(np.int64) * 4)
        else:
            st.l4[r] = ipv6_upper(d, r, c, b.start[r].astype(np.int64) + b.length[r])[1]
