"""Megaflow soundness: the cached fast path emits what the slow path emits, per port, on random tables."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.flows.ofctl import parse_flow

PORTS = (1, 2, 3, 4)
MACS = ("02:00:00:00:00:01", "02:00:00:00:00:02", "0a:0b:0c:0d:0e:0f")
IPS = ("10.0.0.1", "10.0.0.2", "10.0.1.254", "192.168.1.1")
TP = (22, 80, 443, 1024)
VIDS = (5, 6, 100)
N_TABLES = 3          # OpenFlow tables 0..2 per switch
N_SEEDS = 7
BATCHES = 3
BATCH = 64


# --- random tables ---------------------------------------------------------------------------

def _match(rng: random.Random) -> str:
    parts = []
    if rng.random() < 0.3:
        parts.append(f"in_port={rng.choice(PORTS)}")
    if rng.random() < 0.2:
        parts.append(f"dl_src={rng.choice(MACS)}")
    if rng.random() < 0.2:
        parts.append(f"dl_dst={rng.choice(MACS)}/ff:ff:ff:00:00:0{rng.randint(0, 3)}")
    tagged = False
    if rng.random() < 0.2:
        vlan = rng.choice((f"dl_vlan={rng.choice(VIDS)}", "vlan_tci=0/0x1000",
                           f"vlan_tci=0x1005/0x{rng.choice((0x1000, 0x1001, 0x1fff)):x}"))
        tagged = vlan != "vlan_tci=0/0x1000"
        parts.append(vlan)
    ip = rng.random() < 0.7
    if ip:
        proto = rng.choice(("ip", "tcp", "udp"))
        parts.append(proto)
        for fld in ("nw_src", "nw_dst"):
            if rng.random() < 0.4:
                parts.append(f"{fld}={rng.choice(IPS)}/{rng.choice((8, 16, 24, 31, 32))}")
        if proto != "ip":
            for fld in ("tp_src", "tp_dst"):
                if rng.random() < 0.4:
                    m = rng.choice((0xFFFF, 0xFF00, 0xFFF0, 0x0001, 0x8000))
                    parts.append(f"{fld}={rng.choice(TP) & m:#x}/{m:#x}")
    elif rng.random() < 0.2:
        parts.append(rng.choice(("arp", "ipv6")))
    return ",".join(parts), ip, tagged


def _actions(rng: random.Random, table: int, ip: bool, tagged: bool) -> str:
    acts = []
    for _ in range(rng.randint(0, 3)):
        r = rng.random()
        if r < 0.35:
            acts.append(f"output:{rng.choice(PORTS)}")
        elif r < 0.45:
            acts.append(f"mod_dl_dst:{rng.choice(MACS)}")
        elif r < 0.55:
            acts.append(f"mod_vlan_vid:{rng.choice(VIDS)}")
            tagged = True
        elif r < 0.62 and tagged:
            acts.append("strip_vlan")
            tagged = False
        elif r < 0.72 and ip:
            acts.append(f"set_field:{rng.choice(IPS)}->ip_dst")
        elif r < 0.78 and ip:
            acts.append("dec_ttl")
        elif table + 1 < N_TABLES:
            acts.append(f"resubmit(,{rng.randint(table + 1, N_TABLES - 1)})")
    if table + 1 < N_TABLES and rng.random() < 0.3:
        acts.append(f"goto_table:{table + 1}")
    return ",".join(acts) or "drop"


def random_flows(rng: random.Random) -> list[str]:
    seen: dict[tuple, str] = {}
    for table in range(N_TABLES):
        for _ in range(rng.randint(1, 25)):
            pri = rng.randint(0, 30)
            match, ip, tagged = _match(rng)
            seen[(table, pri, match)] = (
                f"table={table},priority={pri}{',' if match else ''}{match},"
                f"actions={_actions(rng, table, ip, tagged)}")
    # One conjunctive match in table 0: ip_src in {...} and tp_dst in {...}.
    if rng.random() < 0.6:
        pri = rng.randint(10, 40)
        for src in rng.sample(IPS, 2):
            seen[(0, pri, src)] = f"table=0,priority={pri},ip,nw_src={src},actions=conjunction(9,1/2)"
        for dport in rng.sample(TP, 2):
            seen[(0, pri, dport)] = f"table=0,priority={pri},tcp,tp_dst={dport},actions=conjunction(9,2/2)"
        seen[(0, pri, "conj")] = f"table=0,priority={pri},conj_id=9,actions=output:{rng.choice(PORTS)}"
    return list(seen.values())


# --- random packets --------------------------------------------------------------------------

def random_packet(rng: random.Random) -> bytes:
    eth = Ether(src=rng.choice(MACS), dst=rng.choice(MACS))
    if rng.random() < 0.3:
        eth = eth / Dot1Q(vlan=rng.choice(VIDS), prio=rng.randint(0, 1))
    kind = rng.random()
    if kind < 0.1:
        return bytes(eth / ARP(psrc=rng.choice(IPS), pdst=rng.choice(IPS)))
    if kind < 0.15:
        return bytes(eth / IPv6() / UDP(sport=rng.choice(TP), dport=rng.choice(TP)))
    ip = IP(src=rng.choice(IPS), dst=rng.choice(IPS), ttl=rng.choice((1, 2, 64)))
    l4 = (TCP if rng.random() < 0.5 else UDP)(sport=rng.choice(TP), dport=rng.choice(TP))
    return bytes(eth / ip / l4 / bytes(rng.randint(0, 20)))


POOL = [(PORTS[i % len(PORTS)], random_packet(random.Random(i))) for i in range(24)]


def new_switch(flows: list[str]) -> Switch:
    sw = Switch(clock=lambda: 0.0)
    for p in PORTS:
        sw.add_port(p)
    sw.bundle(add=[parse_flow(t) for t in flows], now=0.0)
    return sw


def emitted(out) -> Counter:
    """Multiset of (port, packet bytes) from process()'s result."""
    c: Counter = Counter()
    for port, b in out:
        for p in b.packets():
            c[(port, p)] += 1
    return c


