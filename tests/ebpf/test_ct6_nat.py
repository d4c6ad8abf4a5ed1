"""Established IPv6 connections and NATed connections (floating IP, SNAT, load-balancer DNAT) in the kernel's connection maps, against the reference switch."""

import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.layers.vxlan import VXLAN
from scapy.packet import raw

from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.ebpf.upcalls import five_tuples, five_tuples6
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch

from .test_tunnels_ct import A, B, TUNNEL, VM, host
from .util import attach_ports, compare, run_reference

C6, S6 = "2001:db8::1", "2001:db8::2"
SG6 = """\
table=0,priority=10,ipv6,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,tcp6,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,udp6,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ipv6,ct_state=+trk+est,in_port=1 actions=dec_ttl,output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""

# A router's NAT zone (9) as sbnet's compiler writes it (compiler/l3.py build_l3_nat): a
# floating IP's DNAT in and SNAT out, the gateway's SNAT of other VMs and its un-SNAT; and
# a load balancer's zone (11) as compiler/lb.py: ct(nat) first, a new connection to the VIP
# DNATed to a member (port too), members' replies un-NATed.  Port 1 outside, 2 the VMs.
FIP, FIXED, GW, OTHER, OUT = "203.0.113.10", "10.0.0.5", "203.0.113.1", "10.0.0.6", "198.51.100.7"
VIP, MEMBER = "10.0.0.100", "10.0.0.7"
VIP6, MEMBER6 = "fd00::100", "fd00::7"
NAT = f"""\
table=0,priority=20,tcp,in_port=1,nw_dst={VIP},tp_dst=80 actions=ct(zone=11,nat,table=3)
table=0,priority=20,tcp6,in_port=1,ipv6_dst={VIP6},tp_dst=80 actions=ct(zone=11,nat,table=3)
table=0,priority=20,tcp,in_port=2,tp_src=8080 actions=ct(zone=11,nat,table=5)
table=0,priority=20,tcp6,in_port=2,tp_src=8080 actions=ct(zone=11,nat,table=5)
table=0,priority=10,ip,in_port=1,nw_dst={FIP} actions=ct(commit,zone=9,nat(dst={FIXED}),table=1)
table=0,priority=5,ip,in_port=1,nw_dst={GW} actions=ct(zone=9,nat,table=1)
table=0,priority=10,ip,in_port=2,nw_src={FIXED} actions=mod_dl_src:02:00:00:00:0f:01,ct(commit,zone=9,nat(src={FIP}),table=2)
table=0,priority=5,ip,in_port=2 actions=ct(commit,zone=9,nat(src={GW}),table=2)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk,ip actions=dec_ttl,output:2
table=2,priority=10,ct_state=+trk,ip actions=dec_ttl,output:1
table=3,priority=10,tcp,ct_state=+new+trk,nw_dst={VIP},tp_dst=80 actions=ct(commit,zone=11,nat(dst={MEMBER}:8080),table=4)
table=3,priority=10,tcp6,ct_state=+new+trk,ipv6_dst={VIP6},tp_dst=80 actions=ct(commit,zone=11,nat(dst=[{MEMBER6}]:8080),table=4)
table=3,priority=5,ct_state=+trk+est actions=output:2
table=4,priority=1 actions=output:2
table=5,priority=1 actions=output:1
"""


def _ip(a: str) -> int:
    return int(ipaddress.ip_address(a))


def seg(src, dst, sport, dport, flags="A", payload=b"", udp=False, mac=1):
    l3 = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    l4 = UDP(sport=sport, dport=dport) if udp else TCP(sport=sport, dport=dport, flags=flags,
                                                       seq=1000, ack=1)
    return raw(Ether(src=f"02:00:00:00:00:0{mac}", dst="02:00:00:00:00:09") / l3 / l4 / payload)


def kernel_with(tier, sw: Switch, zones) -> ConnSync:
    """The tier emptied, its ports the switch's, and a ConnSync of the switch's conntrack
    for `zones` (kernel_ct off: the kernel commits nothing itself here)."""
    tier.flush()
    for m in (tier.m_conns, tier.m_conns6):
        for k in m.keys():
            m.delete(k)
    attach_ports(tier, sw)
    sync = ConnSync(tier, sw.conntrack, kernel_ct=False)
    sync.zones.update(zones)
    return sync


def hand_down(sync: ConnSync, frames: list[bytes]) -> None:
    """What the datapath does after an upcall batch: the batch's connections go down."""
    b = Batch.from_packets(frames, 1)
    sync.hand_down(five_tuples(b))
    sync.hand_down6(five_tuples6(b))


