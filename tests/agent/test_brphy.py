"""`sbnet agent --datapath ovs --underlay-bridge br-phy --underlay-interface ul0`: the agent sets up userspace tunnelling itself on hosts that have only a NIC with the tunnel address, and VMs on two such hosts talk over VXLAN."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from sbnet.agent.netns import UNDERLAY_NET, Topology, require_netns, sh
from sbnet.ovs.backend import OvsDatapath
from tests.agent.test_agent_cli import agent, first_sync, stop
from tests.api.apihelpers import start_server, stop_server

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}
PHY = ("--underlay-bridge", "br-phy", "--underlay-interface", "ul0", "--underlay-prefix",
       str(UNDERLAY_NET))


def test_the_ovs_agent_sets_up_br_phy_itself_and_vms_talk_across_hosts(tmp_path):
    require_netns(ovs=True)
    Topology.cleanup_stale()
    server, url = start_server(f"sqlite:///{tmp_path}/db.sqlite")
    procs = {}
    try:
        with Topology() as topo:
            hosts = [topo.add_host(n, "ovs", underlay_bridge=False) for n in ("h1", "h2")]
            # As an operator's host comes: the tunnel address on the NIC, no OVS bridge.
            plen = UNDERLAY_NET.prefixlen
            for h in hosts:
                sh("ip", "-n", h.netns, "link", "set", "ul0", "arp", "on")
                sh("ip", "-n", h.netns, "addr", "add", f"{h.underlay_ip}/{plen}", "dev", "ul0")
            # Without --underlay-interface: a one-line refusal.
            bad = subprocess.run([sys.executable, "-m", "sbnet", "agent", "--host", "h1",
                                  "--api", url, "--tunnel-ip", hosts[0].underlay_ip,
                                  "--ovs-rundir", hosts[0].ovs.dir, "--underlay-bridge",
                                  "br-phy"], capture_output=True, text=True, timeout=60)
            assert bad.returncode == 2 and "--underlay-interface" in bad.stderr, bad.stderr
            for h in hosts:
                procs[h.name] = agent(url, h, *PHY)
            for h in hosts:
                first_sync(procs[h.name])
                h.datapath = OvsDatapath(h.ovs, "br-int", "netdev", create=False)
                assert h.ovs.vsctl("port-to-br", "ul0").strip() == "br-phy"
                assert h.ovs.vsctl("get", "Bridge", "br-phy", "datapath_type").strip() == \
                    "netdev"
                addrs = sh("ip", "-n", h.netns, "-o", "addr", "show").stdout
                assert f"br-phy    inet {h.underlay_ip}/{plen}" in addrs, addrs
                assert f"ul0    inet {h.underlay_ip}" not in addrs, addrs
            http = httpx.Client(base_url=url, timeout=60, headers=ADMIN)
            net = http.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
            http.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"],
                                                        "ip_version": 4,
                                                        "cidr": "10.43.0.0/24"}})
            vms = []
            for name, h in (("a", hosts[0]), ("b", hosts[1])):
                port = http.post("/v2.0/ports", json={"port": {
                    "network_id": net["id"], "binding:host_id": h.name}}).json()["port"]
                vm = topo.add_vm(name, h, f"{port['fixed_ips'][0]['ip_address']}/24",
                                 mac=port["mac_address"])
                h.ovs.vsctl("set", "Interface", vm.port, f"external_ids:iface-id={port['id']}")
                vms.append(vm)
            a, b = vms
            # No tnl/neigh entries given: OVS resolves the peer's tunnel address by ARP
            # from br-phy.
            deadline = time.monotonic() + 30
            while topo.ping(a, b.address, count=1, wait=0.5).returncode != 0:
                assert time.monotonic() < deadline, stop(procs["h1"]) + stop(procs["h2"])
            # A restart finds br-phy set up and leaves it as it is, under a running ping.
            h1 = hosts[0]
            before = h1.ovs.vsctl("get", "Bridge", "br-phy", "_uuid")
            pinger = topo.popen(a, "ping", "-n", "-q", "-c", "40", "-i", "0.1", b.address)
            time.sleep(0.5)
            stop(procs["h1"])
            procs["h1"] = agent(url, h1, *PHY)
            assert "+0 ~0 -0 flows" in first_sync(procs["h1"])
            out, _ = pinger.communicate(timeout=60)
            assert " 0% packet loss" in out, out
            assert h1.ovs.vsctl("get", "Bridge", "br-phy", "_uuid") == before
    finally:
        for p in procs.values():
            if p.poll() is None:
                stop(p)
        stop_server(server)
