"""ND and ICMP rewrites (an NS turned into an NA in flows; ICMP type/code) vs real OVS 3.1: datapath actions and the bytes sent."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import (
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import Ether
from scapy.packet import Raw, raw

from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.ovs.dummy import DummyOVS, require_ovs
from sbnet.ovs.trace import parse_datapath_actions
from tests.compiler.scenario import checksums_valid

pytestmark = pytest.mark.ovs

VM, TARGET = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"
# An NS for fd00::2 answered back out of its port as OVN-less flows can: the second table
# is needed because OpenFlow checks nd_tll's prerequisite (an NA) against the match.
RESPONDER = """\
table=0,priority=100,icmp6,icmpv6_type=135,icmpv6_code=0,nw_ttl=255,nd_target=fd00::2,\
actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:fa:16:3e:00:00:02->eth_src,\
move:NXM_NX_IPV6_SRC[]->NXM_NX_IPV6_DST[],set_field:fd00::2->ipv6_src,\
set_field:136->icmpv6_type,set_field:{flags}->nd_reserved,set_field:2->nd_options_type,\
resubmit(,1)
table=1,priority=100,icmp6,icmpv6_type=136,actions=move:NXM_OF_ETH_SRC[]->NXM_NX_ND_TLL[],\
IN_PORT
table=0,priority=90,icmp6,icmpv6_type=128,actions=set_field:129->icmpv6_type,IN_PORT
table=0,priority=90,icmp,icmp_type=8,actions=set_field:0->icmp_type,set_field:3->icmp_code,IN_PORT
"""


def ns(**kw) -> Ether:
    opts = kw.pop("opts", [ICMPv6NDOptSrcLLAddr(lladdr=VM)])
    pkt = (Ether(src=VM, dst="33:33:ff:00:00:02")
           / IPv6(src=kw.pop("src", "fd00::1"), dst="ff02::1:ff00:2", hlim=255)
           / ICMPv6ND_NS(tgt="fd00::2", **kw))
    for o in opts:
        pkt = pkt / o
    return pkt


def corrupt(pkt: Ether) -> bytes:
    b = bytearray(raw(pkt))
    b[14 + 40 + 2] ^= 0x55          # the ICMPv6 checksum
    return bytes(b)


PACKETS = {
    "ns": raw(ns()),
    "ns-no-sll": raw(ns(opts=[])),
    "ns-mtu-then-sll": raw(ns(opts=[ICMPv6NDOptMTU(), ICMPv6NDOptSrcLLAddr(lladdr=VM)])),
    "ns-bad-checksum": corrupt(ns()),
    "ns-with-trailer": raw(ns()) + b"\x00" * 6,
    "echo6": raw(Ether(src=VM, dst=TARGET) / IPv6(src="fd00::1", dst="fd00::2")
                 / ICMPv6EchoRequest(id=7, seq=1, data=b"abc")),
    "echo4": raw(Ether(src=VM, dst=TARGET) / IP(src="10.0.0.1", dst="10.0.0.2")
                 / ICMP(type=8, id=7, seq=1) / Raw(b"abcd")),
}


@pytest.fixture(scope="module")
def both():
    require_ovs()
    with DummyOVS(2) as ovs:
        yield ovs


@pytest.mark.parametrize("flags", [0x60000000, 0xE0000000])
@pytest.mark.parametrize("name", sorted(PACKETS))
def test_same_actions_and_same_bytes_as_ovs(both, name, flags):
    ovs, text = both, RESPONDER.format(flags=flags)
    ovs.replace_flows(text)
    sw = Switch()
    for p in (1, 2):
        sw.add_port(p)
    sw.load(text)
    pkt = PACKETS[name]
    theirs = parse_datapath_actions(ovs.trace(1, pkt).datapath_actions, ovs.dpif_port_map())
    ours = sw.trace(1, pkt)
    assert odp.canonical(ours.actions) == theirs, ours.text
    ovs.capture(1)
    before = len(ovs.sent(1))
    ovs.receive(1, pkt)
    sent_ovs = ovs.sent(1, expect=before + 1)[before:]
    sent_ours = [b.packet(i) for port, b in sw.process(Batch.from_packets([pkt], 1))
                 for i in range(len(b)) if port == 1]
    assert sent_ours == sent_ovs


def test_the_answer_is_a_valid_neighbour_advertisement():
    text = RESPONDER.format(flags=0xE0000000)
    sw = Switch()
    sw.add_port(1)
    sw.load(text)
    ((port, out),) = sw.process(Batch.from_packets([PACKETS["ns"]], 1))
    na = Ether(out.packet(0))
    assert port == 1 and na.dst == VM and na.src == TARGET
    assert na[IPv6].src == "fd00::2" and na[IPv6].dst == "fd00::1" and na[IPv6].hlim == 255
    adv = na[ICMPv6ND_NA]
    assert (adv.R, adv.S, adv.O, adv.tgt) == (1, 1, 1, "fd00::2")
    assert na[ICMPv6NDOptDstLLAddr].lladdr == TARGET
    assert checksums_valid(out.packet(0))                   # checksum recomputed right