@settings(max_examples=5, deadline=None)
@given(sport=st.integers(1024, 65535), udp=st.booleans(),
       data=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), min_size=1, max_size=8))
def test_established_ipv6_connections_run_in_the_kernel(tier, sport, udp, data):
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(SG6)
    dport = 53 if udp else 80
    if udp:
        opening = [(1, seg(C6, S6, sport, dport, udp=True)), (2, seg(S6, C6, dport, sport, udp=True))]
    else:
        opening = [(1, seg(C6, S6, sport, dport, "S")), (2, seg(S6, C6, dport, sport, "SA")),
                   (1, seg(C6, S6, sport, dport, "A"))]
    run_reference(sw, opening)
    sw.flush_megaflows()
    sync = kernel_with(tier, sw, {5})
    hand_down(sync, [f for _, f in opening])
    assert sorted(sync.held6.values()) == [0x22, 0x2A]        # +trk+est, +trk+est+rpl
    packets = [(1, seg(C6, S6, sport, dport, "PA", p, udp)) if fwd else
               (2, seg(S6, C6, dport, sport, "PA", p, udp)) for fwd, p in data]
    ref = run_reference(sw, packets)
    before = tier.stats()["ct6"]
    seen = compare(tier, sw, packets, ref)
    assert seen == {"kernel": len(packets), "upcall": 0}
    assert tier.stats()["ct6"] - before == len(packets)
    # What the kernel forwarded keeps the slow path's connection alive (its timeout restarts).
    [slot] = sw.conntrack.view.in_zones({5}, v6=True)
    was = float(sw.conntrack.table.exp[slot])
    sync.sync(1000.0)
    assert sw.conntrack.table.exp[slot] == was + 1000.0
    if not udp:       # a FIN changes the connection's state: the slow path's
        fin = seg(C6, S6, sport, dport, "FA")
        assert tier.run(fin, 1).verdict == "upcall"
        run_reference(sw, [(1, fin)])
        hand_down(sync, [fin])                # no longer established: out of the map at once
        assert not sync.held6 and not tier.m_conns6.keys()
    # Gone from the slow path's conntrack: gone from the kernel at the next reconciliation.
    sw.conntrack.flush()
    sync.sync(0.0)
    assert not sync.held6 and not tier.m_conns6.keys()
    assert tier.run(packets[0][1], packets[0][0]).verdict == "upcall"


# Each case: the connection's opening packets (through the slow path), then the data
# packets' directions: (in_port, src, dst, sport, dport) one way and the other.
CASES = {
    "floating_ip_in": ((1, OUT, FIP, 40000, 22), (2, FIXED, OUT, 22, 40000)),
    "floating_ip_out": ((2, FIXED, OUT, 41000, 443), (1, OUT, FIP, 443, 41000)),
    "router_snat": ((2, OTHER, OUT, 42000, 53), (1, OUT, GW, 53, 42000)),
    "lb_dnat": ((1, OUT, VIP, 43000, 80), (2, MEMBER, OUT, 8080, 43000)),
    "lb_dnat6": ((1, "2001:db8::9", VIP6, 44000, 80), (2, MEMBER6, "2001:db8::9", 8080, 44000)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(udp=st.booleans(), data=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)),
                                        min_size=1, max_size=6))
def test_nat_of_established_connections_in_the_kernel(tier, case, udp, data):
    """Both directions of a NATed connection the slow path committed are translated by the
    kernel (addresses, ports, IPv4 header and L4 checksums): the same bytes on the same
    ports as the reference switch, the same megaflow counters."""
    udp = udp and not case.startswith("lb")           # the listeners are TCP
    fwd, back = CASES[case]
    sw = Switch(clock=lambda: 0.0)
    sw.conntrack.tcp_liberal = True                   # as EbpfDatapath sets it
    for p in (1, 2):
        sw.add_port(p)
    sw.load(NAT)

    def pkt(d, flags="A", payload=b""):
        port, src, dst, sport, dport = d
        return port, seg(src, dst, sport, dport, flags, payload, udp, mac=port)

    opening = [pkt(fwd), pkt(back)] if udp else [pkt(fwd, "S"), pkt(back, "SA"), pkt(fwd)]
    run_reference(sw, opening)
    sw.flush_megaflows()
    sync = kernel_with(tier, sw, {9, 11})
    hand_down(sync, [f for _, f in opening])
    assert len(sync.nats) == 2, sync.nats                  # both directions translated
    packets = [pkt(fwd if f else back, "PA", p) for f, p in data]
    ref = run_reference(sw, packets)
    for (port, _), outs in zip(packets, ref.outputs):
        assert [p for p, _ in outs] == [3 - port]          # the reference forwarded each
    before = tier.stats()["ct_nat"]
    seen = compare(tier, sw, packets, ref)
    assert seen == {"kernel": len(packets), "upcall": 0}
    assert tier.stats()["ct_nat"] - before == len(packets)
    # A restarted agent takes the connection up from the pinned map, translation and all,
    # and its first reconciliation writes the entries as they were.
    entries = _entries(tier)
    fresh = Switch(clock=lambda: 0.0)
    again = ConnSync(tier, fresh.conntrack, kernel_ct=False)
    again.take_up(0.0)
    assert fresh.conntrack.dump() == sw.conntrack.dump()
    again.sync(0.0)
    assert _entries(tier) == entries and len(again.nats) == 2


