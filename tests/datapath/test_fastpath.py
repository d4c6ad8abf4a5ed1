"""The compiled fast path against the numpy reference: same keys, same megaflows, same outputs, same counters."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, ICMPv6ND_NA, ICMPv6ND_NS, IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.dpif.extract import extract
from sbnet.datapath.parse import parse
from sbnet.datapath.ports import MemoryPort
from sbnet.datapath.switch import Switch
from tests.datapath.tablegen import (PORTS, mpls_packet, mpls_table_set, nsh_packet, nsh_table_set,
                                     packet, table_set)

STATEFUL = Path(__file__).parents[2] / "examples" / "stateful.flows"


def _headers(r: random.Random) -> bytes:
    """A packet of some kind the fast path takes, or one it must hand to the numpy parser."""
    kind = r.choice(["tcp", "udp", "icmp", "arp", "tcp6", "icmp6", "ns", "na", "frag", "frag6",
                     "qinq", "llc", "other", "opts"])
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip = IP(src="10.0.0.1", dst="10.0.0.2", ttl=r.randint(0, 255), tos=r.randint(0, 255))
    ip6 = IPv6(src="2001:db8::1", dst="2001:db8::2", tc=r.randint(0, 255), fl=r.randint(0, 0xFFFFF))
    sp, dp = r.randint(0, 65535), r.randint(0, 65535)
    pkt = {
        "tcp": lambda: eth / ip / TCP(sport=sp, dport=dp, flags=r.randint(0, 0xFFF)),
        "udp": lambda: eth / ip / UDP(sport=sp, dport=dp),
        "icmp": lambda: eth / ip / ICMP(type=r.randint(0, 255), code=r.randint(0, 255)),
        "arp": lambda: eth / ARP(op=r.randint(0, 300), psrc="10.0.0.1", pdst="10.0.0.9"),
        "tcp6": lambda: eth / ip6 / TCP(sport=sp, dport=dp),
        "icmp6": lambda: eth / ip6 / ICMPv6EchoRequest(),
        "ns": lambda: eth / ip6 / ICMPv6ND_NS(tgt="2001:db8::9"),
        "na": lambda: eth / ip6 / ICMPv6ND_NA(tgt="2001:db8::9"),
        "frag": lambda: eth / IP(flags="MF", frag=r.choice([0, 3])) / UDP(),
        "frag6": lambda: eth / ip6 / IPv6ExtHdrFragment() / UDP(),
        "qinq": lambda: eth / Dot1Q(vlan=r.randint(0, 4095), prio=r.randint(0, 7))
        / Dot1Q(vlan=7) / ip / UDP(sport=sp, dport=dp),
        "llc": lambda: Ether(dst="01:80:c2:00:00:00") / (b"\x42\x42\x03" + bytes(40)),
        "other": lambda: Ether(type=0x88CC) / bytes(30),
        "opts": lambda: eth / IP(options=b"\x01\x01\x01\x00") / TCP(dataofs=r.choice([5, 6, 15])),
    }[kind]()
    return raw(pkt)


@st.composite
def frames(draw):
    """Real headers, often cut short or with a byte flipped, so every error path is reached."""
    r = random.Random(draw(st.integers(0, 2**32 - 1)))
    out = []
    for _ in range(draw(st.integers(1, 12))):
        b = bytearray(_headers(r))
        cut = draw(st.sampled_from([None, None, None, 0, 1]))
        if cut is not None:
            b = b[:r.randint(0, len(b))]
        if b and draw(st.booleans()):
            b[r.randrange(len(b))] = r.randint(0, 255)
        out.append(bytes(b))
    return out


@settings(max_examples=300, deadline=None)
@given(frames())
def test_compiled_extract_gives_the_numpy_parsers_keys_offsets_and_errors(pkts):
    b = Batch.from_packets(pkts, 5)
    fast, ref = extract(b), parse(b)
    for name in ("keys", "l2_5", "l3", "l4", "error"):
        assert np.array_equal(getattr(fast, name), getattr(ref, name)), name


def _pair(text: str) -> tuple[Switch, Switch]:
    pair = []
    for compiled in (True, False):
        sw = Switch(clock=lambda: 0.0, compiled=compiled)
        for p in PORTS:
            sw.add_port(p)
        sw.load(text)
        pair.append(sw)
    return pair[0], pair[1]


def _run_both(fast: Switch, ref: Switch, batches: list[list[tuple[int, bytes]]]) -> None:
    for i, batch in enumerate(batches):
        # Each switch its own batch: a switch edits the packets it is given in place.
        got, want = (_per_port(sw.process(Batch.from_packets([p for _, p in batch],
                                                             [port for port, _ in batch]),
                                          now=float(i))) for sw in (fast, ref))
        assert got == want
    assert sorted(fast.dump_megaflows(now=99.0)) == sorted(ref.dump_megaflows(now=99.0))
    assert [(s.flow, s.n_packets, s.n_bytes) for s in fast.dump_flows(now=99.0)] == \
        [(s.flow, s.n_packets, s.n_bytes) for s in ref.dump_flows(now=99.0)]
    assert fast.drop_counts() == ref.drop_counts()
    for p in PORTS:
        assert sorted(fast.ports[p].take_sent()) == sorted(ref.ports[p].take_sent())


def _per_port(emitted) -> dict[int, list[bytes]]:
    """Each port's packets of one batch.  The express lane sends a port's packets in batch
    order, the general path grouped by datapath flow: packets of different flows in one
    batch may leave a port in either order (as in OVS), so they are compared as a multiset."""
    out: dict[int, list[bytes]] = {}
    for port, pb in emitted:
        out.setdefault(port, []).extend(pb.packets())
    return {port: sorted(pkts) for port, pkts in out.items()}


def _batches(r: random.Random, make, n: int = 6) -> list[list[tuple[int, bytes]]]:
    # Repeats of a few packets reach the signature cache; the rest go up or hit megaflows.
    pool = [make(r) for _ in range(12)]
    return [[r.choice(pool) for _ in range(r.choice([1, 3, 32]))] for _ in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_compiled_switch_equals_numpy_switch_on_random_tables(seed):
    fast, ref = _pair(table_set(seed).text())
    _run_both(fast, ref, _batches(random.Random(seed), packet))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000))
def test_compiled_switch_equals_numpy_switch_on_mpls_and_nsh(seed):
    for tables, make in ((mpls_table_set, mpls_packet), (nsh_table_set, nsh_packet)):
        fast, ref = _pair(tables(seed).text())
        _run_both(fast, ref, _batches(random.Random(seed), make))


def test_compiled_switch_equals_numpy_switch_through_conntrack():
    """A stateful firewall: connections set up, established traffic, replies, refused ones."""
    fast, ref = _pair(STATEFUL.read_text())
    r = random.Random(7)
    batches = []
    for conv in range(20):
        sport, dport = 20000 + conv, r.choice([80, 80, 22])
        c = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1",
                                                                          dst="10.0.0.2")
        s = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.0.0.2",
                                                                          dst="10.0.0.1")
        steps = [(1, c / TCP(sport=sport, dport=dport, flags="S", seq=100)),
                 (2, s / TCP(sport=dport, dport=sport, flags="SA", seq=500, ack=101)),
                 (1, c / TCP(sport=sport, dport=dport, flags="A", seq=101, ack=501))]
        steps += [(1, c / TCP(sport=sport, dport=dport, flags="PA", seq=101 + 10 * k, ack=501)
                   / bytes(10)) for k in range(5)]
        batches += [[(p, raw(x))] for p, x in steps]
        batches.append([(1, raw(c / TCP(sport=sport, dport=dport, flags="PA", seq=151 + 10 * k,
                                         ack=501) / bytes(10))) for k in range(32)])
    _run_both(fast, ref, batches)
    assert fast.dpif.smc.hits > 0          # established traffic was found by the compiled tier


class _Loopback(MemoryPort):
    """A cable from this port back into the same switch at another port: the switch is
    entered again while it is still delivering the batch it is working on."""

    def __init__(self, ofport: int, into: int) -> None:
        super().__init__(ofport, f"loop{ofport}")
        self.switch, self.into, self.depth = None, into, 0

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        super().deliver(batch, nbytes)
        if self.depth < 2:
            self.depth += 1
            try:
                again = Batch.from_packets(batch.packets(), self.into)
                self.switch.process(again, now=0.0)
            finally:
                self.depth -= 1


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_compiled_switch_equals_numpy_switch_entered_again_from_a_port(seed):
    # The inner batch may not reuse the buffers the outer batch's result still lives in.
    pair = []
    for compiled in (True, False):
        sw = Switch(clock=lambda: 0.0, compiled=compiled)
        loop = _Loopback(2, into=3)
        loop.switch = sw
        for p in PORTS:
            sw.add_port(p, port=loop if p == 2 else None)
        sw.load(table_set(seed).text())
        pair.append(sw)
    _run_both(*pair, _batches(random.Random(seed), packet))


@settings(max_examples=8, deadline=None)
@given(st.integers(0, 10_000))
def test_compiled_switch_equals_numpy_switch_on_batches_of_hundreds(seed):
    # Past the compiled classifier's and conntrack keys' small-batch sizes.
    fast, ref = _pair(table_set(seed).text())
    r = random.Random(seed)
    pool = [packet(r) for _ in range(40)]
    _run_both(fast, ref, [[r.choice(pool) for _ in range(r.choice([257, 700]))]
                          for _ in range(3)])


def test_compiled_switch_equals_numpy_switch_through_conntrack_in_big_batches():
    """300 connections set up and used, each step one batch of 300-600 packets."""
    fast, ref = _pair(STATEFUL.read_text())
    c = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1",
                                                                      dst="10.0.0.2")
    s = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src="10.0.0.2",
                                                                      dst="10.0.0.1")
    conns = [(20000 + k, 80 if k % 5 else 22) for k in range(300)]
    steps = [[(1, c / TCP(sport=sp, dport=dp, flags="S", seq=100)) for sp, dp in conns],
             [(2, s / TCP(sport=dp, dport=sp, flags="SA", seq=500, ack=101)) for sp, dp in conns],
             [(1, c / TCP(sport=sp, dport=dp, flags="A", seq=101, ack=501)) for sp, dp in conns]]
    for k in range(2):
        steps.append([(1, c / TCP(sport=sp, dport=dp, flags="PA", seq=101 + 20 * k + 10 * j,
                                  ack=501) / bytes(10)) for j in range(2) for sp, dp in conns])
    _run_both(fast, ref, [[(p, raw(x)) for p, x in step] for step in steps])
    assert fast.dpif.lane_packets > 900
