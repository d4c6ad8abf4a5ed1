"""Placement: each refusal names the field, mask or action that blocked it; what may run on the NIC does."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath import odp
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.flows import fields as F
from sbnet.offload import builtin_profiles, parse_profile, place

from .helpers import CtAlg, Frobnicate, PushNsh, TunnelPush, megaflow, tcp_flow

P = builtin_profiles()
SMART, SRIOV, SOFT = P["smartnic"], P["sriov"], P["software"]
EST = F.CT_STATE_BITS["est"] | F.CT_STATE_BITS["trk"]
NEW = F.CT_STATE_BITS["new"] | F.CT_STATE_BITS["trk"]


def refused(profile, mf, text):
    p = place(profile, mf)
    assert p.tier == "software", p
    assert text in p.reason, p.reason
    return p


def test_three_classes_ship():
    assert {"sriov", "software", "smartnic"} <= set(P)
    assert SOFT.tier == "software" and SRIOV.tier == SMART.tier == "nic"
    for prof in P.values():
        assert prof.sources


def test_software_runs_everything_on_host_cores():
    p = place(SOFT, megaflow({"eth_dst": 2}))
    assert p.tier == "software" and "no NIC tier" in p.reason


def test_userspace_is_refused_by_tc():
    p = refused(SMART, megaflow(tcp_flow(), (odp.Userspace("controller"),)), "")
    assert p.reason == "smartnic: action userspace(controller) is not offloadable (TC has no userspace action)"


def test_sriov_refuses_l4_acl_match():
    p = refused(SRIOV, megaflow(tcp_flow(tcp_dst=80)), "sriov: match on ip_proto is not supported by the embedded switch")
    assert "match on tcp_dst is not supported" in p.reason


def test_sriov_does_mac_vlan_forwarding_and_anti_spoof():
    mf = megaflow({"eth_src": 0x020000000001, "eth_dst": 0x020000000002, "eth_type": F.ETH_IP,
                   "ip_src": 0x0A000001, "ip_frag": (0, 3), "vlan_tci": (0x1064, 0x1FFF)},
                  (odp.PopVlan(), odp.Output(3)))
    assert place(SRIOV, mf).tier == "nic"
    assert place(SMART, mf).tier == "nic"


def test_sriov_refuses_rewrites_tunnels_meters_and_recirculation():
    refused(SRIOV, megaflow({"eth_dst": 2}, (odp.SetFields("eth", (("eth_dst", 5),)), odp.Output(2))),
            "action set(eth(dst=00:00:00:00:00:05)) is not offloadable (the embedded switch rewrites no headers)")
    refused(SRIOV, megaflow({}, (TunnelPush(), odp.Output(2))), "(the embedded switch has no tunnels (VLAN only))")
    refused(SRIOV, megaflow({}, (odp.Meter(1), odp.Output(2))), "action meter(1) is not offloadable")
    refused(SRIOV, megaflow({"recirc_id": 3}), "match on recirc_id=0x00000003 is not offloadable")


def test_register_metadata_and_pkt_mark_matches_stay_in_software():
    refused(SMART, megaflow({"reg0": (5, 0xFFFF)}), "smartnic: match on reg0 is not offloadable (TC flower has no register keys")
    refused(SMART, megaflow({"metadata": 1}), "match on metadata is not offloadable")
    refused(SMART, megaflow({"pkt_mark": 5}), "match on pkt_mark=0x00000005 is not offloadable (TC flower accepts only pkt_mark=0)")
    refused(SMART, megaflow({"pkt_mark": (0, 0xFF)}), "pkt_mark")
    assert place(SMART, megaflow({"pkt_mark": 0})).tier == "nic"    # OVS ignores an exact 0


def test_partial_mask_names_mask_and_field():
    custom = parse_profile(_PROFILE.replace("  eth_dst: any", "  eth_dst: any\n  reg0: exact"), "x.yaml")
    p = refused(custom, megaflow({"reg0": (5, 0xFFFF)}), "x: mask 0x0000ffff on reg0 not offloadable")
    assert "accepts an exact match only" in p.reason
    assert place(custom, megaflow({"reg0": 5})).tier == "nic"


def test_vlan_partial_masks():
    refused(SMART, megaflow({"vlan_tci": (0x1064, 0x0FFF)}), "mask 0x0fff on vlan_tci not offloadable")
    assert place(SMART, megaflow({"vlan_tci": (0x1064, 0x1FFF)})).tier == "nic"
    assert place(SMART, megaflow({"vlan_tci": (0, 0xFFFF)})).tier == "nic"


def test_only_one_mpls_label():
    push = odp.PushMpls((100 << 12) | (1 << 8) | 64, F.ETH_MPLS)
    assert place(SMART, megaflow({"eth_type": F.ETH_IP}, (push, odp.Output(2)))).tier == "nic"
    refused(SMART, megaflow({"eth_type": F.ETH_IP}, (push, push, odp.Output(2))), "this would be label 2")
    refused(SMART, megaflow({"eth_type": F.ETH_MPLS, "mpls_label": 5}, (push, odp.Output(2))), "this would be label 2")
    refused(SMART, megaflow({"eth_type": F.ETH_MPLS, "mpls_lse1": (0x5000, 0xFFFFF000)}),
            "match on mpls_lse1 is not offloadable (TC flower matches the first MPLS label only)")
    assert place(SMART, megaflow({"eth_type": F.ETH_MPLS, "mpls_label": 5}, (odp.PopMpls(F.ETH_IP), odp.Output(2)))).tier == "nic"


def test_ipv6_fragments_stay_in_software():
    refused(SMART, megaflow({"eth_type": F.ETH_IPV6, "ip_frag": (1, 3)}), "IPv6 fragments stay in software")
    assert place(SMART, megaflow({"eth_type": F.ETH_IPV6, "ip_frag": (0, 3)})).tier == "nic"
    assert place(SMART, megaflow({"eth_type": F.ETH_IP, "ip_frag": (1, 3)})).tier == "nic"


def test_icmp_type_and_ipv6_label_matches():
    refused(SMART, megaflow({"eth_type": F.ETH_IP, "ip_proto": F.IP_ICMP, "icmp_type": 8}),
            "match on icmp_type is not offloadable (netdev-offload-tc.c refuses ICMP type/code matches)")
    refused(SMART, megaflow({"eth_type": F.ETH_IPV6, "ipv6_label": 7}), "match on ipv6_label is not offloadable")
    # the same slot as icmp_type, named by its prerequisites
    assert place(SMART, megaflow(tcp_flow(tcp_src=(1024, 0xFC00)))).tier == "nic"


def test_set_fields_pedit():
    ok = megaflow(tcp_flow(), (odp.SetFields("ipv4", (("ip_dst", 0x0A000009), ("ip_ttl", 9))), odp.Output(2)))
    assert place(SMART, ok).tier == "nic"
    refused(SMART, megaflow({"eth_type": F.ETH_IPV6}, (odp.SetFields("ipv6", (("ipv6_label", 5),)),)),
            "(TC flower cannot rewrite ipv6_label)")
    refused(SMART, megaflow({"eth_type": F.ETH_ARP}, (odp.SetFields("arp", (("arp_op", 2),)),)),
            "(TC flower cannot rewrite the arp header)")


def test_ct_helper_nsh_sample_and_unknown_actions():
    refused(SMART, megaflow(tcp_flow(), (CtAlg(zone=1), odp.Recirc(1))),
            "is not offloadable (ct with a helper (alg) is not offloaded")
    refused(SMART, megaflow({}, (PushNsh(), odp.Output(2))), "action push_nsh is not offloadable (TC has no NSH push/pop action)")
    refused(SMART, megaflow({"eth_type": F.ETH_NSH, "nsh_spi": 5}), "match on nsh_spi is not offloadable")
    refused(SMART, megaflow({}, (Frobnicate(),)), "action frobnicate is not offloadable (not supported by TC flower)")


def test_tunnels_and_meters_offload_on_smartnic():
    assert place(SMART, megaflow({"tun_id": 5, "tun_dst": 0x0A000001}, (TunnelPush(), odp.Output(2)))).tier == "nic"
    assert place(SMART, megaflow({}, (odp.SetFields("tunnel", (("tun_id", 7),)), odp.Output(9)))).tier == "nic"
    assert place(SMART, megaflow({}, (odp.Meter(3), odp.Output(2)))).tier == "nic"


def test_conntrack_first_pass_tcp_udp_only():
    p = place(SMART, megaflow({"eth_type": F.ETH_IP, "ct_state": (0, 0x20)}, (odp.Ct(zone=9), odp.Recirc(1))))
    assert p.tier == "nic" and p.needs_ct
    refused(SMART, megaflow({"eth_type": F.ETH_IP, "ip_proto": F.IP_ICMP}, (odp.Ct(zone=9), odp.Recirc(1))),
            "(NIC conntrack tracks tcp/udp only; this megaflow has ip_proto=icmp)")
    refused(SMART, megaflow({"eth_type": F.ETH_ARP}, (odp.Ct(zone=9), odp.Recirc(1))), "over IP only")


def test_conntrack_second_pass_established_only():
    est = megaflow({"recirc_id": 1, "eth_type": F.ETH_IP, "ct_state": (EST, EST)})
    p = place(SMART, est)
    assert p.tier == "nic" and p.needs_ct
    refused(SMART, megaflow({"recirc_id": 1, "eth_type": F.ETH_IP, "ct_state": (NEW, NEW | F.CT_STATE_BITS["est"])},
                            (odp.Ct(zone=9, commit=True), odp.Output(2))),
            "match ct_state=+new-est+trk stays in software (the NIC conntrack table gives only +est+trk")
    rel = F.CT_STATE_BITS["rel"] | F.CT_STATE_BITS["trk"]
    refused(SMART, megaflow({"recirc_id": 1, "eth_type": F.ETH_IP, "ct_state": (rel, rel)}), "stays in software")


FIREWALL = """
table=0,priority=100,ip,ct_state=-trk actions=ct(table=1,zone=9)
table=1,priority=100,ct_state=+trk+est,ip actions=resubmit(,2)
table=1,priority=90,ct_state=+trk+new,in_port=1,tcp,tp_dst=80 actions=ct(commit,zone=9),resubmit(,2)
table=1,priority=1 actions=drop
table=2,in_port=1 actions=output:2
table=2,in_port=2 actions=output:1
"""


def _pkt(flags, src="10.0.0.1", dst="10.0.0.2", sport=4000, dport=80, seq=0, ack=0):
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
               / IP(src=src, dst=dst) / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def test_real_switch_megaflows_of_a_stateful_firewall():
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(FIREWALL)
    sw.process(Batch.from_packets([_pkt("S", seq=100)], 1))
    sw.process(Batch.from_packets([_pkt("SA", "10.0.0.2", "10.0.0.1", 80, 4000, 500, 101)], 2))
    sw.process(Batch.from_packets([_pkt("A", seq=101, ack=501)], 1))
    placed = {}
    for mf in sw.cache.flows.values():
        p = place(SMART, mf)
        new = any(isinstance(a, odp.Ct) and a.commit for a in mf.actions)
        placed[mf.mf_id] = p
        if new:
            assert p.tier == "software" and "ct_state=+new" in p.reason
        else:
            assert p.tier == "nic" and p.needs_ct, (mf, p)
        assert place(SRIOV, mf).tier == "software"
    assert len(placed) >= 4


def test_real_switch_l2_megaflow_offloads_to_sriov():
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load("in_port=1,dl_dst=02:00:00:00:00:02 actions=output:2\nin_port=1,udp actions=drop")
    sw.process(Batch.from_packets([_pkt("S"), raw(Ether() / IP() / UDP())], 1))
    tiers = sorted((place(SRIOV, mf).tier, place(SRIOV, mf).reason) for mf in sw.cache.flows.values())
    assert tiers[0][0] == "nic"
    assert tiers[1][0] == "software" and "match on ip_proto is not supported by the embedded switch" in tiers[1][1]


_PROFILE = """
name: x
tier: nic
nic: X
description: test NIC
sources: [test]
match:
  recirc_id: any
  in_port: exact
  eth_dst: any
actions:
  output: {}
capacity: {flows: 2, insertion_rate: 10}
performance: {mpps: 10, latency_us: 1}
"""
