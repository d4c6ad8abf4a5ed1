"""Conntrack's compiled express path against the numpy engine: same ct_* keys, same connection table, same counters."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.packet import Raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.conntrack_kernel import express as express_compiled
from sbnet.datapath.conntrack_pkt import CtBatch
from sbnet.datapath.conntrack_table import Timeouts
from sbnet.datapath.parse import parse
from sbnet.flows.fields import CT_STATE_BITS
from tests.datapath.test_conntrack_util import A, B, E, S, Tcp, udp


class Pair:
    """The compiled engine and the numpy one, fed the same packets."""

    def __init__(self, **kw):
        self.fast = Conntrack(compiled=True, **kw)
        self.ref = Conntrack(compiled=False, **kw)

    def run(self, pkts, zone=0, commit=False, now=0.0, pre=None):
        """Both engines on one batch; pre: (row, ct_state, ct_zone) set in the keys first,
        as a recirculated packet carries them."""
        outs = []
        for ct in (self.fast, self.ref):
            b = Batch.from_packets([bytes(p) for p in pkts], 1)
            pr = parse(b)
            for row, state, z in pre or ():
                pr.keys[S["ct_state"], row] = state
                pr.keys[S["ct_zone"], row] = z
            ct.execute(b, pr, np.arange(len(b)), zone, commit=commit, now=now)
            outs.append((b, pr))
        (bf, pf), (br, prf) = outs
        assert np.array_equal(pf.keys, prf.keys)
        assert np.array_equal(bf.data, br.data)
        self.same_tables()
        return pf

    def same_tables(self):
        f, r = self.fast.table, self.ref.table
        assert f.cap == r.cap and np.array_equal(f.mem, r.mem)
        assert np.array_equal(f.live, r.live) and np.array_equal(f.index.kv, r.index.kv)
        assert self.fast.stats == self.ref.stats


class Udp:
    """A UDP flow between A:sport and B:53."""

    def __init__(self, sport: int):
        self.sport = sport

    def pkt(self, d: int, **kw):
        ip = IP(src=A, dst=B) if d == 0 else IP(src=B, dst=A)
        ports = (self.sport, 53) if d == 0 else (53, self.sport)
        return E / ip / UDP(sport=ports[0], dport=ports[1], **kw) / Raw(b"q" * (1 + self.sport % 7))


def _datagram(r: random.Random, c: Udp):
    kind = r.random()
    d = r.randrange(2)
    if kind < 0.8:
        return c.pkt(d)
    return c.pkt(d, chksum=r.choice((0, 0x1234)))


def _segment(r: random.Random, c):
    if isinstance(c, Udp):
        return _datagram(r, c)
    d = r.randrange(2)
    kind = r.random()
    data = bytes(r.randrange(256) for _ in range(r.choice((0, 0, 1, 10, 200))))
    if kind < 0.85:
        return c.pkt(d, r.choice(("A", "A", "PA")), data)
    if kind < 0.89:       # out of the window
        return c.pkt(d, "A", data, seq=c.seq[d] + r.choice((-200000, 100000, 1 << 31)))
    if kind < 0.92:       # a bad TCP checksum
        return c.pkt(d, "A", data, chksum=0x1234)
    if kind < 0.96:
        return c.pkt(d, r.choice(("FA", "RA", "S", "SA", "")), data)
    return udp(sport=r.randrange(1, 65535))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_conns=st.integers(1, 12), rounds=st.integers(1, 5),
       liberal=st.booleans(), wscale=st.booleans(), n_udp=st.integers(0, 4))
def test_express_same_as_numpy(seed, n_conns, rounds, liberal, wscale, n_udp):
    r = random.Random(seed)
    pair = Pair(tcp_liberal=liberal, timeouts=Timeouts(tcp_established=6.0))
    conns = [Tcp(sport=1000 + i, isn_a=r.randrange(1 << 32), isn_b=r.randrange(1 << 32),
                 win=r.choice((1, 512, 65535))) for i in range(n_conns)]
    now = 0.0
    for c in conns:
        opts = {"options": [("WScale", r.randrange(15))]} if wscale else {}
        for p in (c.pkt(0, "S", **opts), c.pkt(1, "SA", **opts), c.pkt(0, "A")):
            pair.run([p], commit=True, now=now)
    flows = [Udp(3000 + i) for i in range(n_udp)]
    for f in flows:
        pair.run([f.pkt(0)], commit=True, now=now)
        if r.random() < 0.8:      # seen both ways: the express path's; else one way only
            pair.run([f.pkt(1)], now=now)
    conns = conns + flows
    snat = CT_STATE_BITS["snat"] | CT_STATE_BITS["trk"] | CT_STATE_BITS["est"]
    for _ in range(rounds):
        now += r.choice((0.5, 1.0, 2.0, 7.0))
        pkts = [_segment(r, r.choice(conns)) for _ in range(r.randint(1, 14))]
        if r.random() < 0.3:      # one connection's burst, past the layered passes
            c = r.choice(conns)
            pkts += [_segment(r, c) for _ in range(r.randint(5, 16))]
        pre = [(i, snat, r.choice((0, 7))) for i in range(len(pkts)) if r.random() < 0.05]
        pair.run(pkts, zone=r.choice((0, 0, 7)), commit=r.random() < 0.3, now=now, pre=pre)


def test_express_takes_established_segments():
    """Established ACKs of many connections, both ways, several per connection: all
    handled by the compiled express path, and the same as numpy."""
    pair = Pair()
    conns = [Tcp(sport=2000 + i) for i in range(40)]
    for c in conns:
        for p in c.handshake():
            pair.run([p], commit=True)
    before = pair.fast.stats["fast_path"]
    pkts = [c.pkt(d, "PA", b"x" * 20) for _ in range(3) for c in conns for d in (0, 1)]
    pf = pair.run(pkts, now=1.0)
    assert pair.fast.stats["fast_path"] - before == len(pkts)
    est = CT_STATE_BITS["est"] | CT_STATE_BITS["trk"]
    assert all(int(s) & est == est for s in pf.keys[S["ct_state"]])
    # Many segments of one connection (past conntrack_fast's layered passes), some out of
    # the window: the rows after the fourth invalid one of those are left to the batch path.
    c = conns[0]
    before = pair.fast.stats["fast_path"]
    pkts = [c.pkt(0, "A", b"y" * 10) for _ in range(6)] + [c.pkt(1, "A")]
    pkts += [c.pkt(0, "A", b"z", seq=c.seq[0] + 100000) for _ in range(6)] + [c.pkt(0, "A")]
    pair.run(pkts, now=2.0)
    assert pair.fast.stats["fast_path"] - before == len(pkts)


def test_express_takes_two_way_udp():
    """UDP/IPv4 of connections seen both ways (and a zero checksum): the compiled express
    path's own rows, not left to the batch path; the same keys, table and counters."""
    pair = Pair()
    flows = [Udp(4000 + i) for i in range(8)]
    for f in flows:
        pair.run([f.pkt(0)], commit=True)
        pair.run([f.pkt(1)])
    pkts = [f.pkt(d, **({"chksum": 0} if f.sport % 3 == 0 else {})) for f in flows for d in (1, 0)]
    b = Batch.from_packets([bytes(p) for p in pkts], 1)
    pr = parse(b)
    zones = np.zeros(len(b), dtype=np.uint64)
    left = express_compiled(pair.fast, CtBatch(b, pr, np.arange(len(b)), zones, False, None,
                                               1.0, False))
    assert left.size == 0
    est = CT_STATE_BITS["est"] | CT_STATE_BITS["trk"]
    assert all(int(s) & est == est for s in pr.keys[S["ct_state"]])
    pair.ref.execute(Batch.from_packets([bytes(p) for p in pkts], 1), parse(b), np.arange(len(b)),
                     0, now=1.0)
    assert np.array_equal(pair.fast.table.mem, pair.ref.table.mem)
