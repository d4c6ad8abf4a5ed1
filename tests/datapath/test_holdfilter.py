"""The underlay's hold filter, run by the kernel: a datagram socket pair carries tunnel frames through it (a socket filter sees a datagram's bytes as a packet socket sees a frame's)."""

from __future__ import annotations

import socket
import struct

import dpkt
import pytest

from sbnet.datapath import holdfilter

HELD, OTHER = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


def inner(dst: str) -> bytes:
    return bytes(dpkt.ethernet.Ethernet(dst=bytes.fromhex(dst.replace(":", "")),
                                        src=b"\x02" * 6, data=b"x" * 60))


def tunnel(dst: str, kind: str = "vxlan", v6: bool = False, options: int = 0,
           ip_options: bytes = b"", frag: int = 0, dport: int | None = None,
           frame: bytes | None = None, outer_src: str = "10.0.0.1") -> bytes:
    if kind == "vxlan":
        head = struct.pack("!II", 0x08000000, 5 << 8)
    else:                                   # Geneve: options in 4-byte words, Ethernet inside
        head = struct.pack("!BBHI", options, 0, 0x6558, 5 << 8) + b"\0" * (4 * options)
    port = dport or (4789 if kind == "vxlan" else 6081)
    udp = dpkt.udp.UDP(sport=49152, dport=port, data=head + (frame or inner(dst)))
    udp.ulen = len(udp)
    if v6:
        ip = dpkt.ip6.IP6(src=b"\x20" * 16, dst=b"\x21" * 16, nxt=17, hlim=64, data=udp,
                          plen=len(bytes(udp)))
        return bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=ip, src=b"\x04" * 6,
                                            dst=b"\x06" * 6))
    ip = dpkt.ip.IP(src=socket.inet_aton(outer_src), dst=b"\x0a\0\0\x02", p=17, ttl=64, data=udp,
                    opts=ip_options, _flags_offset=frag)
    ip.hl = 5 + len(ip_options) // 4
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip, src=b"\x04" * 6, dst=b"\x06" * 6))


def passed(prog, frames: list[bytes]) -> list[bool]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        holdfilter.attach(b, prog)
        for f in frames:
            a.send(f)
        b.setblocking(False)
        got = []
        while True:
            try:
                got.append(b.recv(4096))
            except BlockingIOError:
                break
    return [f in got for f in frames]


def test_frames_for_a_held_mac_are_dropped_by_the_kernel_and_nothing_else():
    prog = holdfilter.program([HELD], [4789], [6081])
    frames = {
        "vxlan held": (tunnel(HELD), False),
        "vxlan other": (tunnel(OTHER), True),
        "geneve held, options": (tunnel(HELD, "geneve", options=3), False),
        "geneve other, options": (tunnel(OTHER, "geneve", options=3), True),
        "ipv6 vxlan held": (tunnel(HELD, v6=True), False),
        "ipv6 geneve held": (tunnel(HELD, "geneve", v6=True, options=1), False),
        "ipv4 options, vxlan held": (tunnel(HELD, ip_options=b"\x01" * 4), False),
        "a fragment's tail": (tunnel(HELD, frag=5), True),
        "another UDP port": (tunnel(HELD, dport=4790), True),
        "the held MAC itself, untunnelled": (inner(HELD), True),
        "arp": (bytes(dpkt.ethernet.Ethernet(type=0x0806, data=b"\0" * 28)), True),
    }
    got = passed(prog, [f for f, _ in frames.values()])
    assert dict(zip(frames, got)) == {k: want for k, (_, want) in frames.items()}
    # Taken off, everything passes again.
    assert all(passed(None, [f for f, _ in frames.values()]))


def test_several_held_macs_and_custom_ports():
    third = "fa:16:3e:00:00:03"
    prog = holdfilter.program([HELD, third], [8472], [])
    got = passed(prog, [tunnel(HELD, dport=8472), tunnel(third, dport=8472),
                        tunnel(OTHER, dport=8472), tunnel(HELD)])
    assert got == [False, False, True, True]


def test_as_many_macs_as_one_filter_holds_and_no_more():
    macs = [f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}" for i in range(holdfilter.MAX_MACS)]
    prog = holdfilter.program(macs, [4789], [6081])
    assert passed(prog, [tunnel(macs[-1], "geneve", options=2), tunnel(OTHER)]) == [False, True]
    with pytest.raises(ValueError):
        holdfilter.program([*macs, OTHER], [4789], [6081])


ROUTER = "fa:16:3e:00:00:aa"


def routed(dst: str, src_ip: str, src_mac: str = ROUTER) -> bytes:
    """A frame a router sends `dst` (inner IPv4 from src_ip), as the left host relays it."""
    ip = dpkt.ip.IP(src=socket.inet_aton(src_ip), dst=socket.inet_aton("10.30.0.5"), p=6,
                    ttl=63, data=b"y" * 40)
    ip.len = len(ip)
    return bytes(dpkt.ethernet.Ethernet(dst=bytes.fromhex(dst.replace(":", "")),
                                        src=bytes.fromhex(src_mac.replace(":", "")),
                                        type=0x0800, data=ip))


def test_what_the_left_host_relays_from_outside_is_dropped_and_nothing_else():
    relay = holdfilter.Relay("10.0.0.1", HELD, ROUTER, ("10.30.0.0/24", "10.31.0.0/16"))
    prog = holdfilter.program([], [4789], [6081], [relay])
    outside = routed(HELD, "203.0.113.50")
    frames = {
        "relayed from outside": (tunnel(HELD, frame=outside), False),
        "relayed from outside, geneve": (tunnel(HELD, "geneve", options=2, frame=outside),
                                         False),
        "relayed, outer IP options": (tunnel(HELD, ip_options=b"\x01" * 4, frame=outside),
                                      False),
        "from another host": (tunnel(HELD, frame=outside, outer_src="10.0.0.3"), True),
        "routed from the router's subnets": (tunnel(HELD, frame=routed(HELD, "10.31.2.9")),
                                             True),
        "from a VM, not routed": (tunnel(HELD, frame=routed(HELD, "203.0.113.50", OTHER)),
                                  True),
        "to another VM": (tunnel(OTHER, frame=routed(OTHER, "203.0.113.50")), True),
        "over an IPv6 underlay": (tunnel(HELD, v6=True, frame=outside), True),
    }
    got = passed(prog, [f for f, _ in frames.values()])
    assert dict(zip(frames, got)) == {k: want for k, (_, want) in frames.items()}
    # Held as well (the VM not here yet): everything to it goes.
    prog = holdfilter.program([HELD], [4789], [6081], [relay])
    assert passed(prog, [tunnel(HELD, frame=routed(HELD, "10.31.2.9")),
                         tunnel(HELD, frame=outside)]) == [False, False]
