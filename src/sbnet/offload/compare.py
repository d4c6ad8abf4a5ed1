"""`sbnet compare`: one workload and the feature tests run under each NIC profile, measured, not typed in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sbnet.offload.cost import Cost, cost
from sbnet.offload.profile import builtin_profiles
from sbnet.offload.workload import (ACK, PSH, SYN, Endpoint, TcpWorkload, WorkloadResult,
                                   pareto_counts, tcp_frames)

PROFILES = ("sriov", "software", "smartnic")
NIC_SHARE = 0.99             # a feature is "NIC" when its packets after warm-up are this much on the NIC


@dataclass
class Cloud:
    """A LocalApi and a two-host Cluster, both hosts with one NIC profile."""

    profile: str
    api: object
    cluster: object
    vnic: str

    @classmethod
    def make(cls, profile: str) -> "Cloud":
        from sbnet.agent.embedded import Cluster
        from sbnet.api.local import LocalApi
        hosts = ["h1", "h2"]
        caps = builtin_profiles()[profile].binding
        vnic = "direct" if caps is not None and caps.direct else "normal"
        return cls(profile, LocalApi(host_profiles={h: profile for h in hosts}),
                   Cluster(hosts, offload=profile), vnic)

    def network(self, kind: str) -> dict:
        attrs = {"provider:network_type": kind}
        if kind in ("vlan", "flat"):
            attrs["provider:physical_network"] = "physnet1"
        net = self.api.create("networks", project="p", **attrs)
        self.api.create("subnets", project="p", network_id=net["id"], cidr="10.0.0.0/24",
                        ip_version=4)
        return net

    def port(self, net: dict, host: str, **kw) -> dict:
        return self.api.create("ports", project="p", network_id=net["id"], **{
            "binding:host_id": host, "binding:vnic_type": self.vnic, **kw})

    def group(self, name: str, stateful: bool = True, ports=(80,)) -> dict:
        g = self.api.create("security-groups", project="p", name=name, stateful=stateful)
        for port in ports:
            self.api.create("security-group-rules", project="p", security_group_id=g["id"],
                            direction="ingress", ethertype="IPv4", protocol="tcp",
                            port_range_min=port, port_range_max=port,
                            remote_ip_prefix="0.0.0.0/0")
        return g

    def sync(self) -> None:
        self.cluster.sync(self.api.snapshot())

    def tick(self, seconds: float = 1.0) -> None:
        """Let time pass (the NIC tier inserts megaflows at its profile's rate)."""
        t = self.cluster.clock() + seconds
        self.cluster.clock = lambda: t

    def tiers(self) -> tuple[int, int]:
        sw = [h.switch.tier_packets for h in self.cluster.hosts.values()]
        return sum(t["nic"] for t in sw), sum(t["software"] for t in sw)


def _refusal(*ports: dict) -> str | None:
    for p in ports:
        if p["binding:vif_type"] == "binding_failed":
            return p["binding:vif_details"].get("reason", "binding failed")
    return None


def endpoints(c: dict, s: dict) -> tuple[Endpoint, Endpoint]:
    ip = lambda p: p["fixed_ips"][0]["ip_address"]      # noqa: E731
    return (Endpoint(c["id"], c["mac_address"], ip(c), s["mac_address"], ip(s)),
            Endpoint(s["id"], s["mac_address"], ip(s), c["mac_address"], ip(c)))


# -- the workload ----------------------------------------------------------------------

@dataclass
class Measured:
    """One profile's run of the workload."""

    profile: str
    refused: str | None = None
    sent: int = 0
    delivered: int = 0
    steady_nic: int = 0
    steady_software: int = 0
    nic: int = 0                      # host-packets (a packet crossing two hosts counts twice)
    software: int = 0
    cpu: float = 0.0                  # process CPU seconds the switches took, all tiers
    upcall_cpu: float = 0.0
    tier_cpu: float = 0.0             # of which the NIC tier's model
    host_cpu: float = 0.0             # of which host cores (see host_cpu_seconds)
    steady_host_cpu: float = 0.0      # of that, in the steady phase (established traffic)
    cost: Cost | None = None
    ct_refused: int = 0
    cloud: Cloud | None = field(default=None, repr=False)      # for reports after the run

    @property
    def steady_share(self) -> float:
        t = self.steady_nic + self.steady_software
        return self.steady_nic / t if t else 0.0

    @property
    def pps_per_cpu(self) -> float:
        return self.sent / self.host_cpu if self.host_cpu else 0.0

    @property
    def cpu_per_packet_us(self) -> float:
        return self.host_cpu / self.sent * 1e6 if self.sent else 0.0


def host_cpu_seconds(cpu: float, upcall_cpu: float, tier_cpu: float, nic: int,
                     software: int) -> float:
    """Host cores' share of the measured CPU: the reference switch also runs the NIC tier's
    packets (it is the model of the NIC), so the host is charged its upcalls (slow path,
    always software) plus the fast-path CPU in proportion to the packets software handled.
    The NIC model's own bookkeeping (tier_cpu: placement counters, its conntrack table,
    the inserter) stands for the NIC and is charged to nobody."""
    total = nic + software
    fast = max(0.0, cpu - upcall_cpu - tier_cpu)
    return upcall_cpu + fast * (software / total if total else 1.0)


OUTSIDE_MAC, OUTSIDE_IP = "02:00:00:00:00:99", "203.0.113.50"


def floating_ip(cloud: Cloud, net: dict, server: dict) -> tuple[Endpoint, Endpoint]:
    """An external flat network on physnet1 with a host of the outside world, a router from
    `net` to it, and a floating IP on `server`: (the outside client, the server answering it)."""
    api = cloud.api
    ext = api.create("networks", project="admin", **{
        "provider:network_type": "flat", "provider:physical_network": "physnet1",
        "router:external": True})
    api.create("subnets", project="admin", network_id=ext["id"], cidr="203.0.113.0/24",
               ip_version=4)
    # The outside host: a port no host binds, so the routers learn its MAC.
    api.create("ports", project="admin", network_id=ext["id"], mac_address=OUTSIDE_MAC,
               fixed_ips=[{"ip_address": OUTSIDE_IP}])
    r = api.create("routers", project="p", name="r",
                   external_gateway_info={"network_id": ext["id"]})
    sub = next(s for s in api.snapshot()["subnet"] if s["network_id"] == net["id"])
    api.action(f"routers/{r['id']}/add_router_interface", {"subnet_id": sub["id"]})
    fip = api.create("floatingips", project="p", floating_network_id=ext["id"],
                     port_id=server["id"])
    ports = api.snapshot()["port"]
    fmac = next(p for p in ports if p["device_id"] == fip["id"])["mac_address"]
    gw = next(p for p in ports if p["device_id"] == r["id"] and p["network_id"] == net["id"])
    return (Endpoint(None, OUTSIDE_MAC, OUTSIDE_IP, fmac, fip["floating_ip_address"],
                     physnet="physnet1"),
            Endpoint(server["id"], server["mac_address"], server["fixed_ips"][0]["ip_address"],
                     gw["mac_address"], OUTSIDE_IP))


def run_workload(profile: str, connections: int = 10_000, seed: int = 1, cap: int = 1000,
                 batch: int = 4096) -> Measured:
    """Two hosts, a VXLAN network, a stateful web group on the server, a floating IP on it;
    `connections` TCP connections to server:80 with Pareto segment counts (seeded), half
    from a VM on the other host, half from the outside world through the floating IP."""
    cloud = Cloud.make(profile)
    m = Measured(profile, cloud=cloud)
    net = cloud.network("vxlan")
    web = cloud.group("web")
    client = cloud.port(net, "h1")
    server = cloud.port(net, "h2", security_groups=[web["id"]])
    m.refused = _refusal(client, server)
    if m.refused:
        return m
    outside, server_out = floating_ip(cloud, net, server)
    cloud.sync()
    cep, sep = endpoints(client, server)
    counts = pareto_counts(connections, seed, cap=cap)
    half = connections // 2
    runs = [TcpWorkload(cloud.cluster, cep, sep, counts[:half], seed=seed, batch=batch).run(),
            TcpWorkload(cloud.cluster, outside, server_out, counts[half:], seed=seed + 1,
                        batch=batch).run()]
    phases = [p for r in runs for p in r.phases.values()]
    tot = WorkloadResult(connections, {str(i): p for i, p in enumerate(phases)}).total()
    steady = [r.phases["steady"] for r in runs]
    m.sent, m.delivered = tot.sent, tot.delivered
    m.steady_nic, m.steady_software = sum(p.nic for p in steady), sum(p.software for p in steady)
    m.nic, m.software, m.cpu, m.upcall_cpu = tot.nic, tot.software, tot.cpu, tot.upcall_cpu
    # Per phase: set-up and teardown packets cost more than steady ones and run elsewhere.
    m.host_cpu = sum(host_cpu_seconds(p.cpu, p.upcall_cpu, p.tier_cpu, p.nic, p.software)
                     for p in phases)
    m.steady_host_cpu = sum(host_cpu_seconds(p.cpu, p.upcall_cpu, p.tier_cpu, p.nic, p.software)
                            for p in steady)
    m.tier_cpu = tot.tier_cpu
    m.cost = cost(builtin_profiles()[profile], m.nic, m.software, m.host_cpu)
    m.ct_refused = sum(h.switch.tier.ct_refused for h in cloud.cluster.hosts.values())
    return m


# -- the feature table -------------------------------------------------------------------

@dataclass
class Cell:
    verdict: str                 # "NIC", "software", "refused", "fails"
    detail: str = ""


def _tier_of(cloud: Cloud, run) -> Cell:
    """Run `run()` twice (the first warms caches and the NIC tier); the second run's packets
    decide the tier. run() returns whether the feature behaved, or (behaved, NIC packets,
    software packets) when only some of its packets are the steady state."""
    if not _ok(run()):
        return Cell("fails", "packets not as expected")
    cloud.tick()
    n0, s0 = cloud.tiers()
    got = run()
    if not _ok(got):
        return Cell("fails", "packets not as expected on the second run")
    n1, s1 = cloud.tiers()
    nic, sw = (n1 - n0, s1 - s0) if isinstance(got, bool) else got[1:]
    share = nic / (nic + sw) if nic + sw else 0.0
    return Cell("NIC" if share >= NIC_SHARE else "software", f"{share:.0%} of packets on the NIC")


def _ok(got) -> bool:
    return got if isinstance(got, bool) else got[0]


def _frames(src: Endpoint, dport: int, n: int = 8, ip: str | None = None, flags=PSH | ACK,
            sport0: int = 40000) -> list[bytes]:
    idx = np.arange(n)
    return tcp_frames(src.mac, src.peer_mac, ip or src.ip, src.peer_ip, sport0 + idx,
                      np.full(n, dport), 1000 + idx, np.full(n, 1), flags, 20)


def feature_overlay(profile: str, kind: str) -> Cell:
    cloud = Cloud.make(profile)
    net = cloud.network(kind)
    c, s = (cloud.port(net, h, port_security_enabled=False) for h in ("h1", "h2"))
    if _refusal(c, s):
        return Cell("refused", _refusal(c, s))
    cloud.sync()
    cep, _ = endpoints(c, s)
    return _tier_of(cloud, lambda: len(cloud.cluster.send(c["id"], _frames(cep, 9000)).to(s["id"])) == 8)


def feature_anti_spoofing(profile: str) -> Cell:
    cloud = Cloud.make(profile)
    net = cloud.network("vlan")
    # Port security on the sender, with a stateless group that lets its traffic out, so
    # only the address checks stop anything (no groups at all would drop everything).
    out = cloud.group("out", stateful=False, ports=())
    c = cloud.port(net, "h1", security_groups=[out["id"]])
    s = cloud.port(net, "h2", port_security_enabled=False)
    if _refusal(c, s):
        return Cell("refused", _refusal(c, s))
    cloud.sync()
    cep, sep = endpoints(c, s)
    # An address of the subnet that neither port has (the API allocates them at random).
    spoof = next(a for a in ("10.0.0.250", "10.0.0.251", "10.0.0.252") if a not in (cep.ip, sep.ip))

    def run() -> bool:
        good = cloud.cluster.send(c["id"], _frames(cep, 9000)).to(s["id"])
        spoofed = cloud.cluster.send(c["id"], _frames(cep, 9000, ip=spoof)).to(s["id"])
        return len(good) == 8 and not spoofed
    return _tier_of(cloud, run)


def feature_stateless_acl(profile: str) -> Cell:
    cloud = Cloud.make(profile)
    net = cloud.network("vlan")
    acl = cloud.group("acl", stateful=False, ports=(22,))
    c = cloud.port(net, "h1", port_security_enabled=False)
    s = cloud.port(net, "h2", security_groups=[acl["id"]])
    if _refusal(c, s):
        return Cell("refused", _refusal(c, s))
    cloud.sync()
    cep, _ = endpoints(c, s)

    def run() -> bool:
        allowed = cloud.cluster.send(c["id"], _frames(cep, 22)).to(s["id"])
        denied = cloud.cluster.send(c["id"], _frames(cep, 23)).to(s["id"])
        return len(allowed) == 8 and not denied
    return _tier_of(cloud, run)


def feature_stateful_firewall(profile: str) -> Cell:
    cloud = Cloud.make(profile)
    net = cloud.network("vlan")
    web = cloud.group("web")
    c = cloud.port(net, "h1")
    s = cloud.port(net, "h2", security_groups=[web["id"]])
    if _refusal(c, s):
        return Cell("refused", _refusal(c, s))
    cloud.sync()
    cep, sep = endpoints(c, s)
    rounds = iter(range(100))

    def run():
        k = next(rounds)
        res = TcpWorkload(cloud.cluster, cep, sep, np.full(20, 10), seed=k,
                          first_port=20000 + 20 * k).run()
        # An unsolicited SYN to a port the group does not open is dropped.
        denied = cloud.cluster.send(c["id"], _frames(cep, 81, n=1, flags=SYN)).to(s["id"])
        tot, steady = res.total(), res.phases["steady"]
        return tot.delivered == tot.sent and not denied, steady.nic, steady.software
    return _tier_of(cloud, run)


SCENARIOS = {"web": "two hosts, VXLAN, a stateful web group, TCP connections to port 80"}


def run_scenario(name: str, profile: str, connections: int = 200, cap: int = 50) -> Measured:
    """A named scenario run under a profile (for `sbnet offload show --scenario`)."""
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return run_workload(profile, connections, cap=cap)


FEATURES = {
    "VLAN overlay": lambda p: feature_overlay(p, "vlan"),
    "VXLAN overlay": lambda p: feature_overlay(p, "vxlan"),
    "GRE overlay": lambda p: feature_overlay(p, "gre"),
    "anti-spoofing": feature_anti_spoofing,
    "stateless ACL": feature_stateless_acl,
    "stateful firewall": feature_stateful_firewall,
}


# The mission's datapath-table columns compare has no packet test for yet.
NOT_RUN = ("MPLS and NSH overlays", "live migration", "per-flow analytics")


@dataclass
class Comparison:
    connections: int
    seed: int
    measured: dict[str, Measured] = field(default_factory=dict)
    features: dict[str, dict[str, Cell]] = field(default_factory=dict)

    def acceptance(self) -> list[tuple[str, bool]]:
        nic, sw = self.measured.get("smartnic"), self.measured.get("software")
        if nic is None or sw is None or nic.refused or sw.refused:
            return []
        cut = 1 - nic.cpu_per_packet_us / sw.cpu_per_packet_us if sw.cpu_per_packet_us else 0.0
        return [(f"smartnic steady-state packets on the NIC >= 99% ({nic.steady_share:.2%})",
                 nic.steady_share >= 0.99),
                (f"smartnic host CPU per packet >= 90% below software ({cut:.1%} below)",
                 cut >= 0.90)]


def compare(connections: int = 10_000, seed: int = 1, cap: int = 1000,
            profiles=PROFILES, features: bool = True, real_connections: int = 1000) -> Comparison:
    """Each profile's run; `ebpf` (REAL) is the kernel tier measured on real namespaces with
    real_connections connections of the same shape, the others the embedded model."""
    out = Comparison(connections, seed)
    for p in profiles:
        if p in REAL:
            out.measured[p] = REAL[p](min(connections, real_connections), seed, min(cap, 100))
        else:
            out.measured[p] = run_workload(p, connections, seed, cap)
    if features:
        for name, test in FEATURES.items():
            out.features[name] = {p: Cell("not run", f"{p}: measured on real stacks by "
                                          "tests/agent, not by compare") if p in REAL else test(p)
                                  for p in profiles}
    return out


def _real_ebpf(connections: int, seed: int, cap: int):
    from sbnet.offload.compare_real import run_ebpf
    return run_ebpf(connections, seed, cap)


# Columns measured on real namespaces (root), not on the embedded NIC model.
REAL = {"ebpf": _real_ebpf}


def kind(profile: str) -> str:
    """How a column is made: measured on real namespaces, or the embedded model."""
    if profile in REAL:
        return "measured: real namespaces, kernel tier"
    return "modelled NIC" if profile != "software" else "embedded reference switch"


# -- output ------------------------------------------------------------------------------

def rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    """The measurement table: one column per profile."""
    head = ["", *[f"{p} ({kind(p)})" for p in cmp.measured]]
    ms = list(cmp.measured.values())

    def row(label, fn):
        return [label, *[("refused" if m.refused else fn(m)) for m in ms]]
    out = [
        row("packets sent / delivered", lambda m: f"{m.sent:,} / {m.delivered:,}"),
        row("throughput (packets/s of host CPU)", lambda m: f"{m.pps_per_cpu:,.0f}"),
        row("host CPU per packet (us)", lambda m: f"{m.cpu_per_packet_us:.2f}"),
        row("host cores per Mpps", lambda m: f"{m.cost.host_cores_per_mpps:.2f}"),
        row("NIC share, steady state", lambda m: f"{m.steady_share:.2%}"),
        row("NIC share, whole run", lambda m: f"{m.cost.nic_share:.2%}"),
        row("latency NIC tier (us, profile)", lambda m: f"{m.cost.nic_latency_us:.1f}"
            if m.cost.nic_packets else "-"),
        row("latency software tier (us)", lambda m: f"{m.cost.software_latency_us:.1f}"),
        row("mean latency (us)", lambda m: f"{m.cost.mean_latency_us:.1f}"),
        row("switch CPU measured / NIC model / charged to host (s)",
            lambda m: f"{m.cpu:.2f} / {m.tier_cpu:.2f} / {m.host_cpu:.2f}"),
        row("connections the NIC conntrack refused", lambda m: f"{m.ct_refused:,}"),
    ]
    if any(p in REAL for p in cmp.measured):
        out.append(row("connections run", lambda m: f"{getattr(m, 'connections', cmp.connections):,}"))
    return head, out


def markdown(cmp: Comparison, command: str) -> str:
    lines = [f"`{command}`", "",
             f"Workload: two hosts, a VXLAN network, a stateful security group (TCP 80) on the "
             f"server, a floating IP on it (distributed router to a flat external network); "
             f"{cmp.connections:,} TCP connections to server:80, half from a VM on the other "
             "host over VXLAN, half from the outside world to the floating IP; data segments "
             f"per connection Pareto-distributed (seed {cmp.seed}), each acknowledged; "
             "handshake and FIN both ways. Ports are vnic_type direct where the profile binds "
             "them (sriov, smartnic), normal otherwise.", ""]
    head, body = rows(cmp)
    lines += _md_table(head, body)
    for p, m in cmp.measured.items():
        if m.refused:
            lines += ["", f"{p}: binding refused: {m.refused}"]
    acc = cmp.acceptance()
    if acc:
        lines += ["", "Acceptance (same run):", ""]
        lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for text, ok in acc]
    if cmp.features:
        profiles = list(next(iter(cmp.features.values())))
        lines += ["", "Features (each cell from that feature's packet test under the profile):", ""]
        body = [[name, *[cells[p].verdict for p in profiles]] for name, cells in cmp.features.items()]
        lines += _md_table(["feature", *profiles], body)
        notes = sorted({c.detail for cells in cmp.features.values() for c in cells.values()
                        if c.verdict in ("refused", "fails")})
        if notes:
            lines += ["", "Refusals and failures:", ""] + [f"- {n}" for n in notes]
        lines += ["", "Not in the table yet (no packet test in compare): " + ", ".join(NOT_RUN) + "."]
    lines += ["", HOW]
    if any(p in REAL for p in cmp.measured):
        lines += ["", HOW_REAL]
    return "\n".join(lines) + "\n"


