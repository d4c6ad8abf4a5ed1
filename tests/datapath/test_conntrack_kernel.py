"""Conntrack's compiled express path against the numpy engine: same ct_* keys, same connection table, same counters."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.conntrack_table import Timeouts
from sbnet.datapath.parse import parse
from sbnet.flows.fields import CT_STATE_BITS
from tests.datapath.test_conntrack_util import S, Tcp, udp


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


def _segment(r: random.Random, c: Tcp):
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
       liberal=st.booleans(), wscale=st.booleans())
def test_express_same_as_numpy(seed, n_conns, rounds, liberal, wscale):
    r = random.Random(seed)
    pair = Pair(tcp_liberal=liberal, timeouts=Timeouts(tcp_established=6.0))
    conns = [Tcp(sport=1000 + i, isn_a=r.randrange(1 << 32), isn_b=r.randrange(1 << 32),
                 win=r.choice((1, 512, 65535))) for i in range(n_conns)]
    now = 0.0
    for c in conns:
        opts = {"options": [("WScale", r.randrange(15))]} if wscale else {}
        for p in (c.pkt(0, "S", **opts), c.pkt(1, "SA", **opts), c.pkt(0, "A")):
            pair.run([p], commit=True, now=now)
    snat = CT_STATE_BITS["snat"] | CT_STATE_BITS["trk"] | CT_STATE_BITS["est"]
    for _ in range(rounds):
        now += r.choice((0.5, 1.0, 2.0, 7.0))
        pkts = [_segment(r, r.choice(conns)) for _ in range(r.randint(1, 14))]
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
    # A connection with more segments than the compiled pass settles on its own: numpy's.
    c = conns[0]
    pair.run([c.pkt(0, "A", b"y" * 10) for _ in range(6)] + [c.pkt(1, "A")], now=2.0)
