"""Reference switch per-core throughput (CPU time): cache hits, flow setups, memory per megaflow (python bench/bench_switch.py)."""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import time
import tracemalloc

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import parse
from sbnet.datapath.ports import MemoryPort
from sbnet.datapath.switch import Switch

TARGET_MPPS = 3.0           # cache hits, batch 4,096, 100 k flows
TARGET_SETUPS = 20_000      # miss-path flow setups per second

# The priority-20 rule never matches, but every lookup visits its subtable, so each
# megaflow is exact on ip_src and udp_src: one megaflow per 5-tuple, as OVS would install.
FLOWS = """\
priority=20,udp,nw_src=255.255.255.255,tp_src=1,actions=drop
priority=10,udp,in_port=1,actions=output:2
priority=0,actions=drop
"""


def frames(n_flows: int) -> np.ndarray:
    """One 64-byte Ethernet/IPv4/UDP frame per flow, distinct (ip_src, udp_src), valid IP checksum."""
    i = np.arange(n_flows, dtype=np.uint32)
    f = np.zeros((n_flows, 64), dtype=np.uint8)
    f[:, 0:6] = [0x02, 0, 0, 0, 0, 1]
    f[:, 6:12] = [0x02, 0, 0, 0, 0, 2]
    f[:, 12:14] = [0x08, 0x00]
    f[:, 14] = 0x45
    f[:, 16:18] = [0, 50]           # 20 IP + 8 UDP + 22 payload = 64-byte frame
    f[:, 22] = 64
    f[:, 23] = 17
    src = 0x0A000000 + (i >> 4)     # 16 source ports per source address
    f[:, 26:30] = src[:, None].view(np.uint8).reshape(n_flows, 4)[:, ::-1]
    f[:, 30:34] = [10, 255, 0, 1]
    sport = 1024 + (i & 15)
    f[:, 34] = sport >> 8
    f[:, 35] = sport & 0xFF
    f[:, 36:38] = [0x12, 0x34]
    f[:, 38:40] = [0, 30]
    words = f[:, 14:34].astype(np.uint32).reshape(n_flows, 10, 2)
    s = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    ck = ~s & 0xFFFF
    f[:, 24] = ck >> 8
    f[:, 25] = ck & 0xFF
    return f


def new_switch() -> Switch:
    sw = Switch(clock=lambda: 0.0)
    sw.add_port(1, port=MemoryPort(1, "p1", keep=False))
    sw.add_port(2, port=MemoryPort(2, "p2", keep=False))
    sw.load(FLOWS)
    return sw


def batches(fr: np.ndarray, order: np.ndarray, size: int) -> list[Batch]:
    return [Batch.from_array(fr[order[i:i + size]], in_port=1)
            for i in range(0, order.size, size)]


def warm(sw: Switch, fr: np.ndarray, size: int) -> float:
    """Every flow once, in order: returns flow setups per second (the miss path)."""
    bs = batches(fr, np.arange(fr.shape[0]), size)
    before = sw.upcalls
    t = time.process_time()
    for b in bs:
        sw.process(b, now=1.0)
    dt = time.process_time() - t
    assert len(sw.cache) == fr.shape[0], (len(sw.cache), fr.shape[0])
    return (sw.upcalls - before) / dt


