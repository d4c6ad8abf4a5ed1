"""Parser tests on ofproto/trace text captured from OVS 3.1 (no daemon needed)."""

import pytest

from sbnet.flows import fields as F
from sbnet.ovs.dummy import TraceResult
from sbnet.ovs.trace import (INNER_VLAN, TraceParseError, megaflow_slot_masks,
                             megaflow_slot_values, parse_datapath_actions, parse_megaflow)

PM = {1: 1, 2: 2, 3: 3, 4: 4, 100: 65534}
MAC = F.lookup("eth_src")


def ip(text):
    return F.parse_value(F.lookup("ip_src"), text)[0]


def ip6(text):
    return F.parse_value(F.lookup("ipv6_src"), text)[0]


@pytest.mark.parametrize("text, expected", [
    ("drop", []),
    ("2,3", [("output", 2), ("output", 3)]),
    ("4,100,2,3", [("output", 4), ("output", 65534), ("output", 2), ("output", 3)]),
    ("set(eth(src=00:00:00:00:00:aa,dst=00:00:00:00:00:bb)),2",
     [("set", "eth", (("eth_dst", 0xbb), ("eth_src", 0xaa))), ("output", 2)]),
    ("set(ipv4(src=10.0.0.9,dst=10.0.0.1)),2",
     [("set", "ipv4", (("ip_dst", ip("10.0.0.1")), ("ip_src", ip("10.0.0.9")))), ("output", 2)]),
    ("set(ipv4(src=10.1.0.0/255.255.0.0)),2",
     [("set", "ipv4", (("ip_src", ip("10.1.0.0")),)), ("output", 2)]),
    ("set(ipv4(tos=0x10/0xfc)),2", [("set", "ipv4", (("nw_tos", 0x10),)), ("output", 2)]),
    ("set(ipv4(ttl=63)),2", [("set", "ipv4", (("ip_ttl", 63),)), ("output", 2)]),
    ("set(tcp(src=99,dst=80)),2", [("set", "tcp", (("tcp_dst", 80), ("tcp_src", 99))), ("output", 2)]),
    ("set(tcp(dst=256/0xff00)),2", [("set", "tcp", (("tcp_dst", 256),)), ("output", 2)]),
    ("set(udp(dst=80)),2", [("set", "udp", (("udp_dst", 80),)), ("output", 2)]),
    ("set(ipv6(src=2001:db8::9,label=0x12345,hlimit=63)),2",
     [("set", "ipv6", (("ip_ttl", 63), ("ipv6_label", 0x12345), ("ipv6_src", ip6("2001:db8::9")))),
      ("output", 2)]),
    ("set(ipv6(dst=2001:db8::9,tclass=0x8/0xfc)),2",
     [("set", "ipv6", (("ipv6_dst", ip6("2001:db8::9")), ("nw_tos", 8))), ("output", 2)]),
    ("set(arp(sip=10.9.9.9,tip=10.0.0.7,op=2,sha=00:00:00:00:00:cc,tha=00:00:00:00:00:dd)),2",
     [("set", "arp", (("arp_op", 2), ("arp_sha", 0xcc), ("arp_spa", ip("10.9.9.9")),
                      ("arp_tha", 0xdd), ("arp_tpa", ip("10.0.0.7")))), ("output", 2)]),
    ("set(skb_mark(0x5)),2", [("set", "skb_mark", (("pkt_mark", 5),)), ("output", 2)]),
    ("push_vlan(vid=100,pcp=5),2", [("push_vlan", 0x8100, 0x1000 | 100 | 5 << 13), ("output", 2)]),
    ("push_vlan(tpid=0x88a8,vid=200,pcp=0),push_vlan(vid=300,pcp=0),2",
     [("push_vlan", 0x88a8, 0x1000 | 200), ("push_vlan", 0x8100, 0x1000 | 300), ("output", 2)]),
    ("pop_vlan,push_vlan(vid=30,pcp=2),2",
     [("pop_vlan",), ("push_vlan", 0x8100, 0x1000 | 30 | 2 << 13), ("output", 2)]),
    ("push_mpls(label=100,tc=3,ttl=9,bos=1,eth_type=0x8847),2",
     [("push_mpls", 100 << 12 | 3 << 9 | 1 << 8 | 9, 0x8847), ("output", 2)]),
    ("pop_mpls(eth_type=0x800),2", [("pop_mpls", 0x800), ("output", 2)]),
    ("set(mpls(label=77,tc=0,ttl=63,bos=1)),2",
     [("set", "mpls", (("mpls_label", 77), ("mpls_tc", 0), ("mpls_ttl", 63))), ("output", 2)]),
    ("meter(0),2", [("meter", 0), ("output", 2)]),
    ("hash(sym_l4(0)),recirc(0x3)", [("raw", "hash(sym_l4(0))"), ("recirc", 3)]),
    ("ct(commit,zone=5),2", [("raw", "ct(commit,zone=5)"), ("output", 2)]),
    ("userspace(pid=0,controller(reason=1,dont_send=0,continuation=0,recirc_id=1,"
     "rule_cookie=0,controller_id=0,max_len=65535)),2", [("userspace", "controller"), ("output", 2)]),
])
def test_parse_datapath_actions(text, expected):
    assert parse_datapath_actions(text, PM) == expected


