"""execute() against scapy: random packets and action lists, compared byte for byte."""

from __future__ import annotations

import ipaddress
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.mpls import MPLS
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption
from scapy.layers.inet6 import (ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS,
                                ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr, IPv6,
                                IPv6ExtHdrHopByHop)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.layers.sctp import SCTP, SCTPChunkData
from scapy.packet import Packet, Raw, bind_layers

from sbnet.datapath import checksum as ck
from sbnet.datapath.execute import execute
from sbnet.datapath.odp import (Meter, Output, PopMpls, PopVlan, PushMpls, PushVlan, Recirc,
                                SetFields, Userspace)

from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import parse

VLAN_TPIDS = (0x8100, 0x88A8)
MPLS_TYPES = (0x8847, 0x8848)
for _lower in (Ether, Dot1Q, Dot1AD):  # scapy binds MPLS under Ether/0x8847 only
    for _t in MPLS_TYPES:
        bind_layers(_lower, MPLS, type=_t)

# --- packets -------------------------------------------------------------------------------

KINDS = ("tcp4", "udp4", "udp4_nocsum", "udp4_opts", "frag4", "icmp4", "sctp4", "tcp6", "tcp6_hbh", "udp6", "sctp6",
         "echo6", "ns6", "na6", "arp", "mpls1", "mpls2")

macs = st.integers(0, 2**48 - 1)
ip4s = st.integers(0, 2**32 - 1)
ip6s = st.integers(0, 2**128 - 1)
ports = st.integers(0, 65535)


def mac_text(v: int) -> str:
    return ":".join(f"{(v >> s) & 0xFF:02x}" for s in range(40, -8, -8))


def ip4_text(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


def ip6_text(v: int) -> str:
    return str(ipaddress.IPv6Address(v))


def with_fields(layer: Packet, **fields) -> Packet:
    layer = layer.copy()
    for name, value in fields.items():
        setattr(layer, name, value)
    return layer


@st.composite
def packets(draw, kind: str) -> bytes:
    """One packet of `kind`, with 0, 1 (802.1Q) or 2 (QinQ) VLAN tags."""
    tags = draw(st.integers(0, 2))
    payload = Raw(draw(st.binary(min_size=0, max_size=24)))
    eth = Ether(src=mac_text(draw(macs)), dst=mac_text(draw(macs)))
    if tags == 2:
        eth = eth / Dot1AD(vlan=draw(st.integers(0, 4095))) / Dot1Q(vlan=draw(st.integers(0, 4095)))
    elif tags == 1:
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)), prio=draw(st.integers(0, 7)))
    ip4 = IP(src=ip4_text(draw(ip4s)), dst=ip4_text(draw(ip4s)), tos=draw(st.integers(0, 255)),
             ttl=draw(st.integers(1, 255)), id=draw(ports))
    ip6 = IPv6(src=ip6_text(draw(ip6s)), dst=ip6_text(draw(ip6s)),
               fl=draw(st.integers(0, 2**20 - 1)),
               tc=draw(st.integers(0, 255)), hlim=draw(st.integers(1, 255)))
    sp, dp = draw(ports), draw(ports)
    # scapy reads bytes after an SCTP header that are no whole chunk as padding.
    chunk = SCTPChunkData(data=bytes(payload))
    body = {
        "tcp4": lambda: ip4 / TCP(sport=sp, dport=dp, seq=draw(ip4s)) / payload,
        "udp4": lambda: ip4 / UDP(sport=sp, dport=dp) / payload,
        "udp4_nocsum": lambda: ip4 / UDP(sport=sp, dport=dp, chksum=0) / payload,
        "udp4_opts": lambda: with_fields(ip4, options=[IPOption(b"\x01\x01\x01\x00")])
                             / UDP(sport=sp, dport=dp) / payload,
        # A later fragment: no L4 header, whatever its protocol says.
        "frag4": lambda: with_fields(ip4, proto=17, frag=draw(st.integers(1, 8191))) / payload,
        "icmp4": lambda: ip4 / ICMP(id=sp, seq=dp) / payload,
        "sctp4": lambda: ip4 / SCTP(sport=sp, dport=dp, tag=draw(ip4s)) / chunk,
        "tcp6": lambda: ip6 / TCP(sport=sp, dport=dp) / payload,
        "tcp6_hbh": lambda: ip6 / IPv6ExtHdrHopByHop() / TCP(sport=sp, dport=dp) / payload,
        "udp6": lambda: ip6 / UDP(sport=sp, dport=dp) / payload,
        "sctp6": lambda: ip6 / SCTP(sport=sp, dport=dp) / chunk,
        "echo6": lambda: ip6 / ICMPv6EchoRequest(id=sp, seq=dp) / payload,
        "ns6": lambda: ip6 / ICMPv6ND_NS(tgt=ip6_text(draw(ip6s)))
                       / ICMPv6NDOptSrcLLAddr(lladdr=mac_text(draw(macs))),
        "na6": lambda: ip6 / ICMPv6ND_NA(tgt=ip6_text(draw(ip6s)))
                       / ICMPv6NDOptDstLLAddr(lladdr=mac_text(draw(macs))),
        "arp": lambda: ARP(op=draw(st.integers(1, 2)), hwsrc=mac_text(draw(macs)),
                           psrc=ip4_text(draw(ip4s)), hwdst=mac_text(draw(macs)),
                           pdst=ip4_text(draw(ip4s))),
        "mpls1": lambda: MPLS(label=draw(st.integers(0, 2**20 - 1)), s=1,
                              ttl=draw(st.integers(0, 255)))
                         / ip4 / UDP(sport=sp, dport=dp) / payload,
        "mpls2": lambda: MPLS(label=draw(st.integers(0, 2**20 - 1)), s=0,
                              cos=draw(st.integers(0, 7)))
                         / MPLS(label=draw(st.integers(0, 2**20 - 1)), s=1)
                         / ip4 / UDP(sport=sp, dport=dp) / payload,
    }[kind]()
    if kind.startswith("mpls"):
        # scapy's Ether picks 0x8847 for MPLS only when the last tag says so.
        last = eth.lastlayer() if tags else eth
        last.type = 0x8847
    # Ethernet padding after the IP datagram must not count in L4 checksums.
    return bytes(eth / body) + b"\0" * draw(st.sampled_from((0, 0, 0, 3, 8)))