def _entries(tier) -> dict:
    """Both connection maps' entries: key -> (state, mark, translation)."""
    out = {}
    for m in (tier.m_conns, tier.m_conns6):
        keys, vals = m.items()
        for i, v in enumerate(np.frombuffer(vals, dtype=L.CT_VAL_DTYPE)):
            key = keys[i * m.key_size:(i + 1) * m.key_size]
            out[key] = (int(v["state"]), int(v["mark"]), v["nat"].tobytes())
    return out


def test_a_new_connection_given_a_translation_goes_up(tier):
    """A packet of no connection reaching ct(commit,nat(dst=...)): the slow path picks the
    translation and commits it, never the kernel (here with kernel commits on)."""
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(NAT)
    frames = [seg(OUT, FIP, 45000, 22, "S"), seg(OUT, FIP, 45001, 53, udp=True)]
    run_reference(sw, [(1, f) for f in frames])
    sw.conntrack.flush()
    kernel_with(tier, sw, {9})
    for mf in sw.cache.flows.values():
        assert tier.put(mf).tier == "ebpf"
    tier.set_kernel_ct(True)
    try:
        for f in frames:
            got = tier.run(f, 1)
            assert (got.verdict, got.passes) == ("upcall", 1)     # its megaflow hit, then up
    finally:
        tier.set_kernel_ct(False)
    assert not tier.m_conns.keys()


@settings(max_examples=4, deadline=None)
@given(n=st.integers(0, 200), hlim=st.integers(2, 255))
def test_vxlan_encap_of_ipv6_frames_with_hop_limit_in_the_kernel(tier, n, hlim):
    """IPv6 inner frames (dec_ttl and a field set on the way) into a VXLAN tunnel, and a
    tunnel's IPv6 frames out to a VM: every megaflow in the kernel, same bytes and key."""
    flows = ("priority=1,in_port=1,ipv6 actions=dec_ttl,set_field:0x42->tun_id,output:20\n"
             "priority=1,in_port=20,ipv6 actions=set_field:2001:db8::77->ipv6_dst,output:1")
    sw = host(A, B, flows)
    inner = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                / IPv6(src=C6, dst=S6, hlim=hlim) / UDP(sport=1000, dport=53) / (b"x" * n))
    ref = run_reference(sw, [(VM, inner)])
    tier.flush()
    attach_ports(tier, sw)
    placed = [tier.put(mf) for mf in sw.cache.flows.values()]
    assert [p.tier for p in placed] == ["ebpf"], placed
    got = tier.run(inner, VM)
    [(_, wire)] = ref.outputs[0]
    assert [(o.ofport, o.tunnel[0]) for o in got.outputs] == [(TUNNEL, 0x42)]
    assert got.outputs[0].data == raw(Ether(wire)[VXLAN].payload)
    sw = host(A, B, flows)
    tier.flush()
    back = compare(tier, sw, [(TUNNEL, inner)], run_reference(sw, [(TUNNEL, inner)]))
    assert back == {"kernel": 1, "upcall": 0}


@settings(max_examples=4, deadline=None)
@given(segs=st.lists(st.tuples(st.integers(1024, 65535),
                               st.sampled_from(["A", "PA", "FA", "R", "RA", "S", "SA", "F"])),
                     min_size=1, max_size=6))
