"""Compiler at scale: flows per host, full compile time and port-add latency for sbnet, and the same cloud in OVN.

Run: python bench/bench_compiler.py [--ports 1000] [--hosts 10] [--groups 100] [--adds 20] [--no-ovn]
The cloud (sbnet.compiler.scale): 20 vxlan networks, 100 security groups of 10 rules (two
default egress rules, a third of all rules with a remote group), every port in one to three
groups, ports spread over the hosts.  sbnet: embedded hosts (reference switches); a port add
is timed from the snapshot holding it to its host's diff applied (Topology build, compile,
diff, bundle).  OVN: private NB/SB ovsdb-servers, ovn-northd, and one chassis (ovn-controller
on a dummy-datapath OVS) holding its share of the ports, the other chassis registered in the
SB with their ports bound there; the model is what Neutron's OVN driver writes (a logical
switch per network, ports with addresses and port security, a port group per security group
with its ACLs, the neutron_pg_drop default-deny group).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from sbnet.agent.embedded import Cluster, apply_diff
from sbnet.compiler.compile import Compiler
from sbnet.compiler.scale import Cloud, Shape, generate
from sbnet.ovs.dummy import DummyOVS, stop_processes

OVN_SHARE = "/usr/share/ovn"


# --- sbnet ----------------------------------------------------------------------------

@dataclass
class SbnetResult:
    flows: dict[str, int]
    full_compile: float                 # seconds, every host compiled from scratch
    full_apply: float                   # seconds, those pipelines loaded into the switches
    add: list[float] = field(default_factory=list)          # seconds per port add
    add_parts: dict[str, list[float]] = field(default_factory=dict)
    add_flows: list[int] = field(default_factory=list)      # flows changed on the port's host
    other_flows: list[int] = field(default_factory=list)    # flows changed on all other hosts


def run_sbnet(cloud: Cloud, adds: int) -> SbnetResult:
    cluster = Cluster(cloud.hosts)
    cluster.plug_bound(cloud.snapshot)
    topo = cluster.topology(cloud.snapshot)
    compilers = {h: Compiler(h) for h in cloud.hosts}
    t0 = time.perf_counter()
    pipelines = {h: c.compile(topo) for h, c in compilers.items()}
    full_compile = time.perf_counter() - t0
    t0 = time.perf_counter()
    for h, c in compilers.items():
        apply_diff(cluster.hosts[h].switch, c.last_diff)
    full_apply = time.perf_counter() - t0
    res = SbnetResult({h: len(p) for h, p in pipelines.items()}, full_compile, full_apply,
                      add_parts={"topology": [], "compile+diff": [], "bundle": []})
    # Ten hosts' pipelines (about 70k flow objects) live in this one process, where a real
    # agent holds one host's: the collector's full passes over them would be charged to
    # whichever add triggers one.  Freeze what the initial load made, as `sbnet agent`
    # does after its first sync.
    gc.collect()
    gc.freeze()
    for i in range(adds):
        host = cloud.hosts[i % len(cloud.hosts)]
        port = cloud.new_port(host)
        snap = cloud.with_port(port)
        cluster.plug(port["id"], host)              # the VIF exists before the port is wired
        add_port_timed(cluster, compilers[host], snap, res)
        cloud.snapshot = snap
        topo = cluster.topology(snap)
        res.other_flows.append(sum(_changed(c, topo, cluster) for h, c in compilers.items()
                                   if h != host))
    return res


def add_port_timed(cluster: Cluster, compiler: Compiler, snap: dict, res: SbnetResult) -> None:
    """One port add on its own host, timed in its three steps."""
    t0 = time.perf_counter()
    topo = cluster.topology(snap)
    t1 = time.perf_counter()
    compiler.compile(topo)
    d = compiler.last_diff
    t2 = time.perf_counter()
    apply_diff(cluster.hosts[compiler.host].switch, d)
    t3 = time.perf_counter()
    res.add.append(t3 - t0)
    for name, dt in zip(res.add_parts, (t1 - t0, t2 - t1, t3 - t2)):
        res.add_parts[name].append(dt)
    res.add_flows.append(d.size)


def _changed(compiler: Compiler, topo, cluster: Cluster) -> int:
    compiler.compile(topo)
    apply_diff(cluster.hosts[compiler.host].switch, compiler.last_diff)
    return compiler.last_diff.size


# --- OVN ------------------------------------------------------------------------------

class OvnLab:
    """NB and SB ovsdb-servers, ovn-northd, and one chassis (OVS on the dummy datapath with
    ovn-controller), all private to a temp dir and stopped by pid."""

    def __init__(self, chassis: str, encap_ip: str) -> None:
        self.chassis = chassis
        self.encap_ip = encap_ip
        self.dir = tempfile.mkdtemp(prefix="sbnet-ovn-")
        self.procs: list[subprocess.Popen] = []
        self.ovs: DummyOVS | None = None
        self.env = dict(os.environ, OVN_RUNDIR=self.dir, OVN_LOGDIR=self.dir, OVN_DBDIR=self.dir)

    def __enter__(self) -> "OvnLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        d = self.dir
        for db in ("nb", "sb"):
            _run(["ovsdb-tool", "create", f"{d}/{db}.db", f"{OVN_SHARE}/ovn-{db}.ovsschema"])
            self._spawn(["ovsdb-server", f"{d}/{db}.db", f"--remote=punix:{d}/{db}.sock",
                         f"--unixctl={d}/{db}.ctl", f"--pidfile={d}/{db}.pid",
                         f"--log-file={d}/{db}.log", "--no-chdir"], f"{d}/{db}.sock")
        self.nbctl("init")
        self.sbctl("init")
        self._spawn(["ovn-northd", f"--ovnnb-db=unix:{d}/nb.sock", f"--ovnsb-db=unix:{d}/sb.sock",
                     f"--unixctl={d}/northd.ctl", f"--pidfile={d}/northd.pid",
                     f"--log-file={d}/northd.log", "--no-chdir"], f"{d}/northd.ctl")
        self.ovs = DummyOVS(0, bridge="br-int")
        self.ovs.start()
        self.ovs.vsctl("set", "Open_vSwitch", ".", f"external_ids:system-id={self.chassis}",
                       f"external_ids:ovn-remote=unix:{d}/sb.sock",
                       "external_ids:ovn-encap-type=geneve",
                       f"external_ids:ovn-encap-ip={self.encap_ip}",
                       "external_ids:ovn-bridge=br-int")
        # It finds br-int's OpenFlow socket through OVS_RUNDIR; its control socket goes
        # to OVN_RUNDIR (it has no --unixctl).
        self._spawn(["ovn-controller", f"unix:{self.ovs.dir}/db.sock",
                     f"--pidfile={d}/controller.pid", f"--log-file={d}/controller.log",
                     "--no-chdir"], f"{d}/controller.pid", env={**self.ovs.env, **self.env,
                                                                "OVS_RUNDIR": self.ovs.dir})
        deadline = time.monotonic() + 60
        while self.chassis not in self.sbctl("--columns=name", "list", "Chassis"):
            if time.monotonic() > deadline:
                raise RuntimeError("ovn-controller did not register its chassis")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_processes(self.procs)
        if self.ovs is not None:
            self.ovs.stop()
            self.ovs = None
        shutil.rmtree(self.dir, ignore_errors=True)

    def _spawn(self, argv: list[str], ready: str, env: dict | None = None) -> None:
        log = open(f"{self.dir}/{os.path.basename(argv[0])}.out", "ab")
        p = subprocess.Popen(argv, env=env or self.env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{argv[0]} did not start (see {self.dir})")
            time.sleep(0.02)

    def nbctl(self, *args: str) -> str:
        return _run(["ovn-nbctl", f"--db=unix:{self.dir}/nb.sock", "--timeout=600", *args])

    def sbctl(self, *args: str) -> str:
        return _run(["ovn-sbctl", f"--db=unix:{self.dir}/sb.sock", "--timeout=600", *args])

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by each daemon (user + system, from /proc)."""
        out: dict[str, float] = {}
        procs = [(os.path.basename(p.args[0]), p.pid) for p in self.procs]
        procs += [("ovs-vswitchd", pid) for pid in self.ovs.pids[1:]]
        for name, pid in procs:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return out

    def flows(self) -> int:
        return sum(1 for ln in self.ovs.ofctl("dump-flows", options=("--no-stats",)).splitlines()
                   if "actions=" in ln)


