"""sbnet-cni on a bare-metal server behind a SmartNIC: ADD and DEL latency over repeated
container cycles, the plugin's start-up time, and what the cycles leave behind (ports,
interfaces on the server, representors still on the NIC's switch, flows on it naming a
representor or a container's MAC).  The NIC's agent runs `sbnet agent` in the NIC's
namespace (reference switch, or OVS), the plugin is called as a runtime calls it (CNI_*
variables, configuration on stdin).

Needs root (namespaces).  Run: python bench/bench_cni.py [--cycles 100] [--backend reference|ovs]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from sbnet.agent.baremetal import CHANNEL_NIC, CHANNEL_PORT, Fleet
from sbnet.agent.netns import Topology, sh
from sbnet.api.local import LocalApi


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


def startup(argv: list[str], n: int = 20) -> float:
    """Median wall time of a process answering VERSION (a process per call, as runtimes run
    the plugin)."""
    times = []
    for _ in range(n):
        t = time.monotonic()
        subprocess.run(argv, input='{"cniVersion":"1.0.0"}',
                       env=dict(os.environ, CNI_COMMAND="VERSION"), capture_output=True,
                       text=True, check=True)
        times.append(time.monotonic() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--backend", default="reference", choices=("reference", "ovs"))
    args = ap.parse_args()
    Topology.cleanup_stale()
    start = startup([sys.executable, "-m", "sbnet.cni.plugin"])
    bare = startup([sys.executable, "-c", "pass"])
    api = LocalApi()
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="sbnet-bench-cni-") as wd:
        fleet = Fleet(topo, api, wd, args.backend)
        try:
            server = fleet.smartnic_server("bm1", "nic1", 4, ["pods"])
            net = api.create("networks", project="p1", name="pods")
            api.create("subnets", project="p1", network_id=net["id"], cidr="10.60.0.0/22",
                       ip_version=4)
            fleet.wait_agents()
            conf = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
                    "nic": f"http://{CHANNEL_NIC}:{CHANNEL_PORT}", "network": "pods"}
            links = lambda: sorted(json.loads(  # noqa: E731
                sh("ip", "-n", server.netns, "-j", "link").stdout), key=lambda l: l["ifname"])
            before = [l["ifname"] for l in links()]
            adds, dels, macs = [], [], set()
            for i in range(args.cycles):
                name = f"c{i}"
                path = fleet.container(server, name)
                t = time.monotonic()
                rc, out = fleet.cni(server.netns, "ADD", name, path, conf)
                adds.append(time.monotonic() - t)
                if rc != 0:
                    raise SystemExit(f"ADD {name}: {out}")
                macs.add(out["interfaces"][0]["mac"])
                t = time.monotonic()
                rc, out = fleet.cni(server.netns, "DEL", name, path, conf)
                dels.append(time.monotonic() - t)
                if rc != 0:
                    raise SystemExit(f"DEL {name}: {out}")
                sh("ip", "netns", "del", topo.ns_name(name))
                topo.namespaces.remove(topo.ns_name(name))
            ports = [p for p in api.request("GET", "ports")["ports"]
                     if p["device_owner"] == "compute:container"]
            after = [l["ifname"] for l in links()]
            # OVS is read beside its agent, which may still be removing what the last
            # DEL left: give it until the deadline.
            deadline = time.monotonic() + 20
            reps, flows = fleet.nic_leftovers(server, macs)
            while (reps or flows) and args.backend == "ovs" and time.monotonic() < deadline:
                time.sleep(0.3)
                reps, flows = fleet.nic_leftovers(server, macs)
        finally:
            fleet.close()
    print(f"backend {args.backend}: {args.cycles} ADD/DEL cycles of a container on a "
          f"bare-metal server behind its SmartNIC")
    print(f"ADD  median {statistics.median(adds) * 1000:.0f} ms, p90 {pct(adds, .9) * 1000:.0f} ms "
          f"(port made, representor wired, port ACTIVE, VF moved and configured)")
    print(f"DEL  median {statistics.median(dels) * 1000:.0f} ms, p90 {pct(dels, .9) * 1000:.0f} ms")
    print(f"plugin start-up (VERSION), median of 20: {start * 1000:.0f} ms; the bare "
          f"interpreter (python3 -c pass): {bare * 1000:.0f} ms")
    print(f"left behind: {len(ports)} ports, {len(set(after) ^ set(before))} server "
          f"interfaces, {len(reps)} representors on the NIC's switch, {len(flows)} flows "
          f"naming a representor or a container's MAC")
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
