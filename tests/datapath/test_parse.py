"""The batch parser against an independent scapy decode of random packets (OVS flow-key semantics)."""

from __future__ import annotations

import ipaddress
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    ARP, ICMP, IP, LLC, SNAP, TCP, UDP, Dot1Q, Dot3, Ether, IPOption_NOP, IPv6,
    IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, raw,
)
from scapy.contrib.mpls import MPLS  # noqa: E402
from scapy.contrib.nsh import NSH  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr, ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr, ICMPv6Unknown,
)
from scapy.layers.ipsec import AH  # noqa: E402
from scapy.layers.sctp import SCTP  # noqa: E402

from sbnet.datapath.batch import Batch  # noqa: E402
from sbnet.datapath.parse import ERROR_REASONS, parse  # noqa: E402
from sbnet.flows.fields import SLOT_INDEX, SLOTS  # noqa: E402

PORT = 7


# ---------------------------------------------------------------------------
# Reference: decode one frame with scapy's field accessors, OVS semantics.
# ---------------------------------------------------------------------------

def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _ip6(text: str) -> tuple[int, int]:
    v = int(ipaddress.IPv6Address(text))
    return v >> 64, v & (2**64 - 1)


def reference(frame: bytes) -> tuple[dict[str, int], tuple[int, int, int]]:
    """Flow key slots and (l2_5, l3, l4) offsets from the frame start for a well-formed frame."""
    k = dict.fromkeys(SLOTS, 0)
    k["in_port"] = PORT
    l2_5 = l3 = l4 = -1
    eth = Ether(frame[:14])
    k["eth_dst"], k["eth_src"] = _mac(eth.dst), _mac(eth.src)
    etype = eth.type if isinstance(eth, Ether) else eth.len
    pos = 14
    tags = []
    while etype in (0x8100, 0x88A8) and len(tags) < 2:
        tag = Dot1Q(frame[pos:pos + 4])
        tags.append((etype, (tag.prio << 13) | (tag.dei << 12) | tag.vlan | 0x1000))
        etype = tag.type
        pos += 4
    if tags:
        k["vlan_tpid"], k["vlan_tci"] = tags[0]
    if len(tags) > 1:
        k["vlan_tpid2"], k["vlan_tci2"] = tags[1]
    if etype < 0x600:
        llc = LLC(frame[pos:pos + 3]) if len(frame) - pos >= 8 else None
        if llc is not None and (llc.dsap, llc.ssap, llc.ctrl) == (0xAA, 0xAA, 3):
            snap = SNAP(frame[pos + 3:pos + 8])
            if snap.OUI == 0:
                pos += 8
                etype = snap.code if snap.code >= 0x600 else 0x5FF
            else:
                etype = 0x5FF
        else:
            etype = 0x5FF
    k["eth_type"] = etype
    body = frame[pos:]
    if etype == 0x0800:
        l3 = pos
        ip = IP(body)
        ihl = ip.ihl * 4
        k["nw_src"] = int(ipaddress.IPv4Address(ip.src))
        k["nw_dst"] = int(ipaddress.IPv4Address(ip.dst))
        k["nw_tos"], k["nw_ttl"], k["nw_proto"] = ip.tos, ip.ttl, ip.proto
        is_frag = bool(ip.flags.MF) or ip.frag != 0
        later = ip.frag != 0
        k["nw_frag"] = int(is_frag) | (int(later) << 1)
        if not later:
            l4 = pos + ihl
            _transport(k, ip.proto, body[ihl:ip.len], v6=False)
    elif etype == 0x86DD:
        l3 = pos
        ip6 = IPv6(body[:40])
        k["ipv6_src_hi"], k["ipv6_src_lo"] = _ip6(ip6.src)
        k["ipv6_dst_hi"], k["ipv6_dst_lo"] = _ip6(ip6.dst)
        k["ipv6_label"], k["nw_tos"], k["nw_ttl"] = ip6.fl, ip6.tc, ip6.hlim
        payload = body[40:40 + ip6.plen]
        proto, off, frag = ip6.nh, 0, 0
        while proto in (0, 43, 60, 51, 44):
            cls = {0: IPv6ExtHdrHopByHop, 43: IPv6ExtHdrRouting, 60: IPv6ExtHdrDestOpt,
                   51: AH, 44: IPv6ExtHdrFragment}[proto]
            hdr = cls(payload[off:])
            if proto == 44:
                offlg = (hdr.offset << 3) | (hdr.res2 << 1) | hdr.m
                off += 8
                proto = hdr.nh
                if offlg:
                    frag = 1
                    if hdr.offset:
                        frag, proto = 3, 44
                        break
            elif proto == 51:
                off += (hdr.payloadlen + 2) * 4
                proto = hdr.nh
            else:
                off += (hdr.len + 1) * 8
                proto = hdr.nh
        k["nw_proto"], k["nw_frag"] = proto, frag
        if not frag & 2:
            l4 = pos + 40 + off
            _transport(k, proto, payload[off:], v6=True)
    elif etype in (0x0806, 0x8035):
        l3 = pos
        if len(body) >= 28 and body[:6] == bytes.fromhex("000108000604"):
            arp = ARP(body[:28])
            k["nw_src"] = int(ipaddress.IPv4Address(arp.psrc))
            k["nw_dst"] = int(ipaddress.IPv4Address(arp.pdst))
            k["nw_proto"] = arp.op if arp.op <= 0xFF else 0
            k["arp_sha"], k["arp_tha"] = _mac(arp.hwsrc), _mac(arp.hwdst)
    elif etype in (0x8847, 0x8848):
        l2_5 = pos
        depth = 0
        while True:
            lse = MPLS(body[4 * depth:4 * depth + 4])
            if depth < 3:
                k[f"mpls_lse{depth}"] = (lse.label << 12) | (lse.cos << 9) | (lse.s << 8) | lse.ttl
            depth += 1
            if lse.s:
                break
        l3 = pos + 4 * depth
    elif etype == 0x894F:
        l3 = pos
        nsh = NSH(body)
        k["nsh_flags"] = (nsh.oam << 1) | nsh.unused1
        k["nsh_ttl"], k["nsh_mdtype"] = nsh.ttl, (nsh.unused2 << 4) | nsh.mdtype
        k["nsh_np"], k["nsh_spi"], k["nsh_si"] = nsh.nextproto, nsh.spi, nsh.si
        if k["nsh_mdtype"] == 1:
            ctx = bytes(body[8:24])
            for i in range(4):
                k[f"nsh_c{i + 1}"] = int.from_bytes(ctx[4 * i:4 * i + 4], "big")
    return k, (l2_5, l3, l4)


