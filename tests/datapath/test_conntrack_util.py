"""Helpers for the conntrack tests: run scapy packets through parse + Conntrack.execute and read ct fields."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.parse import parse
from sbnet.flows.fields import CT_STATE_BITS, SLOT_INDEX

S = SLOT_INDEX
E = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
A, B = "10.0.0.1", "10.0.0.2"


def flags(state: int) -> str:
    """ct_state as '+est+trk' style text (only the bits set), for readable asserts."""
    return "".join(f"+{n}" for n, b in CT_STATE_BITS.items() if state & b)


class Run:
    """The outcome of one ct() call: states, keys and the packets as rewritten."""

    def __init__(self, batch, parsed):
        self.batch, self.parsed = batch, parsed

    @property
    def states(self) -> list[str]:
        return [flags(s) for s in self.parsed.keys[S["ct_state"]].tolist()]

    def key(self, slot: str, i: int = 0) -> int:
        return int(self.parsed.keys[S[slot], i])

    def packet(self, i: int = 0):
        return Ether(self.batch.packet(i))


def ct_run(ct: Conntrack, pkts, zone=0, commit=True, now=0.0, nat=None, **kw) -> Run:
    b = Batch.from_packets([bytes(p) for p in pkts], 1)
    pr = parse(b)
    ct.execute(b, pr, np.arange(len(b)), zone, commit=commit, nat=nat, now=now, **kw)
    return Run(b, pr)


def one(ct: Conntrack, pkt, **kw) -> str:
    return ct_run(ct, [pkt], **kw).states[0]


def ct_pipeline(ct: Conntrack, pkt, zone=5, now=0.0) -> str:
    """The OVS table used by the differential test: ct(zone); +new -> ct(commit, mark=1).

    Returns the state seen by table 1 (what decides where the packet goes).
    """
    b = Batch.from_packets([bytes(pkt)], 1)
    pr = parse(b)
    ct.execute(b, pr, np.arange(1), zone, commit=False, now=now)
    st = int(pr.keys[S["ct_state"], 0])
    if st & CT_STATE_BITS["new"] and not st & (CT_STATE_BITS["inv"] | CT_STATE_BITS["rel"]
                                                | CT_STATE_BITS["est"]):
        ct.execute(b, pr, np.arange(1), zone, commit=True, set_mark=(1, 0xFFFFFFFF), now=now)
    return flags(st)


class Tcp:
    """A TCP conversation between A:sport and B:dport with tracked sequence numbers."""

    def __init__(self, sport=1234, dport=80, a=A, b=B, isn_a=1000, isn_b=5000, win=8192,
                 reply_to: str | None = None):
        self.sport, self.dport, self.a, self.b = sport, dport, a, b
        self.reply_to = reply_to or a     # where B's packets go (A's SNAT address)
        self.seq = {0: isn_a, 1: isn_b}
        self.win = win

    def pkt(self, d: int, fl: str, data: bytes = b"", seq=None, ack=None, **opts):
        src, dst = (self.a, self.b) if d == 0 else (self.b, self.reply_to)
        sp, dp = (self.sport, self.dport) if d == 0 else (self.dport, self.sport)
        s = (self.seq[d] if seq is None else seq) % 2**32
        a = (self.seq[1 - d] if ack is None else ack) % 2**32
        p = E / IP(src=src, dst=dst) / TCP(sport=sp, dport=dp, flags=fl, seq=s,
                                           ack=a if "A" in fl else 0, window=self.win, **opts)
        if data:
            p = p / Raw(data)
        if seq is None:
            self.seq[d] = (s + len(data) + ("S" in fl) + ("F" in fl)) & 0xFFFFFFFF
        return p

    def handshake(self):
        return [self.pkt(0, "S"), self.pkt(1, "SA"), self.pkt(0, "A")]


def udp(src=A, dst=B, sport=1, dport=2, payload=b"x"):
    return E / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload)
