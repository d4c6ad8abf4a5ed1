"""Software segmentation of GSO packets: each segment as a NIC's TSO/USO would have sent it (scapy reads them back)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.checksum import internet_checksum, ones_sum
from sbnet.datapath.gso import segment

PAYLOAD = bytes(range(256)) * 20          # 5120 bytes


@pytest.mark.parametrize("l3", ["v4", "v6", "vlan"])
def test_tcp_segments_carry_the_payload_in_order_with_their_own_headers(l3):
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if l3 == "v6" else \
        IP(src="10.0.0.1", dst="10.0.0.2", id=7, flags="DF")
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if l3 == "vlan":
        eth = eth / Dot1Q(vlan=5)
    big = raw(eth / ip / TCP(sport=1, dport=2, seq=1000, flags="FPA") / PAYLOAD)
    segs = [Ether(s) for s in segment(big, 1448)]
    assert len(segs) == 4
    got = b"".join(bytes(s[TCP].payload) for s in segs)
    assert got == PAYLOAD
    assert [s[TCP].seq for s in segs] == [1000 + 1448 * i for i in range(4)]
    assert [str(s[TCP].flags) for s in segs] == ["A", "A", "A", "FPA"]
    for i, s in enumerate(segs):
        if l3 == "v6":
            assert s[IPv6].plen == 20 + len(s[TCP].payload)
        else:
            assert s[IP].len == 40 + len(s[TCP].payload) and s[IP].id == 7 + i
            want = IP(raw(s[IP]))
            del want.chksum
            assert s[IP].chksum == IP(raw(want)).chksum     # header checksum recomputed


def test_udp_gso_is_cut_into_datagrams_and_small_packets_pass_as_they_are():
    big = raw(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=5, dport=6) / PAYLOAD)
    segs = [Ether(s) for s in segment(big, 2000)]
    assert [len(s[UDP].payload) for s in segs] == [2000, 2000, 1120]
    assert all(s[UDP].len == 8 + len(s[UDP].payload) for s in segs)
    assert b"".join(bytes(s[UDP].payload) for s in segs) == PAYLOAD
    small = raw(Ether() / IP() / TCP() / (b"x" * 100))
    assert segment(small, 1448) == [small]
    arp = bytes(60)
    assert segment(arp, 10) == [arp]


@given(st.binary(min_size=1, max_size=120))
def test_internet_checksum_is_the_batch_ones_sum(buf):
    """The plain-Python checksum segment() puts in each frame's IPv4 header (odd lengths
    padded) equals the one the batch code's ones_sum gives."""
    arr = np.frombuffer(buf, dtype=np.uint8)[None, :]
    s = ones_sum(arr, np.zeros(1, np.int64), np.array([len(buf)]))
    assert internet_checksum(buf) == int(~s[0] & 0xFFFF)
