"""Receive coalescing on a packet socket: a flow's segments leave as one GSO frame that a real veth carries whole and that cuts back into the same segments."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.vxlan import VXLAN
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.agent.netns import Topology
from sbnet.datapath import vnet
from sbnet.datapath.afpacket import PACKET_VNET_HDR, SOL_PACKET, in_netns
from sbnet.datapath.batch import HEADROOM, Batch
from sbnet.datapath.gro import GSO_TCPV4, GSO_UDP_L4, Coalescer
from sbnet.datapath.mmsg import Receiver
from sbnet.flows.ofctl import parse_file

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


def through(wire, frames: list[bytes], udp: bool = False) -> tuple[list[bytes], list[bytes]]:
    """The frames sent by a Coalescer (with `udp`: runs of datagrams too) on one end: (the
    virtio-net header of each frame the other end reads, the frames cut back as a port's
    receive cuts them)."""
    tx, rx = wire
    co = Coalescer()
    co.udp = udp
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



def tunnelled(n: int, vni: int = 5, ip_id: int | None = 100, inner: int = 1380) -> list[bytes]:
    """n VXLAN datagrams from one host to another (DF, no UDP checksum), each carrying a
    TCP segment to one inner MAC; ip_id None: every datagram with id 0."""
    out = []
    for i in range(n):
        seg = segments(1, inner, seq=1000 + i * inner)[0]
        out.append(raw(Ether(src="02:fe:00:00:00:01", dst="02:fe:00:00:00:02") /
                       IP(src="192.168.0.1", dst="192.168.0.2", flags="DF",
                          id=0 if ip_id is None else ip_id + i) /
                       UDP(sport=50000, dport=4789, chksum=0) / VXLAN(vni=vni) / seg))
    return out


def no_udp_checksum(frame: bytes) -> bytes:
    """The frame with its UDP checksum, which must be right and not zero, taken out (as
    the sender left it)."""
    f = Ether(frame)
    got = f[UDP].chksum
    del f[UDP].chksum
    assert got == Ether(raw(f))[UDP].chksum != 0
    return frame[:40] + b"\0\0" + frame[42:]


def test_one_tunnels_datagrams_cross_the_wire_as_one_udp_gso_frame(wire):
    """The underlay's VXLAN datagrams of one tunnel and inner MAC go as one UDP
    segmentation offload frame, cut back into the same datagrams, their UDP checksums
    done; another VNI starts another frame."""
    dgrams = tunnelled(30)
    other = tunnelled(2, vni=6, ip_id=None)
    hdrs, frames = through(wire, dgrams + other)          # not asked to: one by one
    assert frames == dgrams + other and len(hdrs) == 32
    hdrs, frames = through(wire, dgrams + other, udp=True)
    assert [h[1] for h in hdrs] == [GSO_UDP_L4, GSO_UDP_L4]
    assert [no_udp_checksum(f) for f in frames[:30]] == dgrams
    # DF datagrams of equal ids join too: the cut gives them ids counting up.
    assert [no_udp_checksum(f)[:18] + f[20:24] for f in frames[30:]] == \
        [d[:18] + d[20:24] for d in other]


SINK = ("import hashlib,socket;s=socket.socket();s.bind(('0.0.0.0',5001));s.listen(1);"
        "print('ready',flush=True);c,_=s.accept();h=hashlib.sha256();n=0\n"
        "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d);n+=len(d)\n"
        "print(h.hexdigest(),n,flush=True)")
SOURCE = ("import socket;s=socket.create_connection(('10.0.0.2',5001),timeout=20);"
          "s.sendall(bytes.fromhex(open(0).read().strip()));s.close()")


def rx_frames(topo: Topology, vm) -> int:
    out = topo.run(vm, "ip", "-j", "-s", "link", "show", "eth0").stdout
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def test_a_tcp_transfer_between_two_vms_arrives_intact_in_far_fewer_frames_than_segments():
    """Two VMs on one reference switch: the sender's TSO packets are cut into segments
    and switched one by one, and the receiver's port hands them over in GSO frames."""
    data = os.urandom(3_000_000)
    with Topology() as topo:
        host = topo.add_host("h1", "reference", process=False)
        vm1 = topo.add_vm("vm1", host, "10.0.0.1/24")
        vm2 = topo.add_vm("vm2", host, "10.0.0.2/24")
        host.datapath.bundle(add=parse_file(
            f"table=0,priority=10,in_port={vm1.ofport} actions=output:{vm2.ofport}\n"
            f"table=0,priority=10,in_port={vm2.ofport} actions=output:{vm1.ofport}").flows)
        port = host.datapath.switch.ports[vm2.ofport]
        sink = topo.popen(vm2, "python3", "-c", SINK)
        assert sink.stdout.readline().strip() == "ready"
        frames0, segs0 = rx_frames(topo, vm2), port.tx_packets
        src = topo.run(vm1, "python3", "-c", SOURCE, check=False, timeout=60, input=data.hex())
        assert src.returncode == 0, src.stderr
        out, _ = sink.communicate(timeout=30)
        assert out.split() == [hashlib.sha256(data).hexdigest(), str(len(data))]
        segs, frames = port.tx_packets - segs0, rx_frames(topo, vm2) - frames0
        assert segs >= len(data) // 1448 and port.tx_coalesced > segs // 2
        assert frames * 4 < segs, (frames, segs)
