"""Conntrack throughput: new connections/s (commit) and established Mpps with 100 k live connections.

Run: python bench/bench_conntrack.py [--batch 4096] [--conns 100000] [--no-checksums]

Batches are parsed once beforehand; only Conntrack.execute is timed (CPU time
of this process).  Frames are 64-byte Ethernet/IPv4/TCP with valid checksums,
built with numpy from one scapy template.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import fold
from sbnet.datapath.conntrack import Conntrack
from sbnet.datapath.parse import parse
from sbnet.flows.fields import SLOT_INDEX


def template(flags: str) -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
           / IP(src="10.0.0.1", dst="10.1.0.1") / TCP(sport=1, dport=80, flags=flags, seq=1000,
                                                     ack=0, window=65535) / Raw(b"\0" * 10))
    return bytes(pkt)


def frames(ids: np.ndarray, flags: str, reply: bool = False, seq: int = 1000, ack: int = 0
           ) -> np.ndarray:
    """One frame per connection id: client 10.x.y.z:port -> 10.1.0.1:80 (or the reply)."""
    base = np.frombuffer(template(flags), dtype=np.uint8)
    n = len(ids)
    f = np.tile(base, (n, 1))
    client = (10 << 24) | (2 << 16) + (ids // 50000).astype(np.int64)
    port = 1024 + ids % 50000
    server = np.int64((10 << 24) | (1 << 16) | 1)
    src, dst = (np.full(n, server), client) if reply else (client, np.full(n, server))
    sp, dp = (np.full(n, 80), port) if reply else (port, np.full(n, 80))
    for col, vals, k in ((26, src, 4), (30, dst, 4), (34, sp, 2), (36, dp, 2),
                         (38, np.full(n, seq), 4), (42, np.full(n, ack), 4)):
        for j in range(k):
            f[:, col + j] = (vals >> (8 * (k - 1 - j))) & 0xFF
    f[:, 24:26] = 0
    f[:, 50:52] = 0
    w = f.astype(np.uint64)
    words = (w[:, 0::2] << 8) | w[:, 1::2]
    ip = fold(words[:, 7:17].sum(axis=1)) ^ 0xFFFF
    f[:, 24], f[:, 25] = ip >> 8, ip & 0xFF
    tcp_len = len(base) - 34
    pseudo = words[:, 13:17].sum(axis=1) + 6 + tcp_len
    tcp = fold(words[:, 17:].sum(axis=1) + pseudo) ^ 0xFFFF
    f[:, 50], f[:, 51] = tcp >> 8, tcp & 0xFF
    return f


def batches(ids, flags, bs, **kw):
    out = []
    for i in range(0, len(ids), bs):
        b = Batch.from_array(frames(ids[i:i + bs], flags, **kw), in_port=1)
        out.append((b, parse(b)))
    return out


def run(ct, bl, commit, now=1.0):
    t0 = time.process_time()
    for b, p in bl:
        ct.execute(b, p, np.arange(len(b)), 5, commit=commit, now=now)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--conns", type=int, default=100_000)
    ap.add_argument("--no-checksums", action="store_true")
    a = ap.parse_args()
    cks = not a.no_checksums
    ids = np.arange(a.conns)
    print(f"batch {a.batch}, {a.conns} connections, checksum verification {'on' if cks else 'off'}")

    ct = Conntrack(checksums=cks)
    syn = batches(ids, "S", a.batch)
    t = run(ct, syn, commit=True)
    print(f"new connections (SYN, commit):      {a.conns / t / 1e3:8.1f} k/s")
    assert len(ct) == a.conns, len(ct)
    t = run(ct, batches(ids, "SA", a.batch, reply=True, seq=5000, ack=1001), commit=False)
    print(f"SYN-ACK (state changes, vectorized):  {a.conns / t / 1e3:8.1f} k/s")
    t = run(ct, batches(ids, "A", a.batch, seq=1001, ack=5001), commit=False)
    print(f"ACK (handshake completes):          {a.conns / t / 1e3:8.1f} k/s")
    assert ct.stats["invalid"] == 0, ct.stats

    rng = np.random.default_rng(1)
    pick = rng.integers(0, a.conns, a.batch * 8)
    est = batches(pick, "PA", a.batch, seq=1011, ack=5001)
    before = ct.stats["fast_path"]
    run(ct, est[:1], commit=False)
    best = 0.0
    for _ in range(5):
        t = run(ct, est, commit=False, now=2.0)
        best = max(best, len(pick) / t / 1e6)
    st = np.array([p.keys[SLOT_INDEX["ct_state"]] for _, p in est]).ravel()
    assert (st == 0x22).all(), np.unique(st)
    print(f"established (random of {a.conns}):   {best:8.2f} Mpps"
          f"   (fast path {ct.stats['fast_path'] - before} rows)")
    same = batches(np.zeros(a.batch, dtype=np.int64), "PA", a.batch, seq=1011, ack=5001)
    t = run(ct, same, commit=False, now=3.0)
    print(f"established, one flow per batch:    {a.batch / t / 1e6:8.2f} Mpps")

    from sbnet.datapath.conntrack_nat import NatSpec
    nat = NatSpec.parse("nat(src=10.9.0.1-10.9.0.4)")
    ct3 = Conntrack(checksums=cks)
    few = syn[:max(1, 20000 // a.batch)]
    t0 = time.process_time()
    for b, p in few:
        ct3.execute(b, p, np.arange(len(b)), 5, commit=True, nat=nat, now=1.0)
    t = time.process_time() - t0
    print(f"new connections with SNAT (range):  {len(ct3) / t / 1e3:8.1f} k/s")
    print(f"memory per connection (getsizeof):  {ct.memory_per_connection():8.0f} B")
    t0 = time.process_time()
    gone = ct.expire(1e9)
    print(f"expiry sweep of {gone} connections:  {(time.process_time() - t0) * 1e3:8.1f} ms")
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    ct2 = Conntrack(checksums=cks)
    run(ct2, syn, commit=True)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    print(f"memory per connection (tracemalloc): {used / a.conns:7.0f} B  (incl. growth slack)")


if __name__ == "__main__":
    main()