def hit_mpps(sw: Switch, fr: np.ndarray, size: int, n_packets: int) -> float:
    rng = np.random.default_rng(7)
    bs = batches(fr, rng.integers(0, fr.shape[0], max(n_packets, size)), size)[:8]
    reps = max(1, n_packets // (size * len(bs)))
    upcalls = sw.upcalls
    sw.process(bs[0], now=2.0)
    # Per-core figures: CPU time of this single-threaded process, so other load on
    # the machine does not count against it.
    t = time.process_time()
    for _ in range(reps):
        for b in bs:
            sw.process(b, now=2.0)
    dt = time.process_time() - t
    assert sw.upcalls == upcalls, "cache-hit run missed the cache"
    return reps * sum(len(b) for b in bs) / dt / 1e6


def memory(n_flows: int) -> tuple[float, float]:
    """(cache.nbytes() / megaflow, tracemalloc growth / megaflow) for n_flows megaflows."""
    fr = frames(n_flows)
    bs = batches(fr, np.arange(n_flows), 4096)
    sw = new_switch()
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.take_snapshot()
    for b in bs:
        sw.process(b, now=1.0)
    del b
    gc.collect()
    grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
    tracemalloc.stop()
    return sw.cache.nbytes() / len(sw.cache), grown / len(sw.cache)


def stages(sw: Switch, b: Batch, reps: int) -> dict[str, float]:
    """Seconds per batch in each stage of process()'s hit path, timed one by one."""
    out = dict.fromkeys(("parse", "megaflow lookup", "count", "emit/execute"), 0.0)
    for _ in range(reps):
        t0 = time.perf_counter()
        p = parse(b)
        rows = np.flatnonzero(p.error == 0)
        t1 = time.perf_counter()
        mf = sw.cache.lookup(p.keys, rows)
        t2 = time.perf_counter()
        sw._count(mf, b.length[rows], 2.0)
        t3 = time.perf_counter()
        sw._emit(b, rows, mf, p)
        t4 = time.perf_counter()
        for k, d in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            out[k] += d / reps
    return out


def profile(sw: Switch, fr: np.ndarray, size: int, top: int) -> None:
    rng = np.random.default_rng(11)
    bs = batches(fr, rng.integers(0, fr.shape[0], size * 8), size)
    st = stages(sw, bs[0], 20)
    if top == 0:
        total = sum(st.values())
        print(f"\nhit path, batch {size:,}, {fr.shape[0]:,} flows: {total * 1e3:.2f} ms/batch: "
              + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in st.items()))
        return
    total = sum(st.values())
    print(f"\nhit path, batch {size:,}, {fr.shape[0]:,} flows: "
          f"{total * 1e3:.2f} ms/batch = {size / total / 1e6:.2f} Mpps (stages timed apart)")
    for k, v in st.items():
        print(f"  {k:<16} {v * 1e3:8.3f} ms  {100 * v / total:5.1f} %")
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(3):
        for b in bs:
            sw.process(b, now=2.0)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    print("\ncProfile of process() on cache hits, by own time:")
    print("\n".join(line for line in s.getvalue().splitlines()[4:] if line.strip()))


def profile_misses(n_flows: int, size: int, top: int) -> None:
    fr = frames(n_flows)
    sw = new_switch()
    pr = cProfile.Profile()
    pr.enable()
    for b in batches(fr, np.arange(n_flows), size):
        sw.process(b, now=1.0)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(top)
    print(f"\ncProfile of process() on misses ({n_flows:,} new flows, batch {size:,}), by own time:")
    print("\n".join(line for line in s.getvalue().splitlines()[4:] if line.strip()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer flows and packets")
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()
    flow_counts = (1_000, 10_000) if args.quick else (1_000, 100_000)
    n_hit = 100_000 if args.quick else 1_000_000
    rows = []
    hot = {}
    for n_flows in flow_counts:
        fr = frames(n_flows)
        for size in (256, 4096):
            sw = new_switch()
            setups = warm(sw, fr, size)
            mpps = hit_mpps(sw, fr, size, n_hit)
            rows.append((n_flows, size, mpps, setups, len(sw.cache)))
            hot[size] = (sw, fr, size)
    print(f"{'flows':>8} {'batch':>6} {'megaflows':>10} {'hit Mpps':>9} {'setups/s':>10}")
    for n_flows, size, mpps, setups, n_mf in rows:
        print(f"{n_flows:>8,} {size:>6,} {n_mf:>10,} {mpps:>9.3f} {setups:>10,.0f}")
    big = [r for r in rows if r[1] == 4096 and r[0] == flow_counts[-1]][0]
    best_setups = max(r[3] for r in rows)
    print(f"\ntarget: >= {TARGET_MPPS} Mpps cache hits at batch 4,096 with {flow_counts[-1]:,} flows:"
          f" {big[2]:.3f} Mpps ({'met' if big[2] >= TARGET_MPPS else 'NOT met'})")
    print(f"target: >= {TARGET_SETUPS:,} setups/s (batch 4,096, {flow_counts[-1]:,} flows): "
          f"{big[3]:,.0f} ({'met' if big[3] >= TARGET_SETUPS else 'NOT met'}); all rows: best "
          f"{best_setups:,.0f}, worst {min(r[3] for r in rows):,.0f}")
    nb, tm = memory(flow_counts[-1])
    print(f"\nmemory per megaflow ({flow_counts[-1]:,} megaflows): cache.nbytes() {nb:,.0f} B, "
          f"tracemalloc {tm:,.0f} B")
    if not args.no_profile:
        profile(*hot[256], top=0)
        profile(*hot[4096], top=18)
        profile_misses(4096, 256, 12)
        profile_misses(8192, 4096, 12)


if __name__ == "__main__":
    main()
