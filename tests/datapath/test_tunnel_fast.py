"""The compiled tunnel push and pop against tunnel.encap/decap: same frames byte for byte, same metadata, same counters."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath import tunnel as T
from sbnet.datapath.batch import Batch
from sbnet.datapath.dpif import tunnel_fast as F
from tests.datapath.test_tunnel_util import A4, B4, FAR4, UPLINK, inner_frame, ip4, underlay


def _port(r: random.Random, kind: str, me: str, ofport: int = 5) -> T.TunnelPort:
    peer = B4 if me == "a" else A4
    mine = A4 if me == "a" else B4
    key = r.choice(("flow", r.randrange(1 << (32 if kind == "gre" else 24)),
                    None if kind == "gre" else "flow"))
    return T.TunnelPort(
        ofport, kind, remote_ip=r.choice(("flow", peer, peer)),
        local_ip=r.choice((None, None, mine, "flow")), key=key, csum=r.choice((None, True, False)),
        tos=r.choice(("inherit", 0, r.randrange(64) << 2)),
        ttl=r.choice(("inherit", 64, r.randrange(1, 256))), df_default=r.random() < 0.7)


def _tun(r: random.Random, port: T.TunnelPort, me: str) -> dict:
    tun = {"tun_id": r.randrange(1 << 32)}
    if port.remote is None:
        tun["tun_dst"] = ip4(r.choice((B4 if me == "a" else A4, FAR4)))
    if r.random() < 0.3:
        tun["tun_src"] = r.choice((0, ip4(A4 if me == "a" else B4)))
    return tun


def _frames(r: random.Random, n: int) -> list[bytes]:
    return [inner_frame(r, max_payload=r.choice((0, 40, 300))).frame for _ in range(n)]


def _same_batch(a: Batch, b: Batch) -> None:
    assert np.array_equal(a.data, b.data)
    for x, y in ((a.start, b.start), (a.length, b.length), (a.in_port, b.in_port)):
        assert x.dtype == y.dtype and np.array_equal(x, y)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), kind=st.sampled_from(T.KINDS), n=st.integers(1, 12),
       mtu=st.sampled_from((1500, 1500, 200)))
def test_encap_same_as_numpy(seed, kind, n, mtu):
    r = random.Random(seed)
    u = underlay("a", mtu)
    port = _port(r, kind, "a")
    tun = _tun(r, port, "a")
    batch = Batch.from_packets(_frames(r, n), 3)
    fast = F._encap_fast(batch, np.arange(n), port, tun, u, n)
    ref = T.encap(batch, np.arange(n), port, tun, u)
    if fast is None:
        # Only what the compiled path leaves to numpy: a drop or a non-default source.
        assert ref.counters.get("encap_packets", 0) < n or mtu == 200 \
            or tun.get("tun_src") is None and port.local_ip == "flow"
        return
    _same_batch(fast.batch, ref.batch)
    assert np.array_equal(fast.out_port, ref.out_port) and fast.out_port.dtype == ref.out_port.dtype
    assert np.array_equal(fast.rows, ref.rows)
    assert fast.counters == ref.counters


def test_encap_takes_the_common_case():
    """VXLAN to a fixed remote from the route's source: compiled, and the same as numpy."""
    r = random.Random(7)
    u = underlay("a")
    for kind in T.KINDS:
        port = T.TunnelPort(5, kind, remote_ip=B4, key="flow" if kind != "gre" else 9, csum=True,
                            tos="inherit", ttl="inherit")
        batch = Batch.from_packets(_frames(r, 32), 3)
        fast = F._encap_fast(batch, np.arange(32), port, {"tun_id": 77}, u, 32)
        assert fast is not None
        ref = T.encap(batch, np.arange(32), port, {"tun_id": 77}, u)
        _same_batch(fast.batch, ref.batch)
        assert fast.counters == ref.counters == {"encap_packets": 32}


def test_a_new_underlay_is_not_taken_for_an_old_one():
    """Routes and MTUs are those of the underlay passed, even when an earlier one with the
    same number of changes is gone (and its id() reused)."""
    r = random.Random(5)
    port = T.TunnelPort(5, "vxlan", remote_ip=B4, key=1)
    batch = Batch.from_packets(_frames(r, 4), 3)
    for mtu in (1500, 60, 1500, 60):
        u = underlay("a", mtu)
        fast = F.encap(batch, np.arange(4), port, {}, u)
        ref = T.encap(batch, np.arange(4), port, {}, u)
        _same_batch(fast.batch, ref.batch)
        assert fast.counters == ref.counters
        del u


