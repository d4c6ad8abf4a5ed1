"""The IPv6 extension-header walk execute() uses (parse.ipv6_upper) finds what parse() finds."""

from __future__ import annotations

import random

import numpy as np
from scapy.layers.inet import TCP, UDP
from scapy.layers.inet6 import (ICMPv6EchoRequest, IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment,
                                IPv6ExtHdrHopByHop, IPv6ExtHdrRouting)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw, raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import ipv6_upper, parse
from sbnet.flows.fields import ETH_IPV6, SLOT_INDEX

_EXT = (lambda r: IPv6ExtHdrHopByHop(),
        lambda r: IPv6ExtHdrRouting(addresses=["fc00::%d" % r.randrange(9)] * r.randrange(3)),
        lambda r: IPv6ExtHdrDestOpt(),
        lambda r: IPv6ExtHdrFragment(offset=r.choice((0, 0, 1, 185)), m=r.randrange(2), id=7),
        lambda r: AH(spi=1, seq=2, icv=bytes(4 * r.randrange(1, 4))))
_UPPER = (lambda: TCP(sport=1, dport=2), lambda: UDP(sport=3, dport=4),
          lambda: ICMPv6EchoRequest(id=5), lambda: Raw(b"payload"))


def _frame(r: random.Random) -> bytes:
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if r.random() < 0.2:
        l2 = l2 / Dot1Q(vlan=10)
    pkt = IPv6(src="fc00::1", dst="fc00::2")
    for _ in range(r.randrange(4)):
        pkt = pkt / r.choice(_EXT)(r)
    b = bytearray(raw(l2 / pkt / r.choice(_UPPER)()))
    fate = r.random()
    if fate < 0.15:
        del b[r.randrange(14, len(b)):]                     # truncated anywhere
    elif fate < 0.3 and len(b) > 60:
        b[r.randrange(54, min(len(b), 80))] = r.randrange(256)   # a corrupt length/next header
    return bytes(b)


def test_ipv6_upper_agrees_with_the_parser():
    r = random.Random(14)
    frames = [_frame(r) for _ in range(400)]
    batch = Batch.from_packets(frames, in_port=1)
    parsed = parse(batch)
    keys = parsed.keys
    rows = np.flatnonzero((keys[SLOT_INDEX["eth_type"]] == ETH_IPV6) & (parsed.l3 >= 0))
    assert rows.size > 300
    end = batch.start[rows].astype(np.int64) + batch.length[rows]
    proto, l4 = ipv6_upper(batch.data, rows, parsed.l3[rows], end)
    assert proto.tolist() == keys[SLOT_INDEX["nw_proto"], rows].astype(np.int64).tolist()
    assert l4.tolist() == parsed.l4[rows].astype(np.int64).tolist()
    # The sample covers each outcome: upper layers found, later fragments, broken chains.
    assert {6, 17, 58, 44, 0} <= set(proto.tolist()) and (l4 < 0).any()
