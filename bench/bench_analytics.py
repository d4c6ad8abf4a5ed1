"""Flow analytics cost: records metered and IPFIX-encoded per second, overhead on switch throughput (python bench/bench_analytics.py)."""

from __future__ import annotations

import argparse
import socket
import time

import numpy as np

from bench_switch import batches, frames, new_switch

from sbnet.analytics.ipfix import IpfixExporter
from sbnet.analytics.records import FlowMeter

TARGET_OVERHEAD = 0.10       # analytics may cost at most 10% of datapath throughput


def flow_frames(n_flows: int) -> np.ndarray:
    """bench_switch's frames with a source address of each flow's own, so that each flow is a
    megaflow and gets a record: the switch's staged lookup leaves udp_src wildcarded once the
    rule's nw_src stage misses, which folds bench_switch's 16 ports per address into one."""
    f = frames(n_flows)
    old = f[:, 26:30].astype(np.uint32)
    src = 0x0A000000 + np.arange(n_flows, dtype=np.uint32)
    f[:, 26:30] = src[:, None].view(np.uint8).reshape(n_flows, 4)[:, ::-1]
    # RFC 1624 incremental update of the IPv4 header checksum: HC' = ~(~HC + ~m + m').
    s = ~(f[:, 24].astype(np.uint32) << 8 | f[:, 25]) & 0xFFFF
    s += (~(old[:, 0] << 8 | old[:, 1]) & 0xFFFF) + (~(old[:, 2] << 8 | old[:, 3]) & 0xFFFF)
    s += (src >> 16) + (src & 0xFFFF)
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    f[:, 24] = (~s & 0xFFFF) >> 8
    f[:, 25] = ~s & 0xFF
    return f


