"""Traffic kept running across an event (an agent restart), and what it met: a 10 ms ping train's losses and delays, an iperf3 stream's receiver intervals."""

from __future__ import annotations

import json
import re
import signal
import time
from dataclasses import dataclass
from typing import Callable

_REPLY = re.compile(r"^\[(\d+\.\d+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms", re.M)
_SENT = re.compile(r"(\d+) packets transmitted")


@dataclass
class PingTrain:
    """A ping train's outcome: requests sent, the ones never answered (not counting the
    last 200 ms's, maybe in flight when it was stopped), the slowest round trip and the
    longest time between two replies (both in seconds)."""

    sent: int
    lost: list[int]
    max_rtt: float
    max_gap: float


def ping_across(topo, vm: str, dst: str, event: Callable[[], None], out_path,
                interval: float = 0.01, settle: float = 1.0) -> PingTrain:
    """Ping `dst` from `vm` every `interval` s from before `event()` until `settle` s after
    it returns.  The output goes to a file: a pipe nobody reads fills up after about 800
    replies and then stalls ping itself."""
    with open(out_path, "w") as out:
        proc = topo.popen(vm, "ping", "-n", "-D", "-i", str(interval), dst, stdout=out,
                          stderr=out)
        time.sleep(settle)
        try:
            event()
            time.sleep(settle)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    text = open(out_path).read()
    replies = {int(seq): (float(at), float(rtt) / 1000) for at, seq, rtt in _REPLY.findall(text)}
    sent = int(_SENT.search(text).group(1))
    # The requests of the last 200 ms may be unanswered only because ping was stopped.
    lost = [q for q in range(1, sent - int(0.2 / interval) + 1) if q not in replies]
    times = sorted(at for at, _ in replies.values())
    return PingTrain(sent, lost, max((r for _, r in replies.values()), default=float("inf")),
                     max((b - a for a, b in zip(times, times[1:])), default=float("inf")))


@dataclass
class Stream:
    """An iperf3 TCP stream seen from its receiver in 100 ms intervals: each interval's
    bytes, and the stream's rate in Mbit/s."""

    intervals: list[int]
    mbits: float

    def longest_empty(self) -> float:
        """The longest run of intervals that received nothing, in seconds."""
        run = longest = 0
        for b in self.intervals:
            run = run + 1 if b == 0 else 0
            longest = max(longest, run)
        return longest * 0.1


def iperf3_across(topo, client: str, server: str, address: str, event: Callable[[], None],
                  port: int = 5201, settle: float = 1.0) -> Stream:
    """An iperf3 TCP stream from `client` to `address` (on `server`), running from `settle` s
    before `event()` until `settle` s after it returns; its receiver reports every 100 ms
    (iperf3's shortest interval)."""
    srv = topo.popen(server, "iperf3", "-s", "-1", "-J", "-i", "0.1", "-p", str(port))
    time.sleep(0.5)
    cli = topo.popen(client, "iperf3", "-c", address, "-p", str(port), "-t", "120", "-i", "1",
                     "-J")
    try:
        time.sleep(settle)
        event()
        time.sleep(settle)
    finally:
        cli.send_signal(signal.SIGINT)           # iperf3 ends the test and reports
        cli.communicate(timeout=30)
        out, _ = srv.communicate(timeout=30)
    result = json.loads(out)
    # Interrupted, the client ends the test without a goodbye: the receiver says so, and
    # still reports what it received.
    if result.get("error", "the client has terminated") != "the client has terminated":
        raise AssertionError(f"iperf3: {result['error']}")
    # The last intervals are cut short by the client's end: leave them out.
    intervals = [iv["sum"]["bytes"] for iv in result["intervals"]
                 if iv["sum"]["seconds"] > 0.09][:-2]
    return Stream(intervals, result["end"]["sum_received"]["bits_per_second"] / 1e6)
