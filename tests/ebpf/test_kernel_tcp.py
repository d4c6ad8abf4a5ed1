"""TCP connections committed on their SYN and tracked through their handshake by the kernel tier (kernel_ct), against the reference switch's conntrack with BPF_PROG_RUN; zone limits for kernel commits."""

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.ebpf.upcalls import decode, five_tuples
from sbnet.datapath.switch import Switch

from .util import attach_ports, run_reference

ZONE = 5
C, S = "10.0.0.1", "10.0.0.2"
# Where a packet leaves says what ct_state the connection tracker gave it.
STATES = """\
table=0,priority=10,tcp,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ct_state=+trk+new,in_port=2 actions=output:6
table=1,priority=10,ct_state=+trk+est-rpl actions=output:3
table=1,priority=10,ct_state=+trk+est+rpl actions=output:4
table=1,priority=5,ct_state=+trk+inv actions=output:5
table=1,priority=1 actions=drop
"""
PORTS = (1, 2, 3, 4, 5, 6)
F_EST = 0x02                 # ct_state +est


def _ip(a: str) -> int:
    return int.from_bytes(bytes(map(int, a.split("."))), "big")


def segment(fwd: bool, sport: int, flags: str, seq: int, ack: int, payload: bytes = b"",
            wscale: int | None = None, win: int = 64240) -> tuple[int, bytes]:
    src, dst, sp, dp = (C, S, sport, 80) if fwd else (S, C, 80, sport)
    opts = [("MSS", 1460), ("NOP", None)] + ([("WScale", wscale)] if wscale is not None else [])
    tcp = TCP(sport=sp, dport=dp, flags=flags, seq=seq % 2**32, ack=ack % 2**32, window=win,
              options=opts if "S" in flags else [])
    frame = raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=src, dst=dst)
                / tcp / payload)
    return (1 if fwd else 2), frame


def _switch(liberal: bool) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in PORTS:
        sw.add_port(p)
    sw.conntrack.tcp_liberal = liberal
    sw.load(STATES)
    return sw


class System:
    """The kernel tier with a reference switch as its slow path, as EbpfDatapath drives
    them: a packet runs in the kernel, or goes up and is switched there (its megaflows
    then installed in the kernel); connection events into the slow path's conntrack."""

    def __init__(self, tier, ring, liberal: bool) -> None:
        self.tier, self.ring = tier, ring
        self.slow = _switch(liberal)
        self.sync = ConnSync(tier, self.slow.conntrack, kernel_ct=True)
        self.sync.zones.add(ZONE)
        self.placed: set[int] = set()
        self.upcalls = 0
        tier.flush()
        for k in tier.m_conns.keys():
            tier.m_conns.delete(k)
        ring.drain()
        attach_ports(tier, self.slow)

    def events(self) -> None:
        up = decode(self.ring.drain(), None)
        if len(up.events):
            self.sync.events(up.events, up.kinds, 0.0)

    def send(self, in_port: int, frame: bytes) -> list[tuple[int, bytes]]:
        got = self.tier.run(frame, in_port)
        self.events()
        if got.verdict != "upcall":
            return [(o.ofport, o.data) for o in got.outputs]
        self.upcalls += 1
        tuples = five_tuples(Batch.from_packets([frame], in_port))
        guards = self.sync.guard(tuples)
        out = run_reference(self.slow, [(in_port, frame)]).outputs[0]
        for i, mf in self.slow.cache.flows.items():
            if i not in self.placed:
                self.placed.add(i)
                self.tier.put(mf)          # +inv ones stay in software: the kernel gives no +inv
        self.sync.hand_down(tuples)
        self.sync.unguard(guards)
        return out

    def peers(self, sport: int) -> tuple[str, list]:
        """Where the connection is tracked, and its peers there."""
        kept = {(c[2], c[4]): c for c in self.tier.conns_kept()}
        c = kept.get((_ip(C), sport))
        if c is not None and c[6] & L.CS_OPENING:
            raw_v = self.tier.m_conns.lookup(L.CT_KEY.pack(ZONE, 6, 0, sport, 80, _ip(C), _ip(S)))
            v = np.frombuffer(raw_v, dtype=L.CT_VAL_DTYPE)[0]
            return "kernel", [list(p)[:5] for p in v["tcp"].tolist()]
        if c is not None and c[6] & F_EST:
            return "kernel established", None
        slot, _ = self.slow.conntrack.find((ZONE, 6, 0, _ip(C), _ip(S), sport, 80))
        return "slow path", self.slow.conntrack.tcp[slot].tolist() if slot >= 0 else None



def _ref_peers(sw: Switch, sport: int):
    slot, _ = sw.conntrack.find((ZONE, 6, 0, _ip(C), _ip(S), sport, 80))
    return sw.conntrack.tcp[slot].tolist() if slot >= 0 else None


