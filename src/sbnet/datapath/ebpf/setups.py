"""Flow set-ups per second through the kernel tier's upcall path, on real veths in a namespace (bench_ebpf and its test; root)."""

from __future__ import annotations

import gc
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from sbnet.datapath.afpacket import PACKET_IGNORE_OUTGOING, SOL_PACKET, in_netns
from sbnet.datapath.batch import HEADROOM, Batch
from sbnet.datapath.checksum import internet_checksum
from sbnet.datapath.mmsg import Receiver, Sender

# New UDP connections through a stateful security group: each one's first packet and its
# reply go up (the kernel holds no connection for them), the slow path commits the
# connection and, once it has seen the reply, hands it down.
CONNECTIONS = """\
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=7,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk+new,udp,in_port=1 actions=ct(commit,zone=7),output:2
table=1,priority=10,ct_state=+trk+new,tcp,in_port=1 actions=ct(commit,zone=7),output:2
table=1,priority=10,ct_state=+trk+est,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""
# A rule on one source port makes every lookup consult udp_src: one megaflow per flow,
# each translated by the slow path and installed in the kernel.
MEGAFLOWS = """\
table=0,priority=20,udp,tp_src=1 actions=drop
table=0,priority=10,udp,in_port=1 actions=mod_dl_dst:02:00:00:00:00:09,output:2
table=0,priority=0 actions=drop
"""
# Two VMs (ports 1 and 2) behind a stateful group letting TCP and pings from port 1 in,
# ARP between them (tests/ebpf/test_real.py, bench/bench_real.py's one-host rows).
VM_GROUP = """\
table=0,priority=20,arp,in_port=1 actions=output:2
table=0,priority=20,arp,in_port=2 actions=output:1
table=0,priority=10,ip,ct_state=-trk actions=ct(zone=7,table=1)
table=0,priority=1 actions=drop
table=1,priority=10,ct_state=+trk+new,tcp,in_port=1 actions=ct(commit,zone=7),output:2
table=1,priority=10,ct_state=+trk+new,icmp,in_port=1 actions=ct(commit,zone=7),output:2
table=1,priority=10,ct_state=+trk+est,in_port=1 actions=output:2
table=1,priority=10,ct_state=+trk+est,in_port=2 actions=output:1
table=1,priority=1 actions=drop
"""
TABLES = {"connections": CONNECTIONS, "megaflows": MEGAFLOWS}
DPORT = 4790
SO_RCVBUFFORCE = 33
MAX_FLOWS = 1 << 15           # flows of distinct source ports (megaflows differ by port)
WARM = (1 << 20) + MAX_FLOWS - 1    # a flow of its own: another address, the last port


@dataclass
class SetupRun:
    """One run: `flows` new flows sent at once; how long until the kernel held them all."""

    kind: str
    flows: int
    seconds: float            # first packet sent -> last flow in the kernel
    in_kernel: int            # flows (connections or megaflows) the kernel holds
    delivered: int            # first packets that reached the receiver (none may be lost; -1: not counted)
    carried: int              # second packets (TCP: handshake packets) the kernel forwarded itself
    upcalls: int
    upcalls_lost: int
    unsent: int = 0           # frames the sending socket could not queue

    @property
    def rate(self) -> float:
        return self.in_kernel / self.seconds if self.seconds else 0.0


def frame(i: int) -> bytes:
    """UDP flow i: its own source address and port (1024 + i % 32768)."""
    src = 0x0A000000 + (i >> 15) + 1
    ip = bytearray(b"\x45\0\0\x32\0\0\x40\0\x40\x11\0\0" + src.to_bytes(4, "big") + bytes([10, 1, 0, 1]))
    ip[10:12] = internet_checksum(bytes(ip)).to_bytes(2, "big")
    udp = (1024 + (i & 0x7FFF)).to_bytes(2, "big") + DPORT.to_bytes(2, "big") + b"\0\x1e\0\0"
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes(ip) + udp + bytes(22)


FRAME_LEN = 64
# A bench frame's reply: MACs, addresses and ports swapped (IPv4 and UDP checksums hold).
REPLY = (list(range(6, 12)) + list(range(0, 6)) + list(range(12, 26)) + list(range(30, 34))
         + list(range(26, 30)) + [36, 37, 34, 35] + list(range(38, FRAME_LEN)))


def bench_frames(rows: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Which received frames (rows at HEADROOM) are bench frames towards the peer."""
    f = rows[:, HEADROOM:HEADROOM + FRAME_LEN]
    return ((lens == FRAME_LEN) & (f[:, 23] == 17) & (f[:, 30] == 10) & (f[:, 31] == 1)
            & (f[:, 36] == DPORT >> 8) & (f[:, 37] == DPORT & 0xFF))


