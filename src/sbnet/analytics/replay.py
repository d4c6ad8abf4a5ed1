"""Replay packets through a switch with a flow meter attached: records, exports and a time series."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sbnet.analytics.records import FlowMeter, FlowRecord


@dataclass
class Sample:
    """Cumulative counters at one instant, for throughput and tier-share plots."""

    t: float
    port_bytes: dict[int, int]          # entering, by ingress port (0: malformed, no port)
    tier_packets: dict[str, int]
    tx_bytes: dict[int, int] = field(default_factory=dict)   # sent, by port


@dataclass
class ReplayResult:
    records: list[FlowRecord] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    processed: int = 0


def sample(meter: FlowMeter, t: float) -> Sample:
    port_bytes: dict[int, int] = {}
    tier_packets: dict[str, int] = {}
    for (port, tier, _reason), (pk, by) in meter.totals().items():
        port_bytes[port] = port_bytes.get(port, 0) + by
        tier_packets[tier] = tier_packets.get(tier, 0) + pk
    exact = getattr(meter.sw, "tier_packets", None)     # the switch's own split, when it has a NIC tier
    if isinstance(exact, dict) and sum(exact.values()):
        tier_packets = dict(exact)
    tx = {p: port.tx_bytes for p, port in meter.sw.ports.items() if port.tx_bytes}
    return Sample(t, port_bytes, tier_packets, tx)


def replay(switch, meter: FlowMeter, packets: list[tuple[float, bytes, int]], batch: int = 256,
           poll_every: float = 1.0, sink=None, sample_every: float | None = None,
           on_sample=None) -> ReplayResult:
    """Run (time, frame, in_port) through `switch` in batches, polling the meter on pcap time.

    `sink(records, now)` receives each poll's expired records (an exporter's
    `export`); a final flush sends the rest, so every packet lands in a record.
    """
    from sbnet.datapath.batch import Batch

    res = ReplayResult()
    if not packets:
        return res
    t0 = packets[0][0]
    next_poll = t0 + poll_every
    next_sample = t0 if sample_every else None
    now = t0

    def emit(recs, now):
        res.records.extend(recs)
        if sink is not None and recs:
            sink(recs, now)

    for i in range(0, len(packets), batch):
        chunk = packets[i:i + batch]
        now = chunk[-1][0]
        ports = np.fromiter((p for _, _, p in chunk), dtype=np.uint32, count=len(chunk))
        switch.process(Batch.from_packets([f for _, f, _ in chunk], ports), now=now)
        res.processed += len(chunk)
        if now >= next_poll:
            switch.maintain(now)
            emit(meter.poll(now), now)
            next_poll = now + poll_every
        if next_sample is not None and now >= next_sample:
            res.samples.append(sample(meter, now))
            next_sample = now + sample_every
            if on_sample is not None:
                on_sample(res.samples[-1])
    if next_sample is not None:
        res.samples.append(sample(meter, now))
    emit(meter.flush(now), now)
    return res
