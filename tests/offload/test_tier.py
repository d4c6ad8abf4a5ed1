"""The NIC tier: capacity, insertion-rate queueing, eviction by traffic, conntrack capacity, exact counters."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.datapath import odp
from sbnet.flows import fields as F
from sbnet.offload import NicTier, builtin_profiles, parse_profile

from .helpers import megaflow

PROFILE = """
name: t
tier: nic
nic: T
description: test NIC
sources: [test]
match: {recirc_id: any, in_port: exact, eth_dst: any, eth_type: exact, ct_state: any, ip_proto: exact}
actions: {output: {}, ct: {}, recirc: {}}
refused_actions: {userspace: no CPU path}
conntrack: {capacity: 2, states: ["0", "+trk+est"]}
capacity: {flows: FLOWS, insertion_rate: RATE}
performance: {mpps: 10, latency_us: 1}
"""


def tier(flows=2, rate=1000.0, **kw) -> NicTier:
    return NicTier(parse_profile(PROFILE.replace("FLOWS", str(flows)).replace("RATE", str(rate))), **kw)


def mfs(n, start=0):
    return [megaflow({"eth_dst": i + 1}, mf_id=start + i) for i in range(n)]


def test_refused_megaflows_are_never_queued():
    t = tier()
    p = t.offer(megaflow({}, (odp.Userspace("controller"),), mf_id=0), 0.0)
    assert p.tier == "software" and "no CPU path" in p.reason
    assert t.advance(10.0).installed == [] and not t.installed(0) and t.placement(0) is p


def test_software_profile_has_no_nic_tier():
    t = NicTier(builtin_profiles()["software"])
    assert t.offer(megaflow({}, mf_id=0), 0.0).tier == "software"
    assert t.advance(1.0).installed == [] and len(t) == 0


def test_capacity_overflow_waits_for_room():
    t = tier(flows=2)
    for mf in mfs(3):
        t.offer(mf, 0.0)
    ch = t.advance(1.0)
    assert ch.installed == [0, 1] and len(t) == 2 and t.waiting() == [2]
    t.remove(0)                             # the switch evicted megaflow 0
    assert t.advance(2.0).installed == [2] and t.installed(2) and not t.installed(0)


def test_insertion_rate_queues_entries():
    t = tier(flows=1000, rate=10)
    for mf in mfs(100):
        t.offer(mf, 0.0)
    assert len(t.advance(0.95).installed) == 10        # at 0.0, 0.1, ... 0.9
    assert len(t.advance(1.95).installed) == 10
    assert len(t) == 20 and len(t.waiting()) == 80


def test_idle_inserter_saves_no_credit():
    t = tier(flows=1000, rate=10)
    for mf in mfs(5):
        t.offer(mf, 0.0)
    assert len(t.advance(10.0).installed) == 5
    for mf in mfs(5, start=5):
        t.offer(mf, 10.0)
    assert len(t.advance(10.25).installed) == 3         # 10.0, 10.1, 10.2


def test_busier_waiting_entry_evicts_least_used():
    t = tier(flows=2, half_life=0)
    a, b, c = mfs(3)
    for mf in (a, b, c):
        t.offer(mf, 0.0)
    assert t.advance(0.1).installed == [0, 1]
    t.record(np.array([0] * 5 + [2] * 10), np.full(15, 60), 0.2)   # b idle, c busy in software
    ch = t.advance(0.3)
    assert ch.installed == [2] and ch.evicted == [1]
    assert t.installed(2) and t.installed(0) and not t.installed(1) and t.waiting() == [1]
    assert t.evictions == 1


def test_no_eviction_when_the_candidate_is_not_busier():
    t = tier(flows=2, half_life=0)
    for mf in mfs(3):
        t.offer(mf, 0.0)
    t.advance(0.1)
    t.record(np.array([0, 0, 1, 1, 2, 2]), np.full(6, 60), 0.2)
    assert t.advance(0.3) == type(t.advance(0.3))()     # nothing moves on a tie
    assert t.waiting() == [2]


def test_usage_decays_so_old_traffic_loses():
    t = tier(flows=1, half_life=1.0)
    old, new = mfs(2)
    t.offer(old, 0.0)
    t.advance(0.0)
    t.record(np.zeros(100, dtype=np.int64), np.full(100, 60), 0.0)  # busy long ago
    t.offer(new, 1.0)
    t.advance(10.0)                                                 # old decays to ~0.1
    t.record(np.ones(5, dtype=np.int64), np.full(5, 60), 10.0)
    ch = t.advance(10.0)
    assert ch.installed == [1] and ch.evicted == [0]


def test_nic_counts_are_taken_once_and_removal_returns_the_rest():
    t = tier(flows=1)
    a, b = mfs(2)
    t.offer(a, 0.0)
    t.offer(b, 0.0)
    t.advance(0.0)
    on = t.record(np.array([0, 1, 0]), np.array([60, 70, 80]), 1.0)
    assert on.tolist() == [True, False, True]       # the switch counts packet 1 itself
    (c,) = t.take_counters().values()
    assert (c.packets, c.bytes, c.used) == (2, 140, 1.0)
    assert t.take_counters() == {}
    t.record(np.array([0]), np.array([90]), 2.0)
    rest = t.remove(0)
    assert (rest.packets, rest.bytes, rest.used) == (1, 90, 2.0) and t.take_counters() == {}


def test_conntrack_megaflows_run_on_the_nic_only_for_held_connections():
    t = tier(flows=10)
    first = megaflow({"eth_type": F.ETH_IP, "ip_proto": 6, "ct_state": (0, 0x20)},
                     (odp.Ct(zone=1), odp.Recirc(1)), mf_id=0)
    est = megaflow({"recirc_id": 1, "eth_type": F.ETH_IP, "ct_state": (0x22, 0x22)}, mf_id=1)
    assert t.offer(first, 0.0).needs_ct and t.offer(est, 0.0).needs_ct
    t.advance(1.0)
    assert t.ct_add("c1", 1.0) and t.ct_add("c2", 1.0) and t.ct_add("c1", 1.0)
    assert not t.ct_add("c3", 1.0) and t.ct_refused == 1 and t.ct_count() == 2
    held = np.array([t.ct_held(c) for c in ("c1", "c3", "c2", "c3")])
    on = t.record(np.array([0, 0, 1, 1]), np.full(4, 60), 2.0, ct_held=held)
    assert on.tolist() == [True, False, True, False]
    assert t.on_nic(np.array([0, 1])).tolist() == [False, False]     # no ct_held: software
    t.ct_remove("c1")
    assert t.ct_add("c3", 3.0)


def test_ct_held_many_for_integer_connection_ids():
    t = tier()
    assert t.ct_held_many(np.array([1, 2])).tolist() == [False, False]
    t.ct_add(7, 0.0)
    assert t.ct_held_many(np.array([7, 2, 7])).tolist() == [True, False, True]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["offer", "advance", "record", "take", "remove"]),
                          st.integers(0, 7), st.lists(st.integers(0, 7), max_size=20)),
                max_size=40))
def test_every_packet_is_counted_exactly_once(ops):
    """Differential check: NIC counts taken + removed + the switch's own counts = packets sent."""
    t = tier(flows=3, rate=50)
    now = 0.0
    offered, sent, software, folded = set(), {}, {}, {}
    for op, i, pkts in ops:
        now += 0.01
        if op == "offer" and i not in offered:
            t.offer(megaflow({"eth_dst": i + 1}, mf_id=i), now)
            offered.add(i)
        elif op == "advance":
            t.advance(now)
        elif op == "record":
            ids = np.array([p for p in pkts if p in offered], dtype=np.int64)
            if ids.size:
                lens = ids * 10 + 60
                on = t.record(ids, lens, now)
                for mf, l, nic in zip(ids.tolist(), lens.tolist(), on.tolist()):
                    sent[mf] = sent.get(mf, 0) + l
                    if not nic:
                        software[mf] = software.get(mf, 0) + l
        elif op == "take":
            for mf, c in t.take_counters().items():
                folded[mf] = folded.get(mf, 0) + c.bytes
        elif op == "remove" and i in offered:
            c = t.remove(i)
            folded[i] = folded.get(i, 0) + c.bytes
            offered.discard(i)
        assert len(t) <= 3
    for mf, c in t.take_counters().items():
        folded[mf] = folded.get(mf, 0) + c.bytes
    for mf in set(sent) | set(folded):
        assert folded.get(mf, 0) + software.get(mf, 0) == sent.get(mf, 0)
