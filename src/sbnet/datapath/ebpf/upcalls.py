"""The upcall path's packets: ring buffer records to one slow-path batch, checksums a VM left to the NIC completed and connection 5-tuples found for the whole batch at once."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import fold, ones_sum
from sbnet.datapath.ebpf.tunsock import udp_frame
from sbnet.datapath.gso import segment
from sbnet.datapath.ebpf import layout as L
from sbnet.flows import fields as F

VXLAN_PORT = 4789
_HDR = L.UPCALL.size


_EVENTS = (L.CT_COMMIT_EVENT, L.CT_EST_EVENT, L.CT_HANDOVER_EVENT)
_NO_EVENTS = np.zeros(0, dtype=L.CT_EVENT_DTYPE)


@dataclass
class Upcalls:
    """One drain of the ring: the frames as the switch takes them (`batch`; tunnelled ones
    inside the outer header the kernel's VXLAN device took off), the 5-tuples of the
    untunnelled-or-inner IPv4 TCP/UDP frames and ICMP queries (rows of (proto, src, dst,
    sport, dport)) and of the IPv6 ones (`tuples6`: proto, src high, low, dst high, low,
    sport, dport),
    and the connection events (the original direction's map key of each connection the
    kernel committed, or saw the first reply or whole handshake of: `established`, or
    handed over in its handshake: `handover`; `conn_tcp`: a TCP connection's peers)."""

    batch: Batch
    tuples: np.ndarray
    truncated: int
    segmented: int = 0        # GSO packets cut into their segments
    events: np.ndarray = field(default_factory=lambda: _NO_EVENTS)
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    tuples6: np.ndarray = field(default_factory=lambda: np.zeros((0, 7), dtype=np.uint64))

    @property
    def conn_keys(self) -> np.ndarray:
        return self.events["key"]

    @property
    def conn_tcp(self) -> np.ndarray:
        return self.events["tcp"]

    @property
    def established(self) -> np.ndarray:
        return self.kinds == L.CT_EST_EVENT

    @property
    def handover(self) -> np.ndarray:
        return self.kinds == L.CT_HANDOVER_EVENT
    held: bool = False        # some packet is a copy for a held VIF (UP_F_HELD)


def decode(records: list[bytes], underlay_port: int | None) -> Upcalls:
    """Ring records (an sb_upcall header, then the packet) to the slow path's batch, GSO
    packets cut into their segments.  Packets longer than an upcall carries
    (layout.UPCALL_MAX) are counted, not switched (their sender resends)."""
    frames, ports, tunnelled, events, est, partial = [], [], [], [], [], []
    truncated = segmented = 0
    held = False
    unpack = L.UPCALL.unpack_from
    for rec in records:
        (_, in_port, length, caplen, reason, flags, tun_id, tun_src, tun_dst, vlan,
         gso_size) = unpack(rec)
        if reason in _EVENTS and not length:
            events.append(rec[_HDR:_HDR + L.CT_EVENT_DTYPE.itemsize])
            est.append(reason)
            continue
        if caplen < length - (4 if vlan else 0):
            truncated += 1
            continue
        frame = rec[_HDR:_HDR + caplen]
        held |= bool(flags & L.UP_F_HELD)
        if vlan:
            frame = frame[:12] + vlan.to_bytes(4, "big") + frame[12:]
        # A GSO packet goes on as the frames the sender's NIC would have made of it.
        segs = segment(frame, gso_size) if gso_size and caplen > gso_size else (frame,)
        segmented += len(segs) > 1
        for seg in segs:
            if flags & L.UP_F_TUN and underlay_port is not None:
                tunnelled.append((len(frames), tun_id, tun_src, tun_dst))
            frames.append(seg)
            ports.append(in_port)
            partial.append(bool(flags & L.UP_F_CSUM_PARTIAL))
    inner = Batch.from_packets(frames, np.array(ports, dtype=np.uint32))
    # A VM with checksum offload leaves its TCP/UDP checksum to the NIC (the kernel path
    # keeps that state with the packet, across veths and tunnels; the bytes that came up
    # do not, the record's flag does).  Only those are completed: a packet that came with
    # a wrong checksum keeps it, and the slow path's conntrack calls it invalid, as the
    # reference switch on its own ports does.
    complete_l4_checksums(inner, np.array(partial, dtype=bool))
    tuples, tuples6 = five_tuples(inner), five_tuples6(inner)
    conn_keys = np.frombuffer(b"".join(events), dtype=L.CT_EVENT_DTYPE) if events else _NO_EVENTS
    established = np.array(est, dtype=np.int64)
    if not tunnelled:
        return Upcalls(inner, tuples, truncated, segmented, conn_keys, established, tuples6,
                       held=held)
    frames = inner.packets()
    ports = inner.in_port.copy()
    for row, tun_id, src, dst in tunnelled:
        frames[row] = outer(frames[row], tun_id, src, dst)
        ports[row] = underlay_port
    return Upcalls(Batch.from_packets(frames, ports), tuples, truncated, segmented, conn_keys,
                   established, tuples6, held=held)


def outer(inner: bytes, vni: int, src: int, dst: int) -> bytes:
    """An Ethernet/IPv4/UDP/VXLAN frame around `inner`, as the kernel's VXLAN device received
    it (the slow path decapsulates it again, so its switch sees the tunnel key)."""
    return udp_frame(struct.pack("!II", 0x08000000, vni << 8) + inner, src, dst, 49152,
                     VXLAN_PORT)


def _u16(d: np.ndarray, rows: np.ndarray, col: np.ndarray) -> np.ndarray:
    return (d[rows, col].astype(np.int64) << 8) | d[rows, col + 1]


def complete_l4_checksums(b: Batch, only: np.ndarray | None = None) -> None:
    """Every TCP or UDP checksum of the batch (only: of the rows where it holds) computed
    in full, in place (IPv4 unfragmented or IPv6 without extension headers, at most one
    VLAN tag); other packets as they are."""
    n = len(b)
    if not n or (only is not None and not only.any()):
        return
    d, rows = b.data, np.arange(n)
    last = d.shape[1] - 2
    s = b.start.astype(np.int64)
    end = s + b.length
    et = _u16(d, rows, s + 12)
    tagged = (et == 0x8100) | (et == 0x88A8)
    l3 = s + 14 + 4 * tagged
    et = np.where(tagged, _u16(d, rows, np.minimum(s + 16, last)), et)
    at3 = np.minimum(l3, last - 40)
    v4 = (et == 0x0800) & (l3 + 20 <= end)
    v6 = (et == 0x86DD) & (l3 + 40 <= end)
    ihl = (d[rows, at3] & 15).astype(np.int64) * 4
    proto = np.where(v4, d[rows, at3 + 9], d[rows, at3 + 6]).astype(np.int64)
    frag = _u16(d, rows, at3 + 6) & 0x3FFF
    l4 = np.where(v4, l3 + ihl, l3 + 40)
    l4_end = np.where(v4, l3 + _u16(d, rows, at3 + 2), l3 + 40 + _u16(d, rows, at3 + 4))
    csum_at = np.where(proto == F.IP_TCP, 16, 6)
    ok = ((v4 & (frag == 0) & (ihl >= 20)) | v6) & ((proto == F.IP_TCP) | (proto == F.IP_UDP))
    ok &= (l4_end <= end) & (l4_end - l4 >= csum_at + 2)
    if only is not None:
        ok &= only
    if not ok.any():
        return
    r, l3, l4, l4_end, proto = rows[ok], l3[ok], l4[ok], l4_end[ok], proto[ok]
    v4, at = v4[ok], l4 + csum_at[ok]
    d[r, at] = 0
    d[r, at + 1] = 0
    seg = l4_end - l4
    addr = ones_sum(d[r], np.where(v4, l3 + 12, l3 + 8), np.where(v4, 8, 32))
    total = (addr.astype(np.uint64) + ones_sum(d[r], l4, seg) + proto.astype(np.uint64)
             + (seg & 0xFFFF).astype(np.uint64) + (seg >> 16).astype(np.uint64))
    c = ~fold(total) & 0xFFFF
    c = np.where((proto == F.IP_UDP) & (c == 0), 0xFFFF, c)
    d[r, at] = (c >> 8).astype(np.uint8)
    d[r, at + 1] = (c & 0xFF).astype(np.uint8)


# An ICMP query's answer type, by type (conntrack_pkt's reverse types); -1: no query.
_ANSWER4 = np.full(256, -1, np.int64)
_ANSWER4[[8, 0, 13, 14, 15, 16]] = [0, 8, 14, 13, 16, 15]
_ANSWER6 = np.full(256, -1, np.int64)
_ANSWER6[[128, 129]] = [129, 128]


def _ports(d, r, o, proto, icmp, answer):
    """Each row's tuple port words, as conntrack keys them: TCP/UDP ports, or an ICMP
    query's id << 8 | type and id << 8 | its answer's type (rows where proto is `icmp`)."""
    sport, dport = _u16(d, r, o), _u16(d, r, o + 2)
    q = proto == icmp
    typ = d[r, o].astype(np.int64)
    ident = _u16(d, r, o + 4) << 8
    return np.where(q, ident | typ, sport), np.where(q, ident | np.maximum(answer[typ], 0), dport)


def _query(d, r, o, proto, icmp, answer):
    """Rows that are TCP, UDP, or ICMP queries (code 0) of protocol `icmp`."""
    typ = d[r, o].astype(np.int64)
    return ((proto == F.IP_TCP) | (proto == F.IP_UDP)
            | ((proto == icmp) & (answer[typ] >= 0) & (d[r, o + 1] == 0)))


def five_tuples(b: Batch) -> np.ndarray:
    """(proto, src, dst, sport, dport) of each untagged IPv4 TCP/UDP frame and ICMP query
    (ports as conntrack's tuple words), one row each."""
    n = len(b)
    if not n:
        return np.zeros((0, 5), np.int64)
    d, rows = b.data, np.arange(n)
    s = np.minimum(b.start.astype(np.int64), d.shape[1] - 80)
    ihl = (d[rows, s + 14] & 15).astype(np.int64) * 4
    proto = d[rows, s + 23].astype(np.int64)
    o = np.minimum(s + 14 + ihl, d.shape[1] - 6)
    ok = ((_u16(d, rows, s + 12) == 0x0800) & _query(d, rows, o, proto, F.IP_ICMP, _ANSWER4)
          & (ihl >= 20) & (b.length >= 14 + ihl + 8))
    if not ok.any():
        return np.zeros((0, 5), np.int64)
    r, s, o, proto = rows[ok], s[ok], o[ok], proto[ok]
    src = (_u16(d, r, s + 26) << 16) | _u16(d, r, s + 28)
    dst = (_u16(d, r, s + 30) << 16) | _u16(d, r, s + 32)
    return np.stack([proto, src, dst, *_ports(d, r, o, proto, F.IP_ICMP, _ANSWER4)], axis=1)


def five_tuples6(b: Batch) -> np.ndarray:
    """(proto, src high, low, dst high, low, sport, dport) of each untagged IPv6 TCP/UDP
    frame and ICMPv6 echo without extension headers, one uint64 row each."""
    n = len(b)
    if not n:
        return np.zeros((0, 7), np.uint64)
    d, rows = b.data, np.arange(n)
    s = np.minimum(b.start.astype(np.int64), d.shape[1] - 80)
    proto = d[rows, s + 20].astype(np.int64)
    o = s + 54
    ok = ((_u16(d, rows, s + 12) == 0x86DD) & _query(d, rows, o, proto, F.IP_ICMPV6, _ANSWER6)
          & (b.length >= 14 + 40 + 8))
    if not ok.any():
        return np.zeros((0, 7), np.uint64)
    r, s, o, proto = rows[ok], s[ok], o[ok], proto[ok]
    words = [d[r[:, None], (s + at)[:, None] + np.arange(8)].astype(np.uint64) for at in (22, 30, 38, 46)]
    shifts = np.arange(56, -8, -8, dtype=np.uint64)
    hi_lo = [np.bitwise_or.reduce(w << shifts, axis=1) for w in words]
    sport, dport = _ports(d, r, o, proto, F.IP_ICMPV6, _ANSWER6)
    return np.stack([proto.astype(np.uint64), *hi_lo, sport.astype(np.uint64),
                     dport.astype(np.uint64)], axis=1)
