"""ICMP echo conversations (IPv4, IPv6, floating IP and SNAT) in the kernel's connection maps once the slow path saw them answered, against the reference switch."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6DestUnreach, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.switch import Switch

from .test_ct6_nat import FIP, FIXED, GW, NAT, OTHER, OUT, _entries, hand_down, kernel_with
from .util import compare, run_reference

PING = """\
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=10,ipv6,ct_state=-trk actions=ct(zone=5,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,icmp,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,icmp6,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2
table=1,priority=10,ct_state=+trk+est,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""
C4, S4, C6, S6 = "10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"

# (flows, zones, the request's (in_port, src, dst), the reply's): a VM pinging through a
# stateful group, IPv4 and IPv6, and through a router's NAT zone (test_ct6_nat.NAT).
CASES = {
    "sg": (PING, {5}, (1, C4, S4), (2, S4, C4)),
    "sg6": (PING, {5}, (1, C6, S6), (2, S6, C6)),
    "floating_ip_in": (NAT, {9, 11}, (1, OUT, FIP), (2, FIXED, OUT)),
    "floating_ip_out": (NAT, {9, 11}, (2, FIXED, OUT), (1, OUT, FIP)),
    "router_snat": (NAT, {9, 11}, (2, OTHER, OUT), (1, OUT, GW)),
}


def echo(d, ident, seq, reply=False, payload=b"", typ=None, code=0):
    """An ICMP(v6) echo request (reply: echo reply) of direction d = (in_port, src, dst)."""
    port, src, dst = d
    if ":" in src:
        l4 = (ICMPv6EchoReply if reply else ICMPv6EchoRequest)(id=ident, seq=seq, data=payload,
                                                                code=code)
        if typ is not None:
            l4 = ICMPv6DestUnreach(code=code) / IPv6(src=dst, dst=src) / ICMPv6EchoRequest(id=ident)
        l3 = IPv6(src=src, dst=dst)
    else:
        l4 = ICMP(type=0 if reply else 8 if typ is None else typ, code=code, id=ident, seq=seq) / payload
        l3 = IP(src=src, dst=dst)
    return port, raw(Ether(src=f"02:00:00:00:00:0{port}", dst="02:00:00:00:00:09") / l3 / l4)


def _switch(flows: str) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(flows)
    return sw


@pytest.mark.parametrize("case", sorted(CASES))
@settings(max_examples=3, deadline=None)
@given(ident=st.integers(0, 65535),
       data=st.lists(st.tuples(st.booleans(), st.binary(max_size=48)), min_size=1, max_size=6))
def test_an_answered_ping_runs_in_the_kernel_like_the_reference(tier, case, ident, data):
    """Once the slow path has seen a ping answered, its requests and replies (any sequence
    number, any payload) leave the kernel exactly as they leave the reference switch, NATed
    ones with their addresses and IPv4 header checksum translated and their id kept; none
    goes up, the megaflow counters match and the connection's entries count the packets."""
    flows, zones, fwd, back = CASES[case]
    sw = _switch(flows)
    opening = [echo(fwd, ident, 0), echo(back, ident, 0, reply=True)]
    ref0 = run_reference(sw, opening)
    assert all(ref0.outputs), ref0.outputs                    # the reference forwarded both
    sw.flush_megaflows()
    sync = kernel_with(tier, sw, zones)
    hand_down(sync, [f for _, f in opening])
    held = sync.held6 if case == "sg6" else sync.held
    assert sorted(held.values()) == [0x22, 0x2A]             # +trk+est, +trk+est+rpl
    assert len(sync.nats) == (0 if case.startswith("sg") else 2)
    packets = [echo(fwd if f else back, ident, n + 1, reply=not f, payload=p)
               for n, (f, p) in enumerate(data)]
    ref = run_reference(sw, packets)
    stats = tier.stats()
    seen = compare(tier, sw, packets, ref)
    assert seen == {"kernel": len(packets), "upcall": 0}
    grew = {k: v - stats[k] for k, v in tier.stats().items()}
    assert grew["ct6"] == (len(packets) if case == "sg6" else 0)
    assert grew["ct_nat"] == (0 if case.startswith("sg") else len(packets))
    if case != "sg6":
        # Each direction's entry counts its packets (the requests' carries the opening's).
        zone = 5 if case == "sg" else 9
        [(d0, n0)] = [(k, s) for k, s in sync.held.items() if s == 0x22 and k[0] == zone]
        sent = [len(f) for (port, f) in packets if port == fwd[0]]
        assert tier.conn_used(*d0)[:2] == (len(sent), sum(sent))
    # Another id, an error quoting the ping, a query with a code: not this conversation,
    # or no conversation at all: up to the slow path.
    for other in (echo(fwd, ident ^ 1, 9), echo(back, ident, 9, typ=3, code=1),
                  echo(fwd, ident, 9, code=1)):
        assert tier.run(other[1], other[0]).verdict == "upcall"


def test_a_restarted_agent_takes_up_pings_with_their_translation(tier):
    """The pinned maps outlive the agent: a new one takes an answered ping up (NAT
    included) into its conntrack, which says what the old one's did, and its first
    reconciliation writes the entries as they were; the ping's timeout goes on while the
    kernel forwards it."""
    sw = _switch(NAT)
    fwd, back = CASES["floating_ip_out"][2:]
    run_reference(sw, [echo(fwd, 77, 0), echo(back, 77, 0, reply=True)])
    sync = kernel_with(tier, sw, {9, 11})
    sync.sync(0.0)
    entries = _entries(tier)
    assert len(entries) == 2
    fresh = Switch(clock=lambda: 0.0)
    again = ConnSync(tier, fresh.conntrack, kernel_ct=False)
    again.take_up(0.0)
    assert fresh.conntrack.dump() == sw.conntrack.dump() != []
    again.sync(0.0)
    assert _entries(tier) == entries and len(again.nats) == 2
    [slot] = fresh.conntrack.view.in_zones({9})
    was = float(fresh.conntrack.table.exp[slot])
    for p in (1, 2):
        fresh.add_port(p)
    fresh.load(NAT)
    run_reference(fresh, [echo(fwd, 77, 1)])                  # the megaflows
    for mf in fresh.cache.flows.values():
        tier.put(mf)
    assert tier.run(echo(fwd, 77, 2)[1], fwd[0]).verdict == "forward"
    again.sync(100.0)
    assert fresh.conntrack.table.exp[slot] == pytest.approx(was + 100.0)
    # Gone from the conntrack: gone from the kernel, its packets go up.
    fresh.conntrack.flush()
    again.sync(100.0)
    assert not tier.m_conns.keys()
    assert tier.run(echo(fwd, 77, 3)[1], fwd[0]).verdict == "upcall"


def test_an_unanswered_ping_stays_in_the_slow_path():
    """Before its reply the reference says +new of each request: the map must not hold it."""
    sw = _switch(PING)
    run_reference(sw, [echo((1, C4, S4), 5, 0), echo((1, C4, S4), 5, 1)])
    slots = sw.conntrack.view.in_zones({5})
    assert len(slots) == 1
    assert len(ConnSync(None, sw.conntrack, False).desired(slots)[0]) == 0
    run_reference(sw, [echo((2, S4, C4), 5, 1, reply=True)])
    keys = ConnSync(None, sw.conntrack, False).desired(slots)[0]
    # Keyed by id, type << 8 | the answer's type: what the program reads off the packet.
    assert sorted(zip(keys["sport"].tolist(), keys["dport"].tolist())) == [(5, 0x0008), (5, 0x0800)]
    assert np.all(keys["proto"] == 1)


def test_a_committed_ping_has_its_established_megaflow_made_ahead():
    """The slow path commits a new ping (its first request came up): the megaflow its next
    request takes once answered (+est) is made with it, so that request, which a kernel
    tier forwards as soon as the reply is through, does not go up behind it; what every
    packet does is the same either way."""
    from sbnet.datapath.prewarm import established_ahead
    got = {}
    for ahead in (False, True):
        sw = _switch(PING)
        run_reference(sw, [echo((1, C4, S4), 7, 0)])
        made = established_ahead(sw, list(sw.cache.flows.values()), 0.0) if ahead else 0
        before = sw.upcalls
        ref = run_reference(sw, [echo((2, S4, C4), 7, 0, reply=True), echo((1, C4, S4), 7, 1)])
        got[ahead] = (made, sw.upcalls - before, ref.outputs)
    # The reply's two passes go up either way; the second request's +est pass only without.
    assert got[False][:2] == (0, 3) and got[True][:2] == (1, 2)
    assert got[False][2] == got[True][2] and all(got[True][2])