def _transport(k: dict[str, int], proto: int, seg: bytes, v6: bool) -> None:
    if proto == 6 and len(seg) >= 20:
        tcp = TCP(seg)
        k["tp_src"], k["tp_dst"] = tcp.sport, tcp.dport
        k["tcp_flags"] = (tcp.reserved << 9) | int(tcp.flags)
    elif proto == 17 and len(seg) >= 8:
        udp = UDP(seg)
        k["tp_src"], k["tp_dst"] = udp.sport, udp.dport
    elif proto == 132 and len(seg) >= 12:
        sctp = SCTP(seg)
        k["tp_src"], k["tp_dst"] = sctp.sport, sctp.dport
    elif not v6 and proto in (1, 2) and len(seg) >= 8:
        # Type and code are the first two bytes (IGMP too); scapy's ICMP dissector is
        # not used here because it raises on short timestamp messages.
        k["tp_src"], k["tp_dst"] = seg[0], seg[1]
    elif v6 and proto == 58 and len(seg) >= 8:
        icmp = ICMPv6Unknown(seg)
        k["tp_src"], k["tp_dst"] = icmp.type, icmp.code
        if icmp.code == 0 and icmp.type in (135, 136) and len(seg) >= 24:
            nd = (ICMPv6ND_NS if icmp.type == 135 else ICMPv6ND_NA)(seg[:24])
            k["nd_target_hi"], k["nd_target_lo"] = _ip6(nd.tgt)
            k["nd_reserved"] = int.from_bytes(seg[4:8], "big")
            _nd_options(k, seg[24:])


