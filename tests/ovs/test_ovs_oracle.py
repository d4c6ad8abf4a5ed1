"""Real OVS 3.1 on the dummy datapath: load tables, trace scapy packets, check parsed results."""

import os
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Raw, raw

from sbnet.flows import fields as F
from sbnet.ovs import dummy
from sbnet.ovs.dummy import DummyOVS, OVSError
from sbnet.ovs.trace import megaflow_slot_masks, parse_datapath_actions, parse_megaflow

pytestmark = pytest.mark.ovs

SRC, DST = "00:00:00:00:00:01", "00:00:00:00:00:02"


def tcp4(dport=2, ttl=64, **ip):
    return raw(Ether(src=SRC, dst=DST) / IP(src="10.0.0.1", dst="10.0.0.2", ttl=ttl, **ip)
               / TCP(sport=1, dport=dport))


def vlan_tcp(vid=10, pcp=2):
    return raw(Ether(src=SRC, dst=DST) / Dot1Q(vlan=vid, prio=pcp)
               / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))


def qinq_tcp(outer=20, inner=10):
    return raw(Ether(src=SRC, dst=DST, type=0x88A8) / Dot1Q(vlan=outer, type=0x8100)
               / Dot1Q(vlan=inner) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))


def mpls_tcp(label=100, ttl=63):
    lse = (label << 12 | 1 << 8 | ttl).to_bytes(4, "big")
    inner = raw(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2))
    return raw(Ether(src=SRC, dst=DST, type=0x8847) / Raw(lse + inner))


def ip(text):
    return F.parse_value(F.lookup("ip_src"), text)[0]


def actions(sw, flows, packet, in_port=1, groups="", meters=""):
    sw.replace_flows(flows, groups, meters)
    r = sw.trace(in_port, packet)
    return parse_datapath_actions(r.datapath_actions, sw.dpif_port_map())


def test_require_ovs_rule(monkeypatch):
    monkeypatch.setattr(dummy, "ovs_available", lambda: False)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception):
        dummy.require_ovs()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        dummy.require_ovs()


def test_port_map_names_openflow_ports(sw):
    pm = sw.dpif_port_map()
    assert sorted(pm.values()) == [1, 2, 3, 4, 65534]


def test_outputs_and_special_ports(sw):
    assert actions(sw, "actions=output:2,output:3", tcp4()) == [("output", 2), ("output", 3)]
    assert actions(sw, "actions=in_port,output:2", tcp4()) == [("output", 1), ("output", 2)]
    assert actions(sw, "actions=drop", tcp4()) == []
    assert actions(sw, "actions=LOCAL", tcp4()) == [("output", F.OFPP_LOCAL & 0xFFFF)]
    flood = actions(sw, "actions=flood", tcp4())
    assert sorted(flood) == [("output", p) for p in (2, 3, 4, 65534)]
    assert sorted(actions(sw, "actions=all", tcp4())) == sorted(flood)
    assert actions(sw, "actions=controller", tcp4()) == [("userspace", "controller")]


def test_vlan_push_pop_modify(sw):
    assert actions(sw, "actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:2", tcp4()) == [
        ("push_vlan", 0x8100, 0x1000 | 100), ("output", 2)]
    assert actions(sw, "actions=push_vlan:0x8100,mod_vlan_vid:100,mod_vlan_pcp:5,output:2",
                   tcp4()) == [("push_vlan", 0x8100, 0x1000 | 100 | 5 << 13), ("output", 2)]
    assert actions(sw, "vlan_tci=0x1000/0x1000,actions=pop_vlan,output:2", vlan_tcp()) == [
        ("pop_vlan",), ("output", 2)]
    # A VID change on a tagged packet is pop+push, keeping the PCP.
    assert actions(sw, "vlan_tci=0x1000/0x1000,actions=mod_vlan_vid:30,output:2",
                   vlan_tcp()) == [("pop_vlan",), ("push_vlan", 0x8100, 0x1000 | 30 | 2 << 13),
                                   ("output", 2)]


def test_qinq(sw):
    got = actions(sw, "actions=push_vlan:0x88a8,mod_vlan_vid:200,push_vlan:0x8100,"
                      "mod_vlan_vid:300,output:2", tcp4())
    assert got == [("push_vlan", 0x88A8, 0x1000 | 200), ("push_vlan", 0x8100, 0x1000 | 300),
                   ("output", 2)]
    sw.replace_flows("vlan_tci=0x1000/0x1000,actions=pop_vlan,output:2")
    r = sw.trace(1, qinq_tcp())
    assert parse_datapath_actions(r.datapath_actions, sw.dpif_port_map()) == [
        ("pop_vlan",), ("output", 2)]
    mf = parse_megaflow(r.megaflow)     # vlan-limit=2: both tags are parsed
    assert mf["vlan_tci"] == (0x1000 | 20, 0xFFFF) and mf["vlan_tci2"] == (0x1000 | 10, 0xFFFF)