class _Counter(threading.Thread):
    """Counts the bench's frames arriving on an interface (recvmmsg: the slow path's
    thread is not kept waiting for this one's reads)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.n, self.stop = sock, 0, threading.Event()
        self.rx = Receiver(512, 2048)

    def run(self) -> None:
        fd = self.sock.fileno()
        while not self.stop.is_set():
            if not select.select([fd], [], [], 0.2)[0]:
                continue
            while True:
                got, lens, _ = self.rx.receive(fd)
                if not got:
                    break
                self.n += int(bench_frames(self.rx.buf[:got], lens).sum())


def send_all(sock: socket.socket, frames: np.ndarray) -> int:
    """Every frame (rows of FRAME_LEN bytes) out of a packet socket, a sendmmsg call per
    few hundred; how many could not go."""
    n = len(frames)
    b = Batch(np.ascontiguousarray(frames), np.zeros(n, np.int32),
              np.full(n, frames.shape[1], np.int32), np.zeros(n, np.uint32))
    return Sender(512).send(sock.fileno(), b)


# The connections' peer, run in the namespace as a script of its own: answers every bench
# frame arriving on argv[1] with its reply, until stdin closes.
RESPONDER = """
import select, socket, sys
import numpy as np
from sbnet.datapath.ebpf.setups import REPLY, bench_frames, send_all, HEADROOM, FRAME_LEN
from sbnet.datapath.mmsg import Receiver
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.setsockopt(socket.SOL_SOCKET, 33, 256 << 20)     # SO_RCVBUFFORCE: past rmem_max
s.setsockopt(263, 23, 1)       # SOL_PACKET, PACKET_IGNORE_OUTGOING: not its own replies
s.bind((sys.argv[1], 3))
rx = Receiver(512, 2048)
print("ready", flush=True)
while sys.stdin not in select.select([s, sys.stdin], [], [], 1.0)[0]:
    while True:
        got, lens, _ = rx.receive(s.fileno())
        if not got:
            break
        rows = rx.buf[:got]
        mine = rows[bench_frames(rows, lens), HEADROOM:HEADROOM + FRAME_LEN]
        if len(mine):
            send_all(s, mine[:, REPLY])