def offsets(b: bytes) -> tuple[int, int]:
    """(l3, l4) relative to the packet start as the parser reports them; -1 when absent.

    MPLS payloads are not parsed (as in OVS).
    """
    p = Ether(b)
    if MPLS in p:
        return -1, -1
    for cls in (IP, IPv6, ARP):
        if cls in p:
            l3 = len(b) - len(bytes(p[cls]))
            break
    else:
        return -1, -1
    layer = p[cls].payload
    while isinstance(layer, IPv6ExtHdrHopByHop):
        layer = layer.payload
    if cls is ARP or not isinstance(layer, Packet) or isinstance(layer, Raw) \
            or not len(bytes(layer)):
        return l3, -1
    return l3, len(b) - len(bytes(layer))


# --- the oracle ----------------------------------------------------------------------------


def eth_type_pos(b: bytes) -> int:
    pos = 12
    while struct.unpack_from("!H", b, pos)[0] in VLAN_TPIDS:
        pos += 4
    return pos


def refresh_l4(p: Packet) -> None:
    """Make scapy recompute the pseudo-header-covered checksum of the L4 layer."""
    if TCP in p:
        del p[TCP].chksum
    elif UDP in p:
        if p[UDP].chksum != 0:
            del p[UDP].chksum
    else:
        for layer in (ICMPv6EchoRequest, ICMPv6ND_NS, ICMPv6ND_NA):
            if layer in p:
                del p[layer].cksum


