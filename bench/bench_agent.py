"""Control plane to datapath: 200 ports created through `sbnet serve` converge on two hosts
whose agents follow the API, on Open vSwitch and on the reference switch, in one run.

For each backend: seconds from the first port create until every port is ACTIVE (its host's
agent plugged it and installed its flows), and the OpenFlow flows each host then holds.
VIFs are OVS internal ports (OVS) or veth pairs (reference), plugged as each port is
created, as Nova would.  Needs root and Open vSwitch.

Run: python bench/bench_agent.py [--ports 200] [--backends ovs,reference]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import httpx

from sbnet.agent.agent import ApiSource, HostAgent, vif_name
from sbnet.agent.netns import Topology, sh
from sbnet.api.process import spawn, stop
from sbnet.compiler.topology import TUNNEL_OFPORTS

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}


def run(backend: str, n_ports: int) -> dict:
    db = tempfile.mkdtemp(prefix="sbnet-bench-")
    server, url = spawn(f"sqlite:///{db}/db.sqlite")
    agents = []
    try:
        with Topology() as topo:
            vifs: dict[str, dict[str, int]] = {"h1": {}, "h2": {}}
            hosts = {}
            for name in ("h1", "h2"):
                host = topo.add_host(name, backend)
                for kind, ofport in TUNNEL_OFPORTS.items():
                    topo.add_tunnel(host, kind, ofport, name=f"{kind}0")
                hosts[name] = host
                source = ApiSource(httpx.Client(base_url=url, timeout=60))
                agents.append(HostAgent(name, host.datapath, source, host.underlay_ip,
                                        vifs=lambda n=name: dict(vifs[n])).start_thread(0.2))
            http = httpx.Client(base_url=url, timeout=60, headers=ADMIN)
            net = http.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
            http.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                        "cidr": "10.0.0.0/20"}})
            start = time.monotonic()
            ids = []
            for i in range(n_ports):
                name = ("h1", "h2")[i % 2]
                port = http.post("/v2.0/ports", json={"port": {
                    "network_id": net["id"], "binding:host_id": name}}).json()["port"]
                ids.append(port["id"])
                host, ofport = hosts[name], 2000 + i
                tap = vif_name(port["id"])
                if backend == "ovs":
                    host.datapath.add_port(tap, ofport, type="internal")
                else:
                    sh("ip", "-n", host.netns, "link", "add", tap, "type", "veth",
                       "peer", "name", f"vm{i}")
                    for dev in (tap, f"vm{i}"):
                        sh("ip", "-n", host.netns, "link", "set", dev, "up")
                    host.datapath.attach(ofport, tap)
                vifs[name][port["id"]] = ofport
            created = time.monotonic() - start
            while True:
                ports = http.get("/v2.0/ports", params={"network_id": net["id"]}).json()["ports"]
                if sum(p["status"] == "ACTIVE" for p in ports) == n_ports:
                    break
                if time.monotonic() - start > 600:
                    raise RuntimeError("ports did not converge in 10 minutes")
                time.sleep(0.05)
            converged = time.monotonic() - start
            for a in agents:
                a.stop()
            flows = {name: len(h.datapath.dump_flows()) for name, h in hosts.items()}
            return {"backend": backend, "ports": n_ports, "create_s": created,
                    "converge_s": converged, "flows": flows}
    finally:
        for a in agents:
            a.stop()
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=200)
    ap.add_argument("--backends", default="ovs,reference")
    args = ap.parse_args()
    rows = [run(b, args.ports) for b in args.backends.split(",")]
    print(f"\n{'backend':<10} {'ports':>6} {'API creates (s)':>16} {'all ACTIVE (s)':>15} "
          f"{'flows h1':>9} {'flows h2':>9}")
    for r in rows:
        print(f"{r['backend']:<10} {r['ports']:>6} {r['create_s']:>16.1f} {r['converge_s']:>15.1f} "
              f"{r['flows']['h1']:>9} {r['flows']['h2']:>9}")


if __name__ == "__main__":
    main()