def slow_path(flows: list[str], packets: list[tuple[int, bytes]]) -> Counter:
    """A fresh switch, each packet alone, megaflows flushed before every one."""
    sw = new_switch(flows)
    c: Counter = Counter()
    done: dict[tuple[int, bytes], Counter] = {}     # the slow path is deterministic
    for in_port, p in packets:
        if (in_port, p) not in done:
            sw.flush_megaflows()
            done[(in_port, p)] = emitted(sw.process(Batch.from_packets([p], in_port), now=1.0))
        c += done[(in_port, p)]
    return c


def rule_hits(sw: Switch, packets: list[tuple[int, bytes]], into: Counter) -> None:
    """Add, per flow identity, the packets whose translation ran that flow (as traced now)."""
    for in_port, p in packets:
        res = sw.trace(in_port, p).result
        if res is not None:
            for r in dict.fromkeys(res.rules):
                into[r.flow.key] += 1


def counters(sw: Switch) -> Counter:
    return Counter({s.flow.key: s.n_packets for s in sw.dump_flows(now=2.0) if s.n_packets})


def random_batch(rng: random.Random) -> list[tuple[int, bytes]]:
    """Half from a small fixed pool (cache hits across batches), half fresh (new megaflows,
    and packets differing outside a megaflow's mask that must still share it)."""
    return [rng.choice(POOL) if rng.random() < 0.5 else (rng.choice(PORTS), random_packet(rng))
            for _ in range(BATCH)]


def run(sw: Switch, pkts: list[tuple[int, bytes]]) -> Counter:
    b = Batch.from_packets([p for _, p in pkts], [i for i, _ in pkts])
    return emitted(sw.process(b, now=1.0))


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_cache_path_emits_what_slow_path_emits(seed):
    rng = random.Random(seed)
    flows = random_flows(rng)
    sw = new_switch(flows)
    hits: Counter = Counter()
    for _ in range(BATCHES):
        pkts = random_batch(rng)
        assert run(sw, pkts) == slow_path(flows, pkts)
        rule_hits(sw, pkts, hits)
    assert len(sw.cache) > 0
    assert counters(sw) == hits


