"""Underlay routing: the vectorized longest-prefix match against a naive reference."""

from __future__ import annotations

import ipaddress
import random

import numpy as np
import pytest

from sbnet.datapath.underlay import Underlay

M64 = (1 << 64) - 1


def _naive(routes, neigh, family, dst):
    best = None
    bits = 32 if family == 4 else 128
    for i, (net, plen, gw, port) in enumerate(routes):
        mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
        if dst & mask == net and (best is None or plen > routes[best][1]):
            best = i
    if best is None:
        return (False, 1, None, None)
    _, _, gw, port = routes[best]
    nh = gw or dst
    if nh not in neigh:
        return (False, 2, port, None)
    return (True, 0, port, neigh[nh])


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("seed", range(20))
def test_lpm_matches_naive(family, seed):
    rnd = random.Random(seed * 10 + family)
    bits = 32 if family == 4 else 128
    u = Underlay()
    for p in range(1, 4):
        u.add_port(p, 0x020000000000 + p, 1500 + p)
    # Few distinct top bits so prefixes overlap.
    top = [rnd.getrandbits(bits) for _ in range(3)]

    def addr():
        t = rnd.choice(top)
        keep = rnd.randrange(bits // 2, bits)
        return (t >> (bits - keep) << (bits - keep)) | rnd.getrandbits(bits - keep)

    routes, neigh = [], {}
    for _ in range(rnd.randrange(1, 25)):
        plen = rnd.choice([0, 8, 16, 24, bits - 8, bits, rnd.randrange(bits + 1)])
        mask = ((1 << bits) - 1) ^ ((1 << (bits - plen)) - 1)
        net = addr() & mask
        gw = addr() if rnd.random() < 0.4 else 0
        port = rnd.randrange(1, 4)
        if any(r[0] == net and r[1] == plen for r in routes):
            continue     # equal prefixes: the first added wins, keep the reference simple
        routes.append((net, plen, gw, port))
        ctor = ipaddress.IPv4Address if family == 4 else ipaddress.IPv6Address
        text = f"{ctor(net)}/{plen}"
        u.add_route(text, port, gateway=None if gw == 0 else ctor(gw))
    dsts = [addr() for _ in range(60)]
    for d in rnd.sample(dsts, 30) + [r[2] for r in routes if r[2]]:
        neigh[d] = rnd.getrandbits(48)
        u.add_neighbour(ipaddress.IPv4Address(d) if family == 4 else ipaddress.IPv6Address(d),
                        neigh[d])
    hi = np.array([d >> 64 for d in dsts], np.uint64)
    lo = np.array([d & M64 for d in dsts], np.uint64)
    r = u.resolve(family, hi, lo)
    for i, d in enumerate(dsts):
        ok, reason, port, mac = _naive(routes, neigh, family, d)
        assert (bool(r.ok[i]), int(r.reason[i])) == (ok, reason), i
        if reason != 1:
            assert int(r.ofport[i]) == port
            assert int(r.mtu[i]) == 1500 + port
        if ok:
            assert int(r.dst_mac[i]) == mac


def test_local_addresses():
    u = Underlay()
    u.add_local("192.0.2.1")
    u.add_local("2001:db8::1")
    v6 = int(ipaddress.IPv6Address("2001:db8::1"))
    assert u.is_local(4, np.zeros(2, np.uint64), np.array([0xC0000201, 0xC0000202],
                                                          np.uint64)).tolist() == [True, False]
    assert u.is_local(6, np.array([v6 >> 64], np.uint64),
                      np.array([v6 & M64], np.uint64)).tolist() == [True]
    with pytest.raises(ValueError):
        u.add_route("10.0.0.0/8", 5)


def test_the_same_neighbour_again_keeps_the_caches_and_a_new_mac_replaces_it():
    """A restarted agent resolves its peers again: the same answer leaves the underlay (and
    the tunnel caches keyed on its generation) as it was; a changed MAC takes effect."""
    u = Underlay()
    u.add_port(7, "02:00:00:00:00:01")
    u.add_route("10.250.0.0/24", 7)
    u.add_neighbour("10.250.0.2", "02:fe:00:00:01:02")
    dst = (np.zeros(1, np.uint64), np.array([0x0AFA0002], np.uint64))
    assert int(u.resolve(4, *dst).dst_mac[0]) == 0x02FE00000102
    generation = u.generation
    u.add_neighbour("10.250.0.2", "02:fe:00:00:01:02")
    assert u.generation == generation
    assert int(u.resolve(4, *dst).dst_mac[0]) == 0x02FE00000102
    u.add_neighbour("10.250.0.2", "02:fe:00:00:01:99")
    assert u.generation > generation
    assert int(u.resolve(4, *dst).dst_mac[0]) == 0x02FE00000199