def _nd_options(k: dict[str, int], opts: bytes) -> None:
    """OVS: first SLL/TLL of 8 bytes wins; a second non-zero one voids all ND fields."""
    sll = tll = 0
    while len(opts) >= 8:
        kind, units = opts[0], opts[1]
        if not units or units * 8 > len(opts):
            break
        if units == 1 and kind in (1, 2):
            k["nd_options_type"] = k.get("nd_options_type") or kind
            cls = ICMPv6NDOptSrcLLAddr if kind == 1 else ICMPv6NDOptDstLLAddr
            mac = _mac(cls(opts[:8]).lladdr)
            if (sll if kind == 1 else tll):
                k["nd_target_hi"] = k["nd_target_lo"] = sll = tll = 0
                break
            if kind == 1:
                sll = mac
            else:
                tll = mac
        opts = opts[units * 8:]
    k["arp_sha"], k["arp_tha"] = sll, tll


# ---------------------------------------------------------------------------
# Random packets.
# ---------------------------------------------------------------------------

u8, u16, u32 = st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 2**32 - 1)
macs = st.integers(0, 2**48 - 1).map(lambda v: ":".join(f"{(v >> s) & 255:02x}"
                                                        for s in range(40, -8, -8)))
ip4s = u32.map(lambda v: str(ipaddress.IPv4Address(v)))
ip6s = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
payloads = st.binary(max_size=24)


@st.composite
def l4_v4(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "igmp", "other"]))
    if kind == "tcp":
        opts = [("NOP", None)] * draw(st.integers(0, 8))
        seg = TCP(sport=draw(u16), dport=draw(u16), flags=draw(st.integers(0, 511)),
                  reserved=draw(st.integers(0, 7)), options=opts)
        return 6, raw(seg) + draw(payloads)
    if kind == "udp":
        return 17, raw(UDP(sport=draw(u16), dport=draw(u16)) / draw(payloads))
    if kind == "sctp":
        return 132, raw(SCTP(sport=draw(u16), dport=draw(u16), tag=draw(u32)))
    if kind == "icmp":
        return 1, raw(ICMP(type=draw(u8), code=draw(u8)) / draw(payloads))
    if kind == "igmp":
        return 2, bytes([draw(u8), draw(u8)]) + bytes(6) + draw(payloads)
    return draw(st.sampled_from([0, 4, 47, 50, 89, 253])), draw(payloads)


@st.composite
def ipv4(draw):
    proto, seg = draw(l4_v4())
    frag = draw(st.sampled_from([0, 0, 0, 1, 185]))
    opts = [IPOption_NOP()] * draw(st.sampled_from([0, 0, 1, 4, 7]))
    ip = IP(src=draw(ip4s), dst=draw(ip4s), tos=draw(u8), ttl=draw(u8), id=draw(u16),
            flags=draw(st.integers(0, 7)), frag=frag, proto=proto, options=opts)
    return 0x0800, raw(ip / seg)


