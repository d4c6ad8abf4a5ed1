"""The tier wired into the real switch the way docs/offload.md tells the switch to: statistics stay exact.

OffloadSwitch is a test-only subclass standing in for the integration (the switch
itself is not edited here); the same traffic through a plain Switch must give the
same per-rule packet and byte counts, whichever tier did the work."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.offload import BUILTIN_DIR, NicTier, builtin_profiles, cost, parse_profile


class OffloadSwitch(Switch):
    def __init__(self, profile, **kw) -> None:
        super().__init__(**kw)
        self.tier = NicTier(profile)
        self.nic_packets = self.software_packets = 0

    def _install(self, res, key, now):
        mf = super()._install(res, key, now)
        self.tier.offer(mf, now)                                   # step 1
        return mf

    def _count(self, mf, lengths, now):
        on = self.tier.record(mf, lengths, now)                     # step 2
        self.nic_packets += int(on.sum())
        self.software_packets += int((~on).sum())
        super()._count(mf[~on], lengths[~on], now)

    def _evict(self, mf):
        self._fold_one(mf.mf_id, self.tier.remove(mf.mf_id))        # step 3
        super()._evict(mf)

    def offload_tick(self, now):
        ch = self.tier.advance(now)                                 # step 4
        for i in ch.installed:
            self.cache.flows[i].tier = "nic"
        for i in ch.evicted:
            self.cache.flows[i].tier = "software"
        self.fold()

    def fold(self):                                                 # step 5
        for mf_id, c in self.tier.take_counters().items():
            self._fold_one(mf_id, c)

    def _fold_one(self, mf_id, c):
        self.cache.packets[mf_id] += c.packets
        self.cache.bytes[mf_id] += c.bytes
        self.cache.used[mf_id] = max(self.cache.used[mf_id], c.used)


FLOWS = """
in_port=1,tcp,tp_dst=80 actions=output:2
in_port=1,udp actions=controller
in_port=1 actions=output:3
in_port=2 actions=output:1
"""


def _traffic(i):
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    kind = i % 4
    if kind == 0:
        return 1, raw(e / IP(dst=f"10.0.{i % 7}.1") / TCP(dport=80))
    if kind == 1:
        return 1, raw(e / IP() / UDP(dport=53))
    if kind == 2:
        return 2, raw(e / IP() / TCP(dport=22, sport=1000 + i % 5))
    return 1, raw(e / IP(src="10.9.9.9") / TCP(dport=8080))


def _run(sw, rounds=30):
    now = 0.0
    for r in range(rounds):
        now = r * 0.1
        for port in (1, 2):
            pkts = [p for q, p in (_traffic(r * 8 + k) for k in range(8)) if q == port]
            if pkts:
                sw.process(Batch.from_packets(pkts, port), now=now)
        if isinstance(sw, OffloadSwitch):
            sw.offload_tick(now)
        if r == 20:
            sw.load("in_port=1,tcp,tp_dst=80 actions=output:3")   # revalidation evicts megaflows
    if isinstance(sw, OffloadSwitch):
        sw.fold()
    return {(str(s.flow.match), s.flow.priority): (s.n_packets, s.n_bytes) for s in sw.dump_flows(now)}


def _make(cls, *args):
    sw = cls(*args, clock=lambda: 0.0)
    for p in (1, 2, 3):
        sw.add_port(p)
    sw.load(FLOWS)
    return sw


def test_rule_counters_are_exact_whichever_tier_forwarded():
    prof = builtin_profiles()["smartnic"]
    plain = _run(_make(Switch))
    sw = _make(OffloadSwitch, prof)
    assert _run(sw) == plain
    assert sw.nic_packets > sw.software_packets > 0              # most packets on the NIC
    tiers = {mf.tier for mf in sw.cache.flows.values()}
    assert tiers == {"nic", "software"}                          # the controller flow stays
    c = cost(prof, sw.nic_packets, sw.software_packets, software_cpu_seconds=1e-3)
    assert 0.5 < c.nic_share < 1


def test_slow_insertion_and_small_table_still_count_exactly():
    text = (BUILTIN_DIR / "smartnic.yaml").read_text()
    small = parse_profile(text.replace("flows: 1000000 ", "flows: 2 ")
                          .replace("insertion_rate: 20000 ", "insertion_rate: 3 "), "small.yaml")
    assert small.flows == 2 and small.insertion_rate == 3
    plain = _run(_make(Switch))
    sw = _make(OffloadSwitch, small)
    assert _run(sw) == plain
    assert len(sw.tier) <= 2 and sw.tier.installs >= 2
    assert np.all(sw.cache.packets >= 0)
