"""Conntrack's compiled express path against the numpy engine: same ct_* keys, same connection table, same counters."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.conntrack_kernel import express as express_compiled
from sbnet.datapath.conntrack_nat import NatSpec
from sbnet.datapath.conntrack_pkt import CtBatch
from sbnet.datapath.conntrack_table import Timeouts
from sbnet.datapath.parse import parse
from sbnet.flows.fields import CT_STATE_BITS
from tests.compiler.scenario import checksums_valid
from tests.datapath.test_conntrack_util import A, B, E, S, Tcp, flags, udp


class Pair:
    """The compiled engine and the numpy one, fed the same packets."""

    def __init__(self, **kw):
        self.fast = Conntrack(compiled=True, **kw)
        self.ref = Conntrack(compiled=False, **kw)

    def run(self, pkts, zone=0, commit=False, now=0.0, pre=None, nat=None):
        """Both engines on one batch; pre: (row, ct_state, ct_zone) set in the keys first,
        as a recirculated packet carries them; nat: the ct action's NatSpec."""
        outs = []
        for ct in (self.fast, self.ref):
            b = Batch.from_packets([bytes(p) for p in pkts], 1)
            pr = parse(b)
            for row, state, z in pre or ():
                pr.keys[S["ct_state"], row] = state
                pr.keys[S["ct_zone"], row] = z
            ct.execute(b, pr, np.arange(len(b)), zone, commit=commit, now=now, nat=nat)
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


VIP, M, SNAT_IP = "10.0.0.100", "10.0.0.2", "10.0.0.50"


class Conv:
    """A conversation of one protocol ("tcp", "udp" or "icmp") whose packets each way are
    written as they travel: to VIP:80 and back from M:8080 (DNAT), from A to B and back to
    SNAT_IP (SNAT), or A to B untranslated.  spec: the NatSpec its commits carry."""

    def __init__(self, proto: str, nat: str | None, port: int, r: random.Random):
        self.proto, self.nat, self.port = proto, nat, port
        self.seq = {0: r.randrange(1 << 32), 1: r.randrange(1 << 32)}
        ip = lambda a: int(ipaddress.ip_address(a))  # noqa: E731
        if nat == "dst":
            self.fwd, self.rev = (A, VIP, port, 80), (M, A, 8080, port)
            self.spec = NatSpec("dst", ip(M), ip(M), 8080, 8080)
        elif nat == "src":
            self.fwd, self.rev = (A, B, port, 80), (B, SNAT_IP, 80, port)
            self.spec = NatSpec("src", ip(SNAT_IP), ip(SNAT_IP))
        else:
            self.fwd, self.rev = (A, B, port, 80), (B, A, 80, port)
            self.spec = None

    def pkt(self, d: int, fl: str = "A", data: bytes = b"", seq=None, chksum=None):
        src, dst, sp, dp = self.fwd if d == 0 else self.rev
        ip = IP(src=src, dst=dst)
        kw = {} if chksum is None else {"chksum": chksum}
        if self.proto == "udp":
            return E / ip / UDP(sport=sp, dport=dp, **kw) / Raw(data or b"q")
        if self.proto == "icmp":
            return E / ip / ICMP(type=8 if d == 0 else 0, id=self.port, seq=3, **kw) / Raw(data)
        s = self.seq[d] if seq is None else seq
        p = E / ip / TCP(sport=sp, dport=dp, flags=fl, seq=s % 2**32,
                         ack=self.seq[1 - d] % 2**32 if "A" in fl else 0, window=4096, **kw)
        if seq is None:
            self.seq[d] = (s + len(data) + ("S" in fl) + ("F" in fl)) & 0xFFFFFFFF
        return p / Raw(data) if data else p

    def opening(self):
        """(packet, commit) of the exchange that makes the connection two-way."""
        if self.proto == "tcp":
            return [(self.pkt(0, "S"), True), (self.pkt(1, "SA"), False), (self.pkt(0, "A"), True)]
        return [(self.pkt(0), True), (self.pkt(1), False)]