def _run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv[:3])} ...: {r.stderr.strip()[:2000]}")
    return r.stdout


def _batched(ctl, commands: list[list[str]], per_call: int = 2000) -> None:
    """Many ovn-nbctl/sbctl commands in few invocations (one transaction each)."""
    for i in range(0, len(commands), per_call):
        argv: list[str] = []
        for cmd in commands[i:i + per_call]:
            argv += (["--"] if argv else []) + cmd
        ctl(*argv)


def _pg(group_id: str | None) -> str:
    """Neutron's port group name for a security group (None: the default-deny group)."""
    return "pg_" + group_id.replace("-", "_") if group_id else "neutron_pg_drop"


def _lsp_commands(p: dict, net_names: dict) -> list[list[str]]:
    mac, ip = p["mac_address"], p["fixed_ips"][0]["ip_address"]
    return [["lsp-add", net_names[p["network_id"]], p["id"]],
            ["lsp-set-addresses", p["id"], f"{mac} {ip}"],
            ["lsp-set-port-security", p["id"], f"{mac} {ip}"],
            ["set", "Logical_Switch_Port", p["id"],
             f"options:requested-chassis={p['binding:host_id']}"]]


def _acl(rule: dict) -> list[str]:
    """One Neutron rule as the OVN driver writes it (neutron acl_from_sg_rule)."""
    ingress = rule["direction"] == "ingress"
    pg = _pg(rule["security_group_id"])
    ip = "ip4" if rule["ethertype"] == "IPv4" else "ip6"
    match = [f"{'outport' if ingress else 'inport'} == @{pg}", ip]
    if rule.get("remote_ip_prefix"):
        match.append(f"{ip}.{'src' if ingress else 'dst'} == {rule['remote_ip_prefix']}")
    elif rule.get("remote_group_id"):
        match.append(f"{ip}.{'src' if ingress else 'dst'} == ${_pg(rule['remote_group_id'])}_{ip}")
    proto = rule.get("protocol")
    if proto in ("tcp", "udp"):
        match.append(proto)
        lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
        if lo is not None and lo == hi:
            match.append(f"{proto}.dst == {lo}")
        elif lo is not None:
            match.append(f"{proto}.dst >= {lo} && {proto}.dst <= {hi}")
    elif proto == "icmp":
        match.append("icmp4")
    return ["--type=port-group", "acl-add", pg, "to-lport" if ingress else "from-lport",
            "1002", " && ".join(match), "allow-related"]


