"""Mpps of datapath.execute for the common action lists: 64-byte packets, batches of 4,096.

Run: python bench/bench_execute.py [--batch N] [--seconds S]
"""

from __future__ import annotations

import argparse
import struct
import time

import numpy as np

from sbnet.datapath.execute import execute
from sbnet.datapath.odp import Output, PushVlan, SetFields

from sbnet.datapath.batch import Batch


def udp64(i: int) -> bytes:
    """A 64-byte Ethernet/IPv4/UDP frame with correct checksums."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    pkt = (Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
           / IP(src=f"10.0.{i >> 8 & 255}.{i & 255}", dst="10.1.0.1")
           / UDP(sport=1024 + i, dport=4789) / Raw(b"\0" * 22))
    b = bytes(pkt)
    assert len(b) == 64
    return b


CASES = {
    "output only": (Output(2),),
    "set eth dst + output": (SetFields("eth", (("eth_dst", 0x020000000099),)), Output(2)),
    "set ipv4 src + output": (SetFields("ipv4", (("ip_src", 0xC0A80001),)), Output(2)),
    "push_vlan + output": (PushVlan(0x8100, 0x1000 | 100), Output(2)),
}


def measure(batch, rows, l3, l4, actions, seconds: float, windows: int = 5) -> float:
    """Best Mpps over `windows` timing windows.

    Timed in CPU time of this process, so other work on the machine disturbs it little.
    """
    execute(batch, rows, l3, l4, actions)      # warm up
    best = 0.0
    for _ in range(windows):
        calls, t0 = 0, time.process_time()
        while True:
            execute(batch, rows, l3, l4, actions)
            calls += 1
            elapsed = time.process_time() - t0
            if elapsed >= seconds / windows:
                break
        best = max(best, calls * len(rows) / elapsed / 1e6)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    template = [udp64(i) for i in range(256)]
    pkts = [template[i % 256] for i in range(args.batch)]
    batch = Batch.from_packets(pkts, 1)
    start = batch.start.astype(np.int64)
    l3, l4 = start + 14, start + 34
    print(f"datapath.execute, {args.batch} x {len(pkts[0])}-byte packets, one group "
          f"(all rows), best of 5 windows in {args.seconds:.1f} s per case")
    rows = np.arange(args.batch)
    half = np.arange(0, args.batch, 2)
    for name, actions in CASES.items():
        full = measure(batch, rows, l3, l4, actions, args.seconds)
        part = measure(batch, half, l3, l4, actions, args.seconds)
        print(f"  {name:24s} {full:7.2f} Mpps   (group of every 2nd row: {part:6.2f} Mpps)")
    # The bytes must be right too: spot-check one case's checksum against a recomputation.
    [(_, out)] = execute(batch, rows[:1], l3, l4, CASES["set ipv4 src + output"])
    s = int(out.start[0])
    hdr = out.data[0, s + 14:s + 34].tobytes()
    words = struct.unpack("!10H", hdr)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    assert total == 0xFFFF, "IPv4 header checksum wrong"


if __name__ == "__main__":
    main()
