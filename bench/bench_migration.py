"""Live migration downtime on real Linux stacks, per datapath (reference switch, eBPF tier,
Open vSwitch userspace), in one run.

Three hosts joined by VXLAN; `mover` (on h2, a security group with no ingress rule) receives
an iperf3 stream (-R, 40 Mbit/s, 0.1 s intervals) and a paced TCP stream (1 kB every 10 ms)
from `peer` on h1, another paced stream from the external namespace through its floating IP
(NAT on its host), and pings `peer` every 10 ms; it moves h2 -> h3 by Nova's sequence (`sbnet migrate`'s driver: inactive
binding, destination ready, switch-over, activate, delete the source's binding) with the
conntrack handover, then h3 -> h2 without it; then N more migrations back and forth, after
which no host may hold flows, bindings or connections of the mover it should not.

Downtime is the silence across the switch-over and in the second after it (from the moment
it begins until 1 s after the VM's interface has moved): the longest gap between ping
replies, and between the paced streams' receives, that overlaps it, and the longest run of
iperf3 intervals (0.1 s) that carried nothing within 1 s of it.  Beside them, why a stream
stalls: the segments the VM's TCP discarded by PAWS (a stale copy arriving after a newer
retransmission) and the senders' retransmission timeouts.  The largest ping gap of the whole run
is printed beside it: on a busy machine that is the scheduler's, not the migration's.  Then,
per measured move, where the switch-over's time goes (where_the_time_goes).

Needs root, iperf3, Open vSwitch, BPF.  Run: python bench/bench_migration.py [--back-and-forth N]
"""

from __future__ import annotations

import argparse
import json
import time

from sbnet.agent.migrationlab import OUTSIDE_IP, MigrationLab
from sbnet.agent.netns import Topology
from sbnet.agent.probes import PingTrain, Stream

SECONDS = 5.0           # each measured run; the switch-over happens 2 s in
UPCALLS_WITHIN = 0.3    # the destination's upcalls are counted this long after the switch-over
# A silence counts if it overlaps the switch-over or begins within this long after it (a
# stall that starts once the VM runs at the destination is the move's too).
AFTER = 1.0


def iperf_gap(out: str, t_start: float, t_move: float) -> tuple[float, float]:
    """(the longest run of intervals carrying nothing within 1 s of the switch-over, in s;
    mean Mbit/s) from iperf3 -J; t_start: monotonic time the client started."""
    try:
        data = json.loads(out)
    except ValueError:
        return float("inf"), 0.0
    longest = run = 0.0
    for iv in data.get("intervals", ()):
        s = iv["sum"]
        near = abs(t_start + (s["start"] + s["end"]) / 2 - t_move) < 1.0
        run = run + (s["end"] - s["start"]) if s["bytes"] == 0 and near else 0.0
        longest = max(longest, run)
    bits = data.get("end", {}).get("sum_received", {}).get("bits_per_second", 0.0)
    return longest, bits / 1e6


