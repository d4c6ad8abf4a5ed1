"""Conntrack vs real Open vSwitch (dummy datapath): same verdict per packet, same dump-conntrack lines."""

from __future__ import annotations

import random
import time

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6

from sbnet.datapath.conntrack import Conntrack
from sbnet.ovs.dummy import DummyOVS, require_ovs
from tests.datapath.test_conntrack_util import A, B, E, Tcp, ct_pipeline, udp

pytestmark = pytest.mark.ovs

# Table 1 sends each packet to a port that tells its ct_state: new 2, est 3, inv 4, rel 5.
FLOWS = """
table=0,priority=10,ip,actions=ct(table=1,zone=5)
table=0,priority=10,ipv6,actions=ct(table=1,zone=5)
table=1,priority=40,ct_state=+trk+inv,actions=output:4
table=1,priority=30,ct_state=+trk+rel,actions=output:5
table=1,priority=20,ct_state=+trk+est,actions=output:3
table=1,priority=10,ip,ct_state=+trk+new,actions=ct(commit,zone=5,exec(set_field:1->ct_mark)),output:2
table=1,priority=10,ipv6,ct_state=+trk+new,actions=ct(commit,zone=5,exec(set_field:1->ct_mark)),output:2
"""
PORTS = (2, 3, 4, 5)


def port_of(state: str) -> int | None:
    for bit, port in (("+inv", 4), ("+rel", 5), ("+est", 3), ("+new", 2)):
        if bit in state:
            return port
    return None


@pytest.fixture(scope="module")
def ovs():
    require_ovs()
    with DummyOVS(n_ports=5) as o:
        o.replace_flows(FLOWS)
        for p in PORTS:
            o.capture(p)
        yield o