"""


def measure(kind: str, n: int, timeout: float = 60.0, kernel_ct: bool = True) -> SetupRun:
    """Send n new flows into port 1 of a kernel-tier switch at once; time until the kernel
    holds every one (connections: both directions in the connection map; megaflows: in
    the flow map), then send each flow's second packet and count what the kernel carried.
    kernel_ct False: the slow path commits each connection (its first packet and its reply
    go up), as before the kernel committed UDP connections itself."""
    from sbnet.agent.netns import Topology
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    from sbnet.flows.ofctl import parse_file
    if not 0 < n < MAX_FLOWS:
        raise ValueError(f"flows must be 1..{MAX_FLOWS - 1}")
    frames = np.frombuffer(b"".join(frame(i) for i in range(n)), np.uint8).reshape(n, FRAME_LEN)
    with Topology() as topo:
        ns = topo.add_namespace("setups")
        _veths(ns)
        # No idle expiry while it runs: every flow set up stays until it is counted.
        with EbpfDatapath(netns=ns, capacity=max(65536, 2 * n), maintain_every=3600,
                          kernel_ct=kernel_ct) as dp:
            dp.attach(1, "tap1")
            dp.attach(2, "tap2")
            dp.bundle(add=parse_file(TABLES[kind]).flows)
            with in_netns(ns):
                rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
                tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            with rx, tx:
                # SO_RCVBUFFORCE (root): past net.core.rmem_max, or a burst of 20,000
                # frames overflows the counting socket and first packets look lost.
                rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 256 << 20)
                rx.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)    # not the replies
                rx.bind(("dst0", 3))
                tx.bind(("src0", 0))
                counter = _Counter(rx)
                counter.start()
                dp.start()
                if kind == "connections":
                    peer = topo.popen("setups", sys.executable, "-c", RESPONDER, "dst0",
                                      stdin=subprocess.PIPE)
                    assert peer.stdout.readline().strip() == "ready", peer.stderr.read()
                held = (lambda: dp.connections_in_kernel()) if kind == "connections" else \
                    (lambda: dp.megaflows_in_kernel())
                # One flow beforehand, twice: the megaflows every flow's first and second
                # packets take are there, as on a switch that has run for a while.
                for i in range(2):
                    tx.send(frame(WARM))
                    _wait(lambda: counter.n > i and (kind != "connections" or held() > 0))
                    time.sleep(0.05)
                # As `sbnet agent` does after its first sync: what is made so far stays out
                # of the collector's full passes (each would walk every object here).
                gc.collect()
                gc.freeze()
                before, seen = held(), counter.n
                t0 = time.perf_counter()
                unsent = send_all(tx, frames)
                while held() - before < n and time.perf_counter() - t0 < timeout:
                    time.sleep(0.002)
                seconds = time.perf_counter() - t0
                in_kernel = held() - before
                _wait(lambda: counter.n >= seen + n)
                delivered = counter.n - seen
                up = dp.kernel_stats()["upcall"]
                unsent += send_all(tx, frames)
                _wait(lambda: counter.n >= seen + delivered + n)
                counter.stop.set()
                counter.join()
                if kind == "connections":
                    peer.stdin.close()
                    peer.wait(timeout=10)
                st = dp.kernel_stats()
                gc.unfreeze()
    return SetupRun(kind, n, seconds, in_kernel, delivered, n - (st["upcall"] - up),
                    st["upcall"], st["upcall_lost"], unsent)


def tcp_frame(i: int, step: int) -> bytes:
    """TCP flow i's handshake: step 0 its SYN, 1 the peer's SYN-ACK, 2 its ACK (addresses
    and source port as UDP flow i's; checksums hold)."""
    src, dst = 0x0A000000 + (i >> 15) + 1, 0x0A010001
    sport, isn_c, isn_s = 1024 + (i & 0x7FFF), (i * 7919) & 0xFFFFFFFF, (i * 104729) & 0xFFFFFFFF
    macs = bytes.fromhex("020000000002020000000001")
    seq, ack, flags = ((isn_c, 0, 0x02), (isn_s, isn_c + 1, 0x12), (isn_c + 1, isn_s + 1, 0x10))[step]
    if step == 1:
        src, dst, macs = dst, src, macs[6:] + macs[:6]
    sp, dp = (DPORT, sport) if step == 1 else (sport, DPORT)
    ip = bytearray(b"\x45\0\0\x28\0\0\x40\0\x40\x06\0\0" + src.to_bytes(4, "big") + dst.to_bytes(4, "big"))
    ip[10:12] = internet_checksum(bytes(ip)).to_bytes(2, "big")
    tcp = bytearray(sp.to_bytes(2, "big") + dp.to_bytes(2, "big") + (seq & 0xFFFFFFFF).to_bytes(4, "big")
                    + (ack & 0xFFFFFFFF).to_bytes(4, "big") + bytes([0x50, flags]) + b"\xfa\xf0\0\0\0\0")
    pseudo = bytes(ip[12:20]) + b"\0\x06\0\x14"
    tcp[16:18] = internet_checksum(pseudo + bytes(tcp)).to_bytes(2, "big")
    return macs + b"\x08\x00" + bytes(ip) + bytes(tcp)


def measure_tcp(n: int, timeout: float = 60.0) -> SetupRun:
    """n TCP handshakes through a stateful group on a kernel-tier switch: every SYN sent at
    once, then every SYN-ACK from the peer's side, then every ACK; timed from the first
    SYN until the kernel holds every connection established (the slow path told).  None
    of their packets should go up: the kernel commits each SYN and follows each handshake."""
    from sbnet.agent.netns import Topology
    from sbnet.datapath.ebpf.datapath import EbpfDatapath
    from sbnet.flows.ofctl import parse_file
    if not 0 < n < MAX_FLOWS:
        raise ValueError(f"flows must be 1..{MAX_FLOWS - 1}")
    steps = [np.frombuffer(b"".join(tcp_frame(i, k) for i in range(n)), np.uint8).reshape(n, 54)
             for k in range(3)]
    with Topology() as topo:
        ns = topo.add_namespace("setups")
        _veths(ns)
        with EbpfDatapath(netns=ns, capacity=max(65536, 2 * n), maintain_every=3600) as dp:
            dp.attach(1, "tap1")
            dp.attach(2, "tap2")
            dp.bundle(add=parse_file(CONNECTIONS).flows)
            with in_netns(ns):
                client = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
                server = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            with client, server:
                client.bind(("src0", 0))
                server.bind(("dst0", 0))
                socks = (client, server, client)
                dp.start()
                held = dp.connections_in_kernel
                # One handshake beforehand: the megaflows every handshake's packets take.
                for k in range(3):
                    socks[k].send(tcp_frame(WARM, k))
                    time.sleep(0.2)
                _wait(lambda: held() > 0)
                before, st0 = held(), dp.kernel_stats()
                t0 = time.perf_counter()
                unsent = 0
                for k in range(3):
                    # Each step once the kernel has taken the one before (two passes a
                    # packet: ct, then the stateful group).
                    unsent += send_all(socks[k], steps[k])
                    _wait(lambda: dp.kernel_stats()["hit"] - st0["hit"] >= 2 * n * (k + 1))
                while held() - before < n and time.perf_counter() - t0 < timeout:
                    time.sleep(0.002)
                seconds = time.perf_counter() - t0
                in_kernel = held() - before
                st = dp.kernel_stats()
    up = st["upcall"] - st0["upcall"]
    return SetupRun("tcp", n, seconds, in_kernel, -1, 3 * n - up, st["upcall"], st["upcall_lost"],
                    unsent)


def _veths(ns: str) -> None:
    """The sender's veth pair (src0 - tap1) and the receiver's (tap2 - dst0) in `ns`."""
    from sbnet.agent.netns import sh
    sh("ip", "-n", ns, "link", "add", "src0", "type", "veth", "peer", "name", "tap1")
    sh("ip", "-n", ns, "link", "add", "tap2", "type", "veth", "peer", "name", "dst0")
    for dev in ("src0", "tap1", "tap2", "dst0"):
        sh("ip", "-n", ns, "link", "set", dev, "arp", "off", "up")


def _wait(done, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.01)
