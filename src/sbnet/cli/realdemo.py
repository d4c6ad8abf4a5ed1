"""`sbnet run --demo --real`: the demo topology on Linux network stacks in namespaces."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def run_real(console: Console, topology: Path, backend: str, hosts: int) -> dict:
    """Build the demo cloud out of namespaces (each host its own OVS or reference switch and
    agent, each VM a namespace with the port's MAC and IP, the upstream router a namespace on
    the physical network), ping between every pair of VMs and from the outside to the
    floating IPs, and print what answered and which rules dropped the rest."""
    from sbnet.agent.netns import Topology, require_netns
    from sbnet.agent.realcloud import RealCloud, first_ipv4
    from sbnet.api.topology import load_file
    from sbnet.compiler.topology import is_vif

    require_netns(ovs=backend == "ovs")
    Topology.cleanup_stale()
    names = tuple(f"host{i + 1}" for i in range(hosts))
    import contextlib
    import tempfile
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="sbnet-demo-") as workdir, \
            contextlib.ExitStack() as stack:
        t0 = time.monotonic()
        cloud = RealCloud(topo, backend, names, physnets=("physnet1",))
        loaded = load_file(cloud.api, topology)
        snap = cloud.api.snapshot()
        subnets = {s["id"]: s for s in snap.get("subnet", ())}
        project = {p["id"]: p["project_id"] for p in snap.get("port", ())}
        vms = {}
        for name, port in loaded.ports.items():
            if port.get("binding:host_id") in cloud.vifs and is_vif(port) and port["fixed_ips"]:
                vms[name] = (port, cloud.plug(name, port, subnets[port["fixed_ips"][0]["subnet_id"]]))
        outside_ns = None
        up = loaded.ports.get("upstream")
        if up is not None:
            sub = subnets[up["fixed_ips"][0]["subnet_id"]]
            plen = sub["cidr"].split("/")[1]
            outside_ns = cloud.outside("outside", "physnet1", f"{first_ipv4(up)}/{plen}",
                                       up["mac_address"])
        cloud.sync()
        console.print(f"{len(names)} hosts ({backend}), {len(vms)} VMs in namespaces, agents "
                      f"synced in {time.monotonic() - t0:.1f}s")
        t1 = time.monotonic()
        pods = _bare_metal(topo, cloud, workdir, stack)
        cloud.sync()                      # the cloud's agents learn of the NIC and its pods
        console.print(f"bare-metal server bm1 behind SmartNIC nic1: {len(pods)} containers "
                      f"plugged by sbnet-cni in {time.monotonic() - t1:.1f}s")
        snap = cloud.api.snapshot()
        project = {p["id"]: p["project_id"] for p in snap.get("port", ())}
        pings = []
        own = {}                  # project -> its VMs' addresses
        for pa, _ in vms.values():
            own.setdefault(project[pa["id"]], set()).add(first_ipv4(pa))
        for a, (pa, va) in vms.items():
            for b, (pb, vb) in vms.items():
                same = project[pa["id"]] == project[pb["id"]]
                # Another project's address that is also one of ours (overlapping ranges)
                # would be our own VM answering: not a cross-project attempt.
                if a != b and (same or first_ipv4(pb) not in own[project[pa["id"]]]):
                    pings.append((a, va, b, first_ipv4(pb),
                                  "same project" if same else "other project"))
        if outside_ns:
            for fip in snap.get("floatingip", ()):
                target = next((n for n, (p, _) in vms.items() if p["id"] == fip["port_id"]), "?")
                pings.append(("outside", "outside", f"{target} (floating IP)",
                              fip["floating_ip_address"], "from the outside"))
            for a, (pa, va) in vms.items():
                pings.append((a, va, "outside", first_ipv4(up), "to the outside"))
        for pa in pods.values():
            own.setdefault(project[pa["id"]], set()).add(first_ipv4(pa))
        for a, pa in pods.items():
            for b, (pb, vb) in [*vms.items(), *((n, (p, n)) for n, p in pods.items())]:
                same = project[pa["id"]] == project[pb["id"]]
                if a != b and (same or first_ipv4(pb) not in own[project[pa["id"]]]):
                    kind = "same project" if same else "other project"
                    pings.append((a, a, b, first_ipv4(pb), kind))
                    if b not in pods:
                        pings.append((b, vb, a, first_ipv4(pa), kind))
        procs = [(p, topo.popen(p[1], "ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2",
                                p[3])) for p in pings]
        results = [(p, proc.wait(timeout=30) == 0) for p, proc in procs]
        t = Table(title=f"ping between the demo's VMs on real stacks ({backend})")
        for col in ("from", "to", "address", "kind", "answered"):
            t.add_column(col)
        for (a, _, b, ip, kind), ok in results:
            t.add_row(a, b, ip, kind, "[green]yes" if ok else "[red]no")
        console.print(t)
        drops = _drops(cloud, snap)
        d = Table(title="packets dropped, by host and rule (flow counters read from the datapath)")
        for col in ("host", "rule", "packets"):
            d.add_column(col)
        for (h, rule), n in sorted(drops.items(), key=lambda x: -x[1]):
            d.add_row(h, rule, str(n))
        console.print(d)
        return {"pings": [{"from": a, "to": b, "address": ip, "kind": k, "answered": ok}
                          for (a, _, b, ip, k), ok in results],
                "pods": {n: first_ipv4(p) for n, p in pods.items()},
                "drops": [{"host": h, "rule": r, "packets": n} for (h, r), n in drops.items()]}


def _bare_metal(topo, cloud, workdir: str, stack, network: str = "alpha-front",
                pods: tuple[str, ...] = ("pod1", "pod2")) -> dict[str, dict]:
    """A bare-metal server (bm1) behind a SmartNIC (nic1, its agent and switch in the NIC's
    namespace, the API over a management network) with containers plugged into `network`
    by sbnet-cni as a runtime calls it; each pod's port.  The fleet is closed by `stack`."""
    from sbnet.agent.baremetal import CHANNEL_NIC, CHANNEL_PORT, Fleet
    fleet = Fleet(topo, cloud.api, workdir)
    stack.callback(fleet.close)
    hosts = [topo.hosts[h] for h in cloud.agents]
    server = fleet.smartnic_server("bm1", "nic1", len(pods), [network],
                                   neighbours={h.underlay_ip: h.underlay_mac for h in hosts})
    nic = fleet.hosts["nic1"]
    for h in hosts:           # the cloud's hosts take tunnel neighbours as given, not by ARP
        topo.add_neighbour(h, nic.tunnel_ip, nic.underlay_mac)
    fleet.wait_agents()
    conf = {"cniVersion": "1.0.0", "name": network, "type": "sbnet-cni",
            "nic": f"http://{CHANNEL_NIC}:{CHANNEL_PORT}", "network": network}
    out = {}
    for name in pods:
        rc, res = fleet.cni(server.netns, "ADD", name, fleet.container(server, name), conf)
        if rc != 0:
            raise RuntimeError(f"sbnet-cni ADD {name}: {res}")
        out[name] = next(p for p in cloud.api.request("GET", "ports")["ports"]
                         if p["device_id"] == name)
    return out


def _drops(cloud, snapshot: dict) -> dict[tuple[str, str], int]:
    """Packets each dropping rule took, per host, named as the embedded demo names them."""
    from sbnet.agent.report import DROP, RuleNames, verdict
    names = RuleNames(snapshot)
    out: dict[tuple[str, str], int] = {}
    for host, agent in cloud.agents.items():
        origins = agent.pipeline.origins if agent.pipeline else {}
        for s in agent.datapath.dump_flows():
            if s.n_packets and verdict(s.flow) == DROP:
                key = (host, names.name(s.flow, origins))
                out[key] = out.get(key, 0) + s.n_packets
    return out