def test_masked_set_with_masks():
    got = parse_datapath_actions("set(ipv4(src=10.1.0.0/255.255.0.0,tos=0x3/0x3))", PM,
                                 with_masks=True)
    assert got == [("set", "ipv4", (("ip_src", ip("10.1.0.0"), 0xFFFF0000), ("nw_tos", 3, 3)))]


@pytest.mark.parametrize("text", [
    "7", "frobnicate(1)", "set(ipv4(proto=6))", "set(nosuch(x=1))", "push_vlan(vid=1)",
    "set(eth(src=00:00:00:00:00:01)", "",
])
def test_unparseable_actions_raise(text):
    with pytest.raises(TraceParseError):
        parse_datapath_actions(text, PM)


def test_parse_megaflow_basic():
    mf = parse_megaflow("recirc_id=0,eth,tcp,in_port=1,dl_src=00:00:00:00:00:00/ff:ff:ff:00:00:00,"
                        "nw_src=10.0.0.0/16,nw_dst=10.0.0.0/255.0.255.0,nw_frag=no,"
                        "tp_src=0x0/0xfff0,tp_dst=2")
    assert mf == {
        "recirc_id": (0, 0xFFFFFFFF), "eth_type": (0x800, 0xFFFF), "ip_proto": (6, 0xFF),
        "in_port": (1, 0xFFFFFFFF), "eth_src": (0, 0xFFFFFF000000),
        "ip_src": (ip("10.0.0.0"), 0xFFFF0000), "ip_dst": (ip("10.0.0.0"), 0xFF00FF00),
        "ip_frag": (0, 1), "tcp_src": (0, 0xFFF0), "tcp_dst": (2, 0xFFFF),
    }
    masks = megaflow_slot_masks(mf)
    assert masks["nw_src"] == 0xFFFF0000 and masks["tp_src"] == 0xFFF0
    assert masks["nw_frag"] == 1 and "eth_dst" not in masks


def test_parse_megaflow_vlans_and_aliases():
    mf = parse_megaflow("recirc_id=0,eth,ip,in_port=1,dl_vlan=20,dl_vlan_pcp=0,dl_vlan1=10,"
                        "dl_vlan_pcp1=0,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=first")
    assert mf["vlan_tci"] == (0x1000 | 20, 0xFFFF)
    assert mf[INNER_VLAN] == (0x1000 | 10, 0xFFFF)
    assert mf["nw_tos"] == (0, 0xFC) and mf["ip_ecn"] == (0, 3) and mf["ip_ttl"] == (64, 0xFF)
    assert mf["ip_frag"] == (1, 3)
    masks = megaflow_slot_masks(mf)
    assert masks["vlan_tci"] == 0xFFFF and masks["vlan_tci2"] == 0xFFFF
    assert masks["nw_tos"] == 0xFF
    assert parse_megaflow("eth,ip,vlan_tci=0x1000/0x1000")["vlan_tci"] == (0x1000, 0x1000)
    assert parse_megaflow("eth,ip,dl_vlan=10")["vlan_tci"] == (0x100A, 0x1FFF)