@st.composite
def l4_v6(draw):
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "nd", "nd", "other"]))
    if kind in ("tcp", "udp", "sctp"):
        return draw(l4_v4().filter(lambda x: x[0] in (6, 17, 132)))
    if kind == "icmp":
        return 58, raw(ICMPv6EchoRequest(id=draw(u16), seq=draw(u16)) / draw(payloads))
    if kind == "nd":
        ns = draw(st.booleans())
        code = draw(st.sampled_from([0, 0, 0, 1]))
        msg = (ICMPv6ND_NS(tgt=draw(ip6s), code=code) if ns else
               ICMPv6ND_NA(tgt=draw(ip6s), code=code, R=draw(st.integers(0, 1))))
        opts = draw(st.lists(st.sampled_from(["sll", "tll", "mtu"]), max_size=3))
        for o in opts:
            if o == "sll":
                msg = msg / ICMPv6NDOptSrcLLAddr(lladdr=draw(macs))
            elif o == "tll":
                msg = msg / ICMPv6NDOptDstLLAddr(lladdr=draw(macs))
            else:
                msg = msg / ICMPv6NDOptMTU(mtu=draw(u32))
        return 58, raw(msg)
    return draw(st.sampled_from([59, 4, 50, 253])), draw(payloads)


@st.composite
def ipv6(draw):
    proto, seg = draw(l4_v6())
    chain = draw(st.lists(st.sampled_from(["hop", "rt", "dst", "frag", "ah"]), max_size=3))
    # Build the chain back to front so each header names the one after it.
    for kind in reversed(chain):
        if kind == "hop":
            hdr = IPv6ExtHdrHopByHop(nh=proto)
        elif kind == "dst":
            hdr = IPv6ExtHdrDestOpt(nh=proto)
        elif kind == "rt":
            hdr = IPv6ExtHdrRouting(nh=proto, addresses=[draw(ip6s)] * draw(st.integers(0, 2)))
        elif kind == "ah":
            hdr = AH(nh=proto, payloadlen=2, spi=draw(u32), seq=draw(u32), icv=bytes(4))
        else:
            hdr = IPv6ExtHdrFragment(nh=proto, offset=draw(st.sampled_from([0, 0, 3])),
                                     m=draw(st.integers(0, 1)), id=draw(u32))
        seg = raw(hdr) + seg
        proto = {"hop": 0, "rt": 43, "dst": 60, "frag": 44, "ah": 51}[kind]
    ip6 = IPv6(src=draw(ip6s), dst=draw(ip6s), tc=draw(u8), fl=draw(st.integers(0, 2**20 - 1)),
               hlim=draw(u8), nh=proto, plen=len(seg))
    return 0x86DD, raw(ip6) + seg


@st.composite
def arp(draw):
    a = ARP(op=draw(st.sampled_from([1, 2, 3, 4, 0x1FF])), hwsrc=draw(macs), hwdst=draw(macs),
            psrc=draw(ip4s), pdst=draw(ip4s),
            hwtype=draw(st.sampled_from([1, 1, 6])), ptype=draw(st.sampled_from([0x800, 0x800, 0x86DD])))
    return draw(st.sampled_from([0x0806, 0x8035])), raw(a)


@st.composite
def mpls(draw):
    n = draw(st.integers(1, 4))
    stack = b"".join(raw(MPLS(label=draw(st.integers(0, 2**20 - 1)), cos=draw(st.integers(0, 7)),
                              s=int(i == n - 1), ttl=draw(u8))) for i in range(n))
    inner = draw(st.one_of(ipv4(), st.just((0, draw(payloads)))))[1]
    return draw(st.sampled_from([0x8847, 0x8848])), stack + inner


@st.composite
def nsh(draw):
    md1 = draw(st.booleans())
    common = dict(ttl=draw(st.integers(0, 63)), spi=draw(st.integers(0, 2**24 - 1)), si=draw(u8),
                  nextproto=draw(u8), oam=draw(st.integers(0, 1)), unused1=draw(st.integers(0, 1)))
    if md1:
        hdr = NSH(mdtype=1, context_header=draw(st.binary(min_size=16, max_size=16)), **common)
    else:
        hdr = NSH(mdtype=2, **common)
    return 0x894F, raw(hdr) + draw(payloads)


