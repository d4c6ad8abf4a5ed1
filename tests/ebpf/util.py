"""The reference switch and the kernel tier side by side: same tables, same packets, outputs compared."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbnet.datapath.batch import Batch
from sbnet.datapath.parse import parse
from sbnet.datapath.switch import Switch
from sbnet.flows import fields as F

IFINDEX_BASE = 100        # test mode: port p is "ifindex" 100 + p (LOCAL: 99)


def ifindex(ofport: int) -> int:
    return 99 if ofport == F.OFPP_LOCAL else IFINDEX_BASE + ofport


@dataclass
class Reference:
    """What the reference switch did with each packet: its outputs and its megaflow."""

    outputs: list[list[tuple[int, bytes]]]
    mf_ids: list[int]


def run_reference(sw: Switch, packets: list[tuple[int, bytes]]) -> Reference:
    outs, ids = [], []
    for in_port, frame in packets:
        b = Batch.from_packets([frame], in_port)
        keys = parse(b).keys
        got = sw.process(b)
        outs.append([(p, pb.packets()[0]) for p, pb in got if p != F.OFPP_CONTROLLER])
        ids.append(int(sw.cache.lookup(keys, np.arange(1))[0]))
    return Reference(outs, ids)


def attach_ports(tier, sw: Switch) -> None:
    for p in sw.ports:
        tier.add_port(p, ifindex(p), sw.tunnels.get(p))


def compare(tier, sw: Switch, packets: list[tuple[int, bytes]], ref: Reference,
            tun=None) -> dict[str, int]:
    """Run the packets through the kernel tier and check them against the reference:
    each packet whose megaflow is in the kernel leaves on the same ports with the same
    bytes; the others go up.  Then every kernel entry's counters equal the reference's."""
    placed = {i: tier.put(mf) for i, mf in sw.cache.flows.items()}
    seen = {"kernel": 0, "upcall": 0}
    for n, ((in_port, frame), want, mf_id) in enumerate(zip(packets, ref.outputs, ref.mf_ids)):
        got = tier.run(frame, in_port, tun[n] if tun else None)
        in_kernel = mf_id >= 0 and placed[mf_id].tier == "ebpf"
        if not in_kernel:
            assert got.verdict == "upcall", (n, placed.get(mf_id), got)
            seen["upcall"] += 1
            continue
        seen["kernel"] += 1
        assert got.verdict in ("forward", "drop"), (n, got, placed[mf_id])
        assert got.mf_id == mf_id
        have = [(o.ofport, o.data) for o in got.outputs]
        assert have == want, (n, sw.cache.flows[mf_id].actions, _diff(have, want))
    counts = tier.take_counters()
    for mf_id, mf in sw.cache.flows.items():
        if placed[mf_id].tier != "ebpf":
            continue
        c = counts.get(mf_id)
        have = (c.packets, c.bytes) if c else (0, 0)
        want = (int(sw.cache.packets[mf_id]), int(sw.cache.bytes[mf_id]))
        assert have == want, (mf_id, have, want, mf.actions)
    return seen


def _diff(have, want) -> str:
    lines = []
    for i in range(max(len(have), len(want))):
        h = have[i] if i < len(have) else None
        w = want[i] if i < len(want) else None
        if h != w:
            lines.append(f"#{i}: kernel {h and (h[0], h[1].hex())} reference {w and (w[0], w[1].hex())}")
    return "\n".join(lines)