@dataclass
class OvnResult:
    flows: int
    setup: float
    add: list[float] = field(default_factory=list)          # until --wait=hv sync returns
    bound: list[float] = field(default_factory=list)        # until table 0 has the new port
    cpu: dict[str, list[float]] = field(default_factory=dict)  # daemon CPU seconds per add


def run_ovn(cloud: Cloud, adds: int) -> OvnResult:
    snap = cloud.snapshot
    local, remote = cloud.hosts[0], cloud.hosts[1:]
    t_setup = time.perf_counter()
    with OvnLab(local, "192.168.100.1") as lab:
        for i, h in enumerate(remote):
            lab.sbctl("chassis-add", h, "geneve", f"192.168.100.{i + 2}")
        net_names = {n["id"]: f"neutron-{n['id']}" for n in snap["network"]}
        cmds = [["ls-add", name] for name in net_names.values()]
        for p in snap["port"]:
            cmds += _lsp_commands(p, net_names)
        members: dict[str, list[str]] = {g["id"]: [] for g in snap["security_group"]}
        for p in snap["port"]:
            for g in p["security_groups"]:
                members[g].append(p["id"])
        cmds += [["pg-add", _pg(g), *ports] for g, ports in members.items()]
        cmds.append(["pg-add", "neutron_pg_drop", *(p["id"] for p in snap["port"])])
        cmds += [["--type=port-group", "acl-add", "neutron_pg_drop", "from-lport", "1001",
                  "inport == @neutron_pg_drop && ip", "drop"],
                 ["--type=port-group", "acl-add", "neutron_pg_drop", "to-lport", "1001",
                  "outport == @neutron_pg_drop && ip", "drop"]]
        cmds += [_acl(r) for r in snap["security_group_rule"]]
        _batched(lab.nbctl, cmds)
        lab.nbctl("--wait=sb", "sync")
        _batched(lab.sbctl, [["lsp-bind", p["id"], p["binding:host_id"]]
                             for p in snap["port"] if p["binding:host_id"] != local])
        vifs = [["add-port", "br-int", f"vif{i}", "--", "set", "Interface", f"vif{i}", "type=dummy",
                 f"external_ids:iface-id={p['id']}"]
                for i, p in enumerate(q for q in snap["port"] if q["binding:host_id"] == local)]
        _batched(lambda *a: lab.ovs.vsctl(*a), vifs, per_call=500)
        lab.nbctl("--wait=hv", "sync")
        res = OvnResult(_settled_flows(lab), time.perf_counter() - t_setup)
        for i in range(adds):
            port = cloud.new_port(local)
            cpu0 = lab.cpu()
            t0 = time.perf_counter()
            name = f"new{i}"
            lab.ovs.vsctl("add-port", "br-int", name, "--", "set", "Interface", name, "type=dummy",
                          f"external_ids:iface-id={port['id']}")
            # As Neutron's driver: the port, its switch and its groups in one transaction.
            mac, ip = port["mac_address"], port["fixed_ips"][0]["ip_address"]
            cmds = [["--id=@p", "create", "Logical_Switch_Port", f"name={port['id']}",
                     f'addresses="{mac} {ip}"', f'port_security="{mac} {ip}"',
                     f"options:requested-chassis={local}"],
                    ["add", "Logical_Switch", net_names[port["network_id"]], "ports", "@p"]]
            cmds += [["add", "Port_Group", _pg(g), "ports", "@p"]
                     for g in [*port["security_groups"], None]]
            _batched(lab.nbctl, cmds)
            ofport = int(lab.ovs.vsctl("get", "Interface", name, "ofport"))
            _wait_for_port_flows(lab, ofport)
            res.bound.append(time.perf_counter() - t0)
            lab.nbctl("--wait=hv", "sync")
            res.add.append(time.perf_counter() - t0)
            for name, used in lab.cpu().items():
                res.cpu.setdefault(name, []).append(used - cpu0.get(name, 0.0))
    return res


