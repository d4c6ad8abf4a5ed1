"""The switch's stateful pipeline vs real OVS: the same ct() tables, the same packets, the same ports and conntrack table."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCPerror

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
# The engine test's tables and OVS: each packet leaves on a port that tells its ct_state
# (new 2, est 3, inv 4, rel 5), the stateful pass runs in table 1 after recirculation.
from tests.datapath.test_conntrack_ovs import FLOWS, PORTS, _output_port, ovs  # noqa: F401
from tests.datapath.test_conntrack_util import A, B, E, Tcp, udp

pytestmark = pytest.mark.ovs


def compare(ovs, pkts):  # noqa: F811
    ovs.flush_conntrack()
    sw = Switch(clock=lambda: 0.0)
    for p in range(1, 6):
        sw.add_port(p)
    sw.load(FLOWS)
    counts = {p: len(ovs.sent(p)) for p in PORTS}
    for i, pkt in enumerate(pkts):
        ovs.receive(1, bytes(pkt))
        theirs = _output_port(ovs, counts)
        out = sw.process(Batch.from_packets([bytes(pkt)], 1), now=0.0)
        ours = [port for port, b in out if len(b)]
        assert ours == ([theirs] if theirs else []), f"packet {i} {pkt.summary()}: ours {ours}, OVS {theirs}"
    theirs = sorted(ln for ln in ovs.dump_conntrack().splitlines() if ln.strip())
    assert sw.conntrack.dump() == theirs


def test_handshake_data_teardown(ovs):  # noqa: F811
    c = Tcp()
    compare(ovs, c.handshake() + [c.pkt(0, "PA", b"GET /"), c.pkt(1, "PA", b"200 OK"),
                                  c.pkt(0, "FA"), c.pkt(1, "FA"), c.pkt(0, "A")])


def test_udp_icmp_and_related_errors(ovs):  # noqa: F811
    c = Tcp(sport=7777)
    pk = [udp(), udp(B, A, 2, 1), udp(), E / IP(src=A, dst=B) / ICMP(type=8, id=3),
          E / IP(src=B, dst=A) / ICMP(type=0, id=3)] + c.handshake()
    pk.append(E / IP(src="10.9.9.9", dst=A) / ICMP(type=3, code=1)
              / IPerror(src=A, dst=B) / TCPerror(sport=7777, dport=80, seq=1001))
    compare(ovs, pk)


# 70 runs of 3 interleaved TCP conversations each: 210 generated conversations.
@pytest.mark.parametrize("seed", range(70))
def test_random_conversations(ovs, seed):  # noqa: F811
    rng = random.Random(1000 + seed)
    conns = [Tcp(sport=20000 + seed * 10 + i, isn_a=rng.getrandbits(32),
                 isn_b=rng.getrandbits(32)) for i in range(3)]
    pk = [p for c in conns if rng.random() < 0.8 for p in c.handshake()]
    for _ in range(30):
        c = rng.choice(conns)
        d = rng.randrange(2)
        fl = rng.choice(["A", "PA", "PA", "FA", "R", "S", "SA"])
        data = bytes(rng.randrange(1, 200)) if fl == "PA" else b""
        if rng.random() < 0.15:
            pk.append(c.pkt(d, fl, data, seq=(c.seq[d] + rng.randrange(70_000, 2_000_000)) % 2**32))
        else:
            pk.append(c.pkt(d, fl, data))
    compare(ovs, pk)
