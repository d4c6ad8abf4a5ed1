"""What a live migration is measured with on namespaces: a paced TCP stream and its receive gaps, a 10 ms ping train and its largest silence."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

# The sender: one connection, `chunk` bytes every `pace` seconds until `seconds` have passed.
_SERVER = """
import socket,time,sys
s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)
s.bind(('0.0.0.0',{port}));s.listen(1);s.settimeout(20)
c,_=s.accept();end=time.monotonic()+{seconds};sent=0;err=''
try:
    while time.monotonic()<end:
        c.sendall(b'x'*{chunk});sent+={chunk};time.sleep({pace})
except OSError as e:
    err=repr(e)
print(sent,err,flush=True)
"""
# The receiver: when each recv() returned (monotonic), how much, and how it ended.
_CLIENT = """
import socket,time,json
s=socket.create_connection(('{address}',{port}),timeout=5);s.settimeout({idle})
marks=[];n=0;err='';t0=time.monotonic()
try:
    while True:
        b=s.recv(65536)
        if not b: break
        n+=len(b);marks.append(round(time.monotonic(),4))
except OSError as e:
    err=repr(e)
print(json.dumps({{"bytes":n,"marks":marks,"error":err,"t0":t0}}),flush=True)
"""


@dataclass
class StreamResult:
    """A TCP stream as its receiver saw it."""

    received: int
    marks: list[float]            # monotonic times of each recv()
    error: str                    # "" when the sender closed it cleanly

    def gap(self, after: float = 0.0) -> float:
        """The longest silence between receives (seconds), counting from `after`."""
        ts = [t for t in self.marks if t >= after]
        return max((b - a for a, b in zip(ts, ts[1:])), default=float("inf"))

    def gap_at(self, t: float, until: float | None = None) -> float:
        """The silence that spans monotonic time `t` (the switch-over): from the last
        receive before it to the first after it (inf: nothing came after); with `until`,
        the longest silence that overlaps [t, until]."""
        return _gap_at(self.marks, t, until)

    def bytes_after(self, t: float) -> bool:
        return any(m > t for m in self.marks)


class Stream:
    """`server` sends to `client` over one TCP connection (server -> client is what a
    stateful group without an ingress rule admits only as a reply)."""

    def __init__(self, topo, server, client, address: str, port: int = 5001,
                 seconds: float = 6.0, chunk: int = 4096, pace: float = 0.002,
                 idle: float = 3.0) -> None:
        self.srv = topo.popen(server, "python3", "-c", _SERVER.format(
            port=port, seconds=seconds, chunk=chunk, pace=pace))
        time.sleep(0.3)
        self.cli = topo.popen(client, "python3", "-c", _CLIENT.format(
            address=address, port=port, idle=idle))

    def result(self, timeout: float = 30.0) -> StreamResult:
        out, err = self.cli.communicate(timeout=timeout)
        self.srv.communicate(timeout=timeout)
        lines = out.strip().splitlines()
        if not lines:               # it never connected: say why
            return StreamResult(0, [], (err.strip().splitlines() or ["no output"])[-1])
        d = json.loads(lines[-1])
        return StreamResult(d["bytes"], d["marks"], d["error"])


class PingTrain:
    """ping every `interval` seconds with timestamps (-D): the silences between replies."""

    def __init__(self, topo, node, address: str, count: int, interval: float = 0.01) -> None:
        self.interval = interval
        self.proc = topo.popen(node, "ping", "-n", "-D", "-i", str(interval), "-c", str(count),
                               "-W", "1", address)
        self.stamps: list[float] | None = None
        self.sent = 0
        self.dups = 0                 # replies that came twice
        self.rtts: list[float] = []   # each reply's round trip (seconds)

    def finish(self, timeout: float = 60.0) -> "PingTrain":
        """Wait for the train; its replies' times, made monotonic (ping -D stamps them with
        the wall clock)."""
        if self.stamps is None:
            out, _ = self.proc.communicate(timeout=timeout)
            shift = time.time() - time.monotonic()
            self.stamps = [float(m) - shift for m in
                           re.findall(r"^\[(\d+\.\d+)\].*icmp_seq=(?!.*DUP!)", out, re.M)]
            self.dups = len(re.findall(r"icmp_seq=.*DUP!", out))
            self.rtts = [float(m) / 1000 for m in
                         re.findall(r"^\[\d+\.\d+\].*icmp_seq=(?!.*DUP!).*time=([\d.]+) ms", out,
                                    re.M)]
            sent = re.search(r"(\d+) packets transmitted", out)
            self.sent = int(sent.group(1)) if sent else 0
        return self

    def gap(self, timeout: float = 60.0, at: float | None = None,
            until: float | None = None) -> tuple[float, int, int]:
        """(largest silence between two replies in seconds, replies, requests); with `at`
        (a monotonic time: the switch-over) the silence that spans it instead, with
        `until` as well the longest that overlaps [at, until]."""
        stamps = self.finish(timeout).stamps
        gap = _gap_at(stamps, at, until) if at is not None else \
            max((b - a for a, b in zip(stamps, stamps[1:])), default=float("inf"))
        return gap, len(stamps), self.sent


def _gap_at(marks: list[float], t: float, until: float | None = None) -> float:
    until = t if until is None else until
    before = [m for m in marks if m <= t]
    after = [m for m in marks if m > until]
    if not after:
        return float("inf")
    inside = [m for m in marks if t < m <= until]
    edges = [before[-1] if before else t, *inside, after[0]]
    return max(b - a for a, b in zip(edges, edges[1:]))
