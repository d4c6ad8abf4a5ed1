"""Ring records to the slow path's batch: a checksum the sender left to the NIC is completed, any other is left as it came."""

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.upcalls import decode

GOOD = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
           / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, flags="A") / (b"x" * 20))
AT = 14 + 20 + 16                       # the TCP checksum


def record(frame: bytes, flags: int) -> bytes:
    head = L.UPCALL.pack(5, 1, len(frame), len(frame), L.STATS.index("miss"), flags, 0, 0, 0, 0, 0)
    return head + frame


def with_csum(frame: bytes, value: int) -> bytes:
    return frame[:AT] + value.to_bytes(2, "big") + frame[AT + 2:]


def test_only_partial_checksums_are_completed():
    """A partial checksum (the pseudo-header's sum, UP_F_CSUM_PARTIAL) is completed; a
    complete but wrong one stays wrong, for the slow path's conntrack to call invalid."""
    partial = with_csum(GOOD, 0x1234)
    bad = with_csum(GOOD, int.from_bytes(GOOD[AT:AT + 2], "big") ^ 0x00FF)
    up = decode([record(partial, L.UP_F_CSUM_PARTIAL), record(bad, 0), record(GOOD, 0)], None)
    got = up.batch.packets()
    assert got[0] == GOOD
    assert got[1] == bad
    assert got[2] == GOOD