def _wire(r: random.Random, n: int) -> tuple[Batch, list[T.TunnelPort], bool]:
    """Underlay frames received by host b: tunnel packets of several kinds from a, some
    corrupted, and plain frames; with host b's tunnel ports.  Also whether every packet
    is clean VXLAN over IPv4 to a port (the compiled decap's own case)."""
    ua = underlay("a")
    kinds = ["vxlan"] if r.random() < 0.5 else r.sample(T.KINDS, r.randint(1, 3))
    senders, receivers = [], []
    for j, kind in enumerate(kinds):
        key = r.choice((None, "flow", r.randrange(1 << 10))) if kind == "gre" else \
            r.choice(("flow", r.randrange(1 << 10)))
        csum = r.choice((None, True))
        senders.append(T.TunnelPort(5 + j, kind, remote_ip=B4, key=key, csum=csum))
        rkey = key if r.random() < 0.8 else r.choice(("flow", 3))
        if kind == "gre" and rkey == 3:
            rkey = None
        receivers.append(T.TunnelPort(5 + j, kind, remote_ip=r.choice((A4, "flow")), key=rkey,
                                      local_ip=r.choice((None, B4))))
    frames: list[bytes] = []
    clean = True
    for _ in range(n):
        inner = _frames(r, 1)
        if r.random() < 0.15:
            frames.append(inner[0])         # not a tunnel packet at all
            continue
        p = r.choice(senders)
        b = Batch.from_packets(inner, 3)
        res = T.encap(b, [0], p, {"tun_id": r.randrange(1 << 10)}, ua)
        f = bytearray(res.batch.packet(0))
        if r.random() < 0.1:
            pos = r.randrange(len(f))
            f[pos] ^= 1 << r.randrange(8)
            clean = False
        if r.random() < 0.05:
            f = f[:r.randrange(len(f))]
            clean = False
        if p.kind != "vxlan":
            clean = False
        frames.append(bytes(f))
    if any(rp.key != sp.key and sp.kind == "vxlan" for rp, sp in zip(receivers, senders)):
        clean = False
    return Batch.from_packets(frames, UPLINK), receivers, clean


def _same_decap(fast: T.DecapResult, ref: T.DecapResult) -> None:
    _same_batch(fast.batch, ref.batch)
    assert fast.in_port.dtype == ref.in_port.dtype and np.array_equal(fast.in_port, ref.in_port)
    assert np.array_equal(fast.rows, ref.rows) and np.array_equal(fast.other, ref.other)
    assert fast.counters == ref.counters
    assert fast.tun.keys() == ref.tun.keys()
    for k, v in ref.tun.items():
        if k == "geneve_opts":
            assert fast.tun[k] == v
        else:
            assert fast.tun[k].dtype == v.dtype and np.array_equal(fast.tun[k], v), k


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 16))
def test_decap_same_as_numpy(seed, n):
    r = random.Random(seed)
    batch, ports, _ = _wire(r, n)
    ub = underlay("b")
    _same_decap(F.decap(batch, np.arange(n), ports, ub), T.decap(batch, np.arange(n), ports, ub))


def test_decap_takes_the_common_case():
    """Clean VXLAN over IPv4, with and without UDP checksums, beside plain frames: decided
    by the kernel alone (no row left to numpy), and the same as numpy."""
    r = random.Random(3)
    ua, ub = underlay("a"), underlay("b")
    frames = []
    for i in range(40):
        inner = Batch.from_packets(_frames(r, 1), 3)
        p = T.TunnelPort(5, "vxlan", remote_ip=B4, key="flow", csum=i % 2 == 0)
        frames.append(T.encap(inner, [0], p, {"tun_id": 1000 + i % 3}, ua).batch.packet(0)
                      if i % 7 else inner.packet(0))
    batch = Batch.from_packets(frames, UPLINK)
    ports = [T.TunnelPort(5, "vxlan", remote_ip="flow", key="flow"),
             T.TunnelPort(6, "vxlan", remote_ip=A4, key=1001)]
    res = np.empty((len(batch), 12), np.int64)
    assert F.decap_kernel(batch.data, batch.start, batch.length, *F._plan(tuple(ports), ub),
                          res) == 0
    fast = F.decap(batch, np.arange(len(batch)), ports, ub)
    _same_decap(fast, T.decap(batch, np.arange(len(batch)), ports, ub))
    assert set(fast.in_port.tolist()) == {5, 6} and len(fast.other) == 6