def _natted_traffic(r: random.Random, c: Conv):
    d = r.randrange(2)
    kind = r.random()
    data = bytes(r.randrange(256) for _ in range(r.choice((0, 1, 30))))
    if kind < 0.8:
        return c.pkt(d, r.choice(("A", "PA")), data)
    if kind < 0.87:
        return c.pkt(d, "A", data, chksum=0x1234)
    if kind < 0.93 and c.proto == "tcp":
        return c.pkt(d, "A", data, seq=c.seq[d] + (1 << 31))
    return c.pkt(d, r.choice(("FA", "RA", "S")), data) if c.proto == "tcp" else c.pkt(d)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 10), rounds=st.integers(1, 4))
# A reply segment 2^31 past its connection's data, behind two in-window ones in one batch:
# update() (SEQ_GEQ, signed 32-bit) finds it out of the window; the express paths' relative
# arithmetic let it through where the batch's prefix maxima did not.
@example(seed=8192, n=4, rounds=4)
def test_express_nat_and_icmp_same_as_numpy(seed, n, rounds):
    """TCP, UDP and ICMP echo connections, DNATed, SNATed or not, through ct(nat) and
    ct(commit, nat(...)) as the router and load-balancer pipelines run them: the compiled
    express path translates the same bytes, keys and table as numpy."""
    r = random.Random(seed)
    pair = Pair(timeouts=Timeouts(tcp_established=6.0, icmp_reply=5.0))
    conns = [Conv(r.choice(("tcp", "udp", "icmp")), r.choice(("dst", "src", None)), 3000 + i, r)
             for i in range(n)]
    for c in conns:
        for p, commit in c.opening():
            pair.run([p], commit=commit, nat=c.spec if commit else NatSpec())
    now = 0.0
    natted = CT_STATE_BITS["dnat"] | CT_STATE_BITS["trk"] | CT_STATE_BITS["est"]
    for _ in range(rounds):
        now += r.choice((0.5, 1.0, 6.0))
        pkts = [_natted_traffic(r, r.choice(conns)) for _ in range(r.randint(1, 12))]
        # and packets of connections no ct(commit) made: +new without a commit
        pkts += [_natted_traffic(r, Conv(r.choice(("tcp", "udp", "icmp")), None,
                                         r.randrange(20000, 30000), r))
                 for _ in range(r.choice((0, 0, 1, 3)))]
        r.shuffle(pkts)
        nat = r.choice((None, NatSpec(), conns[0].spec))
        pre = [(i, natted, 0) for i in range(len(pkts)) if r.random() < 0.05]
        pair.run(pkts, commit=nat is not None and nat.kind is not None, now=now, pre=pre,
                 nat=nat)


def _strided(a: np.ndarray) -> np.ndarray:
    """A copy of a held as every other column of a wider array (not C-contiguous)."""
    wide = np.zeros((a.shape[0], 2 * a.shape[1]), a.dtype)
    wide[:, ::2] = a
    return wide[:, ::2]


