"""Flow records from megaflow counters: exact counts, per-5-tuple truth, timeouts, the record cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.analytics.granularity import per_five_tuple
from sbnet.analytics.records import (END_ACTIVE, END_IDLE, END_RESOURCES, FlowMeter, PortInfo)
from sbnet.analytics.replay import replay
from sbnet.analytics.traffic import five_tuple_truth, flow_traffic
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch

ROOT = Path(__file__).resolve().parents[2]
ACL = (ROOT / "examples" / "l2-acl.flows").read_text()


def make_switch(text: str = ACL, exact: bool = False) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in range(1, 5):
        sw.add_port(p)
    sw.load(text)
    if exact:
        per_five_tuple(sw)
    return sw


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("timeouts", [(60.0, 15.0), (5.0, 1.0)])
def test_exported_packets_add_up_to_processed(exact, timeouts):
    pk = flow_traffic(1500, duration=90, ports=(1, 2))
    sw = make_switch(exact=exact)
    meter = FlowMeter(sw, active_timeout=timeouts[0], idle_timeout=timeouts[1])
    res = replay(sw, meter, pk, batch=128, poll_every=0.5)
    assert res.processed == len(pk)
    assert sum(r.packets for r in res.records) == len(pk)
    assert meter.packets_exported == len(pk)
    # Every parsed packet's bytes too (malformed packets have no megaflow and no bytes).
    good = sum(len(f) for _, f, _ in pk) - sum(int(r.bytes) for r in res.records)
    malformed = [r for r in res.records if r.reason.startswith("malformed")]
    assert sum(r.packets for r in malformed) == 3
    assert good == sum(len(f) for _, f, _ in pk if len(f) < 20)
    # forwarded + dropped, as the switch itself counts them
    dropped = sum(r.packets for r in res.records if r.dropped)
    forwarded = sum(r.packets for r in res.records if not r.dropped)
    assert dropped == sum(sw.drop_counts().values())
    assert forwarded + dropped == len(pk)


def test_per_five_tuple_records_match_the_packets():
    pk = flow_traffic(3000, duration=60, ports=(1, 2))
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, active_timeout=30.0, idle_timeout=10.0)
    res = replay(sw, meter, pk, batch=256)
    got: dict[tuple, list[int]] = {}
    for r in res.records:
        if r.src:
            assert r.exact and not r.wildcards
            acc = got.setdefault((r.in_port, r.src, r.dst, r.proto, r.sport, r.dport), [0, 0])
            acc[0] += r.packets
            acc[1] += r.bytes
    assert got == five_tuple_truth(pk)
    assert len(got) > 2000


def test_wide_megaflows_say_what_they_wildcard():
    sw = make_switch()
    meter = FlowMeter(sw)
    res = replay(sw, meter, flow_traffic(300, ports=(1,)))
    ip = [r for r in res.records if r.src]
    assert ip and all(not r.exact for r in ip)
    assert any("tp_src" in r.wildcards for r in ip)
    assert all(r.src_prefix < 32 or "nw_src" not in r.wildcards for r in ip if ":" not in r.src)


def _steady_flow(times):
    from sbnet.analytics.traffic import _frame
    return [(t, _frame(0, 1, False, 17, 1000, 53, 100, k, 0), 1) for k, t in enumerate(times)]


def test_active_and_idle_timeouts():
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, active_timeout=60.0, idle_timeout=15.0)
    # One packet a second for 150 s, then silence: active cuts at 60 and 120, idle after.
    pk = _steady_flow([float(t) for t in range(150)])
    recs = []
    for t, f, p in pk:
        sw.process(Batch.from_packets([f], p), now=t)
        recs += meter.poll(t)
    for t in (155.0, 170.0):
        recs += meter.poll(t)
    assert [r.end_reason for r in recs] == [END_ACTIVE, END_ACTIVE, END_IDLE]
    assert sum(r.packets for r in recs) == 150
    assert recs[0].first == 0.0 and recs[0].last == 60.0
    assert recs[2].last == 149.0
    assert all(r.first <= r.last for r in recs)


def test_megaflow_eviction_exports_final_counts():
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, idle_timeout=100.0)
    pk = _steady_flow([0.0, 1.0, 2.0])
    for t, f, p in pk:
        sw.process(Batch.from_packets([f], p), now=t)
    assert meter.poll(3.0) == []
    sw.maintain(20.0)                 # the megaflow idles out of the cache (10 s)
    assert len(sw.cache) == 0
    recs = meter.poll(20.0)
    assert [r.packets for r in recs] == [3]
    # The hook path gives the same answer.
    sw2 = make_switch(exact=True)
    m2 = FlowMeter(sw2, idle_timeout=100.0)
    for t, f, p in pk:
        sw2.process(Batch.from_packets([f], p), now=t)
    m2.poll(3.0)
    for mf in list(sw2.cache.flows.values()):
        m2.on_evict(mf, int(sw2.cache.packets[mf.mf_id]), int(sw2.cache.bytes[mf.mf_id]))
    sw2.maintain(20.0)
    assert [r.packets for r in m2.poll(20.0)] == [3]


def test_cap_exports_and_evicts_least_recently_used():
    pk = flow_traffic(800, duration=30, ports=(1,))
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, max_records=50, idle_timeout=1000, active_timeout=1000)
    res = replay(sw, meter, pk, batch=64, poll_every=0.1)
    assert meter.evicted_for_cap > 0
    assert any(r.end_reason == END_RESOURCES for r in res.records)
    assert sum(r.packets for r in res.records) == len(pk)
    # After each poll no more than the cap stay open.
    meter2 = FlowMeter(sw, max_records=5)
    meter2.poll(1e10 - 1)
    assert meter2.open_records() <= 5


def test_rule_cookie_port_info_and_tier():
    flows = ("table=0,priority=10,in_port=1,tcp,tp_dst=22,cookie=0x5eca11 actions=drop\n"
             "table=0,priority=5,in_port=1,ip,cookie=0xa110 actions=output:2\n")
    sw = make_switch(flows, exact=True)
    port = "6b1c7a52-0f3e-4d55-9a57-8f1f5e7b2c11"
    meter = FlowMeter(sw, host="compute-1", ports={1: PortInfo(port, "p" * 32)})
    from sbnet.analytics.traffic import _frame
    pk = [(0.0, _frame(0, 1, False, 6, 999, 22, 0, 0, 0), 1),
          (0.0, _frame(0, 1, False, 6, 999, 80, 0, 0, 0), 1),
          (0.1, _frame(0, 1, False, 6, 999, 80, 10, 1, 0), 1)]
    recs = replay(sw, meter, pk).records
    by_port = {r.dport: r for r in recs}
    assert by_port[22].cookie == 0x5eca11 and by_port[22].dropped
    assert by_port[22].reason.startswith("drop rule")
    assert by_port[80].cookie == 0xa110 and by_port[80].out_port == 2
    assert by_port[80].packets == 2
    assert by_port[80].tcp_flags & 0x02             # SYN seen
    assert all(r.host == "compute-1" and r.neutron_port == port and r.tier == "software"
               for r in recs)


FIREWALL = """
table=0,priority=100,ip,ct_state=-trk actions=ct(table=1,zone=9)
table=0,priority=10,arp actions=flood
table=1,priority=100,ct_state=+trk+est,ip actions=resubmit(,2)
table=1,priority=90,ct_state=+trk+new,in_port=1,tcp,tp_dst=80,cookie=0x80 actions=ct(commit,zone=9),resubmit(,2)
table=1,priority=90,ct_state=+trk+new,in_port=1,udp,cookie=0x53 actions=ct(commit,zone=9),resubmit(,2)
table=1,priority=1,cookie=0xdead actions=drop
table=2,in_port=1 actions=output:2
table=2,in_port=2 actions=output:1
"""


@pytest.mark.parametrize("exact", [False, True])
def test_conntrack_flows_count_once_with_their_final_verdict(exact):
    pk = flow_traffic(600, duration=60, ports=(1,))
    sw = make_switch(FIREWALL, exact=exact)
    meter = FlowMeter(sw, active_timeout=20.0, idle_timeout=5.0)
    res = replay(sw, meter, pk, batch=128)
    assert sum(r.packets for r in res.records) == len(pk)
    forwarded = sum(r.packets for r in res.records if not r.dropped)
    assert forwarded == sw.ports[2].tx_packets          # everything forwarded leaves on 2 (ARP floods)
    v4 = [r for r in res.records if r.src and ":" not in r.src]
    web = [r for r in v4 if r.proto == 6 and r.dport == 80]
    # The security-group rule that let a connection in names its first record;
    # established packets pass by the +est rule (cookie 0), as in Neutron's tables.
    assert web and all(r.reason == "forwarded" for r in web)
    assert any(r.cookie == 0x80 for r in web)
    ssh = [r for r in v4 if r.proto == 6 and r.dport == 22]
    assert ssh and all(r.dropped and r.cookie == 0xdead for r in ssh)
    v6 = [r for r in res.records if ":" in r.src]   # the firewall has no IPv6 rules
    assert v6 and all(r.reason == "no matching flow in table 0" for r in v6)


_TRAFFIC = flow_traffic(300, duration=40, ports=(1, 2), seed=7)
_TRUTH = five_tuple_truth(_TRAFFIC)


@settings(max_examples=12, deadline=None)
@given(active=st.sampled_from([0.5, 3.0, 60.0]), idle=st.sampled_from([0.2, 2.0, 15.0]),
       cap=st.sampled_from([3, 40, 100_000]), poll=st.sampled_from([0.05, 0.7, 5.0]),
       batch=st.sampled_from([16, 64, 256]), maintain=st.booleans())
def test_any_settings_keep_every_packet_in_exactly_one_record(active, idle, cap, poll, batch,
                                                               maintain):
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, active_timeout=active, idle_timeout=idle, max_records=cap)
    if not maintain:
        sw.maintain = lambda now=None: None          # megaflows stay: only timeouts and the cap cut
    res = replay(sw, meter, _TRAFFIC, batch=batch, poll_every=poll)
    assert all(r.packets > 0 and r.first <= r.last for r in res.records)
    got: dict[tuple, list[int]] = {}
    for r in res.records:
        if r.src:
            acc = got.setdefault((r.in_port, r.src, r.dst, r.proto, r.sport, r.dport), [0, 0])
            acc[0] += r.packets
            acc[1] += r.bytes
    assert got == _TRUTH
    assert sum(r.packets for r in res.records) == len(_TRAFFIC)


def test_megaflows_evicted_between_polls_are_recorded_through_the_hook():
    sw = make_switch(exact=True)
    meter = FlowMeter(sw, idle_timeout=100.0)
    assert meter.on_evict in sw.on_evict          # the meter follows the switch's evictions
    meter.poll(0.0)
    for t, f, p in _steady_flow([0.0, 1.0, 2.0]):
        sw.process(Batch.from_packets([f], p), now=t)
    # Evicted (a flow-mod revalidation, say) before any poll saw it: only the hook knows.
    sw.flush_megaflows()
    sw.process(Batch.from_packets([_steady_flow([3.0])[0][1]], 1), now=3.0)
    recs = meter.poll(3.5) + meter.flush(4.0)
    assert sum(r.packets for r in recs) == 4 and meter.lost_packets == 0

