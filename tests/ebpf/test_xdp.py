"""The XDP program against the reference switch with BPF_PROG_RUN: what it forwards leaves as the reference sends it, counted in the same entries; everything else passes to the TC program untouched."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import raw

from sbnet.datapath.switch import Switch

from .test_ct6_nat import hand_down, kernel_with, seg
from .test_ct_icmp import echo
from .util import run_reference

# A stateful group (any IP protocol) with a routed-looking way out (a MAC set and dec_ttl).
FLOWS = """\
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ip,ct_state=+trk+est,in_port=1 actions=mod_dl_src:02:00:00:00:0f:01,dec_ttl,output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""
C, S = "10.0.0.1", "10.0.0.2"


@pytest.fixture(scope="module")
def tier():
    """A loaded program in test mode with the XDP program (loaded only when asked)."""
    from tests.ebpf.conftest import require_bpf
    require_bpf()
    from sbnet.datapath.ebpf.tier import EbpfTier
    with EbpfTier(capacity=4096, conn_capacity=1024, test=True, xdp=True) as t:
        yield t


def _switch(flows: str = FLOWS) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2, 3):
        sw.add_port(p)
    sw.load(flows)
    return sw


def _frames(kind: str, sport: int, fwd: bool, payload: bytes = b"", flags: str = "PA"):
    """A packet of conversation (kind, sport), from the client (port 1) or the server."""
    if kind == "icmp":
        return echo((1, C, S) if fwd else (2, S, C), sport, 1, reply=not fwd, payload=payload)
    dport, udp = (53, True) if kind == "udp" else (80, False)
    if fwd:
        return 1, seg(C, S, sport, dport, flags, payload, udp, mac=1)
    return 2, seg(S, C, dport, sport, flags, payload, udp, mac=2)


def _opening(kind: str, sport: int) -> list:
    if kind == "tcp":
        return [_frames(kind, sport, True, flags="S"), _frames(kind, sport, False, flags="SA"),
                _frames(kind, sport, True, flags="A")]
    return [_frames(kind, sport, True), _frames(kind, sport, False)]


def _kernel(tier, sw: Switch, frames) -> None:
    """The tier holding the switch's connections, its ports taking XDP frames but port 3."""
    sync = kernel_with(tier, sw, {5})
    for p in (1, 2):
        tier.add_port(p, 100 + p, None, xdp_out=True)
    hand_down(sync, frames)


@settings(max_examples=6, deadline=None)
@given(convs=st.lists(st.tuples(st.sampled_from(["tcp", "udp", "icmp"]), st.integers(1024, 65535)),
                      min_size=1, max_size=3, unique_by=lambda c: c[1]),
       data=st.lists(st.tuples(st.integers(0, 2), st.booleans(), st.binary(max_size=64)),
                     min_size=1, max_size=8))
def test_established_packets_leave_xdp_as_the_reference_sends_them(tier, convs, data):
    """Established TCP, UDP and ICMP echo packets through a stateful group, a MAC set and
    dec_ttl: the XDP program forwards every one with the reference's bytes on the
    reference's port, and the megaflow and connection counters are the reference's."""
    sw = _switch()
    opening = [f for kind, sport in convs for f in _opening(kind, sport)]
    run_reference(sw, opening)
    sw.flush_megaflows()
    _kernel(tier, sw, [f for _, f in opening])
    packets = [_frames(*convs[i % len(convs)], fwd, p) for i, fwd, p in data]
    ref = run_reference(sw, packets)
    placed = {i: tier.put(mf) for i, mf in sw.cache.flows.items()}
    assert all(p.tier == "ebpf" for p in placed.values()), placed
    before = tier.stats()
    for n, ((port, frame), want) in enumerate(zip(packets, ref.outputs)):
        got = tier.run_xdp(frame, port)
        assert got.verdict == "forward", (n, frame.hex())
        assert [(o.ofport, o.data) for o in got.outputs] == want, n
    after = tier.stats()
    assert after["xdp_forward"] - before["xdp_forward"] == len(packets)
    counts = tier.take_counters()
    for mf_id in sw.cache.flows:
        c = counts.get(mf_id)
        assert ((c.packets, c.bytes) if c else (0, 0)) == (sw.cache.packets[mf_id], sw.cache.bytes[mf_id])


