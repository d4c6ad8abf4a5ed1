"""The ebpf column of `sbnet compare`: the workload's shape run on real namespaces through the kernel eBPF tier (root), measured, beside the modelled NIC profiles."""

from __future__ import annotations

import os
import random
import re
import sys
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

TCP_MSS = 1448
ZONE = 1
# The server's side as a stateful security group: TCP 80 and ICMP in, anything out,
# replies by ct; the client's host forwards without state (as overlay_flows).
SERVER_FLOWS = """\
table=0,priority=100,arp,in_port={vm},arp_spa={ip} actions={out}
table=0,priority=100,arp,{into},arp_tpa={ip} actions=output:{vm}
table=0,priority=100,ip,in_port={vm},dl_dst={remote_mac} actions=ct(zone={z},table=1)
table=0,priority=100,ip,{into},dl_dst={mac} actions=ct(zone={z},table=2)
table=0,priority=0 actions=drop
table=1,priority=10,ct_state=+trk+est actions={out}
table=1,priority=10,ct_state=+trk+new actions=ct(commit,zone={z}),{out}
table=1,priority=0 actions=drop
table=2,priority=10,ct_state=+trk+est actions=output:{vm}
table=2,priority=10,ct_state=+trk+new,tcp,tp_dst=80 actions=ct(commit,zone={z}),output:{vm}
table=2,priority=10,ct_state=+trk+new,icmp actions=ct(commit,zone={z}),output:{vm}
table=2,priority=0 actions=drop
"""
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen(1024)
print("ready", flush=True)
for _ in range(int(sys.argv[1])):
    c, _ = s.accept()
    while c.recv(1 << 16):
        pass
    c.close()
"""
CLIENT = """
import socket, sys
for size in map(int, sys.argv[2].split(",")):
    c = socket.create_connection((sys.argv[1], 80), timeout=10)
    c.sendall(b"x" * size)
    c.shutdown(socket.SHUT_WR)
    c.recv(1)
    c.close()
