"""Checksums before a ct() in the kernel: a packet of an established connection whose checksum the reference switch's conntrack finds wrong goes up, not out; right ones (any length) stay in the kernel."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.switch import Switch

from .test_ct6_nat import hand_down, kernel_with
from .util import compare, run_reference

SG = """\
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=10,ipv6,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ct_state=+trk+est,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""


def frame(kind: str, reply: bool, payload: bytes) -> tuple[int, bytes]:
    v6 = kind.endswith("6")
    a, b = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    src, dst = (b, a) if reply else (a, b)
    l3 = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    if kind.startswith("udp"):
        l4 = UDP(sport=53 if reply else 1000, dport=1000 if reply else 53)
    else:
        l4 = ICMP(type=0 if reply else 8, id=7, seq=1)
    port = 2 if reply else 1
    return port, raw(Ether(src=f"02:00:00:00:00:0{port}", dst="02:00:00:00:00:09") / l3 / l4
                     / payload)


def spoil(f: bytes, at: int) -> bytes:
    """One bit of byte `at` flipped, no checksum mended."""
    return f[:at] + bytes([f[at] ^ 0x10]) + f[at + 1:]


@pytest.mark.parametrize("kind", ["udp", "icmp", "udp6"])
@settings(max_examples=4, deadline=None)
@given(data=st.lists(st.tuples(st.booleans(), st.integers(1, 1472)), min_size=1, max_size=4))
def test_a_wrong_checksum_goes_up_where_the_reference_drops_it(tier, kind, data):
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(SG)
    opening = [frame(kind, False, b"q"), frame(kind, True, b"a")]
    assert all(run_reference(sw, opening).outputs)
    sw.flush_megaflows()
    sync = kernel_with(tier, sw, {5})
    hand_down(sync, [f for _, f in opening])
    # Right checksums of every length (the kernel sums them in 512-byte chunks, an odd
    # last byte padded): the kernel forwards them as the reference does.
    good = [frame(kind, r, (bytes(range(1, 256)) * 6)[:n]) for r, n in data]
    assert compare(tier, sw, good, run_reference(sw, good)) == {"kernel": len(good), "upcall": 0}
    # The same packets with a bit of their last byte (or the IPv4 header's TTL) flipped: the
    # reference's conntrack calls them invalid and the group drops them; the kernel sends
    # them up rather than out.
    spoilt = [(p, spoil(f, len(f) - 1)) for p, f in good]
    if kind != "udp6":
        spoilt += [(p, spoil(f, 14 + 8)) for p, f in good]
    for port, f in spoilt:
        assert run_reference(sw, [(port, f)]).outputs == [[]]
        assert tier.run(f, port).verdict == "upcall"
