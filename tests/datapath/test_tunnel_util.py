"""Helpers for the tunnel and NSH tests: underlays, generated inner frames, tshark dissection."""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field

import dpkt
import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from sbnet.datapath import nsh as N
from sbnet.datapath.batch import Batch
from sbnet.datapath.execute import execute
from sbnet.datapath.odp import Output, PushMpls
from sbnet.datapath.underlay import Underlay

# Documentation addresses (RFC 5737, RFC 3849): they only ever appear inside packets.
A4, B4, GW4 = "192.0.2.1", "192.0.2.2", "192.0.2.254"
A6, B6 = "2001:db8::1", "2001:db8::2"
MAC_A, MAC_B, MAC_GW = "02:00:00:00:0a:01", "02:00:00:00:0b:01", "02:00:00:00:fe:01"
UPLINK = 9            # the underlay port's ofport on both hosts
FAR4, FAR6 = "198.51.100.7", "2001:db8:ff::7"     # reached through a gateway
INNER_PORTS = (33333, 44444, 55555)               # nothing in tshark claims these


def underlay(me: str, mtu: int = 1500) -> Underlay:
    """Host A or B on one link (IPv4 and IPv6), a default route through a gateway."""
    u = Underlay()
    mine, peer = (("a", "b") if me == "a" else ("b", "a"))
    addr = {"a": (A4, A6, MAC_A), "b": (B4, B6, MAC_B)}
    u.add_port(UPLINK, addr[mine][2], mtu)
    u.add_local(addr[mine][0])
    u.add_local(addr[mine][1])
    u.add_route("192.0.2.0/24", UPLINK, src=addr[mine][0])
    u.add_route("2001:db8::/64", UPLINK, src=addr[mine][1])
    u.add_route("0.0.0.0/0", UPLINK, gateway=GW4, src=addr[mine][0])
    u.add_route("::/0", UPLINK, gateway="2001:db8::fe", src=addr[mine][1])
    u.add_neighbour(addr[peer][0], addr[peer][2])
    u.add_neighbour(addr[peer][1], addr[peer][2])
    u.add_neighbour(GW4, MAC_GW)
    u.add_neighbour("2001:db8::fe", MAC_GW)
    return u


@dataclass
class Inner:
    """A generated inner frame and what an outer header built from it must say."""

    frame: bytes
    ip: bool = False            # IPv4/IPv6 behind Ethernet and VLAN tags
    tos: int = 0
    ttl: int = 0
    what: str = ""
    extra: dict = field(default_factory=dict)


def _vlans(rnd: random.Random):
    n = rnd.choice((0, 0, 1, 2))
    if n == 0:
        return []
    if n == 1:
        return [Dot1Q(vlan=rnd.randrange(1, 4095), prio=rnd.randrange(8))]
    return [Dot1AD(vlan=rnd.randrange(1, 4095)), Dot1Q(vlan=rnd.randrange(1, 4095))]


def inner_frame(rnd: random.Random, max_payload: int = 300) -> Inner:
    """One random inner Ethernet frame: IPv4/IPv6 UDP or TCP behind 0-2 VLAN tags, ARP,
    a 3-label MPLS stack, Ethernet/NSH, or an unknown ethertype."""
    eth = Ether(src=f"02:11:{rnd.randrange(256):02x}:00:00:01",
                dst=f"02:22:{rnd.randrange(256):02x}:00:00:02")
    # Letters: random binary payloads set off tshark's heuristic dissectors (RTCP).
    payload = Raw(bytes(rnd.randrange(97, 123) for _ in range(rnd.randrange(max_payload + 1))))
    what = rnd.choice(("ip4", "ip4", "ip6", "ip6", "arp", "mpls", "nsh", "other"))
    # TTLs below 5 draw a tshark warning of their own.
    tos, ttl = rnd.randrange(256), rnd.randrange(8, 256)
    sport, dport = rnd.choice(INNER_PORTS), rnd.choice(INNER_PORTS)
    l4 = (UDP(sport=sport, dport=dport) if rnd.random() < 0.6
          else TCP(sport=sport, dport=dport, flags="A", seq=rnd.randrange(1 << 32)))
    if what in ("ip4", "ip6"):
        hdr = eth
        for tag in _vlans(rnd):
            hdr = hdr / tag
        ip = (IP(src="10.1.0.1", dst=f"10.2.0.{rnd.randrange(1, 255)}", tos=tos, ttl=ttl)
              if what == "ip4" else
              IPv6(src="fd00:1::1", dst=f"fd00:2::{rnd.randrange(1, 65535):x}", tc=tos, hlim=ttl))
        return Inner(bytes(hdr / ip / l4 / payload), True, tos, ttl, what)
    if what == "arp":
        return Inner(bytes(eth / ARP(psrc="10.1.0.1", pdst="10.1.0.2")), what=what)
    if what == "other":
        return Inner(bytes(Ether(src=eth.src, dst=eth.dst, type=0x88B5) / payload), what=what)
    base = bytes(eth / IP(src="10.1.0.1", dst="10.2.0.9", tos=tos, ttl=ttl) / l4 / payload)
    if what == "mpls":
        return Inner(mpls3(base, [rnd.randrange(16, 1 << 20) for _ in range(3)]), what=what)
    b = Batch.from_packets([base], 1)
    e = N.encap(b, [0], 1, eth_src=0x020000000001, eth_dst=0x020000000002,
                spi=rnd.randrange(1 << 24), si=rnd.randrange(256))
    return Inner(e.packet(0), what=what)


