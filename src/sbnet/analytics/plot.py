"""PNG time series of a replay: throughput per ingress port, and NIC vs software share of packets."""

from __future__ import annotations

from pathlib import Path

from sbnet.analytics.replay import Sample


def plot(samples: list[Sample], out: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(samples) < 2:
        raise ValueError("need at least two samples to plot rates")
    t0 = samples[0].t
    ts = [s.t - t0 for s in samples[1:]]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                   gridspec_kw={"height_ratios": [3, 2]})
    def rates(get):
        return [(get(b) - get(a)) * 8 / max(b.t - a.t, 1e-9) / 1e3 for a, b in zip(samples, samples[1:])]

    colors = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4)
    for p in sorted({p for s in samples for p in s.port_bytes} | {p for s in samples for p in s.tx_bytes}):
        if p == 0:
            continue                       # malformed packets: counted, but no port and no bytes
        c = next(colors)
        name = "LOCAL" if p == 0xFFFFFFFE else f"port {p}"
        rx = rates(lambda s: s.port_bytes.get(p, 0))
        tx = rates(lambda s: s.tx_bytes.get(p, 0))
        if any(rx):
            ax1.plot(ts, rx, color=c, label=f"{name} in")
        if any(tx):
            ax1.plot(ts, tx, color=c, linestyle="--", label=f"{name} out")
    ax1.set_ylabel("throughput (kbit/s)")
    ax1.legend(loc="upper right", fontsize="small")
    ax1.grid(alpha=0.3)
    tiers = ("nic", "software", "slowpath")
    shares = {t: [] for t in tiers}
    for a, b in zip(samples, samples[1:]):
        d = {t: b.tier_packets.get(t, 0) - a.tier_packets.get(t, 0) for t in tiers}
        total = sum(d.values())
        for t in tiers:
            shares[t].append(100.0 * d[t] / total if total else 0.0)
    ax2.stackplot(ts, [shares[t] for t in tiers], labels=["NIC", "software", "slow path"],
                  colors=["#2a9d8f", "#e76f51", "#264653"], alpha=0.85)
    ax2.set_ylim(0, 100)
    ax2.set_ylabel("share of packets (%)")
    ax2.set_xlabel("time (s)")
    ax2.legend(loc="lower right", fontsize="small")
    fig.suptitle(title or "sbnet flows plot")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