def differential(tier, ring, packets, liberal: bool, warm: int = 1) -> System:
    """Every packet leaves the kernel-plus-slow-path system as it leaves the reference
    switch (so with the same ct_state), and after each one the connection's peers where
    it is tracked are the reference's.  A connection on another port runs first, so the
    megaflows are in the kernel (their first packets went up)."""
    ref, sysm = _switch(liberal), System(tier, ring, liberal)
    warmup = [segment(True, warm, "S", 100, 0), segment(False, warm, "SA", 900, 101),
              segment(True, warm, "A", 101, 901), segment(True, warm, "PA", 101, 901, b"x"),
              segment(False, warm, "PA", 901, 102, b"y")]
    for in_port, frame in warmup:
        assert sysm.send(in_port, frame) == run_reference(ref, [(in_port, frame)]).outputs[0]
    sysm.warm_upcalls = sysm.upcalls
    sport = packets[0][2]
    stale = False          # windows the kernel forwarded established segments of
    for n, (in_port, frame, _) in enumerate(packets):
        want = run_reference(ref, [(in_port, frame)]).outputs[0]
        assert sysm.send(in_port, frame) == want, (n, liberal, _describe(packets))
        where, peers = sysm.peers(sport)
        want_peers = _ref_peers(ref, sport)
        if where == "kernel established":
            stale = True
            assert [p[4] for p in want_peers] == [4, 4], n
        elif stale and peers is not None and want_peers is not None:
            # The kernel tracks no window once established (the slow path, liberal, knows).
            assert [p[4] for p in peers] == [p[4] for p in want_peers], (n, _describe(packets))
        else:
            assert peers == want_peers, (n, where, liberal, _describe(packets))
    return sysm


def _describe(packets) -> list:
    out = []
    for in_port, frame, _ in packets:
        t = TCP(frame[34:])
        out.append((in_port, t.sprintf("%flags%"), t.seq, t.ack, len(t.payload),
                    dict(t.options).get("WScale")))
    return out


def handshake(sport, isn_c=1000, isn_s=5000, ws_c=7, ws_s=9):
    return [(*segment(True, sport, "S", isn_c, 0, wscale=ws_c), sport),
            (*segment(False, sport, "SA", isn_s, isn_c + 1, wscale=ws_s), sport),
            (*segment(True, sport, "A", isn_c + 1, isn_s + 1), sport),
            (*segment(True, sport, "PA", isn_c + 1, isn_s + 1, b"hello"), sport),
            (*segment(False, sport, "A", isn_s + 1, isn_c + 6), sport)]


@pytest.fixture(scope="module")
def ktier():
    from tests.ebpf.conftest import require_bpf
    require_bpf()
    from sbnet.datapath.ebpf.libbpf import RingReader
    from sbnet.datapath.ebpf.tier import EbpfTier
    with EbpfTier(capacity=256, conn_capacity=256, test=True, kernel_ct=True) as t:
        ring = RingReader(t.upcalls_fd, t.upcalls_size)
        yield t, ring
        ring.close()


def test_a_handshake_runs_in_the_kernel_like_the_reference(ktier):
    """SYN (committed here, +new), SYN-ACK (+est+rpl), ACK (+est: established both ways),
    data both ways: none goes up; the kernel tells of the commit and of the handshake's
    end, and the slow path's conntrack then holds the connection as the reference's did."""
    t, ring = ktier
    before = t.stats()
    sysm = differential(t, ring, handshake(40000), liberal=False)
    after = t.stats()
    assert sysm.upcalls == sysm.warm_upcalls      # the warm-up connection's, none of this one
    assert after["ct_commit"] - before["ct_commit"] == 1
    assert after["ct_established"] - before["ct_established"] == 1
    assert sysm.sync.established() == 2
    slot, _ = sysm.slow.conntrack.find((ZONE, 6, 0, _ip(C), _ip(S), 40000, 80))
    assert sysm.slow.conntrack.tcp_state(slot) == ("ESTABLISHED", "ESTABLISHED")


FLAGS = ["S", "SA", "A", "PA", "FA", "R", "RA", "SP", "F"]