def _output_port(ovs: DummyOVS, counts: dict[int, int], timeout: float = 2.0) -> int | None:
    """The port the last packet left on: every ct state has one, so wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        for p in PORTS:
            n = len(ovs.sent(p, timeout=0))
            if n != counts[p]:
                counts[p] = n
                return p
        if time.monotonic() > deadline:
            return None
        time.sleep(0.002)


def compare(ovs: DummyOVS, pkts) -> None:
    ovs.flush_conntrack()
    ct = Conntrack()
    counts = {p: len(ovs.sent(p)) for p in PORTS}
    for i, pkt in enumerate(pkts):
        ovs.receive(1, bytes(pkt))
        got = _output_port(ovs, counts)
        mine = ct_pipeline(ct, pkt, now=0.0)
        assert port_of(mine) == got, f"packet {i} {pkt.summary()}: ours {mine}, OVS port {got}"
    ovs_lines = sorted(ln for ln in ovs.dump_conntrack().splitlines() if ln.strip())
    assert ct.dump() == ovs_lines


def test_handshake_data_fin(ovs):
    c = Tcp()
    pk = c.handshake() + [c.pkt(0, "PA", b"GET /"), c.pkt(1, "A"), c.pkt(1, "PA", b"200 OK"),
                          c.pkt(0, "A"), c.pkt(0, "FA"), c.pkt(1, "A"), c.pkt(1, "FA"),
                          c.pkt(0, "A")]
    compare(ovs, pk)


def test_rst_and_out_of_window(ovs):
    c = Tcp(sport=2222)
    d = Tcp(sport=3333)
    pk = c.handshake() + d.handshake()
    pk += [c.pkt(0, "PA", b"x" * 50, seq=c.seq[0] + 5_000_000), c.pkt(0, "PA", b"ok"),
           c.pkt(1, "R", seq=c.seq[1] + 99999), c.pkt(1, "R"), c.pkt(0, "PA", b"late")]
    pk += [d.pkt(1, "PA", b"y" * 10, seq=d.seq[1] - 200_000), d.pkt(0, "RA")]
    compare(ovs, pk)


def test_unusual_openings(ovs):
    c = Tcp(sport=4444)
    s = Tcp(sport=5555)
    m = Tcp(sport=6666)
    pk = [c.pkt(1, "SA"), c.pkt(0, "SF"), c.pkt(0, "S"), c.pkt(0, "S", seq=1000),
          s.pkt(0, "S"), s.pkt(1, "S"), s.pkt(0, "SA", seq=1000), s.pkt(1, "SA", seq=5000),
          m.pkt(0, "A"), m.pkt(1, "A"), m.pkt(0, "PA", b"mid")]
    compare(ovs, pk)


def test_udp_icmp_related(ovs):
    c = Tcp(sport=7777)
    pk = [udp(), udp(), udp(B, A, 2, 1), udp(), udp(sport=9)]
    pk += [E / IP(src=A, dst=B) / ICMP(type=8, id=3), E / IP(src=A, dst=B) / ICMP(type=8, id=3),
           E / IP(src=B, dst=A) / ICMP(type=0, id=3), E / IP(src=B, dst=A) / ICMP(type=0, id=4)]
    pk += [E / IPv6(src="fc00::1", dst="fc00::2") / ICMPv6EchoRequest(id=5),
           E / IPv6(src="fc00::2", dst="fc00::1") / ICMPv6EchoReply(id=5)]
    pk += c.handshake()
    quoted = IPerror(src=A, dst=B) / TCPerror(sport=7777, dport=80, seq=1001)
    pk += [E / IP(src="10.9.9.9", dst=A) / ICMP(type=3, code=1) / quoted,
           E / IP(src="10.9.9.9", dst=A) / ICMP(type=3, code=1)
           / (IPerror(src=A, dst=B) / TCPerror(sport=1, dport=2))]
    compare(ovs, pk)


@pytest.mark.parametrize("seed", range(16))
def test_random_conversations(ovs, seed):
    rng = random.Random(seed)
    conns = [Tcp(sport=10000 + seed * 10 + i, isn_a=rng.getrandbits(32),
                 isn_b=rng.getrandbits(32), win=rng.choice((512, 8192, 65535)))
             for i in range(3)]
    pk = []
    for c in conns:
        if rng.random() < 0.8:
            pk += c.handshake()
    for _ in range(40):
        c = rng.choice(conns)
        d = rng.randrange(2)
        fl = rng.choice(["A", "PA", "PA", "PA", "FA", "R", "RA", "S", "SA"])
        data = bytes(rng.randrange(1, 300)) if fl == "PA" else b""
        r = rng.random()
        if r < 0.15:
            pk.append(c.pkt(d, fl, data, seq=(c.seq[d] + rng.choice((-1, 1))
                                              * rng.randrange(70_000, 2_000_000)) % 2**32))
        elif r < 0.25:
            pk.append(c.pkt(d, fl, data, ack=(c.seq[1 - d] + rng.randrange(100_000, 900_000))
                            % 2**32))
        else:
            pk.append(c.pkt(d, fl, data))
    compare(ovs, pk)


# SNAT/DNAT as a router would: port 1 inside, port 2 outside; ct(nat) first, commit with
# the translation on new inside packets; unsolicited outside packets go to port 3.
NAT_FLOWS = """
table=0,priority=10,ip,actions=ct(table=1,zone=5,nat)
table=1,priority=40,ct_state=+trk+inv,actions=output:4
table=1,priority=20,ip,in_port=1,ct_state=+trk+new-est-rel,actions=ct(commit,zone=5,{nat}),output:2
table=1,priority=10,ip,in_port=1,actions=output:2
table=1,priority=20,ip,in_port=2,ct_state=+trk+new-est-rel,actions=output:3
table=1,priority=10,ip,in_port=2,actions=output:1
"""


def _nat_pipeline(ct, in_port: int, pkt, spec):
    import numpy as np
    from sbnet.datapath.batch import Batch
    from sbnet.datapath.conntrack_nat import NatSpec
    from sbnet.datapath.parse import parse
    from tests.datapath.test_conntrack_util import S, flags
    b = Batch.from_packets([bytes(pkt)], in_port)
    pr = parse(b)
    ct.execute(b, pr, np.arange(1), 5, nat=NatSpec(), now=0.0)
    st = flags(int(pr.keys[S["ct_state"], 0]))
    if "+inv" in st:
        return 4, b.packet(0)
    fresh = "+new" in st and "+est" not in st and "+rel" not in st
    if in_port == 1:
        if fresh:
            ct.execute(b, pr, np.arange(1), 5, commit=True, nat=spec, now=0.0)
        return 2, b.packet(0)
    return (3 if fresh else 1), b.packet(0)


@pytest.mark.parametrize("nat", ["nat(src=10.1.1.1)", "nat(dst=10.2.0.5:8080)"])
def test_nat_bytes_match_ovs(ovs, nat):
    from sbnet.datapath.conntrack_nat import NatSpec
    spec = NatSpec.parse(nat)
    outside = "10.1.1.1" if "src" in nat else B
    c = Tcp(sport=4321, reply_to=outside)
    srv = B if "src" in nat else "10.2.0.5"
    pk = [(1, c.pkt(0, "S")), (1, udp(sport=53, dport=53)), (1, udp(sport=53, dport=53))]
    if "src" in nat:
        pk += [(2, c.pkt(1, "SA")), (1, c.pkt(0, "A")), (1, c.pkt(0, "PA", b"req")),
               (2, c.pkt(1, "PA", b"resp")), (2, udp(B, outside, 53, 53)),
               (2, udp(B, outside, 9, 9)),
               (2, E / IP(src="10.9.9.9", dst=outside) / ICMP(type=3, code=3)
                / (IPerror(src=outside, dst=B) / TCPerror(sport=4321, dport=80, seq=1001)))]
    else:
        from scapy.layers.inet import TCP
        pk += [(2, E / IP(src=srv, dst=A) / TCP(sport=8080, dport=4321, flags="SA", seq=5000,
                                                ack=1001)),
               (1, c.pkt(0, "A")),
               (2, E / IP(src="10.9.9.9", dst=A) / ICMP(type=3, code=3)
                / (IPerror(src=A, dst=srv) / TCPerror(sport=4321, dport=8080, seq=1001)))]
    ct = Conntrack()
    ovs.flush_conntrack()
    ovs.replace_flows(NAT_FLOWS.format(nat=nat))
    try:
        ovs.capture(1)
        counts = {p: len(ovs.sent(p, timeout=0)) for p in (1, 2, 3, 4)}
        for i, (port, pkt) in enumerate(pk):
            ovs.receive(port, bytes(pkt))
            got = got_pkt = None
            deadline = time.monotonic() + 2
            while got is None and time.monotonic() < deadline:
                for p in (1, 2, 3, 4):
                    sent = ovs.sent(p, timeout=0)
                    if len(sent) != counts[p]:
                        got, got_pkt, counts[p] = p, sent[-1], len(sent)
                        break
                else:
                    time.sleep(0.002)
            mine, mine_pkt = _nat_pipeline(ct, port, pkt, spec)
            assert (mine, mine_pkt.hex()) == (got, got_pkt.hex() if got_pkt else None), \
                f"packet {i} {pkt.summary()}"
        ovs_lines = sorted(ln for ln in ovs.dump_conntrack().splitlines() if ln.strip())
        assert ct.dump() == ovs_lines
    finally:
        ovs.replace_flows(FLOWS)
