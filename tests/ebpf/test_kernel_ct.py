"""New UDP connections committed and established by the kernel tier itself (kernel_ct), against the reference switch with BPF_PROG_RUN; the slow path's conntrack told by the connection events."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.ebpf.upcalls import decode
from sbnet.datapath.switch import Switch

from .test_ct_icmp import PING, echo
from .test_tunnels_ct import SG, C, S, _ip, seg
from .util import attach_ports, compare, run_reference

ZONE = 5


@pytest.fixture(scope="module")
def ktier():
    """A loaded program in test mode that commits new UDP connections itself, with a
    reader of its ring (the connection events)."""
    from tests.ebpf.conftest import require_bpf
    require_bpf()
    from sbnet.datapath.ebpf.libbpf import RingReader
    from sbnet.datapath.ebpf.tier import EbpfTier
    with EbpfTier(capacity=256, conn_capacity=256, test=True, kernel_ct=True) as t:
        ring = RingReader(t.upcalls_fd, t.upcalls_size)
        yield t, ring
        ring.close()


def _switch(flows: str = SG) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load(flows)
    return sw


def _empty(t) -> None:
    t.flush()
    for k in t.m_conns.keys():
        t.m_conns.delete(k)


def _committed_in_kernel(t, ring, sw, flows, packets, replied, key, fwd, back, tup,
                         every_output=False) -> tuple[Switch, ConnSync]:
    """packets (a connection's first packet, then data either way) leave the kernel as
    they leave the reference switch sw, none goes up; the ring tells of the commit (map
    key `key`) and, if the connection was replied to, of its first reply; the map holds
    both directions (fwd, back: (address, port word)) as the reference's conntrack has
    them; and a conntrack that saw no packet learns connection `tup` from those events
    as sw's has it (that mirror switch and its ConnSync are returned).  every_output: the reference
    must have output every packet."""
    ref = run_reference(sw, packets)
    if every_output:
        assert all(ref.outputs), ref.outputs
    attach_ports(t, sw)
    seen = compare(t, sw, packets, ref)
    assert seen == {"kernel": len(packets), "upcall": 0}
    up = decode(ring.drain(), None)
    assert len(up.batch) == 0
    assert [tuple(k) for k in up.conn_keys.tolist()] == [key] * (1 + replied)
    assert up.established.tolist() == [False, True][:1 + replied]
    states = {(c[2], c[4]): c[6] for c in t.conns_kept()}
    want = (0x22, 0x2A) if replied else (0x21, 0x29)       # +trk+est[+rpl] / +trk+new[+rpl]
    assert (states[fwd], states[back]) == want
    mirror = _switch(flows)
    sync = ConnSync(t, mirror.conntrack, kernel_ct=True)
    sync.events(up.events, up.kinds, 0.0)
    for ct in (sw.conntrack, mirror.conntrack):
        slot, _ = ct.find(tup)
        assert slot >= 0
        assert bool(ct.view.held_outside(np.array([slot]))[0]) == replied
    return mirror, sync


@settings(max_examples=8, deadline=None)
@given(sport=st.integers(1024, 65535),
       data=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), min_size=1, max_size=8))
def test_a_new_udp_connection_runs_in_the_kernel_like_the_reference(ktier, sport, data):
    """The connection's first packet, those before its reply (+new), its first reply and
    everything after (+est) all leave the kernel exactly as they leave the reference
    switch, none goes up; the kernel tells of the commit and of the first reply, and a
    conntrack that saw no packet learns the connection from those two events."""
    t, ring = ktier
    _empty(t)
    ring.drain()
    sw = _switch()
    packets = [(1, seg(C, S, sport, 53, "", b"first", udp=True))]
    packets += [(1, seg(C, S, sport, 53, "", p, udp=True)) if fwd else
                (2, seg(S, C, 53, sport, "", p, udp=True)) for fwd, p in data]
    replied = any(not fwd for fwd, _ in data)
    _, sync = _committed_in_kernel(t, ring, sw, SG, packets, replied,
                                   (ZONE, 17, 0, sport, 53, _ip(C), _ip(S)),
                                   (_ip(C), sport), (_ip(S), 53),
                                   (ZONE, 17, 0, _ip(C), _ip(S), sport, 53))
    assert sync.established() == replied


@settings(max_examples=5, deadline=None)
@given(ident=st.integers(0, 65535),
       data=st.lists(st.tuples(st.booleans(), st.binary(max_size=40)), min_size=1, max_size=6))
def test_a_new_ping_runs_in_the_kernel_like_the_reference(ktier, ident, data):
    """A new ping (a new ICMP id) is a connection the kernel commits itself, as UDP: its
    first request, those before the reply (+new), the first reply and everything after
    (+est) leave the kernel exactly as they leave the reference switch, none goes up; the
    kernel's map holds it keyed as the slow path hands pings down, and a conntrack that
    saw no packet learns it from the commit and first-reply events.  A reply nothing
    asked for, or an error quoting the ping, still goes up."""
    t, ring = ktier
    _empty(t)
    ring.drain()
    sw = _switch(PING)
    fwd, back = (1, C, S), (2, S, C)
    packets = [echo(fwd, ident, 0)]
    packets += [echo(fwd if f else back, ident, n + 1, reply=not f, payload=p)
                for n, (f, p) in enumerate(data)]
    replied = any(not f for f, _ in data)
    mirror, sync = _committed_in_kernel(
        t, ring, sw, PING, packets, replied, (ZONE, 1, 0, ident, 0x0800, _ip(C), _ip(S)),
        (_ip(C), ident << 8 | 8), (_ip(S), ident << 8),
        (ZONE, 1, 0, _ip(C), _ip(S), ident << 8 | 8, ident << 8), every_output=True)
    assert mirror.conntrack.dump() == sw.conntrack.dump()
    # What the map holds is what the slow path would hand down: the next sync writes nothing.
    sync.zones.add(ZONE)
    before = dict(sync.held)
    sync.sync(0.0)
    assert sync.held == before
    for other in (echo(back, ident ^ 1, 9, reply=True), echo(back, ident, 9, typ=3, code=1)):
        assert t.run(other[1], other[0]).verdict == "upcall"


LABELLED = SG.replace("udp,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5),output:2",
                      "udp,ct_state=+trk+new,in_port=1 actions=ct(commit,zone=5,"
                      "exec(set_field:1->ct_label)),output:2")


@pytest.mark.parametrize("flows, handed", [(SG, "new"), (LABELLED, "punt")], ids=["new", "punt"])
def test_a_connection_the_slow_path_committed_is_never_taken_for_new(ktier, flows, handed):
    """A UDP connection the slow path committed (its first packet went up) is handed down
    at once: awaiting its reply (the kernel establishes it on the reply, as the reference
    does), or, labelled, as one the kernel must send up.  Without that its reply would be
    +new in the kernel: dropped by this group."""
    t, ring = ktier
    _empty(t)
    sw = _switch(flows)
    first = (1, seg(C, S, 4000, 53, "", b"q", udp=True))
    reply = (2, seg(S, C, 53, 4000, "", b"a", udp=True))
    # Another connection first, both ways, and a packet the group drops (+new from port
    # 2): the megaflows the reply takes, and the one it would take were it +new, are there.
    run_reference(sw, [(1, seg(C, S, 3999, 53, "", udp=True)), (2, seg(S, C, 53, 3999, "", udp=True)),
                       (2, seg(S, C, 53, 5555, "", udp=True))])
    run_reference(sw, [first])
    attach_ports(t, sw)
    sync = ConnSync(t, sw.conntrack, kernel_ct=True)
    for mf in sw.cache.flows.values():
        if t.put(mf).tier == "ebpf":
            sync.zones.update(a.zone for a in mf.actions if type(a).__name__ == "Ct")
    sync.hand_down(np.array([[17, _ip(C), _ip(S), 4000, 53], [17, _ip(C), _ip(S), 3999, 53]]))
    ring.drain()
    ref = run_reference(sw, [reply])
    got = t.run(reply[1], 2)
    if handed == "punt":
        assert got.verdict == "upcall"
        assert {c[6] for c in t.conns_kept() if 4000 in (c[4], c[5])} == {0}
        return
    assert [(o.ofport, o.data) for o in got.outputs] == ref.outputs[0] != []
    up = decode(ring.drain(), None)
    assert up.established.tolist() == [True]
    sync.events(up.events, up.kinds, 0.0)
    assert sync.established() == 2          # this one and the one before
    # The next reconciliation finds the map as the conntrack has it: nothing to write.
    before = dict(sync.held)
    sync.sync(0.0)
    assert sync.held == before and set(before.values()) == {0x22, 0x2A}
    assert sync.established() == 2
    # Packets the kernel forwards keep the connection alive in the slow path's conntrack;
    # one it lets go leaves the map.
    slot, _ = sw.conntrack.find((ZONE, 17, 0, _ip(C), _ip(S), 4000, 53))
    t.run(reply[1], 2)
    sync.sync(1000.0)
    assert sw.conntrack.exp[slot] > 1000.0
    sw.conntrack.flush()
    sync.sync(1000.0)
    assert t.conns_kept() == [] and sync.held == {} and sync.established() == 0


def test_connections_without_kernel_ct_still_go_up(tier):
    """Connections are committed in the kernel only where kernel_ct is set: a tier without
    it sends a new UDP connection's first packet up, as before."""
    sw = _switch()
    tier.flush()
    attach_ports(tier, sw)
    run_reference(sw, [(1, seg(C, S, 4000, 53, "", udp=True)), (2, seg(S, C, 53, 4000, "", udp=True))])
    for mf in sw.cache.flows.values():
        tier.put(mf)
    assert tier.run(seg(C, S, 4001, 53, "", udp=True), 1).verdict == "upcall"
    assert L.CFG_F_KERNEL_CT and not tier.kernel_ct


def test_a_reply_racing_the_hand_down_goes_up_not_taken_for_new(ktier):
    """While the slow path switches a batch, the connections it commits are not yet in
    the map: the batch's UDP tuples are guarded first (PUNT), so a reply arriving then
    goes up rather than being +new (dropped by this group); after the hand-down the
    kernel forwards it, and the guard of a tuple no connection took leaves the map."""
    t, ring = ktier
    _empty(t)
    sw = _switch()
    run_reference(sw, [(1, seg(C, S, 3999, 53, "", udp=True)), (2, seg(S, C, 53, 3999, "", udp=True)),
                       (2, seg(S, C, 53, 5555, "", udp=True))])
    attach_ports(t, sw)
    sync = ConnSync(t, sw.conntrack, kernel_ct=True)
    for mf in sw.cache.flows.values():
        if t.put(mf).tier == "ebpf":
            sync.zones.update(a.zone for a in mf.actions if type(a).__name__ == "Ct")
    batch = np.array([[17, _ip(C), _ip(S), 4000, 53], [17, _ip(C), _ip(S), 4444, 53]])
    guards = sync.guard(batch)
    assert len(guards) == 4
    run_reference(sw, [(1, seg(C, S, 4000, 53, "", b"q", udp=True))])   # commits 4000 only
    reply = seg(S, C, 53, 4000, "", b"a", udp=True)
    assert t.run(reply, 2).verdict == "upcall"
    sync.hand_down(batch)
    sync.unguard(guards)
    assert t.run(reply, 2).verdict == "forward"
    assert not [c for c in t.conns_kept() if 4444 in (c[4], c[5])]
    ring.drain()