def test_set_fields(sw):
    assert actions(sw, "actions=mod_dl_src:00:00:00:00:00:aa,set_field:00:00:00:00:00:bb->eth_dst,"
                       "output:2", tcp4()) == [
        ("set", "eth", (("eth_dst", 0xBB), ("eth_src", 0xAA))), ("output", 2)]
    assert actions(sw, "ip,actions=set_field:10.0.0.9->ip_src,dec_ttl,output:2", tcp4()) == [
        ("set", "ipv4", (("ip_src", ip("10.0.0.9")), ("ip_ttl", 63))), ("output", 2)]
    assert actions(sw, "ip,actions=mod_nw_tos:16,output:2", tcp4()) == [
        ("set", "ipv4", (("nw_tos", 16),)), ("output", 2)]
    assert actions(sw, "tcp,actions=set_field:80->tcp_dst,mod_tp_src:99,output:2", tcp4()) == [
        ("set", "tcp", (("tcp_dst", 80), ("tcp_src", 99))), ("output", 2)]
    udp = raw(Ether(src=SRC, dst=DST) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    assert actions(sw, "udp,actions=set_field:53->udp_dst,output:2", udp) == [
        ("set", "udp", (("udp_dst", 53),)), ("output", 2)]
    tcp6 = raw(Ether(src=SRC, dst=DST) / IPv6(src="2001:db8::1", dst="2001:db8::2")
               / TCP(sport=1, dport=2))
    got = actions(sw, "ipv6,actions=set_field:2001:db8::9->ipv6_dst,dec_ttl,output:2", tcp6)
    assert got == [("set", "ipv6", (("ip_ttl", 63), ("ipv6_dst", F.parse_value(
        F.lookup("ipv6_dst"), "2001:db8::9")[0]))), ("output", 2)]
    arp = raw(Ether(src=SRC, dst="ff:ff:ff:ff:ff:ff")
              / ARP(op=1, hwsrc=SRC, psrc="10.0.0.1", pdst="10.0.0.2"))
    assert actions(sw, "arp,actions=set_field:2->arp_op,set_field:10.0.0.7->arp_tpa,output:2",
                   arp) == [("set", "arp", (("arp_op", 2), ("arp_tpa", ip("10.0.0.7")))),
                            ("output", 2)]


def test_set_to_same_value_is_omitted_but_matched(sw):
    sw.replace_flows("ip,actions=set_field:10.0.0.1->ip_src,output:2")
    r = sw.trace(1, tcp4())
    assert parse_datapath_actions(r.datapath_actions, sw.dpif_port_map()) == [("output", 2)]
    assert parse_megaflow(r.megaflow)["ip_src"] == (ip("10.0.0.1"), 0xFFFFFFFF)


def test_masked_set_and_its_megaflow(sw):
    sw.replace_flows("ip,actions=set_field:10.1.0.0/255.255.0.0->ip_src,output:2")
    r = sw.trace(1, tcp4())
    assert parse_datapath_actions(r.datapath_actions, sw.dpif_port_map(), with_masks=True) == [
        ("set", "ipv4", (("ip_src", ip("10.1.0.0"), 0xFFFF0000),)), ("output", 2)]
    assert megaflow_slot_masks(parse_megaflow(r.megaflow))["nw_src"] == 0xFFFF0000


def test_mpls(sw):
    assert actions(sw, "ip,actions=push_mpls:0x8847,set_field:100->mpls_label,output:2",
                   tcp4()) == [("push_mpls", 100 << 12 | 1 << 8 | 64, 0x8847), ("output", 2)]
    assert actions(sw, "mpls,actions=pop_mpls:0x0800,output:2", mpls_tcp()) == [
        ("pop_mpls", 0x0800), ("output", 2)]
    assert actions(sw, "mpls,actions=set_mpls_label:77,output:2", mpls_tcp()) == [
        ("set", "mpls", (("mpls_label", 77), ("mpls_tc", 0), ("mpls_ttl", 63))), ("output", 2)]
    assert actions(sw, "mpls,actions=set_mpls_ttl:5,output:2", mpls_tcp()) == [
        ("set", "mpls", (("mpls_label", 100), ("mpls_tc", 0), ("mpls_ttl", 5))), ("output", 2)]


def test_tables_groups_meters(sw):
    assert actions(sw, "table=0,actions=resubmit(,3),output:2\ntable=3,actions=output:4",
                   tcp4()) == [("output", 4), ("output", 2)]
    assert actions(sw, "table=0,actions=goto_table:5\ntable=5,actions=output:3", tcp4()) == [
        ("output", 3)]
    assert actions(sw, "actions=group:1", tcp4(),
                   groups="group_id=1,type=all,bucket=output:2,bucket=output:3") == [
        ("output", 2), ("output", 3)]
    assert actions(sw, "actions=group:1", tcp4(), groups="group_id=1,type=fast_failover,"
                   "bucket=watch_port:2,output:2,bucket=watch_port:3,output:3") == [("output", 2)]
    sel = actions(sw, "actions=group:1", tcp4(),
                  groups="group_id=1,type=select,bucket=output:2,bucket=output:3")
    assert sel[0] == ("raw", "hash(sym_l4(0))") and sel[1][0] == "recirc"
    assert actions(sw, "actions=meter:1,output:2", tcp4(),
                   meters="meter=1,kbps,band=type=drop,rate=1000") == [("meter", 0), ("output", 2)]


def test_megaflow_of_a_port_match(sw):
    sw.replace_flows("priority=10,tcp,tp_dst=80,actions=output:2\npriority=0,actions=output:3")
    r = sw.trace(1, tcp4(dport=80))
    mf = parse_megaflow(r.megaflow)
    assert mf["tcp_dst"] == (80, 0xFFFF) and mf["eth_type"] == (0x800, 0xFFFF)
    masks = megaflow_slot_masks(mf)
    assert masks["tp_dst"] == 0xFFFF and masks["nw_proto"] == 0xFF and "nw_src" not in masks


def test_conntrack_trace_has_two_passes(sw):
    sw.replace_flows("table=0,ip,actions=ct(table=3,zone=5)\ntable=3,actions=output:2")
    r = sw.trace(1, tcp4())
    pm = sw.dpif_port_map()
    first = parse_datapath_actions(r.datapath_actions, pm)
    assert first[0] == ("raw", "ct(zone=5)") and first[1][0] == "recirc"
    assert parse_datapath_actions(r.passes[-1][1], pm) == [("output", 2)]
    assert parse_megaflow(r.passes[-1][0])["recirc_id"][0] != 0


def test_rejected_flows_raise_with_stderr(sw):
    with pytest.raises(OVSError, match="OFPBAC_MATCH_INCONSISTENT|prerequisites"):
        sw.add_flows("actions=set_field:10.0.0.9->ip_src,output:2")
    with pytest.raises(OVSError, match="nosuchfield"):
        sw.add_flows("nosuchfield=1,actions=drop")


def test_receive_capture_and_conntrack(sw):
    sw.replace_flows("table=0,priority=10,ip,actions=ct(table=1,zone=3)\n"
                     "table=1,ip,ct_state=+trk+new,actions=ct(commit,zone=3),output:2")
    sw.capture(2)
    before = len(sw.sent(2))
    sw.receive(1, tcp4())
    pkts = sw.sent(2, expect=before + 1)
    assert len(pkts) == before + 1 and pkts[-1] == tcp4()
    assert "zone=3" in sw.dump_conntrack() and "dst=10.0.0.2" in sw.dump_conntrack()


def test_two_instances_and_clean_teardown(ovs_required):
    with DummyOVS(2) as a, DummyOVS(2) as b:
        a.add_flows("actions=output:2")
        assert a.trace(1, tcp4()).datapath_actions == "2"
        assert b.trace(1, tcp4()).datapath_actions == "drop"
        dirs, pids = (a.dir, b.dir), [p.pid for p in a._procs + b._procs]
    assert not any(os.path.exists(d) for d in dirs)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or _zombie(pid)


def _zombie(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] == "Z"


def test_trace_rate(sw):
    sw.replace_flows("priority=10,tcp,tp_dst=80,actions=mod_dl_src:00:00:00:00:00:09,output:2\n"
                     "priority=0,actions=output:3")
    pkts = [tcp4(dport=p) for p in range(500)]
    t0 = time.perf_counter()
    for p in pkts:
        sw.trace(1, p)
    rate = len(pkts) / (time.perf_counter() - t0)
    print(f"ofproto/trace rate: {rate:.0f}/s")
    assert rate > 200
