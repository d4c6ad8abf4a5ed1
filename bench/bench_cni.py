"""sbnet-cni on a bare-metal server behind a SmartNIC: ADD and DEL latency over repeated
container cycles, the plugin's start-up time, and what the cycles leave behind (ports,
interfaces on the server, representors still on the NIC's switch, flows on it naming a
representor or a container's MAC).  The NIC's agent runs `sbnet agent` in the NIC's
namespace (reference switch, or OVS); the plugin is called as a runtime calls it (CNI_*
variables, configuration on stdin), or by a real runtime, podman, running and removing a
container.

Needs root (namespaces).  Run: python bench/bench_cni.py [--cycles 100] [--backend reference|ovs]
[--runtime plugin|podman]
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
from sbnet.agent.podman import Podman
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


def plugin_cycle(fleet: Fleet, server, conf: dict, name: str) -> tuple[float, float, str]:
    """One container through sbnet-cni called as the specification calls it: ADD and DEL
    seconds, the interface's MAC."""
    path = fleet.container(server, name)
    t = time.monotonic()
    rc, out = fleet.cni(server.netns, "ADD", name, path, conf)
    add = time.monotonic() - t
    if rc != 0:
        raise SystemExit(f"ADD {name}: {out}")
    mac = out["interfaces"][0]["mac"]
    t = time.monotonic()
    rc, out = fleet.cni(server.netns, "DEL", name, path, conf)
    delete = time.monotonic() - t
    if rc != 0:
        raise SystemExit(f"DEL {name}: {out}")
    sh("ip", "netns", "del", fleet.topo.ns_name(name))
    fleet.topo.namespaces.remove(fleet.topo.ns_name(name))
    return add, delete, mac


def podman_cycle(pod: Podman, srv: str, api, name: str) -> tuple[float, float, str]:
    """One container run and removed by podman (its CNI backend calling sbnet-cni): `podman
    run --detach` and `podman rm` seconds, the port's MAC."""
    t = time.monotonic()
    cid = pod.podman(srv, "run", "--detach", "--name", name, "--network", "pods",
                     *pod.image, "sleep", "600").stdout.strip()
    add = time.monotonic() - t
    [mac] = [p["mac_address"] for p in api.request("GET", "ports")["ports"]
             if p["device_id"] == cid]
    t = time.monotonic()
    pod.podman(srv, "rm", "--force", "--time", "0", cid)
    return add, time.monotonic() - t, mac


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--backend", default="reference", choices=("reference", "ovs"))
    ap.add_argument("--runtime", default="plugin", choices=("plugin", "podman"),
                    help="plugin: sbnet-cni called per the specification; podman: podman "
                         "run/rm with its CNI backend")
    args = ap.parse_args()
    Topology.cleanup_stale()
    start = startup([sys.executable, "-m", "sbnet.cni.plugin"])
    bare = startup([sys.executable, "-c", "pass"])
    api = LocalApi()
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="sbnet-bench-cni-") as wd:
        fleet = Fleet(topo, api, wd, args.backend)
        pod = None
        try:
            server = fleet.smartnic_server("bm1", "nic1", 4, ["pods"])
            srv = f"/run/netns/{server.netns}"
            net = api.create("networks", project="p1", name="pods")
            api.create("subnets", project="p1", network_id=net["id"], cidr="10.60.0.0/22",
                       ip_version=4)
            fleet.wait_agents()
            conf = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
                    "nic": f"http://{CHANNEL_NIC}:{CHANNEL_PORT}", "network": "pods"}
            if args.runtime == "podman":
                pod = Podman({"pods": conf}, os.path.join(wd, "podman"))
            links = lambda: sorted(json.loads(  # noqa: E731
                sh("ip", "-n", server.netns, "-j", "link").stdout), key=lambda l: l["ifname"])
            before = [l["ifname"] for l in links()]
            adds, dels, macs = [], [], set()
            for i in range(args.cycles):
                add, delete, mac = (podman_cycle(pod, srv, api, f"c{i}") if pod else
                                    plugin_cycle(fleet, server, conf, f"c{i}"))
                adds.append(add)
                dels.append(delete)
                macs.add(mac)
            ports = [p for p in api.request("GET", "ports")["ports"]
                     if p["device_owner"] == "compute:container"]
            after = [l["ifname"] for l in links()]
            left = len(pod.podman(srv, "ps", "--all", "--quiet").stdout.split()) if pod else 0
            reps, flows = fleet.nic_leftovers(server, macs, wait=20)
        finally:
            if pod is not None:
                pod.close(srv)
            fleet.close()
    how = ("podman run/rm (its CNI backend calling sbnet-cni)" if pod else
           "sbnet-cni called per the CNI specification")
    print(f"backend {args.backend}: {args.cycles} ADD/DEL cycles of a container on a "
          f"bare-metal server behind its SmartNIC, {how}")
    what = ("podman run --detach: container made, " if pod else "")
    print(f"ADD  median {statistics.median(adds) * 1000:.0f} ms, p90 {pct(adds, .9) * 1000:.0f} ms "
          f"({what}port made, representor wired, port ACTIVE, VF moved and configured)")
    print(f"DEL  median {statistics.median(dels) * 1000:.0f} ms, p90 {pct(dels, .9) * 1000:.0f} ms"
          + (" (podman rm --force --time 0)" if pod else ""))
    print(f"plugin start-up (VERSION), median of 20: {start * 1000:.0f} ms; the bare "
          f"interpreter (python3 -c pass): {bare * 1000:.0f} ms")
    print(f"left behind: {len(ports)} ports, {len(set(after) ^ set(before))} server "
          f"interfaces, {len(reps)} representors on the NIC's switch, {len(flows)} flows "
          f"naming a representor or a container's MAC"
          + (f", {left} podman containers" if pod else ""))
    print(f"load average during the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
