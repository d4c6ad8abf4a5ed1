"""The kernel tier's own cost: ns per packet through the BPF program (BPF_PROG_RUN), by megaflows and masks, and flow set-ups per second through the upcall path on real veths (python bench/bench_ebpf.py; root)."""

from __future__ import annotations

import argparse
import time

from sbnet.datapath import odp
from sbnet.datapath.ebpf.tier import EbpfTier
from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.flows import fields as F

S = F.SLOT_INDEX
ACTIONS = (odp.SetFields("eth", (("eth_dst", 0x020000000009),)), odp.Output(2))
BENCH_IFINDEX = 1            # BPF_PROG_RUN needs a real device: loopback stands for port 1


# Fields a mask may add to the base match; the 16 subsets of these 4 make 16 masks.
EXTRA = {"eth_src": 0x020000000001, "nw_src": 0x0A000001, "tp_src": 1234, "nw_ttl": 64}


def megaflows(n_flows: int, n_masks: int) -> list[Megaflow]:
    """n_flows UDP megaflows over n_masks masks, none overlapping: each exact on in_port,
    eth_type, ip_proto, udp_dst and its own ip_dst, mask m adding the fields of subset m
    of EXTRA (the values every bench frame carries)."""
    out = []
    extras = list(EXTRA)
    for i in range(n_flows):
        m = i % n_masks
        fields = {"recirc_id": (0, 0xFFFFFFFF), "in_port": (1, 0xFFFFFFFF),
                  "eth_type": (0x0800, 0xFFFF), "nw_frag": (0, 3), "nw_proto": (17, 0xFF),
                  "nw_dst": (0x0B000000 + i, 0xFFFFFFFF), "tp_dst": (4789, 0xFFFF)}
        for b, name in enumerate(extras):
            if m >> b & 1:
                fields[name] = (EXTRA[name], (1 << 48) - 1 if name == "eth_src" else
                                0xFFFFFFFF if name == "nw_src" else 0xFFFF if name == "tp_src" else 0xFF)
        slots = tuple(sorted(S[k] for k in fields))
        by_slot = {S[k]: v for k, v in fields.items()}
        mask = tuple(by_slot[s][1] for s in slots)
        value = tuple(by_slot[s][0] & by_slot[s][1] for s in slots)
        out.append(Megaflow(i, slots, mask, value, ACTIONS, 0, [], "forwarded", (), 0))
    return out


def frame(dst: int) -> bytes:
    ip = bytes([0x45, 0, 0, 50, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1]) + dst.to_bytes(4, "big")
    udp = (1234).to_bytes(2, "big") + (4789).to_bytes(2, "big") + (30).to_bytes(2, "big") + b"\0\0"
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip + udp + bytes(22)


def run(n_flows: int, n_masks: int, repeat: int) -> dict:
    with EbpfTier(capacity=max(1024, n_flows * 2)) as t:
        t.add_port(1, BENCH_IFINDEX)
        t.add_port(2, 2)
        mfs = megaflows(n_flows, n_masks)
        t0 = time.perf_counter()
        for mf in mfs:
            assert t.put(mf).tier == "ebpf"
        install = time.perf_counter() - t0
        first = mfs[0]          # in the first mask of the list
        last = mfs[n_masks - 1]  # in the last: every mask is tried
        res = {}
        for name, mf in (("first mask", first), ("last mask", last)):
            dst = dict(zip(mf.slots, mf.value))[S["nw_dst"]]
            res[name] = t.bench(frame(dst), 1, repeat)
        res["miss"] = t.bench(frame(0x0C000000), 1, repeat)
        res["installs/s"] = n_flows / install
        return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=200_000)
    ap.add_argument("--quick", action="store_true", help="1 k megaflows only")
    ap.add_argument("--setups", type=int, default=20_000,
                    help="new flows sent at once for the set-up rate (0: skip)")
    a = ap.parse_args()
    sizes = [1000] if a.quick else [1000, 100_000]
    print("megaflows  masks  ns/pkt (hit, 1st mask)  ns/pkt (hit, last mask)  ns/pkt (miss)  installs/s")
    for n in sizes:
        for m in (1, 16):
            r = run(n, m, a.repeat)
            print(f"{n:>9}  {m:>5}  {r['first mask']:>22}  {r['last mask']:>23}  {r['miss']:>13}"
                  f"  {r['installs/s']:>10.0f}")
    if a.setups:
        setups(a.setups)


def setups(n: int) -> None:
    """New flows sent at once into a kernel-tier switch on real veths, timed until the
    kernel holds them all and the slow path knows it (sbnet.datapath.ebpf.setups); new
    connections committed by upcalls (the slow path) and by the kernel, in the same run."""
    from sbnet.datapath.ebpf.setups import measure
    print()
    print("flow set-ups                              flows  seconds  set-ups/s  first packets"
          " delivered  second packets in the kernel  upcalls  upcalls lost")
    runs = {}
    for kind, kct, label in (("connections", False, "UDP connections, committed by upcalls"),
                             ("connections", True, "UDP connections, committed in the kernel"),
                             ("megaflows", True, "megaflows (one per flow, by upcalls)")):
        r = runs[(kind, kct)] = measure(kind, n, kernel_ct=kct)
        print(f"{label:<41}  {r.flows:>5}  {r.seconds:>7.2f}  {r.rate:>9,.0f}  "
              f"{r.delivered:>23}  {r.carried:>28}  {r.upcalls:>7}  {r.upcalls_lost:>12}")
    from sbnet.datapath.ebpf.setups import measure_tcp
    r = measure_tcp(n)
    label = "TCP handshakes, committed in the kernel"
    print(f"{label:<41}  {r.flows:>5}  {r.seconds:>7.2f}  {r.rate:>9,.0f}  {'-':>23}"
          f"  {r.carried:>28}  {r.upcalls:>7}  {r.upcalls_lost:>12}")
    print("(TCP: SYNs, then SYN-ACKs, then ACKs, each burst once the kernel has taken the one "
          "before; 'second packets' column: handshake packets the kernel forwarded itself)")
    before, after = runs[("connections", False)].rate, runs[("connections", True)].rate
    print(f"new connections through a stateful group: {after:,.0f}/s, "
          f"{after / before:.1f} times the {before:,.0f}/s of committing them by upcalls")


if __name__ == "__main__":
    main()
