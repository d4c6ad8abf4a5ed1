"""Virtio-net headers on the reference switch's packet sockets: GSO packets cut and partial checksums completed natively, against the Python segmenter and scapy."""

from __future__ import annotations

import struct

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath import vnet
from sbnet.datapath.batch import HEADROOM, Batch
from sbnet.datapath.ebpf.upcalls import complete_l4_checksums
from sbnet.datapath.gso import segment

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def received(frames_hdrs: list[tuple[bytes, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    """A Receiver's buffer and lengths: each virtio-net header just before HEADROOM."""
    width = HEADROOM + max(len(f) for f, _ in frames_hdrs) + 64
    buf = np.zeros((len(frames_hdrs), width), np.uint8)
    for r, (f, h) in enumerate(frames_hdrs):
        buf[r, HEADROOM - vnet.VNET_LEN:HEADROOM] = np.frombuffer(h, np.uint8)
        buf[r, HEADROOM:HEADROOM + len(f)] = np.frombuffer(f, np.uint8)
    return buf, np.array([len(f) for f, _ in frames_hdrs], np.int32)


def header(flags=0, kind=vnet.GSO_NONE, hdr_len=0, size=0, start=0, offset=0) -> bytes:
    return struct.pack("<BBHHHH", flags, kind, hdr_len, size, start, offset)


def frames_out(buf, lens) -> list[bytes]:
    out, out_len, _, _ = vnet.expand(buf, lens)
    return [out[i, HEADROOM:HEADROOM + out_len[i]].tobytes() for i in range(len(out_len))]


def reference(frame: bytes, size: int) -> list[bytes]:
    """gso.segment's frames with every L4 checksum done (the upcall path's oracle)."""
    segs = segment(frame, size)
    b = Batch.from_packets(segs, 1)
    complete_l4_checksums(b)
    return b.packets()


def partial(frame: bytes, l4: int, at: int, proto: int, v4: bool, l3: int) -> bytes:
    """The frame as a VM with checksum offload hands it over: the L4 checksum field holds
    only the pseudo-header sum (not complemented), as the kernel leaves it for the NIC."""
    f = bytearray(frame)
    seg = len(f) - l4
    addr = f[l3 + 12:l3 + 20] if v4 else f[l3 + 8:l3 + 40]
    s = sum(struct.unpack(f"!{len(addr) // 2}H", addr)) + proto + seg
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    f[l4 + at:l4 + at + 2] = struct.pack("!H", s)
    return bytes(f)


@settings(max_examples=60, deadline=None)
@given(l3=st.sampled_from(["v4", "v6", "vlan"]), udp=st.booleans(),
       pay=st.integers(1, 9000), size=st.integers(200, 1460), fin=st.booleans(),
       seq=st.integers(0, 2**32 - 1), ip_id=st.integers(0, 0xFFFF))
def test_gso_packets_are_cut_as_the_python_segmenter_cuts_them(l3, udp, pay, size, fin, seq,
                                                               ip_id):
    """Every GSO kind the port takes, against gso.segment plus full checksums: the same
    frames, byte for byte, whatever the payload, segment size and counters."""
    ip = IPv6(src="2001:db8::1", dst="2001:db8::2") if l3 == "v6" else \
        IP(src="10.0.0.1", dst="10.0.0.2", id=ip_id, flags="DF")
    eth = ETH / Dot1Q(vlan=7) if l3 == "vlan" else ETH
    l4h = UDP(sport=5000, dport=53) if udp else \
        TCP(sport=40000, dport=80, seq=seq, flags="FPA" if fin else "PA", window=512)
    data = bytes((i * 7) & 0xFF for i in range(pay))
    frame = raw(eth / ip / l4h / data)
    off3 = 18 if l3 == "vlan" else 14
    l4 = off3 + (40 if l3 == "v6" else 20)
    kind = vnet.GSO_UDP_L4 if udp else (vnet.GSO_TCPV6 if l3 == "v6" else vnet.GSO_TCPV4)
    at = 6 if udp else 16
    gso = partial(frame, l4, at, 17 if udp else 6, l3 != "v6", off3)
    buf, lens = received([(gso, header(vnet.F_NEEDS_CSUM, kind, 0, size, l4, at))])
    assert frames_out(buf, lens) == reference(frame, size)


def test_partial_checksums_are_completed_and_whole_frames_pass_unchanged():
    tcp = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1, dport=2) / (b"x" * 33))
    udp6 = raw(ETH / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP(sport=3, dport=4)
               / (b"y" * 10))
    plain = raw(ETH / IP(src="10.0.0.3", dst="10.0.0.4") / UDP(sport=5, dport=6) / b"z")
    buf, lens = received([
        (partial(tcp, 34, 16, 6, True, 14), header(vnet.F_NEEDS_CSUM, start=34, offset=16)),
        (partial(udp6, 54, 6, 17, False, 14), header(vnet.F_NEEDS_CSUM, start=54, offset=6)),
        (plain, header(flags=2)),                 # DATA_VALID only: nothing to do
    ])
    assert frames_out(buf, lens) == [tcp, udp6, plain]


def test_a_gso_kind_it_cannot_cut_is_dropped_and_counted_and_the_rest_goes_on():
    """UFO (IP fragmentation of a UDP datagram) is not a NIC's job here: the frame is
    dropped and counted, the frames around it go on in order."""
    a = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"a")
    big = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / (b"b" * 3000))
    buf, lens = received([(a, header()), (big, header(0, vnet.GSO_UDP, 0, 1400, 34, 6)),
                          (a, header())])
    out, out_len, src, dropped = vnet.expand(buf, lens)
    assert dropped == 1
    assert src.tolist() == [0, 2]
    assert [out[i, HEADROOM:HEADROOM + out_len[i]].tobytes() for i in range(2)] == [a, a]
