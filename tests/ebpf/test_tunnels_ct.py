"""VXLAN encap and decap, and ct() of established connections: the kernel tier against the reference switch."""

import ipaddress

import numpy as np
import pytest

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort

from .util import attach_ports, compare, run_reference

VM, UNDERLAY, TUNNEL = 1, 10, 20
A, B = "192.168.50.1", "192.168.50.2"


def _ip(a: str) -> int:
    return int(ipaddress.IPv4Address(a))


def host(me: str, peer: str, flows: str) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(VM)
    sw.add_port(UNDERLAY)
    sw.underlay.add_port(UNDERLAY, "02:aa:00:00:00:01", mtu=1500)
    sw.underlay.add_local(me)
    sw.underlay.add_route(peer + "/32", UNDERLAY)
    sw.underlay.add_neighbour(peer, "02:bb:00:00:00:01")
    sw.add_tunnel_port(TunnelPort(TUNNEL, "vxlan", remote_ip=peer, local_ip=me, key="flow"))
    sw.load(flows)
    return sw


inner_frames = st.builds(
    lambda sport, n, vni: (raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                               / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=sport, dport=53)
                               / (b"x" * n)), vni),
    st.integers(1, 65535), st.integers(0, 200), st.sampled_from([0x1234, 0x42]))


@settings(max_examples=4, deadline=None)
@given(frames=st.lists(inner_frames, min_size=1, max_size=6))
def test_vxlan_encap_sets_the_tunnel_key_the_reference_puts_on_the_wire(tier, frames):
    sw = host(A, B, "priority=1,in_port=1,udp,tp_src=0/1 actions=set_field:0x1234->tun_id,output:20\n"
                    "priority=1,in_port=1,udp,tp_src=1/1 actions=set_field:0x42->tun_id,output:20")
    packets = [(VM, f) for f, _ in frames]
    ref = run_reference(sw, packets)
    tier.flush()
    attach_ports(tier, sw)
    for mf in sw.cache.flows.values():
        assert tier.put(mf).tier == "ebpf"
    for (_, frame), want in zip(packets, ref.outputs):
        got = tier.run(frame, VM)
        [(port, wire)] = want
        outer = Ether(wire)
        assert port == UNDERLAY and [o.ofport for o in got.outputs] == [TUNNEL]
        o = got.outputs[0]
        # The kernel's VXLAN device builds the outer headers from the key the program set.
        assert o.tunnel == (outer[VXLAN].vni, _ip(outer[IP].dst), _ip(outer[IP].src))
        assert o.data == raw(outer[VXLAN].payload)
    counts = tier.take_counters()
    for i in sw.cache.flows:
        assert (counts[i].packets, counts[i].bytes) == (sw.cache.packets[i], sw.cache.bytes[i])


def test_each_tunnel_output_carries_its_own_destination(tier):
    """A frame sent to two hosts (a migrating port's traffic, while both may hold the VM):
    each copy leaves with the tunnel key set before it, not the one set after it."""
    C2 = "192.168.50.3"
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(VM)
    sw.add_port(UNDERLAY)
    sw.underlay.add_port(UNDERLAY, "02:aa:00:00:00:01", mtu=1500)
    sw.underlay.add_local(A)
    for i, peer in enumerate((B, C2)):
        sw.underlay.add_route(peer + "/32", UNDERLAY)
        sw.underlay.add_neighbour(peer, f"02:bb:00:00:00:0{i + 1}")
    sw.add_tunnel_port(TunnelPort(TUNNEL, "vxlan", local_ip=A, key="flow"))
    sw.load(f"priority=1,in_port=1 actions=set_field:0x42->tun_id,set_field:{B}->tun_dst,"
            f"output:20,set_field:{C2}->tun_dst,output:20")
    frame = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5000, dport=53) / b"x")
    ref = run_reference(sw, [(VM, frame)] * 2)
    tier.flush()
    attach_ports(tier, sw)
    [mf] = sw.cache.flows.values()
    assert tier.put(mf).tier == "ebpf"
    got = tier.run(frame, VM)
    assert [_ip(Ether(w)[IP].dst) for _, w in ref.outputs[1]] == [_ip(B), _ip(C2)]
    assert [(o.ofport, o.tunnel) for o in got.outputs] == [
        (TUNNEL, (0x42, _ip(B), _ip(A))), (TUNNEL, (0x42, _ip(C2), _ip(A)))]