def oracle(b: bytes, a) -> bytes:
    """scapy (or plain byte splicing for push/pop) doing what action `a` says."""
    match a:
        case SetFields("eth", fields):
            p = Ether(b)
            f = dict(fields)
            if "eth_src" in f:
                p.src = mac_text(f["eth_src"])
            if "eth_dst" in f:
                p.dst = mac_text(f["eth_dst"])
            return bytes(p)
        case SetFields("ipv4", fields):
            p = Ether(b)
            f = dict(fields)
            ip = p[IP]
            if "ip_src" in f:
                ip.src = ip4_text(f["ip_src"])
            if "ip_dst" in f:
                ip.dst = ip4_text(f["ip_dst"])
            if "nw_tos" in f:
                ip.tos = f["nw_tos"]
            if "ip_ttl" in f:
                ip.ttl = f["ip_ttl"]
            del ip.chksum
            refresh_l4(p)
            return bytes(p)
        case SetFields("ipv6", fields):
            p = Ether(b)
            f = dict(fields)
            ip = p[IPv6]
            if "ipv6_src" in f:
                ip.src = ip6_text(f["ipv6_src"])
            if "ipv6_dst" in f:
                ip.dst = ip6_text(f["ipv6_dst"])
            if "ipv6_label" in f:
                ip.fl = f["ipv6_label"]
            if "nw_tos" in f:
                ip.tc = f["nw_tos"]
            if "ip_ttl" in f:
                ip.hlim = f["ip_ttl"]
            refresh_l4(p)
            return bytes(p)
        case SetFields(("tcp" | "udp" | "sctp") as proto, fields):
            p = Ether(b)
            layer = p[{"tcp": TCP, "udp": UDP, "sctp": SCTP}[proto]]
            f = dict(fields)
            if f"{proto}_src" in f:
                layer.sport = f[f"{proto}_src"]
            if f"{proto}_dst" in f:
                layer.dport = f[f"{proto}_dst"]
            if proto == "sctp":
                del layer.chksum
            else:
                refresh_l4(p)
            return bytes(p)
        case SetFields("arp", fields):
            p = Ether(b)
            f = dict(fields)
            arp = p[ARP]
            for name, attr, fmt in (("arp_op", "op", int), ("arp_sha", "hwsrc", mac_text),
                                    ("arp_spa", "psrc", ip4_text), ("arp_tha", "hwdst", mac_text),
                                    ("arp_tpa", "pdst", ip4_text)):
                if name in f:
                    setattr(arp, attr, fmt(f[name]))
            return bytes(p)
        case SetFields("nd", fields):
            p = Ether(b)
            f = dict(fields)
            nd = p[ICMPv6ND_NS] if ICMPv6ND_NS in p else p[ICMPv6ND_NA]
            if "nd_target" in f:
                nd.tgt = ip6_text(f["nd_target"])
            if "nd_sll" in f and ICMPv6NDOptSrcLLAddr in p:
                p[ICMPv6NDOptSrcLLAddr].lladdr = mac_text(f["nd_sll"])
            if "nd_tll" in f and ICMPv6NDOptDstLLAddr in p:
                p[ICMPv6NDOptDstLLAddr].lladdr = mac_text(f["nd_tll"])
            del nd.cksum
            return bytes(p)
        case SetFields("mpls", fields):
            p = Ether(b)
            f = dict(fields)
            top = p[MPLS]
            if "mpls_label" in f:
                top.label = f["mpls_label"]
            if "mpls_tc" in f:
                top.cos = f["mpls_tc"]
            if "mpls_ttl" in f:
                top.ttl = f["mpls_ttl"]
            return bytes(p)
        case SetFields("skb_mark", _):
            return b
        case PushVlan(tpid, tci):
            return b[:12] + struct.pack("!HH", tpid, tci & 0xEFFF) + b[12:]   # CFI never on the wire
        case PopVlan():
            if struct.unpack_from("!H", b, 12)[0] in VLAN_TPIDS:
                return b[:12] + b[16:]
            return b
        case PushMpls(lse, ethertype):
            pos = eth_type_pos(b)
            return b[:pos] + struct.pack("!HI", ethertype, lse) + b[pos + 2:]
        case PopMpls(ethertype):
            pos = eth_type_pos(b)
            if struct.unpack_from("!H", b, pos)[0] not in MPLS_TYPES:
                return b
            return b[:pos] + struct.pack("!H", ethertype) + b[pos + 6:]
    raise AssertionError(f"oracle lacks {a}")


# --- random action lists -------------------------------------------------------------------


def subset(draw, options: dict[str, st.SearchStrategy]) -> tuple[tuple[str, int], ...]:
    names = draw(st.lists(st.sampled_from(sorted(options)), min_size=1, unique=True))
    return tuple(sorted((n, draw(options[n])) for n in names))


