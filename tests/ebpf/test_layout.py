"""The kernel key and action codecs: what goes into the kernel tier and why the rest stays in software (no BPF needed)."""

import re

import numpy as np

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath import odp
from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.build import SOURCE_DIR
from sbnet.datapath.ebpf.tier import profile
from sbnet.datapath.tunnel import TunnelPort
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.offload.placement import place
from tests.offload.helpers import megaflow, tcp_flow

PORTS = {p: L.KernelPort(p, 100 + p) for p in (1, 2, 3)}


def test_key_words_follow_the_c_enum():
    text = (SOURCE_DIR / "sbnet_dp.h").read_text()
    body = re.search(r"enum sb_slot \{(.*?)K_NWORDS", text, re.S).group(1)
    names = [n.strip()[2:].lower() for n in body.replace("\n", " ").split(",") if n.strip()]
    assert tuple(names) == L.KEY_SLOTS
    assert all(s in F.SLOT_INDEX for s in L.KEY_SLOTS)


def test_stats_and_ct_state_bits_follow_the_c_header():
    text = (SOURCE_DIR / "sbnet_dp.h").read_text()
    body = re.search(r"enum sb_stat \{(.*?)ST_N", text, re.S).group(1)
    names = [n.strip()[3:].lower() for n in body.replace("\n", " ").split(",") if n.strip()]
    renamed = {"ct_est": "ct_established", "output_err": "output_error"}
    assert tuple(renamed.get(n, n) for n in names) == L.STATS
    for name in ("new", "est", "rpl", "trk"):
        bit = int(re.search(rf"#define CS_{name.upper()} (0x[0-9a-f]+)", text).group(1), 16)
        assert bit == F.CT_STATE_BITS[name]


def test_ops_follow_the_c_enum():
    text = (SOURCE_DIR / "sbnet_dp.h").read_text()
    body = re.search(r"enum sb_op \{(.*?)\};", text, re.S).group(1)
    names = re.findall(r"(OP_\w+)", body)
    assert [getattr(L, n) for n in names] == list(range(1, len(names) + 1))


def test_a_match_on_zero_outside_the_key_holds_anything_else_refuses():
    mf = megaflow({"vlan_tci2": (0, 0x1000), "eth_dst": 5})
    mask, value = L.key_words(mf.slots, mf.mask, mf.value)
    assert value[L.KEY_SLOTS.index("eth_dst")] == 5
    with pytest.raises(L.NotInKernel, match="vlan_tci2"):
        mf = megaflow({"vlan_tci2": (0x1005, 0x1FFF)})
        L.key_words(mf.slots, mf.mask, mf.value)


@pytest.mark.parametrize("actions, why", [
    ((odp.Output(9),), "port 9, which has no kernel device"),
    ((odp.Userspace("controller"),), "is not done by the kernel tier"),
    ((odp.PushMpls(1 << 12, 0x8847), odp.Output(2)), "is not done by the kernel tier"),
    ((odp.Output(2), odp.Ct(zone=1), odp.Recirc(3)), "an output before ct()"),
    ((odp.SetFields("skb_mark", (("pkt_mark", 1),)), odp.Ct(zone=1), odp.Recirc(3)), "a header edit before ct()"),
    ((odp.Ct(zone=1, label=(1, 1)), odp.Recirc(3)), "ct() with label or force"),
    ((odp.Ct(zone=1), odp.Recirc(3), odp.Ct(zone=1), odp.Recirc(4)),
     "actions after a recirculation"),
    ((odp.Meter(4), odp.Output(2)), "meter 4 is not in the kernel meter table"),
    ((odp.SetFields("icmp", (("icmp_type", 0),)), odp.Output(2)), "set(icmp)"),
    ((odp.Output(2),) * 17, "more than the 16"),
])
def test_actions_left_in_software_say_why(actions, why):
    with pytest.raises(L.NotInKernel, match=re.escape(why)):
        L.encode_actions(actions, PORTS)


def test_vxlan_push_becomes_tunnel_key_and_output():
    tp = TunnelPort(ofport=9, kind="vxlan", remote_ip="flow", local_ip="10.0.0.1", key="flow")
    ports = {**PORTS, 9: L.KernelPort(9, 55, tp)}
    push = odp.TunnelPush(9, (("tun_id", 77), ("tun_dst", 0x0A000002)))
    assert L.encode_actions((push,), ports) == [
        (L.OP_SET_TUNNEL, 0, 0x0A000002, 77, 0x0A000001), (L.OP_OUTPUT, 0, 55, 0, 0)]
    gre = TunnelPort(ofport=8, kind="gre", remote_ip="flow", key="flow")
    with pytest.raises(L.NotInKernel, match="gre tunnels stay in software"):
        L.encode_actions((odp.TunnelPush(8, (("tun_id", 1), ("tun_dst", 1))),),
                         {8: L.KernelPort(8, 56, gre)})


