"""Receive coalescing on a packet socket: a flow's segments leave as one GSO frame that a real veth carries whole and that cuts back into the same segments."""

from __future__ import annotations

import os
import socket
import subprocess

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath import vnet
from sbnet.datapath.afpacket import PACKET_VNET_HDR, SOL_PACKET, in_netns
from sbnet.datapath.batch import HEADROOM, Batch
from sbnet.datapath.gro import GSO_TCPV4, Coalescer
from sbnet.datapath.mmsg import Receiver

ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture
def wire():
    """Packet sockets with virtio-net headers on the two ends of a veth pair, each end in
    a namespace of its own."""
    names = [f"sbgro-{os.getpid()}-{side}" for side in "ab"]
    for ns in names:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        # No IPv6 (its listener reports would be read among the test's frames).
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                        "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
    socks = []
    try:
        subprocess.run(["ip", "link", "add", "v0", "netns", names[0], "type", "veth", "peer",
                        "name", "v1", "netns", names[1]], check=True)
        for ns, dev in zip(names, ("v0", "v1")):
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
            with in_netns(ns):
                s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            s.bind((dev, 3))
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], check=False)


def segments(n: int, size: int, seq: int = 1000, ip_id: int = 7, sport: int = 40000,
             last: int | None = None) -> list[bytes]:
    """n in-order segments of one TCP flow (timestamps, PSH on the last), checksums done."""
    out = []
    for i in range(n):
        pay = bytes((i * 31 + j) & 0xFF for j in range(size if i < n - 1 or last is None
                                                          else last))
        flags = "PA" if i == n - 1 else "A"
        out.append(raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2", id=(ip_id + i) & 0xFFFF,
                                flags="DF") /
                       TCP(sport=sport, dport=5201, seq=seq, ack=99, flags=flags, window=500,
                           options=[("NOP", None), ("NOP", None), ("Timestamp", (5, 6))]) / pay))
        seq += len(pay)
    return out


def through(wire, frames: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    """The frames sent by a Coalescer on one end: (the virtio-net header of each frame the
    other end reads, the frames cut back as a port's receive cuts them)."""
    tx, rx = wire
    co = Coalescer()
    assert co.send(tx.fileno(), Batch.from_packets(frames, 1)) == 0
    r = Receiver(64, vnet=True)
    got, lens, _ = r.receive(rx.fileno())
    hdrs = [r.buf[i, HEADROOM - vnet.VNET_LEN:HEADROOM].tobytes() for i in range(got)]
    out, out_len, _, dropped = vnet.expand(r.buf[:got], lens)
    assert dropped == 0
    return hdrs, [out[i, HEADROOM:HEADROOM + out_len[i]].tobytes() for i in range(len(out_len))]


def test_a_flows_segments_cross_the_wire_as_one_gso_frame_and_cut_back_the_same(wire):
    segs = segments(40, 1398, last=501)
    other = segments(2, 700, seq=5, sport=40001)
    udp = raw(ETH / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2) / b"u")
    hdrs, frames = through(wire, segs + [udp] + other)
    assert frames == segs + [udp] + other
    assert len(hdrs) == 3
    assert hdrs[0][1] == GSO_TCPV4 and int.from_bytes(hdrs[0][4:6], "little") == 1398
    assert hdrs[1][1] == 0 and hdrs[2][1] == GSO_TCPV4


def test_a_segment_with_a_bad_checksum_goes_alone_unchanged(wire):
    segs = segments(9, 1000)
    bad = bytearray(segs[4])
    bad[-1] ^= 0x55                          # payload changed, checksum not
    segs[4] = bytes(bad)
    hdrs, frames = through(wire, segs)
    assert frames == segs
    assert [h[1] for h in hdrs] == [GSO_TCPV4, 0, GSO_TCPV4]


def test_runs_end_at_a_gap_a_reordering_or_ip_length(wire):
    segs = segments(60, 1398)
    gap = segs[:3] + segs[4:6]               # a lost segment: two runs
    swapped = [segs[0], segs[2], segs[1]]    # out of order: nothing merges
    hdrs, frames = through(wire, gap)
    assert frames == gap and [h[1] for h in hdrs] == [GSO_TCPV4, GSO_TCPV4]
    hdrs, frames = through(wire, swapped)
    assert frames == swapped and [h[1] for h in hdrs] == [0, 0, 0]
    hdrs, frames = through(wire, segs)       # 60 x 1398 bytes: more than IPv4 carries
    assert frames == segs and len(hdrs) == 2
    assert sum(len(f) - 66 for f in segs[:46]) + 52 <= 65535