@st.composite
def handshakes(draw):
    sport = draw(st.integers(1024, 65535))
    isn_c, isn_s = draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**32 - 1))
    ws_c = draw(st.one_of(st.none(), st.integers(0, 15)))
    ws_s = draw(st.one_of(st.none(), st.integers(0, 15)))
    pkts = handshake(sport, isn_c, isn_s, ws_c, ws_s)
    # Retransmissions, resets, FINs, segments out of the window, invalid flags: anywhere
    # with a liberal conntrack (as the slow path's is: the kernel checks no window once a
    # connection is established), within the handshake with a strict one.
    liberal = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(pkts) if liberal else 2))
        fwd = draw(st.booleans())
        flags = draw(st.sampled_from(FLAGS))
        seq = (isn_c if fwd else isn_s) + draw(st.sampled_from([0, 1, 2, 70000, -70000]))
        ack = (isn_s if fwd else isn_c) + draw(st.sampled_from([0, 1, 2, 100000]))
        ws = draw(st.one_of(st.none(), st.integers(0, 15)))
        pkts.insert(at, (*segment(fwd, sport, flags, seq, ack, draw(st.binary(max_size=8)), ws),
                         sport))
    return pkts, liberal


@settings(max_examples=6, deadline=None)
@given(case=handshakes())
@example(case=(handshake(41000)[:2] + [(*segment(True, 41000, "R", 1001, 0), 41000)], False))
@example(case=(handshake(41001)[:1] + handshake(41001)[:1] + handshake(41001)[1:], False))
@example(case=(handshake(41002)[:2] + [(*segment(True, 41002, "A", 900000, 5001), 41002)]
               + handshake(41002)[2:], True))
def test_any_handshake_leaves_the_kernel_as_the_reference(ktier, case):
    """Handshakes with retransmitted, reset, closed, out-of-window and invalid segments:
    what the kernel does itself and what it hands over (the connection's peers first, the
    packet after them) come out as the reference switch's conntrack has it."""
    t, ring = ktier
    packets, liberal = case
    t.set_tcp_liberal(liberal)
    try:
        differential(t, ring, packets, liberal)
    finally:
        t.set_tcp_liberal(False)


def test_kernel_commits_stop_at_the_zone_limit(ktier):
    """A zone's limit holds for connections the kernel commits: past it a SYN goes up
    (the slow path's conntrack refuses it, as the reference's does: +new, not committed),
    and a connection leaving the zone makes room again."""
    t, ring = ktier
    sysm = System(t, ring, liberal=False)
    sysm.slow.conntrack.zone_limits[ZONE] = 3
    ref = _switch(False)
    ref.conntrack.zone_limits[ZONE] = 3
    for sport in (1, 2):              # the warm-up: megaflows in, two committed by upcalls
        for in_port, frame, _ in handshake(sport)[:3]:
            assert sysm.send(in_port, frame) == run_reference(ref, [(in_port, frame)]).outputs[0]
    sysm.sync.write_limits()
    warm, full = sysm.upcalls, t.stats()["ct_zone_full"]
    for sport in (3, 4, 5):
        in_port, frame, _ = handshake(sport)[0]
        assert sysm.send(in_port, frame) == run_reference(ref, [(in_port, frame)]).outputs[0]
    assert len(ref.conntrack) == len(sysm.slow.conntrack) == 3
    # The third committed in the kernel, the two past the limit up to the slow path.
    assert t.stats()["ct_zone_full"] - full == 2 and sysm.upcalls - warm == 2
    assert ref.conntrack.stats["zone_full"] == sysm.slow.conntrack.stats["zone_full"] == 2
    sysm.slow.conntrack.flush()
    sysm.sync.sync(0.0)
    in_port, frame, _ = handshake(6)[0]
    assert t.run(frame, in_port).verdict == "forward"


def test_a_handshake_whose_events_were_lost_is_taken_up_from_the_map(ktier):
    """A restarted agent (or a full ring) misses the commit event of a connection the
    kernel is opening: the next reconciliation takes it up from the map with both ends
    as the kernel has them, leaves it the kernel's, and the handshake then ends in the
    kernel as it would have."""
    t, ring = ktier
    differential(t, ring, handshake(42000)[:1], liberal=False)
    fresh = _switch(False)
    sync = ConnSync(t, fresh.conntrack, kernel_ct=True)
    sync.take_up(0.0)                     # as a restarted EbpfDatapath does
    sync.sync(0.0)
    slot, _ = fresh.conntrack.find((ZONE, 6, 0, _ip(C), _ip(S), 42000, 80))
    assert slot >= 0 and fresh.conntrack.tcp_state(slot) == ("SYN_SENT", "CLOSED")
    assert sync.held[(ZONE, 6, _ip(C), _ip(S), 42000, 80)] & L.CS_OPENING
    for in_port, frame, _ in handshake(42000)[1:3]:
        assert t.run(frame, in_port).verdict == "forward"
    up = decode(ring.drain(), None)
    sync.events(up.events, up.kinds, 0.0)
    assert fresh.conntrack.tcp_state(slot) == ("ESTABLISHED", "ESTABLISHED")
    assert sync.established() == 2        # and the warm-up's, taken up as established