@st.composite
def other_l3(draw):
    etype = draw(st.integers(0x600, 0xFFFF).filter(
        lambda t: t not in (0x0800, 0x86DD, 0x0806, 0x8035, 0x8847, 0x8848, 0x894F, 0x8100, 0x88A8)))
    return etype, draw(payloads)


@st.composite
def llc(draw):
    """An 802.3 length frame body: SNAP with various OUIs/types, or plain LLC."""
    if draw(st.booleans()):
        oui = draw(st.sampled_from([0, 0, 0, 0x00000C]))
        inner_type, inner = draw(st.one_of(ipv4(), other_l3(), st.just((0x0100, b""))))
        body = raw(LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=oui, code=inner_type)) + inner
    else:
        body = raw(LLC(dsap=draw(u8), ssap=draw(u8), ctrl=draw(u8))) + draw(payloads)
    return len(body), body


L3 = {"ipv4": ipv4(), "ipv6": ipv6(), "arp": arp(), "mpls": mpls(), "nsh": nsh(),
      "other": other_l3(), "llc": llc()}


@st.composite
def frames(draw, kinds=tuple(L3)):
    etype, body = draw(st.sampled_from(kinds).flatmap(lambda k: L3[k]))
    tags = draw(st.sampled_from([0, 0, 0, 1, 2]))
    tpids = [draw(st.sampled_from([0x8100, 0x88A8]))] + [0x8100] * (tags - 1)
    types = tpids[:tags] + [etype]
    hdr = raw(Ether(dst=draw(macs), src=draw(macs), type=types[0]))
    for i in range(tags):
        hdr += raw(Dot1Q(prio=draw(st.integers(0, 7)), dei=draw(st.integers(0, 1)),
                         vlan=draw(st.integers(0, 4095)), type=types[i + 1]))
    pad = bytes(draw(st.sampled_from([0, 0, 0, 5])))
    return hdr + body + pad


def check_rows(frames_: list[bytes], parsed, batch) -> None:
    for i, frame in enumerate(frames_):
        want, offs = reference(frame)
        got = {s: int(parsed.keys[SLOT_INDEX[s], i]) for s in SLOTS}
        assert ERROR_REASONS[parsed.error[i]] == "ok", (frame.hex(), ERROR_REASONS[parsed.error[i]])
        diff = {s: (hex(got[s]), hex(want[s])) for s in SLOTS if got[s] != want[s]}
        assert not diff, (frame.hex(), diff)
        s = int(batch.start[i])
        rel = tuple(int(a[i]) - s if a[i] >= 0 else -1
                    for a in (parsed.l2_5, parsed.l3, parsed.l4))
        assert rel == offs, (frame.hex(), rel, offs)


# ---------------------------------------------------------------------------
# Tests.
# ---------------------------------------------------------------------------

# 150 single frames: test_mixed_batch_matches_reference checks the same rows against the
# same reference, 60 batches of up to 40 such frames.
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(frames())
def test_single_packet_matches_reference(frame):
    batch = Batch.from_packets([frame], in_port=PORT)
    check_rows([frame], parse(batch), batch)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames(), min_size=1, max_size=40))
def test_mixed_batch_matches_reference(frames_):
    batch = Batch.from_packets(frames_, in_port=PORT)
    check_rows(frames_, parse(batch), batch)


@pytest.mark.parametrize("kind", list(L3))
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_prefix_parses_or_has_reason(kind, data):
    """Every prefix of a valid frame of each type: no exception, and either the
    reference decode of that prefix or an error reason."""
    frame = data.draw(frames(kinds=(kind,)))
    prefixes = [frame[:n] for n in range(len(frame) + 1)]
    batch = Batch.from_packets(prefixes, in_port=PORT)
    parsed = parse(batch)
    full_ok = parsed.error[-1] == 0
    assert full_ok
    for i, pre in enumerate(prefixes):
        if parsed.error[i]:
            continue
        want, _ = reference(pre)
        got = {s: int(parsed.keys[SLOT_INDEX[s], i]) for s in SLOTS}
        assert got == want, (pre.hex(), {s: (got[s], want[s]) for s in SLOTS if got[s] != want[s]})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(frames(), min_size=1, max_size=10), st.integers(0, 70))