def mpls3(frame: bytes, labels: list[int]) -> bytes:
    """The frame with a label stack pushed by execute's PushMpls (labels[0] outermost)."""
    b = Batch.from_packets([frame], 1)
    acts = []
    for i, label in enumerate(reversed(labels)):
        lse = label << 12 | (i == 0) << 8 | 64
        acts.append(PushMpls(lse, 0x8847))
    minus = np.full(1, -1, dtype=np.int64)
    ((_, out),) = execute(b, np.arange(1), minus, minus, tuple(acts) + (Output(1),))
    return out.packet(0)


def ip6_parts(addr: str) -> tuple[int, int]:
    v = int(ipaddress.IPv6Address(addr))
    return v >> 64, v & ((1 << 64) - 1)


def ip4(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


# --- tshark ---------------------------------------------------------------------------------

WARN = 0x00600000     # tshark expert severity: warnings and errors are at or above this


def need_tshark() -> str:
    """tshark's path; skips when it is missing, except in CI (CI=true) where it fails."""
    path = shutil.which("tshark")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tshark (Debian package tshark) is required in CI")
        pytest.skip("tshark is not installed")
    return path


def write_pcap(path, frames: list[bytes]) -> None:
    with open(path, "wb") as f:
        w = dpkt.pcap.Writer(f)
        for i, p in enumerate(frames):
            w.writepkt(p, ts=i * 0.001)


def dissect(tmp_path, frames: list[bytes], fields: list[str],
            decode_as: tuple[str, ...] = ()) -> list[dict[str, list[str]]]:
    """tshark's values of `fields` in each frame (every occurrence, outermost first), with
    IP/UDP/TCP checksum validation on.  Each dict also has "_expert" (severities),
    "_messages" and "_malformed"."""
    tshark = need_tshark()
    pcap = tmp_path / f"frames{len(list(tmp_path.iterdir()))}.pcap"
    write_pcap(pcap, frames)
    extra = ["_ws.expert.severity", "_ws.expert.message", "_ws.malformed"]
    cmd = [tshark, "-n", "-r", str(pcap),
           "-o", "ip.check_checksum:TRUE", "-o", "udp.check_checksum:TRUE",
           "-o", "tcp.check_checksum:TRUE", "-o", "tcp.analyze_sequence_numbers:FALSE",
           "-T", "fields", "-E", "separator=\t", "-E", "occurrence=a", "-E", "aggregator=|"]
    for d in decode_as:
        cmd += ["-d", d]
    for f in fields + extra:
        cmd += ["-e", f]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=120).stdout
    lines = out.rstrip("\n").split("\n") if out.strip() else []
    assert len(lines) == len(frames), (len(lines), len(frames))
    rows = []
    for line in lines:
        vals = line.split("\t")
        vals += [""] * (len(fields) + 3 - len(vals))
        r = {f: (v.split("|") if v else []) for f, v in zip(fields, vals)}
        r["_expert"] = [int(x, 0) for x in vals[len(fields)].split("|") if x]
        r["_messages"] = vals[len(fields) + 1]
        r["_malformed"] = vals[len(fields) + 2]
        rows.append(r)
    return rows


def assert_clean(rows: list[dict], allowed: dict[int, str] | None = None) -> None:
    """No malformed packet, no warning or error in tshark's expert info (bad checksums
    are warnings), in any frame; allowed: frame index -> the one message it may have."""
    allowed = allowed or {}
    bad = [(i, r["_messages"]) for i, r in enumerate(rows)
           if r["_malformed"] or (any(s >= WARN for s in r["_expert"])
                                  and r["_messages"] != allowed.get(i))]
    assert not bad, bad[:10]


def num(v: str) -> int:
    if v in ("True", "False"):
        return int(v == "True")
    return int(v, 0)