def sink_socket() -> tuple[socket.socket, int]:
    """A UDP socket that receives (and never reads) the exporter's messages."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


def export_rate(n_flows: int) -> dict[str, float]:
    """Every one of n megaflows gets one record: meter, encode and send rates (records/s, CPU)."""
    sw = new_switch()
    fr = flow_frames(n_flows)
    for b in batches(fr, np.arange(n_flows), 4096):
        sw.process(b, now=1.0)
    meter = FlowMeter(sw, host="bench")
    _, port = sink = sink_socket()
    exp = IpfixExporter("127.0.0.1", port)
    t = time.process_time()
    recs = meter.flush(2.0)
    t_meter = time.process_time() - t
    t = time.process_time()
    msgs = exp.encoder.encode(recs, 2.0)
    t_encode = time.process_time() - t
    t = time.process_time()
    for m in msgs:
        exp.sock.sendto(m, exp.addr)
    t_send = time.process_time() - t
    assert len(recs) == n_flows and sum(r.packets for r in recs) == n_flows
    # Later records of the same megaflows (active timeouts): the per-megaflow part is cached.
    for b in batches(fr, np.arange(n_flows), 4096):
        sw.process(b, now=3.0)
    t = time.process_time()
    again = meter.flush(4.0)
    exp.export(again, 4.0)
    t_again = time.process_time() - t
    assert len(again) == n_flows
    exp.close()
    sink[0].close()
    return {"records": len(recs), "meter": len(recs) / t_meter, "encode": len(recs) / t_encode,
            "send": len(recs) / max(t_send, 1e-9),
            "all": len(recs) / (t_meter + t_encode + t_send), "messages": len(msgs),
            "again": len(again) / t_again}


def throughput(n_flows: int, batch: int, seconds: float, analytics: bool, active: float,
               idle: float, poll: float) -> dict[str, float]:
    """Cache-hit packets per CPU second, with or without the meter polled every `poll` seconds.

    The switch clock is the process's CPU time, so timeouts fire as often as they
    would at this packet rate; exports go over UDP to a local socket.
    """
    sw = new_switch()
    fr = flow_frames(n_flows)
    rng = np.random.default_rng(1)
    warm = batches(fr, np.arange(n_flows), 4096)
    for b in warm:
        sw.process(b, now=0.0)
    bs = batches(fr, rng.permutation(np.tile(np.arange(n_flows), max(1, 200_000 // n_flows))), batch)
    meter = exp = None
    if analytics:
        meter = FlowMeter(sw, host="bench", active_timeout=active, idle_timeout=idle)
        sink, port = sink_socket()
        exp = IpfixExporter("127.0.0.1", port)
        meter.poll(0.0)
    t0 = time.process_time()
    next_poll = poll
    packets = polls = records = 0
    t_analytics = 0.0
    while True:
        for b in bs:
            now = time.process_time() - t0
            sw.process(b, now=now)
            packets += len(b)
            if meter is not None and now >= next_poll:
                ta = time.process_time()
                recs = meter.poll(now)
                exp.export(recs, now)
                records += len(recs)
                polls += 1
                next_poll = now + poll
                t_analytics += time.process_time() - ta
        if time.process_time() - t0 >= seconds:
            break
    elapsed = time.process_time() - t0
    if exp is not None:
        exp.close()
        sink.close()
    return {"mpps": packets / elapsed / 1e6, "polls": polls, "records": records,
            "analytics_share": t_analytics / elapsed, "packets": packets,
            # CPU the meter and exporter took from the datapath's thread, per datapath CPU.
            "overhead": t_analytics / (elapsed - t_analytics),
            "datapath_mpps": packets / (elapsed - t_analytics) / 1e6}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--flows", type=int, nargs="+", default=[1_000, 100_000])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--seconds", type=float, default=65.0,
                    help="CPU seconds per throughput run (longer than the active timeout)")
    ap.add_argument("--rounds", type=int, default=1, help="runs per setting; the best counts")
    ap.add_argument("--ab", action="store_true", help="also run without analytics, separately")
    ap.add_argument("--active", type=float, default=60.0)
    ap.add_argument("--idle", type=float, default=15.0)
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between meter polls")
    a = ap.parse_args()
    print("records metered + IPFIX-encoded + sent per CPU second (one record per megaflow):")
    for n in a.flows:
        r = export_rate(n)
        print(f"  {n:>7,} records: meter {r['meter']:>9,.0f}/s  encode {r['encode']:>9,.0f}/s  "
              f"send {r['send']:>10,.0f}/s  all {r['all']:>9,.0f}/s  ({r['messages']:,} messages); "
              f"later records of the same flows, all stages: {r['again']:,.0f}/s")
    print(f"cache-hit throughput, batch {a.batch}, poll every {a.poll:g} s, "
          f"active {a.active:g} s, idle {a.idle:g} s (CPU time, {a.seconds:g} s per run):")
    worst = 0.0
    for n in a.flows:
        # Overhead measured inside one run: CPU spent in the meter and exporter over CPU
        # spent in the datapath, on the same thread. Comparing two separate runs (--ab)
        # also shows it, but on a shared machine their difference is mostly other load.
        r = max((throughput(n, a.batch, a.seconds, True, a.active, a.idle, a.poll)
                 for _ in range(a.rounds)), key=lambda r: r["mpps"])
        worst = max(worst, r["overhead"])
        line = (f"  {n:>7,} flows: {r['mpps']:.2f} Mpps with analytics, datapath alone "
                f"{r['datapath_mpps']:.2f} Mpps: overhead {r['overhead']:.1%} "
                f"({r['polls']} polls, {r['records']:,} records exported)")
        if a.ab:
            base = max((throughput(n, a.batch, a.seconds, False, a.active, a.idle, a.poll)
                        for _ in range(a.rounds)), key=lambda r: r["mpps"])
            line += f"; separate run without analytics {base['mpps']:.2f} Mpps"
        print(line)
    verdict = "meets" if worst <= TARGET_OVERHEAD else "MISSES"
    print(f"worst overhead {worst:.1%}: {verdict} the {TARGET_OVERHEAD:.0%} target")


if __name__ == "__main__":
    main()