def test_any_start_and_tight_capacity(frames_, headroom):
    """Packets at odd starts, with no headroom or tailroom, parse the same."""
    base = Batch.from_packets(frames_, in_port=PORT)
    tight = Batch.from_packets(frames_, in_port=PORT, headroom=headroom)
    width = headroom + max(len(f) for f in frames_)
    tight = Batch(np.ascontiguousarray(tight.data[:, :width]), tight.start, tight.length,
                  tight.in_port)
    a, b = parse(base), parse(tight)
    assert (a.keys == b.keys).all() and (a.error == b.error).all()
    for x, y in ((a.l2_5, b.l2_5), (a.l3, b.l3), (a.l4, b.l4)):
        assert (np.where(x >= 0, x - base.start, -1) == np.where(y >= 0, y - tight.start, -1)).all()


# -- fixed cases for semantics the generators do not reach --------------------

def one(frame: bytes):
    p = parse(Batch.from_packets([frame], in_port=PORT))
    return {s: int(p.keys[SLOT_INDEX[s], 0]) for s in SLOTS}, ERROR_REASONS[p.error[0]], p


def test_qinq_inner_88a8_and_third_tag():
    f = raw(Ether(type=0x8100) / Dot1Q(vlan=5, type=0x88A8) / Dot1Q(vlan=6, type=0x8100)
            / Dot1Q(vlan=7, type=0x0800) / IP() / UDP())
    k, err, _ = one(f)
    assert err == "ok"
    assert (k["vlan_tpid"], k["vlan_tci"], k["vlan_tpid2"], k["vlan_tci2"]) == (
        0x8100, 0x1005, 0x88A8, 0x1006)
    assert k["eth_type"] == 0x8100 and k["nw_src"] == 0   # a third tag is not parsed


def test_truncated_vlan_keeps_tpid_as_ethertype():
    k, err, _ = one(raw(Ether(type=0x8100))[:14] + b"\x00\x05")
    assert err == "truncated_vlan" and k["eth_type"] == 0x8100 and k["vlan_tci"] == 0


def test_short_frames():
    for n in range(14):
        k, err, p = one(bytes(n))
        assert err == "truncated_eth" and k["in_port"] == PORT and p.l3[0] == -1
        assert sum(v for s, v in k.items() if s != "in_port") == 0


def test_ipv4_bad_headers():
    good = raw(Ether() / IP(src="1.2.3.4") / UDP(sport=1, dport=2))
    ihl3 = bytearray(good)
    ihl3[14] = 0x43
    k, err, _ = one(bytes(ihl3))
    assert err == "bad_ipv4_ihl" and k["nw_src"] == 0 and k["eth_type"] == 0x800
    short_total = bytearray(good)
    short_total[16:18] = (19).to_bytes(2, "big")
    assert one(bytes(short_total))[1] == "bad_ipv4_total_length"
    long_total = bytearray(good)
    long_total[16:18] = (200).to_bytes(2, "big")
    assert one(bytes(long_total))[1] == "truncated_ipv4"


def test_tcp_bad_offset_and_truncation():
    f = bytearray(raw(Ether() / IP() / TCP(sport=5, dport=6)))
    f[14 + 20 + 12] = 0x40
    k, err, _ = one(bytes(f))
    assert err == "bad_tcp_offset" and k["tp_src"] == 0 and k["nw_proto"] == 6
    k, err, p = one(raw(Ether() / IP(proto=6) / (b"\x00" * 10)))
    assert err == "truncated_tcp" and p.l4[0] - p.l3[0] == 20