def _settled_flows(lab: OvnLab, quiet: float = 2.0, timeout: float = 300.0) -> int:
    """The flow count once it has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = lab.flows()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return n
        time.sleep(0.2)
    return last


def _wait_for_port_flows(lab: OvnLab, ofport: int, timeout: float = 60.0) -> None:
    """Until table 0 classifies packets from the new port (ovn-controller bound it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if f"in_port={ofport}" in lab.ovs.ofctl("dump-flows", "table=0", options=("--no-stats",)):
            return
        time.sleep(0.05)           # each poll is an ovs-ofctl run: keep it off the CPUs
    raise RuntimeError(f"no flows for the new port (ofport {ofport}) after {timeout}s")


# --- report ---------------------------------------------------------------------------

def _ms(xs: list[float]) -> str:
    if not xs:
        return "-"
    q = statistics.quantiles(xs, n=20) if len(xs) > 1 else [xs[0]] * 19
    return f"{statistics.median(xs) * 1000:.1f} / {q[18] * 1000:.1f}"


def report(shape: Shape, sb: SbnetResult, ovn: OvnResult | None) -> None:
    fl = list(sb.flows.values())
    per = shape.ports // shape.hosts
    print(f"\n{shape.ports} ports on {shape.hosts} hosts ({per} per host), {shape.networks} networks, "
          f"{shape.groups} security groups x {shape.rules_per_group} rules, ports in 1-3 groups\n")
    print("| measure | sbnet | OVN 23.03 |")
    print("|---|---|---|")
    ovn_flows = f"{ovn.flows}" if ovn else "-"
    print(f"| OpenFlow flows per host (min / mean / max) | {min(fl)} / {statistics.mean(fl):.0f} / "
          f"{max(fl)} | {ovn_flows} (one chassis) |")
    print(f"| full compile, all {shape.hosts} hosts | {sb.full_compile:.2f} s "
          f"(+ {sb.full_apply:.2f} s loading the switches) | "
          f"{f'{ovn.setup:.1f} s setup to flows installed' if ovn else '-'} |")
    print(f"| port add, median / p95 (ms) | {_ms(sb.add)} | {_ms(ovn.add) if ovn else '-'} |")
    print("\nsbnet port add, median / p95 (ms) by step: "
          + ", ".join(f"{k} {_ms(v)}" for k, v in sb.add_parts.items()))
    if ovn:
        print(f"OVN port add, median / p95 (ms): new port's flows in table 0 {_ms(ovn.bound)}, "
              f"ovn-nbctl --wait=hv sync returned {_ms(ovn.add)}; daemon CPU per add (median s): "
              + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in sorted(ovn.cpu.items())))
    print(f"flows changed per add: on the port's host median {statistics.median(sb.add_flows):.0f}, "
          f"on all other hosts together median {statistics.median(sb.other_flows):.0f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=1000)
    ap.add_argument("--hosts", type=int, default=10)
    ap.add_argument("--networks", type=int, default=20)
    ap.add_argument("--groups", type=int, default=100)
    ap.add_argument("--rules", type=int, default=10)
    ap.add_argument("--adds", type=int, default=20)
    ap.add_argument("--no-ovn", action="store_true")
    a = ap.parse_args(argv)
    shape = Shape(a.ports, a.hosts, a.networks, a.groups, a.rules)
    print("sbnet ...", file=sys.stderr)
    sb = run_sbnet(generate(shape), a.adds)
    ovn = None
    if not a.no_ovn:
        print("OVN ...", file=sys.stderr)
        ovn = run_ovn(generate(shape), a.adds)
    report(shape, sb, ovn)


if __name__ == "__main__":
    main()