def test_parse_megaflow_icmp6_nd_ct_and_marks():
    mf = parse_megaflow("pkt_mark=0/0xff,recirc_id=0x1,ct_state=+new+trk,ct_mark=0,eth,icmp6,"
                        "in_port=1,nw_frag=no,icmp_type=0x87/0xff,nd_target=2001:db8::2,"
                        "nd_sll=00:00:00:00:00:01,ipv6_src=2001:db8::/32")
    assert mf["icmpv6_type"] == (135, 0xFF)
    assert mf["ct_state"] == (0x21, 0x21)
    assert mf["pkt_mark"] == (0, 0xFF) and mf["ct_mark"] == (0, 0xFFFFFFFF)
    assert mf["ipv6_src"] == (ip6("2001:db8::"), ((1 << 32) - 1) << 96)
    masks = megaflow_slot_masks(mf)
    assert masks["ipv6_src_hi"] == 0xFFFFFFFF00000000 and "ipv6_src_lo" not in masks
    assert masks["arp_sha"] == 0xFFFFFFFFFFFF       # nd_sll shares the ARP SHA slot
    assert parse_megaflow("eth,tcp,tcp_flags=+syn-ack")["tcp_flags"] == (0x2, 0x12)
    assert parse_megaflow("eth,icmp,icmp_type=0x8/0xff")["icmp_type"] == (8, 0xFF)


def test_megaflow_slot_values():
    vals = megaflow_slot_values(parse_megaflow("eth,ip,dl_vlan=10,dl_vlan_pcp=2,nw_tos=0x20"))
    assert vals["vlan_tci"] == 0x1000 | 10 | 2 << 13
    assert vals["nw_tos"] == 0x20 and vals["eth_type"] == 0x800


@pytest.mark.parametrize("text", ["eth,foo=1", "eth,bogus", "eth,ip,tp_dst=2", "packet_type=(1,0x800)"])
def test_unparseable_megaflow_raises(text):
    with pytest.raises(TraceParseError):
        parse_megaflow(text)


RECIRC_TRACE = """\
Flow: tcp,in_port=1,vlan_tci=0x0000,dl_src=00:00:00:00:00:01,dl_dst=00:00:00:00:00:02,nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=1,tp_dst=2,tcp_flags=syn

bridge("br0")
-------------
 0. ip, priority 32768
    ct(table=3,zone=5)
    drop

Final flow: unchanged
Megaflow: recirc_id=0,eth,ip,in_port=1,nw_frag=no
Datapath actions: ct(zone=5),recirc(0x1)

===============================================================================
recirc(0x1) - resume conntrack with default ct_state=trk|new (use --ct-next to customize)
===============================================================================

Flow: recirc_id=0x1,ct_state=new|trk,ct_zone=5,eth,tcp,in_port=1,vlan_tci=0x0000,dl_src=00:00:00:00:00:01,dl_dst=00:00:00:00:00:02,nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_tos=0,nw_ecn=0,nw_ttl=64,nw_frag=no,tp_src=1,tp_dst=2,tcp_flags=syn

bridge("br0")
-------------
    thaw
        Resuming from table 3
 3. priority 32768
    output:2

Final flow: unchanged
Megaflow: recirc_id=0x1,eth,ip,in_port=1,nw_frag=no
Datapath actions: 2
"""


def test_trace_result_passes():
    r = TraceResult.parse(RECIRC_TRACE)
    assert r.datapath_actions == "ct(zone=5),recirc(0x1)"
    assert r.megaflow == "recirc_id=0,eth,ip,in_port=1,nw_frag=no"
    assert r.flow.startswith("tcp,in_port=1,")
    assert r.passes[1] == ("recirc_id=0x1,eth,ip,in_port=1,nw_frag=no", "2")
    assert parse_datapath_actions(r.passes[1][1], PM) == [("output", 2)]
    ct_flow = parse_megaflow(r.passes[1][0].replace("recirc_id=0x1,", "recirc_id=0x1,ct_state=new|trk,"))
    assert ct_flow["ct_state"] == (0x21, 0xFFFFFFFF)