@pytest.mark.parametrize("seed", range(N_SEEDS))
def test_bundle_changes_take_effect_on_next_batch(seed):
    rng = random.Random(1000 + seed)
    flows = random_flows(rng)
    sw = new_switch(flows)
    hits: Counter = Counter()
    for step in range(3):
        pkts = random_batch(rng)
        assert run(sw, pkts) == slow_path(flows, pkts)
        rule_hits(sw, pkts, hits)
        assert counters(sw) == hits

        # Delete some flows, add new ones (new identities, so counters start at 0).
        gone = rng.sample(flows, k=min(len(flows), rng.randint(1, 6)))
        old_keys = {parse_flow(t).key for t in flows}
        fresh = [t for t in random_flows(random.Random(rng.random()))
                 if parse_flow(t).key not in old_keys][:6]
        sw.bundle(add=[parse_flow(t) for t in fresh], delete=[parse_flow(t) for t in gone],
                  now=1.0)
        flows = [t for t in flows if t not in gone] + fresh
        for t in gone:
            hits.pop(parse_flow(t).key, None)

        pkts = random_batch(rng)
        assert run(sw, pkts) == slow_path(flows, pkts), f"step {step}: stale megaflow"
        rule_hits(sw, pkts, hits)
        live = {parse_flow(t).key for t in flows}
        assert set(counters(sw)) <= live, "a deleted flow still counts packets"
        assert counters(sw) == hits


def test_subtable_finds_every_live_megaflow_through_inserts_and_removes():
    from sbnet.datapath.dpif.megaflow import Subtable
    sub = Subtable((0, 1), (0xFFFFFFFF, 0xFFFF))
    rows = {i: sub.insert((0x0A000000 + i, 1024 + i % 7), i) for i in range(3000)}
    for i in range(0, 3000, 3):
        sub.remove(rows.pop(i))
    for i in range(3000, 3500):
        rows[i] = sub.insert((0x0B000000 + i, 7), i)
    keys = np.zeros((2, 3500), dtype=np.uint64)
    keys[0, :3000] = 0x0A000000 + np.arange(3000)
    keys[1, :3000] = 1024 + np.arange(3000) % 7
    keys[0, 3000:] = 0x0B000000 + np.arange(3000, 3500)
    keys[1, 3000:] = 7
    got = sub.lookup(keys, None)
    want = np.array([i if i in rows else -1 for i in range(3500)])
    assert (got == want).all()



@pytest.mark.parametrize("seed", range(6))
def test_compiled_lookup_finds_what_the_numpy_lookup_finds(seed):
    """The megaflow cache's compiled lookup (small batches) against its numpy lookup, over
    subtables of several masks through inserts, removes, rebuilds and hash collisions."""
    from sbnet.datapath.dpif.megaflow import MegaflowCache
    r = random.Random(seed)
    n_slots = 8
    masks = [tuple(r.choice((0, 0, 0xFF, 0xFFFF, 0xFFFFFFFF)) for _ in range(n_slots))
             for _ in range(5)]
    caches = [MegaflowCache(compiled=c) for c in (True, False)]
    live: list[int] = []
    keys = np.array([[r.randrange(4) for _ in range(400)] for _ in range(n_slots)],
                    dtype=np.uint64)
    for step in range(6):
        for _ in range(r.choice((5, 60, 300))):
            wc = list(r.choice(masks))
            key = [int(keys[j, r.randrange(400)]) for j in range(n_slots)]
            for c in caches:
                c.add(wc, key, (), 0, [], "forwarded", 0, 0.0)
            live.append(caches[0].next_id - 1)
        for mf in r.sample(live, len(live) // 3):
            live.remove(mf)
            for c in caches:
                c.remove(mf)
        for size in (1, 7, 64, 256):
            rows = np.array(r.sample(range(400), size), dtype=np.intp)
            got, want = (c.lookup(keys, rows) for c in caches)
            assert (got == want).all()
    assert (caches[0].lookup(keys, np.arange(400)) >= 0).any()