@pytest.mark.parametrize("strided", [False, True])
def test_express_translates_established_nat_and_answers_pings(strided):
    """Established DNAT/SNAT connections of each protocol, both ways, through ct(nat): all
    on the compiled express path, translated to the other tuple with valid checksums
    (strided: the frames and keys in strided arrays, which the kernel takes copies of and
    writes back)."""
    r = random.Random(5)
    pair = Pair()
    conns = [Conv(proto, nat, 5000 + 10 * i + j, r) for i, proto in enumerate(("tcp", "udp", "icmp"))
             for j, nat in enumerate(("dst", "src", None))]
    for c in conns:
        for p, commit in c.opening():
            pair.run([p], commit=commit, nat=c.spec if commit else NatSpec())
    pkts = [c.pkt(d, "PA", b"data") for c in conns for d in (0, 1)]
    b = Batch.from_packets([bytes(p) for p in pkts], 1)
    pr = parse(b)
    if strided:
        b.data = _strided(b.data)
        pr.keys = _strided(pr.keys)
    left = express_compiled(pair.fast, CtBatch(b, pr, np.arange(len(b)), np.zeros(len(b), np.uint64),
                                               False, NatSpec(), 1.0, False))
    assert left.size == 0
    for i, (c, d) in enumerate((c, d) for c in conns for d in (0, 1)):
        got = Ether(b.packet(i))
        want = c.rev if d == 0 else c.fwd      # the other direction's tuple, reversed
        assert (got[IP].src, got[IP].dst) == (want[1], want[0])
        if c.proto != "icmp":
            assert (got.sport, got.dport) == (want[3], want[2])
        assert checksums_valid(bytes(got))
        st = int(pr.keys[S["ct_state"], i])
        bit = {("dst", 0): "dnat", ("dst", 1): "snat", ("src", 0): "snat", ("src", 1): "dnat"}
        assert flags(st) == "+est" + ("+rpl" if d else "") + "+trk" + (
            f"+{bit[c.nat, d]}" if c.nat else "")


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), capacity=st.sampled_from([8, 64, 1024]))
def test_compiled_index_maps_as_numpys(seed, capacity):
    """The index's compiled lookups and bulk inserts against its numpy rounds, through
    inserts, deletes, growth and dead slots: every key maps to the same value, in the
    same slot."""
    from sbnet.datapath.conntrack_index import HashIndex, stored
    rng = random.Random(seed)
    idx = {c: HashIndex(capacity, compiled=c) for c in (True, False)}
    ref: dict[int, int] = {}
    keys: list[int] = []
    for step in range(40):
        new = [x for x in {stored(rng.getrandbits(rng.choice((6, 64)))) for _ in range(
            rng.randrange(1, 120))} if x not in ref]
        vals = np.arange(len(new), dtype=np.int64) + 1000 * step
        for i in idx.values():
            i.insert_many(np.array(new, dtype=np.uint64), vals)
        ref.update(zip(new, vals.tolist()))
        keys += new
        for k in rng.sample(sorted(ref), min(len(ref), rng.randrange(0, 40))):
            assert all(i.delete(k) for i in idx.values())
            del ref[k]
        probe = np.array(keys + [stored(rng.getrandbits(64)) for _ in range(5)], np.uint64)
        want = [ref.get(int(k), -1) for k in probe.tolist()]
        for i in idx.values():
            assert i.get_many(probe).tolist() == want
            assert (len(i), i.dead) == (len(ref), idx[False].dead)
        assert np.array_equal(idx[True].kv, idx[False].kv)


def _sum16_ref(d: np.ndarray, i: int, c: int, n: int) -> int:
    """_sum16 in plain Python: big-endian words of row i from column c, a byte past the
    row's end zero (a negative column counts from the end, as numpy's index does)."""
    byte = [int(d[i, c + j]) if c + j < d.shape[1] else 0 for j in range(n)] + [0]
    return sum(byte[j] << 8 | byte[j + 1] for j in range(0, n, 2))


@settings(max_examples=60, deadline=None)
@example(seed=0, width=4200, step=1, c=3, n=4300)
@example(seed=0, width=60, step=1, c=1, n=59)
@given(seed=st.integers(0, 2**32 - 1), width=st.sampled_from([7, 60, 249, 2100, 4200]),
       step=st.sampled_from([1, 1, 2]), c=st.integers(-6, 4300), n=st.integers(0, 4400))
def test_sum16_same_as_plain_python(seed, width, step, c, n):
    """The ones-complement sum every checksum takes (eight bytes a load, byte order
    swapped at the end) against its definition, as its callers use it (folded, alone or
    added to other sums): odd lengths and columns, rows ending mid-word, negative
    columns, strided rows, all-zero and all-0xFF rows."""
    from sbnet.datapath.conntrack_kernel import _fold, _sum16
    rng = np.random.default_rng(seed)
    d = rng.integers(0, 256, (4, width * step), dtype=np.uint8)[:, ::step]
    d[2] = 255
    d[3] = 0
    c = max(min(c, width + 2), -width)
    extra = int(rng.integers(0, 1 << 20))
    for i in range(4):
        got, want = int(_sum16(d, i, c, n)), _sum16_ref(d, i, c, n)
        assert (got == 0) == (want == 0)
        assert _fold(got) == _fold(want) and _fold(got + extra) == _fold(want + extra)
