"""Each action kind the kernel tier takes, on generated packets: same ports, bytes and counters as the reference switch."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.switch import Switch

from .util import attach_ports, compare, run_reference

MACS = ["00:00:00:00:00:01", "02:00:00:00:00:02", "0a:00:00:00:00:03"]
IPS = ["10.0.0.1", "10.0.0.2", "192.168.7.9"]
IP6S = ["2001:db8::1", "2001:db8::2", "fe80::7"]


@st.composite
def frames(draw):
    """An Ethernet frame: TCP/UDP/ICMP over IPv4 or IPv6, or ARP; tagged or not; any TTL and TOS."""
    kind = draw(st.sampled_from(["tcp", "udp", "icmp", "tcp6", "udp6", "arp", "udp0"]))
    eth = Ether(src=draw(st.sampled_from(MACS)), dst=draw(st.sampled_from(MACS)))
    payload = draw(st.binary(max_size=64))
    sport, dport = draw(st.integers(1, 65535)), draw(st.sampled_from([53, 80, 443, 4789]))
    if kind in ("tcp6", "udp6"):
        l3 = IPv6(src=draw(st.sampled_from(IP6S)), dst=draw(st.sampled_from(IP6S)),
                  hlim=draw(st.integers(1, 255)), tc=draw(st.integers(0, 255)),
                  fl=draw(st.integers(0, 0xFFFFF)))
        l4 = TCP(sport=sport, dport=dport, flags="A") if kind == "tcp6" else UDP(sport=sport, dport=dport)
        pkt = l3 / l4 / payload
    elif kind == "arp":
        pkt = ARP(op=draw(st.sampled_from([1, 2])), psrc=draw(st.sampled_from(IPS)),
                  pdst=draw(st.sampled_from(IPS)), hwsrc=eth.src)
    else:
        l3 = IP(src=draw(st.sampled_from(IPS)), dst=draw(st.sampled_from(IPS)),
                ttl=draw(st.integers(2, 255)), tos=draw(st.integers(0, 255)),
                flags=draw(st.sampled_from([0, 2])))
        if kind == "tcp":
            l4 = TCP(sport=sport, dport=dport, flags=draw(st.sampled_from(["A", "PA", "S"])))
        elif kind == "icmp":
            l4 = ICMP(type=8)
        else:
            l4 = UDP(sport=sport, dport=dport)
        pkt = l3 / l4 / payload
        if kind == "udp0":            # UDP without a checksum stays without one
            b = bytearray(raw(pkt))
            b[26:28] = b"\0\0"
            pkt = IP(bytes(b))
    if draw(st.booleans()):
        return raw(Ether(src=eth.src, dst=eth.dst) / Dot1Q(vlan=draw(st.sampled_from([10, 20]))) / pkt)
    return raw(eth / pkt)


TABLES = {
    "output": "priority=1 actions=output:2",
    "drop": "priority=1 actions=drop",
    "outputs": "priority=1 actions=output:2,output:3,LOCAL",
    "push_vlan": "priority=2,vlan_tci=0 actions=push_vlan:0x8100,mod_vlan_vid:30,mod_vlan_pcp:5,output:2\n"
                 "priority=1 actions=output:3",
    "pop_vlan": "priority=2,vlan_tci=0x1000/0x1000 actions=pop_vlan,output:2\npriority=1 actions=output:3",
    "mod_vlan": "priority=2,vlan_tci=0x1000/0x1000 actions=mod_vlan_vid:77,output:2,pop_vlan,output:3\n"
                "priority=1 actions=output:3",
    "set_eth": "priority=1 actions=mod_dl_src:02:aa:bb:cc:dd:ee,mod_dl_dst:02:11:22:33:44:55,output:2",
    "set_ipv4": "priority=2,ip actions=mod_nw_src:172.16.0.1,mod_nw_dst:172.16.0.2,output:2\n"
                "priority=1 actions=output:3",
    "set_tos": "priority=3,ip actions=set_field:40->nw_tos,output:2,set_field:3->ip_ecn,output:3\n"
               "priority=3,ipv6 actions=set_field:10->ip_dscp,output:2\n"
               "priority=1 actions=output:3",
    "dec_ttl": "priority=2,ip actions=dec_ttl,output:2\npriority=2,ipv6 actions=dec_ttl,output:3\n"
               "priority=1 actions=output:4",
    "set_ipv6": "priority=2,ipv6 actions=set_field:2001:db8::99->ipv6_src,"
                "set_field:2001:db8:1::5->ipv6_dst,set_field:0x12345->ipv6_label,output:2\n"
                "priority=1 actions=output:3",
    "set_ports": "priority=3,tcp actions=set_field:1111->tcp_src,set_field:2222->tcp_dst,output:2\n"
                 "priority=3,udp actions=set_field:3333->udp_dst,output:2\n"
                 "priority=3,tcp6 actions=set_field:4444->tcp_dst,output:3\n"
                 "priority=3,udp6 actions=set_field:5555->udp_src,output:3\n"
                 "priority=1 actions=output:4",
    "mixed": "priority=3,tcp,tcp_dst=80 actions=mod_nw_dst:10.9.9.9,set_field:8080->tcp_dst,dec_ttl,"
             "push_vlan:0x8100,mod_vlan_vid:5,output:2,pop_vlan,output:3\n"
             "priority=2,udp actions=set_field:7->reg0,resubmit(,1)\n"
             "table=1,priority=1,ip,reg0=7 actions=mod_nw_src:10.1.1.1,output:4\n"
             "priority=1 actions=drop",
}


@pytest.mark.parametrize("kind", sorted(TABLES))
@settings(max_examples=8, deadline=None)
@given(packets=st.lists(st.tuples(st.sampled_from([1, 2]), frames()), min_size=1, max_size=8))
def test_action_kind(tier, kind, packets):
    sw = Switch()
    for p in (1, 2, 3, 4):
        sw.add_port(p)
    sw.load(TABLES[kind])
    ref = run_reference(sw, packets)
    tier.flush()
    attach_ports(tier, sw)
    seen = compare(tier, sw, packets, ref)
    assert seen["kernel"] > 0 or kind == "dec_ttl"     # TTL 1 packets go to the controller
