"""Two reference switches joined by real tunnel ports over an underlay: frames cross intact."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort

MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:01"
UNDERLAY, TUNNEL, VM = 10, 20, 1


def host(mac: str, me: str, peer: str, peer_mac: str, kind: str, key, flows: str) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(VM)
    sw.add_port(UNDERLAY)
    six = ":" in me
    sw.underlay.add_port(UNDERLAY, mac, mtu=1500)
    sw.underlay.add_local(me)
    sw.underlay.add_route(peer + ("/128" if six else "/32"), UNDERLAY)
    sw.underlay.add_neighbour(peer, peer_mac)
    sw.add_tunnel_port(TunnelPort(TUNNEL, kind, remote_ip=peer, local_ip=me, key=key))
    sw.load(flows)
    return sw


def pair(kind: str, six: bool = False, key="flow"):
    ip_a, ip_b = ("fd00::a", "fd00::b") if six else ("192.168.50.1", "192.168.50.2")
    send = (f"in_port={VM} actions=set_field:0x1234->tun_id,output:{TUNNEL}" if key == "flow"
            else f"in_port={VM} actions=output:{TUNNEL}")
    recv = f"in_port={TUNNEL},tun_id=0x1234 actions=output:{VM}" if key == "flow" else \
        f"in_port={TUNNEL} actions=output:{VM}"
    a = host(MAC_A, ip_a, ip_b, MAC_B, kind, key, send)
    b = host(MAC_B, ip_b, ip_a, MAC_A, kind, key, recv)
    return a, b


def inner(i: int = 0) -> bytes:
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=7)
               / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000 + i, dport=53) / (b"x" * i))


@pytest.mark.parametrize("kind", ["vxlan", "gre", "geneve"])
@pytest.mark.parametrize("six", [False, True])
def test_frames_cross_the_tunnel_intact(kind, six):
    a, b = pair(kind, six)
    frames = [inner(i) for i in range(20)]
    a.process(Batch.from_packets(frames, VM))
    wire = a.ports[UNDERLAY].take_sent()
    assert len(wire) == 20
    outer = Ether(wire[0])
    assert (IPv6 if six else IP) in outer
    b.process(Batch.from_packets(wire, UNDERLAY))
    assert b.ports[VM].take_sent() == frames
    # counters on both ends: the tunnel port sent 20 on A and received 20 on B
    assert a.ports[TUNNEL].tx_packets == 20 and b.ports[TUNNEL].rx_packets == 20


def test_vxlan_header_carries_the_flow_vni_and_the_megaflow_matches_tunnel_metadata():
    a, b = pair("vxlan")
    a.process(Batch.from_packets([inner()], VM))
    (frame,) = a.ports[UNDERLAY].take_sent()
    pkt = Ether(frame)
    assert pkt[VXLAN].vni == 0x1234 and pkt[UDP].dport == 4789 and pkt[IP].dst == "192.168.50.2"
    b.process(Batch.from_packets([frame], UNDERLAY))
    (line,) = [l for l in b.dump_megaflows()]
    assert "tnl" not in line and "actions:1" in line


def test_unknown_vni_and_bad_outer_headers_are_counted_and_dropped():
    a, b = pair("vxlan", key=0x99)            # both ends fixed key 0x99
    a.process(Batch.from_packets([inner()], VM))
    (frame,) = a.ports[UNDERLAY].take_sent()
    wrong = bytearray(frame)
    wrong[14 + 20 + 8 + 4:14 + 20 + 8 + 7] = (0x55).to_bytes(3, "big")   # another VNI
    broken = bytearray(frame)
    broken[14 + 10] ^= 0xFF                                               # IPv4 checksum
    b.process(Batch.from_packets([bytes(wrong), bytes(broken), frame], UNDERLAY))
    assert len(b.ports[VM].take_sent()) == 1
    drops = b.drop_counts()
    assert drops["tunnel decap: unknown_key"] == 1 and drops["tunnel decap: bad_ip_checksum"] == 1


def test_no_route_to_the_tunnel_endpoint_is_counted():
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(VM)
    sw.add_tunnel_port(TunnelPort(TUNNEL, "vxlan", remote_ip="flow", key="flow"))
    sw.load(f"in_port={VM} actions=set_field:10.99.0.1->tun_dst,output:{TUNNEL}")
    sw.process(Batch.from_packets([inner()], VM))
    assert sw.drop_counts() == {"tunnel encap: no_route": 1}


def test_geneve_options_travel_as_tun_metadata():
    tlv = "{class=0x0102,type=0x80,len=4}->tun_metadata0,{class=0xffff,type=3,len=8}->tun_metadata1"
    a = host(MAC_A, "192.168.50.1", "192.168.50.2", MAC_B, "geneve", "flow",
             f"in_port={VM} actions=set_field:0x77->tun_id,set_field:0xcafe->tun_metadata0,"
             f"set_field:0x1122334455667788->tun_metadata1,output:{TUNNEL}")
    b = host(MAC_B, "192.168.50.2", "192.168.50.1", MAC_A, "geneve", "flow",
             f"in_port={TUNNEL},tun_id=0x77,tun_metadata0=0xcafe,"
             f"tun_metadata1=0x1122334455667788 actions=output:{VM}")
    for sw in (a, b):
        sw.add_tlv_map(tlv)
    a.process(Batch.from_packets([inner()], VM))
    (wire,) = a.ports[UNDERLAY].take_sent()
    from scapy.contrib.geneve import GENEVE
    g = Ether(wire)[GENEVE]
    assert g.vni == 0x77 and g.optionlen == (8 + 12) // 4
    b.process(Batch.from_packets([wire], UNDERLAY))
    assert b.ports[VM].take_sent() == [inner()]
    # a packet whose option value differs does not match the flow: dropped, counted
    other = wire.replace(bytes.fromhex("0000cafe"), bytes.fromhex("0000beef"))
    b.process(Batch.from_packets([other], UNDERLAY))
    assert b.ports[VM].take_sent() == [] and b.drop_counts()


def test_bad_tlv_map_is_refused():
    sw = Switch()
    for bad in ("{class=1,type=2}->tun_metadata0", "{class=1,type=2,len=3}->tun_metadata0",
                "{class=1,type=2,len=4}->reg0", "nothing"):
        with pytest.raises(ValueError):
            sw.add_tlv_map(bad)
