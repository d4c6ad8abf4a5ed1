"""From the openstack CLI to the wire: a port created with `openstack port create --host`,
plugged into a VM namespace, answers ping within 2 seconds (agents following a served API)."""

from __future__ import annotations

import shlex
import time

import httpx
import pytest

from sbnet.agent.agent import ApiSource, HostAgent
from sbnet.agent.netns import BACKENDS, Topology, require_netns
from sbnet.compiler.topology import TUNNEL_OFPORTS
from tests.api.apihelpers import start_server, stop_server
from tests.api.oscrun import Osc


def openstack(url: str, *args: str) -> dict:
    """The openstack CLI, run in this process as its binary runs it."""
    return Osc(url)(shlex.join([*args, "-f", "json"]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_port_from_the_openstack_cli_answers_ping_within_two_seconds(backend, tmp_path):
    require_netns(ovs=backend == "ovs")
    Topology.cleanup_stale()
    proc, url = start_server(f"sqlite:///{tmp_path}/db.sqlite")
    agents = []
    try:
        with Topology() as topo:
            vifs: dict[str, dict[str, int]] = {"h1": {}, "h2": {}}
            for name in ("h1", "h2"):
                host = topo.add_host(name, backend)
                for kind, ofport in TUNNEL_OFPORTS.items():
                    topo.add_tunnel(host, kind, ofport, name=f"{kind}0")
                source = ApiSource(httpx.Client(base_url=url, timeout=60))
                agents.append(HostAgent(name, host.datapath, source, host.underlay_ip,
                                        vifs=lambda n=name: dict(vifs[n])).start_thread(0.5))
            # The network by plain HTTP (the openstack binary takes seconds to start);
            # the ports, which are the point, by the CLI.
            http = httpx.Client(base_url=url, timeout=60,
                                headers={"X-Project-Id": "demo", "X-Roles": "member"})
            net = http.post("/v2.0/networks", json={"network": {"name": "demo"}}).json()["network"]
            http.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                        "cidr": "10.30.0.0/24"}})
            vms = []
            for name, host in (("a", "h1"), ("b", "h2")):
                port = openstack(url, "port", "create", f"vm-{name}", "--network", "demo",
                                 "--host", host)
                ip = port["fixed_ips"][0]["ip_address"]
                vm = topo.add_vm(name, host, f"{ip}/24", mac=port["mac_address"])
                vifs[host][port["id"]] = vm.ofport      # Nova's plug: the agent finds it
                vms.append((port, vm))
            start = time.monotonic()
            (pa, a), (pb, b) = vms
            while time.monotonic() - start < 10:
                if topo.ping(a, b.address, count=1, wait=0.2).returncode == 0:
                    break
            elapsed = time.monotonic() - start
            print(f"{backend}: ping answered {elapsed:.2f} s after the VMs were plugged")
            assert elapsed < 2.0, [(a.host, a.errors[-3:], a.history[-3:]) for a in agents]
            deadline = time.monotonic() + 5
            admin = {"X-Project-Id": "admin", "X-Roles": "admin"}
            while http.get(f"/v2.0/ports/{pb['id']}",
                           headers=admin).json()["port"]["status"] != "ACTIVE":
                assert time.monotonic() < deadline, "the port never went ACTIVE"
                time.sleep(0.1)
            for agent in agents:
                agent.stop()
    finally:
        for agent in agents:
            agent.stop()
        stop_server(proc)