HOW = ("How the figures are made: CPU is this process's CPU time inside the switches "
       "(time.process_time around each switch's batch: taking the frames in and switching "
       "them; relaying frames between the simulated hosts is the wire, not host work, and "
       "is not counted). The reference switch also runs the NIC tier's "
       "packets, since it is the NIC's model, so the host is charged its upcalls (slow path) "
       "plus the fast-path CPU in proportion to the packets the software tier handled, phase "
       "by phase (set-up, steady, teardown; sbnet.offload.compare.host_cpu_seconds); the NIC "
       "model's own bookkeeping (its counters, conntrack table and inserter) stands for the "
       "NIC and is charged to nobody. Host cores per Mpps and latencies come from "
       "sbnet.offload.cost with the profile's NIC latency. A packet counts on the NIC on a host "
       "when its first datapath pass there ran on the NIC (its connection held in the NIC "
       "conntrack table for ct megaflows).")


HOW_REAL = ("The ebpf column is measured, not modelled: two hosts in network namespaces on the "
            "kernel tier (TC programs, VXLAN through kernel collect_md devices, the reference "
            "switch as slow path in a process per host), a stateful security group on the "
            "server's host, the connections' TCP run by the VMs' own kernels "
            "(sbnet.offload.compare_real). Packets are the VMs' interface counters; a packet "
            "is the kernel's on a host unless it went up (the program's upcall counter); CPU is "
            "the switch processes' time plus the machine's softirq time (machine-wide: on a "
            "busy machine it includes others' work), all of it host cores (eBPF runs on the "
            "host); latency is half the ping RTT VM to VM. The VMs keep TCP segmentation "
            "offload, so their packets are fewer and larger than the model's.")


def _md_table(head: list[str], body: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in body]
    return out
