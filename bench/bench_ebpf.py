"""The kernel tier's own cost: ns per packet through the BPF program (BPF_PROG_RUN), by megaflows and masks and for established connections (IPv4, NATed, IPv6), and flow set-ups per second through the upcall path on real veths (python bench/bench_ebpf.py; root)."""

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
    print()
    print("established connection, two passes (ct, then output)   ns/pkt")
    for label, ns in established(a.repeat).items():
        print(f"{label:<55}  {ns:>6}")
    if a.setups:
        setups(a.setups)


# An established UDP connection through ct() in zone 5 (a security group), or through a
# DNAT in zone 9, opened by the reference switch and handed down.  BPF_PROG_RUN's repeated
# runs see the packet as the last run left it, so the DNAT's second pass sets the
# destination back (two sets), and a plain ct() with the same two sets is its baseline.
_SET_BACK = "mod_nw_dst:10.0.0.2,set_field:80->udp_dst,output:2"
CT_FLOWS = {
    "ct(), IPv4": "table=0,priority=10,ip,ct_state=-trk actions=ct(zone=5,table=1)\n"
                  "table=1,priority=10,ct_state=+trk+new actions=ct(commit,zone=5),output:2\n"
                  "table=1,priority=10,ct_state=+trk+est actions=output:2",
    "ct(), IPv4, then two sets": "table=0,priority=10,udp actions=ct(commit,zone=9,table=1)\n"
                                 f"table=1,priority=10,udp,ct_state=+trk actions={_SET_BACK}",
    "ct(nat) DNAT (address, port, checksums), then two sets":
        "table=0,priority=10,udp actions=ct(commit,zone=9,nat(dst=10.0.0.5:8080),table=1)\n"
        f"table=1,priority=10,udp,ct_state=+trk actions={_SET_BACK}",
    "ct(), IPv6": "table=0,priority=10,ipv6,ct_state=-trk actions=ct(zone=5,table=1)\n"
                  "table=1,priority=10,ct_state=+trk+new actions=ct(commit,zone=5),output:2\n"
                  "table=1,priority=10,ct_state=+trk+est actions=output:2",
}


def established(repeat: int) -> dict[str, int]:
    """ns per packet of an established connection's packet in the kernel (BPF_PROG_RUN):
    the first pass's megaflow, ct() found in the connection map (translated for NAT),
    recirculation, the second pass's megaflow, output."""
    import numpy as np
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.packet import raw
    from sbnet.datapath.batch import Batch
    from sbnet.datapath.ebpf.connsync import ConnSync
    from sbnet.datapath.ebpf.upcalls import five_tuples, five_tuples6
    from sbnet.datapath.switch import Switch
    out = {}
    for label, flows in CT_FLOWS.items():
        v6 = "IPv6" in label
        a, b = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
        l3 = IPv6 if v6 else IP
        eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        fwd = raw(eth / l3(src=a, dst=b) / UDP(sport=1234, dport=80) / bytes(18))
        back_src, back_port = ("10.0.0.5", 8080) if "nat" in label else (b, 80)
        back = raw(eth / l3(src=back_src, dst=a) / UDP(sport=back_port, dport=1234) / bytes(18))
        sw = Switch(clock=lambda: 0.0)
        for p in (1, 2):
            sw.add_port(p)
        sw.load(flows)
        for f, port in ((fwd, 1), (back, 2), (fwd, 1)):
            sw.process(Batch.from_packets([f], port))
        with EbpfTier(capacity=1024) as t:
            t.add_port(1, BENCH_IFINDEX)
            t.add_port(2, 2)
            for mf in sw.cache.flows.values():
                t.put(mf)
            sync = ConnSync(t, sw.conntrack, kernel_ct=False)
            sync.zones.update({5, 9})
            batch = Batch.from_packets([fwd, back], np.array([1, 2], dtype=np.uint32))
            sync.hand_down(five_tuples(batch))
            sync.hand_down6(five_tuples6(batch))
            before = t.stats()
            out[label] = t.bench(fwd, 1, repeat)
            after = t.stats()
            key = "ct6" if v6 else "ct_nat" if "nat" in label else "hit"
            if after[key] - before[key] < repeat or after["upcall"] != before["upcall"]:
                raise RuntimeError(f"{label}: the packet did not stay in the kernel "
                                   f"({before} -> {after})")
    return out


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