@st.composite
def action_lists(draw, kind: str):
    """A valid action list for packets of `kind`, tracking what the packet is after each step."""
    ip4 = kind in ("tcp4", "udp4", "udp4_nocsum", "udp4_opts", "frag4", "icmp4", "sctp4")
    ip6 = kind in ("tcp6", "tcp6_hbh", "udp6", "sctp6", "echo6", "ns6", "na6")
    labels = {"mpls1": 1, "mpls2": 2}.get(kind, 0)
    ip_visible = ip4 or ip6 or kind == "arp"   # L3 fields are settable (not under MPLS)
    actions = []
    for _ in range(draw(st.integers(1, 7))):
        choices = ["output", "eth", "push_vlan", "pop_vlan", "push_mpls", "skb_mark"]
        if ip_visible and not labels:
            if ip4:
                choices.append("ipv4")
            if ip6:
                choices.append("ipv6")
            if kind == "arp":
                choices.append("arp")
            for proto in ("tcp", "udp", "sctp"):
                if kind.startswith(proto):
                    choices.append(proto)
            if kind in ("ns6", "na6"):
                choices.append("nd")
        if labels:
            choices += ["mpls", "pop_mpls"]
        c = draw(st.sampled_from(choices))
        if c == "output":
            actions.append(Output(draw(st.integers(1, 5))))
        elif c == "eth":
            actions.append(SetFields("eth", subset(draw, {"eth_src": macs, "eth_dst": macs})))
        elif c == "ipv4":
            actions.append(SetFields("ipv4", subset(draw, {
                "ip_src": ip4s, "ip_dst": ip4s, "nw_tos": st.integers(0, 255),
                "ip_ttl": st.integers(0, 255)})))
        elif c == "ipv6":
            actions.append(SetFields("ipv6", subset(draw, {
                "ipv6_src": ip6s, "ipv6_dst": ip6s, "ipv6_label": st.integers(0, 2**20 - 1),
                "nw_tos": st.integers(0, 255), "ip_ttl": st.integers(0, 255)})))
        elif c in ("tcp", "udp", "sctp"):
            actions.append(SetFields(c, subset(draw, {f"{c}_src": ports, f"{c}_dst": ports})))
        elif c == "arp":
            actions.append(SetFields("arp", subset(draw, {
                "arp_op": st.integers(0, 65535), "arp_sha": macs, "arp_spa": ip4s,
                "arp_tha": macs, "arp_tpa": ip4s})))
        elif c == "nd":
            actions.append(SetFields("nd", subset(draw, {
                "nd_target": ip6s, "nd_sll": macs, "nd_tll": macs})))
        elif c == "mpls":
            actions.append(SetFields("mpls", subset(draw, {
                "mpls_label": st.integers(0, 2**20 - 1), "mpls_tc": st.integers(0, 7),
                "mpls_ttl": st.integers(0, 255)})))
        elif c == "skb_mark":
            actions.append(SetFields("skb_mark", (("pkt_mark", draw(ip4s)),)))
        elif c == "push_vlan":
            actions.append(PushVlan(draw(st.sampled_from(VLAN_TPIDS)),
                                    draw(st.integers(0, 0xFFFF))))
        elif c == "pop_vlan":
            actions.append(PopVlan())
        elif c == "push_mpls":
            bos = 0 if labels else 1
            lse = draw(st.integers(0, 2**20 - 1)) << 12 | draw(st.integers(0, 7)) << 9 \
                | bos << 8 | draw(st.integers(0, 255))
            actions.append(PushMpls(lse, draw(st.sampled_from(MPLS_TYPES))))
            labels += 1
        elif c == "pop_mpls":
            labels -= 1
            if labels:
                actions.append(PopMpls(0x8847))
            else:
                # Back to the IP packet that was under the labels: L3 fields become settable.
                actions.append(PopMpls(0x0800 if kind.startswith("mpls") or ip4 else 0x86DD))
                ip4 = ip4 or kind.startswith("mpls")
                ip_visible = ip_visible or kind.startswith("mpls")
        if labels and not kind.startswith("mpls"):
            ip_visible = False
    if not any(isinstance(a, Output) for a in actions):
        actions.append(Output(1))
    return tuple(actions)


# --- running -------------------------------------------------------------------------------


def make_batch(pkts: list[bytes], use_parser: bool = False):
    """A batch and its (l3, l4) offsets, from the parser or worked out with scapy."""
    batch = Batch.from_packets(pkts, 1)
    if use_parser:
        parsed = parse(batch)
        return batch, parsed.l3, parsed.l4
    l3 = np.full(len(pkts), -1, np.int64)
    l4 = np.full(len(pkts), -1, np.int64)
    for i, p in enumerate(pkts):
        a, b = offsets(p)
        if a >= 0:
            l3[i] = batch.start[i] + a
        if b >= 0:
            l4[i] = batch.start[i] + b
    return batch, l3, l4