def test_later_fragment_has_no_l4():
    k, err, p = one(raw(Ether() / IP(frag=100, proto=17) / UDP(sport=9, dport=9)))
    assert err == "ok" and k["nw_frag"] == 3 and k["tp_src"] == 0 and p.l4[0] == -1
    k, err, p = one(raw(Ether() / IPv6() / IPv6ExtHdrFragment(offset=8, nh=17) / UDP()))
    assert err == "ok" and k["nw_frag"] == 3 and k["nw_proto"] == 44 and p.l4[0] == -1


def test_ipv6_bad_extension_header():
    f = raw(Ether() / IPv6(nh=0, plen=8) / IPv6ExtHdrHopByHop(nh=17, len=3))
    k, err, _ = one(f[:14 + 48])
    assert err == "bad_ipv6_ext_header" and k["nw_proto"] == 0 and k["ipv6_dst_lo"] == 1


def test_nd_duplicate_sll_voids_nd_fields():
    f = raw(Ether() / IPv6() / ICMPv6ND_NS(tgt="fe80::1")
            / ICMPv6NDOptSrcLLAddr(lladdr="00:00:00:00:00:01")
            / ICMPv6NDOptSrcLLAddr(lladdr="00:00:00:00:00:02"))
    k, err, _ = one(f)
    assert err == "ok" and k["tp_src"] == 135
    assert k["nd_target_lo"] == k["arp_sha"] == 0
    assert k["nd_options_type"] == 1       # OVS keeps the first option's type


def test_nd_reserved_and_options_type():
    na = raw(Ether() / IPv6() / ICMPv6ND_NA(tgt="fe80::1", R=1, S=1, O=0)
             / ICMPv6NDOptDstLLAddr(lladdr="00:00:00:00:00:01"))
    k, err, _ = one(na)
    assert err == "ok" and k["nd_reserved"] == 0xC0000000 and k["nd_options_type"] == 2
    k, err, _ = one(raw(Ether() / IPv6() / ICMPv6ND_NS(tgt="fe80::1")))
    assert err == "ok" and k["nd_reserved"] == 0 and k["nd_options_type"] == 0


def test_nd_zero_length_option():
    f = bytearray(raw(Ether() / IPv6() / ICMPv6ND_NA(tgt="fe80::1")
                      / ICMPv6NDOptDstLLAddr(lladdr="00:00:00:00:00:01")))
    f[-7] = 0
    assert one(bytes(f))[1] == "bad_nd_option"


def test_mpls_deep_stack_and_truncation():
    stack = b"".join(raw(MPLS(label=i, s=int(i == 5), ttl=i)) for i in range(6))
    k, err, p = one(raw(Ether(type=0x8847)) + stack)
    assert err == "ok" and k["mpls_lse2"] == (2 << 12) | 2 and p.l3[0] - p.l2_5[0] == 24
    k, err, p = one(raw(Ether(type=0x8847)) + stack[:10])
    assert err == "truncated_mpls" and k["mpls_lse1"] == (1 << 12) | 1


def test_nsh_errors():
    good = raw(Ether() / NSH(mdtype=1, context_header=bytes(16)))
    assert one(good)[1] == "ok"
    assert one(good[:30])[1] == "truncated_nsh"
    bad = bytearray(good)
    bad[14] |= 0x40
    assert one(bytes(bad))[1] == "bad_nsh"


def test_parsed_field_helper():
    p = parse(Batch.from_packets([raw(Ether() / Dot1Q(vlan=100, prio=5) / IP() / TCP(dport=80))],
                                 in_port=PORT))
    assert p.field("vlan_vid")[0] == 0x1000 | 100
    assert p.field("dl_vlan")[0] == 100 and p.field("vlan_pcp")[0] == 5
    assert p.field("tcp_dst")[0] == 80
    with pytest.raises(ValueError):
        p.field("ipv6_src")


def test_empty_batch():
    p = parse(Batch.empty())
    assert p.keys.shape == (len(SLOTS), 0) and len(p.error) == 0