def test_what_xdp_cannot_do_passes_to_tc_untouched(tier):
    """A FIN, a new connection, a VLAN tag, IPv6, a megaflow with an action XDP does not
    run, an output to a port that takes no XDP frames: each passes with nothing counted,
    and the TC program then does what the reference does."""
    flows = FLOWS + ("table=0,priority=20,udp,in_port=1,tp_dst=7 actions=push_vlan:0x8100,output:2\n"
                     "table=0,priority=20,udp,in_port=1,tp_dst=9 actions=output:3\n"
                     "table=0,priority=20,ipv6,in_port=1 actions=output:2\n"
                     "table=0,priority=20,dl_vlan=5 actions=output:2\n")
    sw = _switch(flows)
    opening = _opening("tcp", 5000)
    run_reference(sw, opening)
    sw.flush_megaflows()
    _kernel(tier, sw, [f for _, f in opening])
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    cases = {
        "fin": _frames("tcp", 5000, True, flags="FA"),
        "new": _frames("tcp", 5001, True, flags="S"),
        "push_vlan": (1, raw(eth / IP(src=C, dst=S) / UDP(sport=1, dport=7) / (b"x" * 20))),
        "to a port without XDP": (1, raw(eth / IP(src=C, dst=S) / UDP(sport=1, dport=9) / (b"x" * 20))),
        "ipv6": (1, raw(eth / IPv6(src="2001:db8::1", dst="2001:db8::2") / UDP() / (b"x" * 20))),
        "vlan": (1, raw(eth / Dot1Q(vlan=5) / IP(src=C, dst=S) / UDP() / (b"x" * 20))),
    }
    for name, (port, frame) in cases.items():
        ref = run_reference(sw, [(port, frame)])
        for mf in sw.cache.flows.values():
            tier.put(mf)
        tier.take_counters()
        before = tier.stats()
        got = tier.run_xdp(frame, port)
        assert got.verdict == "pass", name
        assert not tier.take_counters() and tier.stats()["hit"] == before["hit"], name
        assert tier.stats()["xdp_pass"] - before["xdp_pass"] == 1
        tc = tier.run(frame, port)
        if tc.verdict != "upcall":
            assert [(o.ofport, o.data) for o in tc.outputs] == ref.outputs[0], name



@pytest.mark.parametrize("kind", ["tcp", "udp", "icmp"])
def test_a_wrong_checksum_passes_to_tc_which_sends_it_up(tier, kind):
    """An established packet whose checksum (its last byte's bit, or the IPv4 TTL,
    flipped) the reference's conntrack finds wrong: the reference drops it, the XDP
    program passes it on and the TC program sends it up; the packet as sent is forwarded."""
    sw = _switch()
    opening = _opening(kind, 4000)
    assert all(run_reference(sw, opening).outputs)
    sw.flush_megaflows()
    _kernel(tier, sw, [f for _, f in opening])
    port, good = _frames(kind, 4000, True, payload=b"payload!" * 9)
    assert run_reference(sw, [(port, good)]).outputs != [[]]
    for mf in sw.cache.flows.values():
        tier.put(mf)
    assert tier.run_xdp(good, port).verdict == "forward"
    for at in (len(good) - 1, 14 + 8):
        bad = good[:at] + bytes([good[at] ^ 0x10]) + good[at + 1:]
        assert run_reference(sw, [(port, bad)]).outputs == [[]]
        assert tier.run_xdp(bad, port).verdict == "pass"
        assert tier.run(bad, port).verdict == "upcall"
