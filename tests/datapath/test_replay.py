"""Misses of a batch that share a translated path get their megaflows from that one translation: the same megaflows, outputs and counters as one translation each."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import raw

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from tests.datapath.tablegen import IPS, MACS, PORTS, TPORTS, packet, table_set


def _pair(text: str, compiled: bool) -> tuple[Switch, Switch]:
    """The same tables twice: the first switch reuses translations, the second does not."""
    pair = []
    for replay in (True, False):
        sw = Switch(clock=lambda: 0.0, compiled=compiled)
        for p in PORTS:
            sw.add_port(p)
        sw.load(text)
        if replay:
            sw.dpif.max_stride = 1      # every path asked about (no backing off)
        else:
            sw.dpif.same_path = None
        pair.append(sw)
    return pair[0], pair[1]


def _pool(r: random.Random, n: int) -> list[tuple[int, bytes]]:
    """Packets from the table generator's pools, and many more UDP/TCP ones that differ
    from a few bases in one or two of their addresses and ports, drawn from the pools or
    at random: keys that differ in the fields lookups that find no rule consult."""
    bases = [(r.choice(PORTS[:2]), r.choice(MACS[:3]), r.choice(MACS), r.choice(IPS),
              r.choice(IPS), r.choice(TPORTS), r.choice(TPORTS), r.random() < 0.5)
             for _ in range(4)]
    out = [packet(r) for _ in range(n // 4)]
    while len(out) < n:
        port, *f, tcp = r.choice(bases)
        for i in r.sample(range(6), r.choice([1, 1, 2])):
            f[i] = r.choice([
                MACS[:3] + (f"02:00:00:00:{r.randint(0, 255):02x}:01",),
                MACS,
                IPS + (f"10.9.{r.randint(0, 3)}.{r.randint(1, 250)}",),
                IPS + (f"10.0.{r.randint(0, 1)}.{r.randint(1, 9)}",),
                TPORTS + (r.randint(1024, 65535),) * 2,
                TPORTS + (r.randint(1, 1023),)][i])
        l4 = (TCP if tcp else UDP)(sport=f[4], dport=f[5])
        out.append((port, raw(Ether(src=f[0], dst=f[1]) / IP(src=f[2], dst=f[3]) / l4)))
    return out


def _outputs(emitted) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    for port, pb in emitted:
        out.setdefault(port, []).extend(pb.packets())
    return {port: sorted(p) for port, p in out.items()}


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.booleans())
def test_batch_translation_equals_one_translation_per_miss(seed, compiled):
    r = random.Random(seed)
    fast, ref = _pair(table_set(seed).text(), compiled)
    pool = _pool(r, 120)
    for i in range(3):
        batch = [r.choice(pool) for _ in range(r.choice([40, 160]))]
        got, want = (_outputs(sw.process(Batch.from_packets([p for _, p in batch],
                                                            [port for port, _ in batch]),
                                         now=float(i))) for sw in (fast, ref))
        assert got == want
    assert sorted(fast.dump_megaflows(now=9.0)) == sorted(ref.dump_megaflows(now=9.0))
    assert [(s.flow, s.n_packets, s.n_bytes) for s in fast.dump_flows(now=9.0)] == \
        [(s.flow, s.n_packets, s.n_bytes) for s in ref.dump_flows(now=9.0)]
    assert fast.drop_counts() == ref.drop_counts()
    # Each megaflow is what translating its own key gives.
    for mf in fast.dpif.flow_dump():
        res = fast.xlate.run(list(mf.key))
        assert (tuple(s for s, m in enumerate(res.wc) if m), res.actions) == (mf.slots, mf.actions)


def test_one_translation_sets_up_a_megaflow_per_source_port():
    """A rule on one source port makes every lookup consult udp_src: each flow gets a
    megaflow of its own, all made from the batch's first translation."""
    sw = Switch(clock=lambda: 0.0)
    for p in (1, 2):
        sw.add_port(p)
    sw.load("priority=20,udp,tp_src=1 actions=drop\n"
            "priority=10,udp,in_port=1 actions=mod_dl_dst:02:00:00:00:00:09,output:2\n"
            "priority=0 actions=drop\n")
    calls = []
    run = sw.xlate.run
    sw.xlate.run = lambda *a, **k: calls.append(1) or run(*a, **k)
    pkts = [raw(Ether(src=MACS[0], dst=MACS[1]) / IP(src="10.0.0.1", dst="10.0.0.2")
                / UDP(sport=1000 + i, dport=53)) for i in range(200)]
    pkts.append(raw(Ether(src=MACS[0], dst=MACS[1]) / IP(src="10.0.0.1", dst="10.0.0.2")
                    / UDP(sport=1, dport=53)))
    sw.process(Batch.from_packets(pkts, 1), now=1.0)
    assert len(calls) == 2          # the first miss, and the one source port the drop rule takes
    assert len(sw.dpif.flow_dump()) == 201
    sent = sw.ports[2].take_sent()
    assert len(sent) == 200 and all(p[:6] == bytes.fromhex("020000000009") for p in sent)
    counts = {s.flow.priority: s.n_packets for s in sw.dump_flows(now=1.0)}
    assert counts == {20: 1, 10: 200, 0: 0}