@settings(max_examples=4, deadline=None)
@given(frames=st.lists(inner_frames, min_size=1, max_size=6))
def test_vxlan_decap_matches_the_tunnel_key(tier, frames):
    a = host(A, B, "priority=1,in_port=1 actions=output:20")
    b = host(B, A, "priority=2,in_port=20,tun_id=0x1234 actions=output:1\n"
                   "priority=1,in_port=20 actions=drop")
    packets, tun = [], []
    for f, vni in frames:
        a.process(Batch.from_packets([f], VM))
        wire = a.ports[UNDERLAY].take_sent()[0]
        outer = Ether(wire)
        outer[VXLAN].vni = vni
        packets.append((UNDERLAY, raw(outer)))
        tun.append((vni, _ip(A), _ip(B)))        # (tun_id, tun_src, tun_dst) as the device reads them
    ref = run_reference(b, packets)
    # The kernel's VXLAN device hands the program the inner frame on the tunnel port.
    decapped = [(TUNNEL, raw(Ether(w)[VXLAN].payload)) for _, w in packets]
    ref.mf_ids = [_inner_mf(b, f, t) for (_, f), t in zip(decapped, tun)]
    tier.flush()
    attach_ports(tier, b)
    seen = compare(tier, b, decapped, ref, tun=tun)
    assert seen["upcall"] == 0


def _inner_mf(sw, frame, tun) -> int:
    import numpy as np

    from sbnet.datapath.parse import parse
    from sbnet.flows import fields as F
    keys = parse(Batch.from_packets([frame], TUNNEL)).keys
    for name, v in zip(("tun_id", "tun_src", "tun_dst"), tun):
        keys[F.SLOT_INDEX[name], 0] = v
    return int(sw.cache.lookup(keys, np.arange(1))[0])


