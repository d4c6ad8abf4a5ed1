"""The NIC tier inside the real switch: statistics stay exact whichever tier did the work.

The same traffic through a plain Switch must give the same per-rule packet and byte
counts as through Switch(offload=profile)."""

from __future__ import annotations

import numpy as np
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.offload import BUILTIN_DIR, NicTier, builtin_profiles, cost, parse_profile


class OffloadSwitch(Switch):
    """The switch with a NIC tier (Switch(offload=NicTier(profile))), named for these tests."""

    def __init__(self, profile, **kw) -> None:
        super().__init__(offload=NicTier(profile), **kw)

    @property
    def nic_packets(self) -> int:
        return self.tier_packets["nic"]

    @property
    def software_packets(self) -> int:
        return self.tier_packets["software"]

    def fold(self):
        self.fold_nic()


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