def tcp_ext(topo, node) -> dict[str, int]:
    """A namespace's TCP extended counters (/proc/net/netstat as read from inside it)."""
    lines = [ln.split() for ln in topo.run(node, "cat", "/proc/net/netstat").stdout.splitlines()
             if ln.startswith("TcpExt:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]))) if len(lines) >= 2 else {}


def measured_move(lab: MigrationLab, dest: str, port: int) -> dict:
    topo, peer, mover = lab.topo, lab.peer, lab.mover
    srv = topo.popen(peer, "iperf3", "-s", "-1", "-p", str(5201 + port % 5))
    time.sleep(0.3)
    t_ip = time.monotonic()
    ip = topo.popen(mover, "iperf3", "-c", peer.address, "-p", str(5201 + port % 5), "-R",
                    "-t", str(SECONDS), "-i", "0.1", "-b", "40M", "-J")
    stream = Stream(topo, peer, mover, peer.address, port=port, seconds=SECONDS, idle=SECONDS,
                    chunk=1000, pace=0.01)
    outside = Stream(topo, "outside", mover, OUTSIDE_IP, port=port + 100, seconds=SECONDS,
                     idle=SECONDS, chunk=1000, pace=0.01)
    pings = PingTrain(topo, mover, peer.address, count=int(SECONDS * 100))
    time.sleep(2.0)
    # Why a stream stalls, counted where TCP ends: segments the VM discarded as older than
    # one it had seen (PAWS: a stale copy arriving after a retransmission), and the
    # senders' retransmission timeouts (a loss nothing else recovered).
    ends = {"vm": mover, "outside": "outside", "peer": peer}
    before = {k: tcp_ext(topo, n) for k, n in ends.items()}
    count = getattr(lab.topo.hosts[dest].datapath, "upcalls", None)
    ups: list[int] = []
    tl, t_move = lab.move(dest, switched=lambda: ups.append(count()) if count else None)
    t_end = lab.switched[1]
    time.sleep(max(0.0, t_end + UPCALLS_WITHIN - time.monotonic()))
    dest_upcalls = count() - ups[0] if ups else -1
    res = stream.result(timeout=SECONDS + 30)
    ext = outside.result(timeout=SECONDS + 30)
    gap, replies, sent = pings.gap(timeout=SECONDS + 30, at=t_move, until=t_end + AFTER)
    worst, _, _ = pings.gap()
    out, _ = ip.communicate(timeout=SECONDS + 30)
    srv.communicate(timeout=10)
    igap, mbps = iperf_gap(out, t_ip, t_move)
    after = {k: tcp_ext(topo, n) for k, n in ends.items()}
    paws = after["vm"].get("PAWSEstab", 0) - before["vm"].get("PAWSEstab", 0)
    rtos = {k: after[k].get("TCPTimeouts", 0) - before[k].get("TCPTimeouts", 0)
            for k in ("outside", "peer")}
    where = where_the_time_goes(lab, tl, pings, t_move, t_end)
    where["released_ms"], where["announced_ms"] = _released(lab, dest, t_move)
    kept = res.error == "" and res.bytes_after(t_move + 0.5)
    moved = any(a.migration.moves_conns for a in lab.cloud.agents.values())
    return {"moved": moved, "ping_gap_ms": gap * 1000, "ping_worst_ms": worst * 1000, "ping_lost": sent - replies, "ping_dups": pings.dups,
            "stream_gap_ms": res.gap_at(t_move, t_end + AFTER) * 1000, "stream_survived": kept,
            "fip_gap_ms": ext.gap_at(t_move, t_end + AFTER) * 1000,
            "fip_survived": ext.error == "" and ext.bytes_after(t_move + 0.5),
            "iperf_gap_ms": igap * 1000, "iperf_mbps": mbps,
            "dest_upcalls": dest_upcalls, "vm_paws": paws, "outside_rtos": rtos["outside"],
            "peer_rtos": rtos["peer"], "prewarmed": _prewarmed(lab, dest),
            "ready_ms": next((t * 1000 for t, w in tl.events if "ready" in w), float("nan")),
            "sequence_ms": tl.events[-1][0] * 1000, **where}


def _released(lab: MigrationLab, dest: str, t_move: float) -> tuple[float | None, ...]:
    """(when the destination let the VM's traffic in again: its first frame there; when its
    datapath sent the VM's announcements on that frame), ms after the switch-over began;
    None where the datapath holds nothing (OVS) or announces nothing (OVS, the eBPF tier)."""
    try:
        holds = lab.topo.hosts[dest].datapath.holds()
    except AttributeError:
        return None, None
    released = next(((t - t_move) * 1000 for _, t, what in reversed(holds["events"])
                     if what != "held"), None)
    sent = [t for _, t, _ in holds.get("announced", ()) if t >= t_move]
    return released, (sent[-1] - t_move) * 1000 if sent else None


def _prewarmed(lab: MigrationLab, dest: str) -> int:
    """Megaflows the destination translated ahead for the move (-1: none tried)."""
    log = lab.cloud.agents[dest].migration.state.log
    return next((n for _, what, n in reversed(log) if what == "prewarmed"), -1)


def where_the_time_goes(lab: MigrationLab, tl, pings: PingTrain, t_move: float,
                        t_end: float) -> dict:
    """The switch-over taken apart (ms after it began): how long the VM had no interface,
    when the first reply came after it and that reply's round trip against the run's median
    (what the loaded datapaths take anyway), when Nova activated the binding, and when each
    host's agent applied the activation (its first sync after it that changed flows: start,
    flows changed, ms the datapath took them in)."""
    pings.finish()
    after = [(t, r) for t, r in zip(pings.stamps, pings.rtts) if t > t_end]
    rtts = sorted(pings.rtts)
    act = next((tl.start + t for t, w in tl.events if "activated" in w), float("nan"))
    hosts = {}
    for host, agent in sorted(lab.cloud.agents.items()):
        step = next((r for r in list(agent.history) if r.started >= act and r.changed), None)
        if step is not None:
            hosts[host] = ((step.started - t_move) * 1000, step.changed, step.applied * 1000)
    return {"no_interface_ms": (t_end - t_move) * 1000,
            "first_reply_ms": (after[0][0] - t_move) * 1000 if after else float("inf"),
            "first_reply_rtt_ms": after[0][1] * 1000 if after else float("nan"),
            "median_rtt_ms": rtts[len(rtts) // 2] * 1000 if rtts else float("nan"),
            "activated_ms": (act - t_move) * 1000, "hosts_applied": hosts}


def leaks(lab: MigrationLab, n: int) -> dict:
    """n migrations back and forth (handover on); then what is left where it should not be."""
    flows0 = {h: len(lab.topo.hosts[h].datapath.dump_flows()) for h in ("h1", "h2", "h3")}
    t0 = time.monotonic()
    for i in range(n):
        lab.move("h3" if lab.host == "h2" else "h2")
    per = (time.monotonic() - t0) / max(n, 1)
    time.sleep(1.5)                         # the agents apply the last activation
    snap = lab.cloud.api.store.snapshot()
    away = "h3" if lab.host == "h2" else "h2"
    tcp_away = [c for c in lab.conns(away) if c.startswith("tcp")]
    flows = {h: len(lab.topo.hosts[h].datapath.dump_flows()) for h in ("h1", "h2", "h3")}
    moves = any(a.migration.moves_conns for a in lab.cloud.agents.values())
    return {"migrations": n, "moves_conns": moves, "seconds_each": per, "bindings_left": len(snap.get("port_binding", ())),
            "handovers_left": len(snap.get("ct_handover", ())),
            "tcp_conns_on_old_host": len(tcp_away), "flows_before": flows0, "flows_after": flows}


def run(backend: str, back_and_forth: int) -> dict:
    Topology.cleanup_stale()
    with Topology() as topo:
        lab = MigrationLab.build(topo, backend)
        try:
            out = {"backend": backend}
            lab.handover(True)
            out["handover"] = measured_move(lab, "h3", 5010)
            lab.handover(False)
            out["no_handover"] = measured_move(lab, "h2", 5011)
            lab.handover(True)
            out["leaks"] = leaks(lab, back_and_forth)
            return out
        finally:
            lab.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--back-and-forth", type=int, default=20)
    ap.add_argument("--backends", default="reference,ebpf,ovs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = [run(b, args.back_and_forth) for b in args.backends.split(",")]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    print("Gaps are the longest silence overlapping the switch-over or the second after it; "
          "'worst' is the largest "
          "ping gap of the whole run (the machine's own noise); prewarmed: megaflows the "
          "destination translated ahead; dest upcalls: its upcalls in the "
          f"{UPCALLS_WITHIN * 1000:.0f} ms after the switch-over; PAWS: segments the VM's TCP "
          "discarded as older than one it had already seen (a stale copy that came after a "
          "retransmission); RTO out/peer: the outside's and the peer's retransmission timeouts "
          "in the run.")
    print(f"{'datapath':10} {'handover':9} {'ping gap':>9} {'worst':>7} {'lost':>5} {'dup':>4} "
          f"{'stream gap':>11} {'TCP kept':>8} {'FIP gap':>8} {'FIP kept':>8} "
          f"{'iperf3 0-run':>13} {'Mbit/s':>7} {'ready':>8} {'prewarmed':>9} {'dest upcalls':>12} "
          f"{'PAWS':>5} {'RTO out/peer':>12}")
    for r in results:
        for key, label in (("handover", "yes"), ("no_handover", "no")):
            m = r[key]
            label = label if m["moved"] or label == "no" else "none"
            print(f"{r['backend']:10} {label:9} {m['ping_gap_ms']:7.0f}ms "
                  f"{m['ping_worst_ms']:5.0f}ms {m['ping_lost']:5d} {m['ping_dups']:4d} "
                  f"{m['stream_gap_ms']:9.0f}ms {'yes' if m['stream_survived'] else 'NO':>8} "
                  f"{m['fip_gap_ms']:6.0f}ms {'yes' if m['fip_survived'] else 'NO':>8} "
                  f"{m['iperf_gap_ms']:11.0f}ms {m['iperf_mbps']:7.1f} {m['ready_ms']:6.0f}ms "
                  f"{_n(m['prewarmed']):>9} {_n(m['dest_upcalls']):>12} {m['vm_paws']:5d} "
                  f"{m['outside_rtos']:>6d}/{m['peer_rtos']:<5d}")
    print("Where the switch-over's time goes (ms after it began): the VM without an interface, "
          "until when the destination held the other hosts' copies of its traffic (its first "
          "frame there) and when its datapath sent the VM's announcements (gratuitous ARP for "
          "its floating IP) on that frame ('-': the datapath holds and announces nothing), "
          "the first ping reply after it (its round trip; the run's median), "
          "Nova's activation, "
          "each host applying it (start/flows changed/ms in the datapath):")
    for r in results:
        for key, label in (("handover", "yes"), ("no_handover", "no")):
            m = r[key]
            label = label if m["moved"] or label == "no" else "none"
            hosts = " ".join(f"{h}:{t:.0f}/{n}/{a:.0f}" for h, (t, n, a) in
                             sorted(m["hosts_applied"].items()))
            print(f"{r['backend']:10} {label:9} no-if {m['no_interface_ms']:4.0f} held until "
                  f"{_ms(m['released_ms'])} announced {_ms(m['announced_ms'])} first reply "
                  f"{m['first_reply_ms']:5.0f} (rtt {m['first_reply_rtt_ms']:4.0f}; median "
                  f"{m['median_rtt_ms']:4.0f}) activated {m['activated_ms']:5.0f} applied {hosts}")
    for r in results:
        lk = r["leaks"]
        n = lk["tcp_conns_on_old_host"]
        # Without a handover (OVS: its userspace conntrack has no export) the old host's
        # entries are not the migration's leftovers but connections nothing moved or
        # deleted: they stay in its table until they time out.
        conns = (f"{n} TCP connections on the old host" if lk["moves_conns"] else
                 f"{n} TCP conntrack entries still on the old host (no handover on this "
                 f"datapath: its entries stay until they time out)")
        print(f"{r['backend']}: {lk['migrations']} migrations back and forth, "
              f"{lk['seconds_each']:.2f} s each; left: {lk['bindings_left']} bindings, "
              f"{lk['handovers_left']} handovers, {conns}; flows before {lk['flows_before']} "
              f"after {lk['flows_after']}")


def _ms(v: float | None) -> str:
    return f"{v:4.0f}" if v is not None else "   -"


def _n(v: int) -> str:
    return "-" if v < 0 else str(v)


if __name__ == "__main__":
    main()
