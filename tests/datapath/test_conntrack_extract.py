"""Conntrack's compiled packet keys against conntrack_pkt.extract: the same tuples, TCP fields, ICMP words, checksum verdicts, hashes and related packets, on good and damaged packets."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack_extract import extract_compiled
from sbnet.datapath.conntrack_pkt import extract
from sbnet.datapath.parse import parse

E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def _packet(r: random.Random) -> bytes:
    a, b = f"10.0.{r.randrange(3)}.{r.randrange(1, 4)}", f"10.1.0.{r.randrange(1, 4)}"
    kind = r.randrange(9)
    data = Raw(bytes(r.randrange(256) for _ in range(r.choice((0, 1, 7, 40)))))
    if kind == 0:
        p = E / IP(src=a, dst=b) / TCP(sport=r.randrange(1, 65536), dport=80,
                                       flags=r.choice(("S", "SA", "A", "PA", "FA", "R", "")),
                                       seq=r.randrange(1 << 32), ack=r.randrange(1 << 32),
                                       options=r.choice(([], [("WScale", 7)],
                                                         [("MSS", 1460), ("WScale", 3)])))
    elif kind == 1:
        p = E / IP(src=a, dst=b) / UDP(sport=r.randrange(1, 65536), dport=53,
                                       chksum=r.choice((None, None, 0)))
    elif kind == 2:
        p = E / IP(src=a, dst=b) / ICMP(type=r.choice((8, 0, 13, 14, 9)),
                                        code=r.choice((0, 0, 1)), id=r.randrange(65536))
    elif kind == 3:
        p = E / IP(src=b, dst=a) / ICMP(type=3, code=1) / IPerror(src=a, dst=b) / TCPerror(
            sport=1234, dport=80)
    elif kind == 4:
        p = E / IPv6(src=f"fd00::{r.randrange(1, 4)}", dst="fd00::9") / TCP(
            sport=r.randrange(1, 65536), dport=22, flags=r.choice(("S", "A", "PA")))
    elif kind == 5:
        p = E / IPv6(src="fd00::1", dst="fd00::9") / r.choice(
            (ICMPv6EchoRequest(id=r.randrange(65536)), ICMPv6EchoReply(id=5)))
    elif kind == 6:
        p = E / IP(src=a, dst=b, flags=r.choice((0, 1)), frag=r.choice((0, 0, 3))) / UDP(
            sport=9, dport=9)
    elif kind == 7:
        p = E / ARP(psrc=a, pdst=b)
    else:
        p = E / IP(src=a, dst=b, proto=47) / Raw(b"gre-ish")
    raw = bytearray(bytes(p / data) if kind not in (3, 7) else bytes(p))
    damage = r.random()
    if damage < 0.1:        # a checksum or a byte anywhere broken
        raw[r.randrange(14, len(raw))] ^= 1 << r.randrange(8)
    elif damage < 0.15:     # cut short
        raw = raw[:r.randrange(14, len(raw))]
    elif damage < 0.2:      # an IP length beyond the frame
        if raw[12:14] == b"\x08\x00":
            raw[17] = (raw[17] + r.randrange(1, 200)) & 0xFF
    return bytes(raw)


def _same(a, b):
    for name in ("ok", "related", "v6", "proto", "words", "hash", "flags", "seq", "ack", "win",
                 "plen"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a._opts == b._opts


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 12), checksums=st.booleans())
def test_compiled_keys_are_numpys(seed, n, checksums):
    r = random.Random(seed)
    pkts = [_packet(r) for _ in range(n)]
    b = Batch.from_packets(pkts, 1)
    pr = parse(b)
    rows = np.array(sorted(r.sample(range(n), r.randint(1, n))), dtype=np.intp)
    zones = np.array([r.choice((0, 7)) for _ in rows], dtype=np.uint64)
    got = extract_compiled(b, pr, rows, zones, checksums)
    if got is not None:
        _same(got, extract(b, pr, rows, zones, checksums))
        return
    # A row the kernel does not key exactly: every other row alone, then, still is its own.
    for i, z in zip(rows, zones):
        one, zone = np.array([i]), np.array([z])
        got = extract_compiled(b, pr, one, zone, checksums)
        if got is not None:
            _same(got, extract(b, pr, one, zone, checksums))


def test_compiled_keys_take_whole_packets():
    """Undamaged packets of every kind are the kernel's own, not handed to numpy."""
    r = random.Random(3)
    pkts = []
    while len(pkts) < 40:
        p = _packet(r)
        b = Batch.from_packets([p], 1)
        if parse(b).error[0] == 0:
            pkts.append(p)
    b = Batch.from_packets(pkts, 1)
    pr = parse(b)
    rows = np.arange(len(pkts))
    got = extract_compiled(b, pr, rows, np.zeros(len(pkts), np.uint64), True)
    want = extract(b, pr, rows, np.zeros(len(pkts), np.uint64), True)
    if got is None:     # one of them damaged by _packet: check the undamaged ones alone
        keep = [i for i in rows if extract_compiled(b, pr, np.array([i]), np.zeros(1, np.uint64),
                                                    True) is not None]
        assert len(keep) >= 30
        return
    _same(got, want)
    assert want.ok.sum() >= 20 and want.related.any()