SG = """\
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,tcp,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,udp,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ct_state=+trk+est,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""
C, S = "10.0.0.1", "10.0.0.2"


def seg(src, dst, sport, dport, flags, payload=b"", udp=False):
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=1)
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst) / l4 / payload)


@settings(max_examples=6, deadline=None)
@given(sport=st.integers(1024, 65535), udp=st.booleans(),
       data=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), min_size=1, max_size=8))
def test_established_connections_in_the_connection_map(tier, sport, udp, data):
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(SG)
    # The handshake goes through the slow path, which commits the connection.
    if udp:
        opening = [(1, seg(C, S, sport, 53, "", udp=True)), (2, seg(S, C, 53, sport, "", udp=True))]
    else:
        opening = [(1, seg(C, S, sport, 80, "S")), (2, seg(S, C, 80, sport, "SA")),
                   (1, seg(C, S, sport, 80, "A"))]
    run_reference(sw, opening)
    sw.flush_megaflows()         # the megaflows then count only the packets compared below
    dport = 53 if udp else 80
    tier.flush()
    for k in tier.m_conns.keys():
        tier.m_conns.delete(k)
    sync = ConnSync(tier, sw.conntrack, kernel_ct=False)
    sync.zones.add(5)
    sync.hand_down(np.array([[17 if udp else 6, _ip(C), _ip(S), sport, dport]]))
    # Both directions, keyed as their packets carry them: +trk+est, +trk+est+rpl.
    assert {(c[2], c[4]): c[6] for c in tier.conns_kept()} == {
        (_ip(C), sport): 0x22, (_ip(S), dport): 0x2A}
    packets = [(1, seg(C, S, sport, dport, "PA", p, udp)) if fwd else
               (2, seg(S, C, dport, sport, "PA", p, udp)) for fwd, p in data]
    ref = run_reference(sw, packets)
    attach_ports(tier, sw)
    seen = compare(tier, sw, packets, ref)
    assert seen["upcall"] == 0 and seen["kernel"] == len(packets)
    # Not held (a FIN here): up to the slow path, whose conntrack must see it.
    fin = tier.run(seg(C, S, sport, dport, "FA"), 1) if not udp else None
    assert fin is None or fin.verdict == "upcall"
    for k in sync.held:
        tier.remove_conn(*k)
    assert tier.run(packets[0][1], packets[0][0]).verdict == "upcall"


@pytest.mark.parametrize("unit, rate, burst, size", [("pktps", 1, 5, 100), ("kbps", 8, 4, 100)])
def test_meter_passes_its_burst_then_drops_like_the_reference(tier, unit, rate, burst, size):
    """A full bucket, packets back to back (no time to refill): the reference switch and the
    kernel pass the same number, then drop the rest (kbps: 4 kbit = 500 bytes = 5 frames)."""
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(f"meter=1,{unit},burst,band=type=drop,rate={rate},burst_size={burst}\n"
            "priority=1,in_port=1 actions=meter:1,output:2")
    frame = seg(C, S, 1000, 53, "", b"x" * (size - 42), udp=True)
    ref = run_reference(sw, [(1, frame)] * 12)
    passed_ref = sum(1 for o in ref.outputs if o)
    tier.flush()
    attach_ports(tier, sw)
    m = sw.dump_meters()[0]
    tier.set_meter(sw.meters.dp_id(m.meter_id), m.rate, m.burst or m.rate, m.unit == "pktps")
    [mf] = sw.cache.flows.values()
    assert tier.put(mf).tier == "ebpf"
    got = [tier.run(frame, 1) for _ in range(12)]
    assert sum(1 for g in got if g.outputs) == passed_ref == 5
    assert [bool(g.outputs) for g in got] == [bool(o) for o in ref.outputs]
    assert tier.meter_counts(sw.meters.dp_id(1)) == (5, 7)
    tier.remove_meter(sw.meters.dp_id(1))


def test_upcalls_are_rate_limited_per_port(tier):
    """One port's misses beyond its budget are dropped in the kernel; another port's still
    go up."""
    tier.flush()
    tier.add_port(1, 101)
    tier.add_port(2, 102)
    frame = seg(C, S, 1000, 53, "", b"x", udp=True)
    before = tier.stats()
    tier.set_upcall_limit(1, 3)          # 1 per second, bursts of 3, per port
    try:
        for _ in range(10):
            assert tier.run(frame, 1).verdict == "upcall"
        for _ in range(3):
            tier.run(frame, 2)
    finally:
        tier.set_upcall_limit(0, 0)
    after = tier.stats()
    assert after["upcall_limited"] - before["upcall_limited"] == 7
    assert after["miss"] - before["miss"] == 13


def test_a_udp_connection_stays_in_the_slow_path_until_its_reply():
    """Before a reply the slow path's conntrack says +new for each packet of a UDP
    connection: the kernel, which would say +est, must not hold it until then."""
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(SG)
    plain, kct = ConnSync(None, sw.conntrack, False), ConnSync(None, sw.conntrack, True)
    for _ in range(2):
        run_reference(sw, [(1, seg(C, S, 4000, 53, "", udp=True))])
        slots = sw.conntrack.view.in_zones({5})
        assert len(slots) == 1 and len(plain.desired(slots)[0]) == 0
        # A kernel that commits UDP itself holds it, awaiting its reply (+new both ways).
        assert kct.desired(slots)[1].tolist() == [0x21, 0x29]
    run_reference(sw, [(2, seg(S, C, 53, 4000, "", udp=True))])
    assert plain.desired(slots)[1].tolist() == kct.desired(slots)[1].tolist() == [0x22, 0x2A]