def expected_outputs(pkts: list[bytes], actions) -> list[tuple[int, list[bytes]]]:
    out = []
    cur = list(pkts)
    for a in actions:
        if isinstance(a, Output):
            out.append((a.port, list(cur)))
        else:
            cur = [oracle(b, a) for b in cur]
    return out


def check(group: list[bytes], others: list[bytes], actions, seed: int = 0,
          use_parser: bool = False) -> None:
    pkts = group + others
    order = np.random.default_rng(seed).permutation(len(pkts))
    shuffled = [pkts[i] for i in order]
    batch, l3, l4 = make_batch(shuffled, use_parser)
    before = batch.data.copy()
    rows = np.flatnonzero(order < len(group))
    got = execute(batch, rows, l3, l4, actions)
    want = expected_outputs([shuffled[r] for r in rows], actions)
    assert [p for p, _ in got] == [p for p, _ in want]
    for (port, out), (_, pk) in zip(got, want):
        assert out.packets() == pk, f"port {port}"
    np.testing.assert_array_equal(batch.data, before)   # the input batch is never written


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    group = draw(st.lists(packets(kind), min_size=1, max_size=5))
    others = draw(st.lists(st.sampled_from(KINDS).flatmap(packets), max_size=3))
    return group, others, draw(action_lists(kind)), draw(st.integers(0, 1000))


# 150 examples: test_random_actions_with_parser_offsets below checks the same cases (and a
# packet of every kind beside them) against the same oracle, 100 more.
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_random_actions_match_scapy(case):
    group, others, actions, seed = case
    check(group, others, actions, seed)


@st.composite
def mixed_cases(draw):
    """A group among one packet of every kind, so the parser sees a mixed batch."""
    group, others, actions, seed = draw(cases())
    return group, others + [draw(packets(k)) for k in KINDS], actions, seed


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_cases())
def test_random_actions_with_parser_offsets(case):
    group, others, actions, seed = case
    check(group, others, actions, seed, use_parser=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(KINDS).flatmap(lambda k: st.lists(packets(k), min_size=1, max_size=4)))
def test_generated_packets_round_trip_through_scapy(pkts):
    # The oracle re-dissects bytes at each step; that must not change them by itself.
    for b in pkts:
        assert bytes(Ether(b)) == b


# --- worked examples -----------------------------------------------------------------------


def tcp4(**ip) -> bytes:
    return bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                 / IP(src="10.0.0.1", dst="10.0.0.2", **ip) / TCP(sport=1000, dport=80)
                 / Raw(b"x" * 6))


def test_output_set_output_gives_each_port_its_bytes():
    pkt = tcp4()
    batch, l3, l4 = make_batch([pkt, pkt])
    acts = (Output(1), SetFields("ipv4", (("ip_src", int(ipaddress.IPv4Address("192.168.1.1"))),)),
            Output(2), SetFields("eth", (("eth_dst", 0x0A0B0C0D0E0F),)), Output(3))
    (p1, b1), (p2, b2), (p3, b3) = execute(batch, np.array([1]), l3, l4, acts)
    assert (p1, p2, p3) == (1, 2, 3)
    assert b1.packets() == [pkt]
    p = Ether(pkt)
    p[IP].src = "192.168.1.1"
    del p[IP].chksum, p[TCP].chksum
    assert b2.packets() == [bytes(p)]
    p.dst = "0a:0b:0c:0d:0e:0f"
    assert b3.packets() == [bytes(p)]
    assert Ether(b3.packet(0))[IP].src == "192.168.1.1"


def test_push_vlan_then_set_finds_the_moved_headers():
    pkt = tcp4(ttl=9)
    batch, l3, l4 = make_batch([pkt])
    acts = (PushVlan(0x8100, 0x1000 | 100), SetFields("ipv4", (("ip_ttl", 3),)),
            SetFields("tcp", (("tcp_dst", 8080),)), Output(7))
    [(port, out)] = execute(batch, np.array([0]), l3, l4, acts)
    p = Ether(out.packet(0))
    assert port == 7 and p[Dot1Q].vlan == 100 and p[IP].ttl == 3 and p[TCP].dport == 8080
    want = Ether(bytes(p))
    del want[IP].chksum, want[TCP].chksum
    assert bytes(want) == out.packet(0)