def test_replies_a_load_balancer_zone_never_saw_pass_it_as_new_in_the_kernel(tier, segs):
    """On a member's host the load-balancer zone knows none of the connections the
    clients' hosts DNATed: the member's replies pass its ct(nat) without commit as +new,
    untranslated, stored nowhere, in the kernel as in the reference (with kernel commits
    on, the map holds every connection the slow path has there); a SYN-ACK or invalid
    flags go up."""
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2, 3):
        sw.add_port(p)
    sw.load("table=0,priority=10,tcp,in_port=2 actions=ct(zone=11,nat,table=1)\n"
             "table=1,priority=10,ct_state=+trk+new actions=output:1\n"
             "table=1,priority=5 actions=output:3")
    packets = [(2, seg(MEMBER, OUT, 8080, sport, flags, b"x")) for sport, flags in segs]
    ref = run_reference(sw, packets)
    kernel_with(tier, sw, {11})
    tier.set_kernel_ct(True)
    try:
        assert all(tier.put(mf).tier == "ebpf" for mf in sw.cache.flows.values())
        for (port, frame), want, (_, flags) in zip(packets, ref.outputs, segs):
            got = tier.run(frame, port)
            new = flags not in ("SA", "F")             # tcp_valid_new
            assert [p for p, _ in want] == [1 if new else 3]
            if new:
                assert [(o.ofport, o.data) for o in got.outputs] == want
            else:
                assert got.verdict == "upcall"
    finally:
        tier.set_kernel_ct(False)
    assert not tier.m_conns.keys()


# A packet rewritten by the kernel (a NAT, or the router's sets) and then sent up by a later
# ct(): the slow path runs it from the first table, so it must go up as it arrived.
REWRITTEN = {
    # the floating IP's way out: Ethernet source and TTL set, then ct(commit,nat(src=...))
    # of a new connection, which only the slow path can translate
    "sets, then a new connection's nat": (
        f"table=0,priority=10,ip,in_port=2 actions=mod_dl_src:02:00:00:00:0f:01,dec_ttl,"
        f"ct(commit,zone=9,nat(src={FIP}),table=2)\ntable=2,priority=1 actions=output:1",
        (2, FIXED, OUT, 46000, 443), False),
    # a DNAT done in the kernel (a UDP listener's), then a zone the connection is unknown in
    "nat, then a zone that does not know it": (
        f"table=0,priority=10,udp,in_port=1,nw_dst={VIP} actions=ct(zone=11,nat,table=1)\n"
        f"table=1,priority=10,ct_state=+new+trk,udp actions=ct(commit,zone=11,"
        f"nat(dst={MEMBER}:8080),table=2)\n"
        "table=1,priority=5,ct_state=+est+trk actions=ct(zone=5,table=2)\n"
        "table=2,priority=1 actions=output:2\n"
        "table=0,priority=5,in_port=2 actions=ct(zone=11,nat,table=3)\n"
        "table=3,priority=1 actions=output:1",
        (1, OUT, VIP, 47000, 80), True),
    "IPv6: nat, then a zone that does not know it": (
        f"table=0,priority=10,udp6,in_port=1,ipv6_dst={VIP6} actions=ct(zone=11,nat,table=1)\n"
        f"table=1,priority=10,ct_state=+new+trk,udp6 actions=ct(commit,zone=11,"
        f"nat(dst=[{MEMBER6}]:8080),table=2)\n"
        "table=1,priority=5,ct_state=+est+trk actions=ct(zone=5,table=2)\n"
        "table=2,priority=1 actions=output:2\n"
        "table=0,priority=5,in_port=2 actions=ct(zone=11,nat,table=3)\n"
        "table=3,priority=1 actions=output:1",
        (1, "2001:db8::9", VIP6, 47000, 80), True),
}


@pytest.mark.parametrize("case", sorted(REWRITTEN))
def test_a_rewritten_packet_goes_up_as_it_arrived(tier, case):
    flows, (port, src, dst, sport, dport), established = REWRITTEN[case]
    sw = Switch(clock=lambda: 0.0)
    sw.conntrack.tcp_liberal = True
    for p in (1, 2):
        sw.add_port(p)
    sw.load(flows)
    frame = seg(src, dst, sport, dport, "A", b"data", udp=established, mac=port)
    if established:     # zone 11 has it (both ways), zone 5 never saw it
        reply = seg(MEMBER6 if ":" in src else MEMBER, src, 8080, sport, udp=True, mac=2)
        run_reference(sw, [(port, frame)])
        sw.conntrack.flush(5)
        run_reference(sw, [(2, reply)])
    else:               # the megaflows of an earlier connection, this one new
        run_reference(sw, [(port, seg(src, dst, sport + 1, dport, "A", mac=port))])
        sw.conntrack.flush()
    sync = kernel_with(tier, sw, {9, 11})
    for mf in sw.cache.flows.values():
        tier.put(mf)
    sync.hand_down(five_tuples(Batch.from_packets([frame], 1)))
    sync.hand_down6(five_tuples6(Batch.from_packets([frame], 1)))
    assert bool(sync.nats) == established
    before = tier.stats()
    got = tier.run(frame, port)
    after = tier.stats()
    assert got.verdict == "upcall" and got.passes >= 1, got
    assert after["ct_nat"] - before["ct_nat"] == int(established)   # rewritten in the kernel
    assert got.upcalled == frame                                      # and put back