"""


@dataclass
class RealRun:
    """One run of the real workload, shaped like compare.Measured for its table rows."""

    profile: str = "ebpf"
    refused: str | None = None
    connections: int = 0
    sent: int = 0                  # packets the VMs sent
    delivered: int = 0             # packets the VMs received
    kernel: int = 0                # host-packets the kernel tier forwarded itself (both hosts)
    software: int = 0              # host-packets that went up to the slow path
    steady_kernel: int = 0         # the same, second half of the connections
    steady_software: int = 0
    cpu: float = 0.0               # CPU s of both hosts' switch processes (slow path)
    softirq: float = 0.0           # the machine's softirq CPU s (the kernel tier, the veths)
    rtt_us: float = 0.0
    seconds: float = 0.0
    ct_refused: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def tier_cpu(self) -> float:
        return self.softirq

    @property
    def host_cpu(self) -> float:
        # eBPF runs on the host's own cores: everything is charged to the host.
        return self.cpu + self.softirq

    @property
    def steady_share(self) -> float:
        t = self.steady_kernel + self.steady_software
        return self.steady_kernel / t if t else 0.0

    @property
    def pps_per_cpu(self) -> float:
        return self.sent / self.host_cpu if self.host_cpu else 0.0

    @property
    def cpu_per_packet_us(self) -> float:
        return self.host_cpu / self.sent * 1e6 if self.sent else 0.0

    @property
    def cost(self) -> SimpleNamespace:
        total = self.kernel + self.software
        return SimpleNamespace(
            host_cores_per_mpps=self.cpu_per_packet_us, nic_share=self.kernel / total if total else 0.0,
            nic_packets=self.kernel, nic_latency_us=self.rtt_us / 2,
            software_latency_us=float("nan"), mean_latency_us=self.rtt_us / 2)


def sizes(connections: int, seed: int, cap: int) -> list[int]:
    """Bytes each connection sends: Pareto-distributed segments (shape 1.2), at most cap."""
    r = random.Random(seed)
    return [TCP_MSS * min(cap, max(1, int(r.paretovariate(1.2)))) for _ in range(connections)]


def _vm_packets(topo, vm) -> tuple[int, int]:
    out = topo.run(vm, "ip", "-s", "link", "show", "eth0").stdout
    rx, tx = re.findall(r"(?:RX|TX):[^\n]*\n\s*\d+\s+(\d+)", out)[:2]
    return int(tx), int(rx)


def _cpu(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _softirq() -> float:
    with open("/proc/stat") as f:
        return int(f.readline().split()[7]) / os.sysconf("SC_CLK_TCK")


def run_ebpf(connections: int = 200, seed: int = 1, cap: int = 100) -> RealRun:
    """`connections` TCP connections from a VM on one host to a VM behind a stateful
    security group on another, over VXLAN, both hosts on the kernel tier: packets, the
    kernel's share, CPU (switch processes plus softirq) and ping RTT, all measured."""
    from sbnet.agent.netns import Topology, overlay_pair
    from sbnet.datapath.ebpf.tier import available
    from sbnet.flows.ofctl import parse_file
    why = available()
    if why is not None:
        return RealRun(refused=f"not measured here: {why}")
    run = RealRun(connections=connections)
    with Topology() as topo:
        p = overlay_pair(topo, "ebpf")
        out = (f"set_field:{p.h1.underlay_ip}->tun_dst,set_field:5->tun_id,output:100")
        flows = SERVER_FLOWS.format(vm=p.vm2.ofport, ip=p.vm2.address, mac=p.vm2.mac,
                                    remote_mac=p.vm1.mac, into="in_port=100,tun_id=5",
                                    out=out, z=ZONE)
        old = [s.flow for s in p.h2.datapath.dump_flows()]
        p.h2.datapath.bundle(add=parse_file(flows).flows, delete=old)
        topo.ping(p.vm1, p.vm2.address, count=2, interval=0.1)     # ARP, megaflows
        ping = topo.run(p.vm1, "ping", "-n", "-q", "-c", "20", "-i", "0.01", p.vm2.address,
                        check=False, timeout=60)
        m = re.search(r"= [\d.]+/([\d.]+)/", ping.stdout)
        run.rtt_us = float(m.group(1)) * 1000 if m else float("nan")
        srv = topo.popen(p.vm2, sys.executable, "-S", "-c", SERVER, str(connections))
        assert srv.stdout.readline().strip() == "ready", srv.stderr.read()
        pids = [p.h1.datapath.pid, p.h2.datapath.pid]
        each = sizes(connections, seed, cap)
        half = connections // 2
        marks = []                 # (VM packets sent, received, upcalls) at start, half, end

        def mark() -> None:
            vms = [_vm_packets(topo, v) for v in (p.vm1, p.vm2)]
            ups = sum(h.datapath.kernel_stats()["upcall"] for h in (p.h1, p.h2))
            marks.append((sum(v[0] for v in vms), sum(v[1] for v in vms), ups))
        mark()
        c0, s0, t0 = _cpu(pids), _softirq(), time.monotonic()
        for part in (each[:half], each[half:]):
            if part:
                topo.run(p.vm1, sys.executable, "-S", "-c", CLIENT, p.vm2.address,
                         ",".join(map(str, part)), timeout=600)
            mark()
        srv.wait(timeout=60)
        run.cpu, run.softirq = _cpu(pids) - c0, _softirq() - s0
        run.seconds = time.monotonic() - t0
        (s0_, r0, u0), (s1_, _, u1), (s2_, r2, u2) = marks
        run.sent, run.delivered = s2_ - s0_, r2 - r0
        # Every packet crosses both hosts (VM to VM over the tunnel): two host-packets, each
        # forwarded by the kernel unless it went up.
        run.software = u2 - u0
        run.kernel = 2 * run.sent - run.software
        run.steady_software = u2 - u1
        run.steady_kernel = 2 * (s2_ - s1_) - run.steady_software
    return run