def test_pop_vlan_pops_outer_tag_only_where_there_is_one():
    eth = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    tagged = bytes(Ether(**eth) / Dot1AD(vlan=5) / Dot1Q(vlan=6) / IP() / UDP())
    plain = bytes(Ether(**eth) / IP() / UDP())
    batch, l3, l4 = make_batch([tagged, plain])
    [(_, out)] = execute(batch, np.array([0, 1]), l3, l4, (PopVlan(), Output(1)))
    assert Ether(out.packet(0))[Dot1Q].vlan == 6 and Dot1AD not in Ether(out.packet(0))
    assert out.packet(1) == plain


def test_pop_mpls_then_set_ipv4_finds_the_payload():
    inner = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / Raw(b"abc")
    eth = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    pkt = bytes(Ether(type=0x8847, **eth) / MPLS(label=77, s=1) / inner)
    batch, l3, l4 = make_batch([pkt])
    assert l3[0] == -1
    acts = (PopMpls(0x0800), SetFields("ipv4", (("ip_dst", 0x01020304),)), Output(1))
    [(_, out)] = execute(batch, np.array([0]), l3, l4, acts)
    want = Ether(bytes(Ether(**eth) / inner))
    want[IP].dst = "1.2.3.4"
    del want[IP].chksum, want[UDP].chksum
    assert out.packet(0) == bytes(want)


def test_empty_actions_drop():
    batch, l3, l4 = make_batch([tcp4()])
    assert execute(batch, np.array([0]), l3, l4, ()) == []


@pytest.mark.parametrize("action", [Meter(1), Recirc(5), Userspace("controller")])
def test_non_edit_actions_refuse(action):
    batch, l3, l4 = make_batch([tcp4()])
    with pytest.raises(NotImplementedError, match=type(action).__name__):
        execute(batch, np.array([0]), l3, l4, (Output(1), action))


def test_many_pushes_past_the_headroom():
    pkt = tcp4()
    batch, l3, l4 = make_batch([pkt])
    acts = tuple(PushVlan(0x8100, 0x1000 | i) for i in range(20)) + (
        SetFields("ipv4", (("ip_ttl", 1),)), Output(1))
    [(_, out)] = execute(batch, np.array([0]), l3, l4, acts)
    got = out.packet(0)
    assert len(got) == len(pkt) + 80
    p = Ether(got)
    assert p[IP].ttl == 1 and p[Dot1Q].vlan == 19


def test_checksum_helpers_agree_with_references():
    raw = bytes(IP(src="1.2.3.4", dst="5.6.7.8") / UDP())[:20]
    zeroed = raw[:10] + b"\0\0" + raw[12:]
    assert ck.internet_checksum(zeroed) == int.from_bytes(raw[10:12], "big")
    assert ck.crc32c_bytes(b"123456789") == 0xE3069283       # RFC 3720 check value
    old = np.array([int.from_bytes(raw[10:12], "big")])
    words = np.frombuffer(raw[12:16], ">u2")[None, :]
    new_words = np.array([[0xC0A8, 0x0101]])
    updated = raw[:10] + b"\0\0" + bytes.fromhex("c0a80101") + raw[16:]
    assert ck.csum_replace(old, words, new_words)[0] == ck.internet_checksum(updated)


def test_ones_sum_over_rows_of_different_lengths():
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (6, 40), dtype=np.uint8)
    start, length = np.array([0, 1, 5, 9, 0, 3]), np.array([40, 39, 7, 0, 1, 30])
    got = ck.ones_sum(data, start, length)
    for i, (s, n) in enumerate(zip(start, length)):
        buf = data[i, s:s + n].tobytes() + b"\0" * (n % 2)
        total = sum(int.from_bytes(buf[j:j + 2], "big") for j in range(0, len(buf), 2))
        while total >> 16:
            total = (total & 0xFFFF) + (total >> 16)
        assert got[i] == total


def test_crc32c_numpy_fallback(monkeypatch):
    monkeypatch.setattr(ck, "_crc32c_lib", None)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (5, 80), dtype=np.uint8)
    start, length = np.array([0, 3, 10, 0, 7]), np.array([80, 20, 0, 1, 50])
    got = ck.crc32c_rows(data, start, length)
    assert list(got) == [crc32c_bitwise(data[i, s:s + n].tobytes())
                         for i, (s, n) in enumerate(zip(start, length))]


def crc32c_bitwise(buf: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in buf:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF
