"""Conntrack NAT: SNAT/DNAT with ranges, reply translation, exhaustion, related ICMP, checked on the bytes with scapy."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.conntrack_nat import NatSpec
from sbnet.flows.actions import Nat
from tests.datapath.test_conntrack_util import A, B, E, Tcp, ct_run, udp


def checksums_ok(pkt: Ether) -> bool:
    """Every checksum in the packet equals the one scapy computes afresh."""
    fresh = pkt.copy()
    for layer in (IP, TCP, UDP, ICMP, IPerror, TCPerror):
        if layer in fresh and hasattr(fresh[layer], "chksum"):
            del fresh[layer].chksum
    from scapy.layers.inet6 import ICMPv6DestUnreach, _ICMPv6
    for lyr in fresh.layers():
        if issubclass(lyr, _ICMPv6) and lyr is not ICMPv6DestUnreach:
            del fresh[lyr].cksum
    fresh = Ether(bytes(fresh))
    want = [(lay.name, getattr(lay, "chksum", None)) for lay in _layers(fresh)]
    got = [(lay.name, getattr(lay, "chksum", None)) for lay in _layers(pkt)]
    return want == got


def _layers(p):
    out = []
    while p:
        out.append(p)
        p = p.payload
    return out


def test_snat_ranges_and_reply_translation():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1-10.1.1.3:2000-2010)")
    c = Tcp()
    r = ct_run(ct, [c.pkt(0, "S")], nat=nat)
    assert r.states == ["+new+trk+snat"]
    out = r.packet()
    assert ipaddress.ip_address(out[IP].src) in ipaddress.ip_network("10.1.1.0/30")
    assert out[IP].src != "10.1.1.0" and 2000 <= out[TCP].sport <= 2010
    assert out[IP].dst == B and out[TCP].dport == 80
    assert checksums_ok(out)
    # The keys follow the bytes, so later tables see the translated packet.
    assert r.key("nw_src") == int(ipaddress.ip_address(out[IP].src))
    assert r.key("tp_src") == out[TCP].sport
    # ct_* fields keep the original tuple.
    assert r.key("ct_nw_src") == int(ipaddress.ip_address(A)) and r.key("ct_tp_src") == 1234
    s_addr, s_port = out[IP].src, out[TCP].sport
    reply = E / IP(src=B, dst=s_addr) / TCP(sport=80, dport=s_port, flags="SA", seq=5000,
                                             ack=1001)
    r2 = ct_run(ct, [reply], nat=NatSpec())
    assert r2.states == ["+est+rpl+trk+dnat"]
    back = r2.packet()
    assert (back[IP].dst, back[TCP].dport) == (A, 1234) and checksums_ok(back)
    assert ct.dump() == [f"tcp,orig=(src={A},dst={B},sport=1234,dport=80),reply=(src={B},"
                         f"dst={s_addr},sport=80,dport={s_port}),protoinfo=(state=ESTABLISHED)"]


def test_dnat_with_port_and_reply():
    ct = Conntrack()
    nat = NatSpec.from_action(Nat("dst", "10.2.0.5", None, 8080, None))
    p = udp(A, "10.9.0.1", 5555, 53, b"query")
    r = ct_run(ct, [p], nat=nat)
    assert r.states == ["+new+trk+dnat"]
    out = r.packet()
    assert (out[IP].dst, out[UDP].dport) == ("10.2.0.5", 8080) and checksums_ok(out)
    rep = udp("10.2.0.5", A, 8080, 5555, b"answer")
    r2 = ct_run(ct, [rep], nat=NatSpec())
    assert r2.states == ["+est+rpl+trk+snat"]
    back = r2.packet()
    assert (back[IP].src, back[UDP].sport) == ("10.9.0.1", 53) and checksums_ok(back)


def test_without_nat_keyword_no_translation():
    ct = Conntrack()
    ct_run(ct, [udp()], nat=NatSpec.parse("nat(src=10.1.1.1)"))
    r = ct_run(ct, [udp(B, "10.1.1.1", 2, 1)])
    assert r.states == ["+est+rpl+trk"]
    assert r.packet()[IP].dst == "10.1.1.1"
    r = ct_run(ct, [udp(B, "10.1.1.1", 2, 1)], nat=NatSpec())
    assert r.packet()[IP].dst == A


def test_snat_port_collision_picks_another_port():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1)")
    r = ct_run(ct, [udp("10.0.0.1", B, 3000, 53), udp("10.0.0.7", B, 3000, 53)], nat=nat)
    ports = [r.packet(i)[UDP].sport for i in range(2)]
    assert ports[0] == 3000 and ports[1] != 3000 and 1024 <= ports[1] <= 65535
    assert {r.packet(i)[IP].src for i in range(2)} == {"10.1.1.1"}
    assert all(checksums_ok(r.packet(i)) for i in range(2))


def test_port_exhaustion_refuses_and_counts():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1:2000-2001)")
    pk = [udp(A, B, 4000 + i, 53) for i in range(3)]
    r = ct_run(ct, pk, nat=nat)
    assert r.states == ["+new+trk+snat", "+new+trk+snat", "+new+trk"]
    assert sorted(r.packet(i)[UDP].sport for i in range(2)) == [2000, 2001]
    assert r.packet(2)[UDP].sport == 4002          # refused: not translated
    assert ct.stats["nat_exhausted"] == 1 and len(ct) == 2
    # Freed ports are reused after the connections go.
    ct.flush()
    assert ct_run(ct, [pk[2]], nat=nat).states == ["+new+trk+snat"]


def test_nat_not_applied_twice_in_same_zone():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1:2000-2000)")
    r = ct_run(ct, [udp()], nat=nat)
    assert r.packet()[IP].src == "10.1.1.1"
    # Recirculated packet (keys carry ct_state +snat, same zone): no second rewrite,
    # but the connection is found from the translated tuple.
    ct.execute(r.batch, r.parsed, [0], 0, commit=True, nat=nat, now=0.0)
    assert r.packet()[IP].src == "10.1.1.1" and r.packet()[UDP].sport == 2000
    assert r.states == ["+new+trk+snat"] and len(ct) == 1


def test_icmp_error_related_is_translated():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1:2000-2000)")
    c = Tcp()
    ct_run(ct, [c.pkt(0, "S")], nat=nat)
    quoted = IPerror(src="10.1.1.1", dst=B) / TCPerror(sport=2000, dport=80, seq=1000)
    err = E / IP(src="10.9.9.9", dst="10.1.1.1") / ICMP(type=3, code=1) / quoted
    r = ct_run(ct, [err], nat=NatSpec())
    assert r.states == ["+rel+rpl+trk+dnat"]
    out = r.packet()
    assert out[IP].dst == A
    assert (out[IPerror].src, out[TCPerror].sport) == (A, 1234)
    assert checksums_ok(out)


def test_ipv6_snat():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=[fc00::100]:3000-3000)")
    p = E / IPv6(src="fc00::1", dst="fc00::2") / UDP(sport=10, dport=20) / Raw(b"v6")
    r = ct_run(ct, [p], nat=nat)
    out = r.packet()
    assert (out[IPv6].src, out[UDP].sport) == ("fc00::100", 3000)
    fresh = out.copy()
    del fresh[UDP].chksum
    assert Ether(bytes(fresh))[UDP].chksum == out[UDP].chksum
    rep = E / IPv6(src="fc00::2", dst="fc00::100") / UDP(sport=20, dport=3000) / Raw(b"r")
    back = ct_run(ct, [rep], nat=NatSpec()).packet()
    assert (back[IPv6].dst, back[UDP].dport) == ("fc00::1", 10)


def test_icmp_echo_snat_address_only():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1)")
    r = ct_run(ct, [E / IP(src=A, dst=B) / ICMP(type=8, id=77)], nat=nat)
    out = r.packet()
    assert out[IP].src == "10.1.1.1" and out[ICMP].id == 77 and checksums_ok(out)
    rep = E / IP(src=B, dst="10.1.1.1") / ICMP(type=0, id=77)
    r2 = ct_run(ct, [rep], nat=NatSpec())
    assert r2.states == ["+est+rpl+trk+dnat"] and r2.packet()[IP].dst == A


def test_established_batch_fast_path_translates():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1)")
    conns = [Tcp(sport=3000 + i, reply_to="10.1.1.1") for i in range(20)]
    for c in conns:
        for p in c.handshake():
            assert "+inv" not in ct_run(ct, [p], nat=nat).states[0]
    before = ct.stats["fast_path"]
    r = ct_run(ct, [c.pkt(0, "PA", b"payload") for c in conns], nat=NatSpec())
    assert ct.stats["fast_path"] - before == 20
    for i in range(20):
        out = r.packet(i)
        assert out[IP].src == "10.1.1.1" and out[TCP].sport == 3000 + i and checksums_ok(out)
    assert set(r.states) == {"+est+trk+snat"}


def test_batch_snat_unique_ports_and_exhaustion():
    ct = Conntrack()
    nat = NatSpec.parse("nat(src=10.1.1.1:3000-3049)")
    pk = [udp(f"10.0.{i // 200}.{i % 200 + 1}", B, 5000 + i, 53) for i in range(100)]
    r = ct_run(ct, pk, nat=nat)
    snat = [i for i, s in enumerate(r.states) if s == "+new+trk+snat"]
    assert len(snat) == 50 and ct.stats["nat_exhausted"] == 50 and len(ct) == 50
    ports = [r.packet(i)[UDP].sport for i in snat]
    assert sorted(ports) == list(range(3000, 3050))
    assert all(checksums_ok(r.packet(i)) for i in snat[:10])
    back = ct_run(ct, [udp(B, "10.1.1.1", 53, ports[k]) for k in range(50)], nat=NatSpec())
    assert set(back.states) == {"+est+rpl+trk+dnat"}
    assert [back.packet(k)[UDP].dport for k in range(50)] == [5000 + i for i in snat]