def test_profile_places_security_group_megaflows_and_refuses_registers():
    p = profile()
    est = megaflow(tcp_flow(recirc_id=3, ct_state=(0x22, 0x22), ct_zone=5))
    assert place(p, est).tier == "nic"
    new = megaflow(tcp_flow(recirc_id=3, ct_state=(0x21, 0x21)))
    assert place(p, new).tier == "nic"          # the profile holds +new (kernel_ct: UDP, TCP, ICMP) ...
    assert L.new_state_refusal(new.slots, new.mask, new.value, True) is None
    # ... but the tier keeps any other protocol's +new, and any +new without kernel_ct, in
    # software.
    sctp = megaflow({"recirc_id": 3, "eth_type": F.ETH_IP, "nw_proto": 132, "ct_state": (0x21, 0x21)})
    assert "UDP, TCP and ICMP" in L.new_state_refusal(sctp.slots, sctp.mask, sctp.value, True)
    icmp = megaflow({"recirc_id": 3, "eth_type": F.ETH_IP, "nw_proto": 1, "ct_state": (0x21, 0x21)})
    assert L.new_state_refusal(icmp.slots, icmp.mask, icmp.value, True) is None
    assert "commits no connection" in L.new_state_refusal(new.slots, new.mask, new.value, False)
    udp = megaflow({"recirc_id": 3, "eth_type": F.ETH_IP, "nw_proto": 17, "ct_state": (0x21, 0x21)})
    assert L.new_state_refusal(udp.slots, udp.mask, udp.value, True) is None
    assert L.new_state_refusal(est.slots, est.mask, est.value, False) is None
    rel = F.CT_STATE_BITS["rel"] | F.CT_STATE_BITS["trk"]
    assert place(p, megaflow(tcp_flow(recirc_id=3, ct_state=(rel, rel)))).tier == "software"
    regs = megaflow({"reg3": 1})
    assert "registers never reach a datapath key" in place(p, regs).reason


_CSUM_CASES = [
    Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / b"abc",
    Ether() / Dot1Q(vlan=5) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=3, dport=4) / b"q",
    Ether() / IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=5, dport=6) / b"xyz12",
    Ether() / IP(src="10.0.0.9", dst="10.0.0.2") / UDP(sport=7, dport=8) / bytes(range(200)),
]


def test_slow_path_completes_checksums_a_vm_left_to_the_nic():
    """One batch of partial checksums (each a different header layout) and of good ones:
    every TCP/UDP checksum comes out as scapy computes it; ARP is left alone."""
    from scapy.layers.l2 import ARP
    from sbnet.datapath.batch import Batch
    from sbnet.datapath.ebpf.upcalls import complete_l4_checksums
    good, partial = [], []
    for pkt in _CSUM_CASES:
        g = raw(pkt)
        l4 = len(g) - len(raw(pkt[TCP] if TCP in pkt else pkt[UDP]))
        at = l4 + (16 if TCP in pkt else 6)
        good.append(g)
        partial.append(g[:at] + b"\x12\x34" + g[at + 2:])     # only the pseudo-header sum, say
    arp = raw(Ether() / ARP(psrc="10.0.0.1", pdst="10.0.0.2"))
    frames = partial + good + [arp]
    b = Batch.from_packets(frames, 1)
    complete_l4_checksums(b)
    assert b.packets() == good + good + [arp]


def test_numpy_records_match_the_struct_layouts():
    assert L.CT_KEY_DTYPE.itemsize == L.CT_KEY.size
    assert L.CT_VAL_DTYPE.itemsize == L.CT_VAL.size
    assert L.FLOW_HEAD_DTYPE.itemsize == L.FLOW_HEAD.size
    k = np.zeros(1, L.CT_KEY_DTYPE)
    k["zone"], k["proto"], k["sport"], k["dport"], k["src"], k["dst"] = 7, 6, 1, 2, 3, 4
    assert k.tobytes() == L.CT_KEY.pack(7, 6, 0, 1, 2, 3, 4)


def test_an_output_to_a_peer_veth_says_so_in_the_action():
    """The program redirects a last output into the other end of a PORT_F_PEER veth from
    the action's flag, without looking the port up (OUT_F_PEER as the C header has it)."""
    text = (SOURCE_DIR / "sbnet_dp.h").read_text()
    assert int(re.search(r"#define OUT_F_PEER (\d+)", text).group(1)) == L.OUT_F_PEER
    ports = {2: L.KernelPort(2, 12), 3: L.KernelPort(3, 13, peer=True)}
    acts = L.encode_actions((odp.Output(2), odp.Output(3)), ports)
    assert acts == [(L.OP_OUTPUT, 0, 12, 0, 0), (L.OP_OUTPUT, L.OUT_F_PEER, 13, 0, 0)]
