"""Native DHCP as an operator meets it: VMs that boot with a real DHCP client (Debian's
dhclient and its dhclient-script) get their address, gateway, routes, DNS and the network's
MTU from their own host's agent, then carry TCP at full MTU across hosts over VXLAN."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import pytest

from sbnet.agent.netns import BACKENDS, Topology, require_netns
from sbnet.agent.realcloud import RealCloud, first_ipv4
from tests.agent.test_e2e import tcp_transfer


@pytest.fixture(params=BACKENDS)
def cloud1500(request):
    """A RealCloud whose VMs come up with Linux's default MTU (1500), as a cloud image does:
    only DHCP can tell them the network's."""
    require_netns(ovs=request.param == "ovs")
    if not shutil.which("dhclient"):
        if os.environ.get("CI") == "true":
            pytest.fail("dhclient (Debian isc-dhcp-client) is required in CI")
        pytest.skip("needs dhclient (Debian isc-dhcp-client)")
    Topology.cleanup_stale()
    with Topology(vm_mtu=1500) as topo:
        cloud = RealCloud(topo, request.param)
        clients: list = []
        cloud.dhcp_clients = clients
        try:
            yield cloud
        finally:
            for ns, pidfile, etc in clients:
                try:
                    os.kill(int(open(pidfile).read().strip()), 15)
                except (OSError, ValueError):
                    pass
                shutil.rmtree(etc, ignore_errors=True)


def dhclient(cloud: RealCloud, vm, tmp_path) -> None:
    """Run Debian's dhclient in the VM as a cloud image would (once, 20 s at most); its
    resolv.conf is the VM's own (`ip netns exec` binds /etc/netns/NS over /etc)."""
    etc = f"/etc/netns/{vm.netns}"
    os.makedirs(etc, exist_ok=True)
    open(f"{etc}/resolv.conf", "w").close()
    pidfile, lease = tmp_path / f"{vm.name}.pid", tmp_path / f"{vm.name}.leases"
    cloud.dhcp_clients.append((vm.netns, str(pidfile), etc))
    res = cloud.topo.run(vm, "timeout", "30", "dhclient", "-1", "-v", "-pf", str(pidfile),
                         "-lf", str(lease), "eth0", check=False, timeout=40)
    assert res.returncode == 0, res.stderr[-2000:]


def vm_state(cloud: RealCloud, vm) -> dict:
    run = lambda *a: cloud.topo.run(vm, *a).stdout  # noqa: E731
    link = json.loads(run("ip", "-j", "addr", "show", "eth0"))[0]
    routes = json.loads(run("ip", "-j", "-4", "route", "show"))
    return {"mtu": link["mtu"],
            "addrs": [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]
                      if a["family"] == "inet"],
            "routes": {r["dst"]: r.get("gateway") for r in routes},
            "resolv": open(f"/etc/netns/{vm.netns}/resolv.conf").read()}


def test_dhclient_gets_address_gateway_routes_dns_and_mtu_then_tcp_at_full_mtu(cloud1500,
                                                                             tmp_path):
    cloud = cloud1500
    net = cloud.network("p1", "10.9.0.0/24")
    cloud.api.update("subnets", net["subnet"]["id"], dns_nameservers=["10.9.0.53"],
                     host_routes=[{"destination": "172.31.0.0/16", "nexthop": "10.9.0.254"}])
    p1, vm1 = cloud.vm("vm1", "p1", net, "h1", dhcp=True)
    p2, vm2 = cloud.vm("vm2", "p1", net, "h2", dhcp=True)
    cloud.sync()
    for vm in (vm1, vm2):
        dhclient(cloud, vm, tmp_path)
    for port, vm in ((p1, vm1), (p2, vm2)):
        got = vm_state(cloud, vm)
        assert got["addrs"] == [f"{first_ipv4(port)}/24"]
        assert got["mtu"] == 1450 == net["mtu"]             # VXLAN on a 1500-byte underlay
        assert got["routes"]["default"] == "10.9.0.1"
        assert got["routes"]["172.31.0.0/16"] == "10.9.0.254"
        assert "nameserver 10.9.0.53" in got["resolv"]
    a2 = first_ipv4(p2)
    # The largest packet the network's MTU allows crosses; one byte more is refused by the
    # VM's own stack (it knows its MTU), not lost on the way.
    ok = cloud.topo.run(vm1, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", a2,
                        check=False)
    assert ok.returncode == 0, ok.stdout
    big = cloud.topo.run(vm1, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1423", a2,
                         check=False)
    assert big.returncode != 0 and "message too long" in (big.stderr + big.stdout).lower()
    assert tcp_transfer(cloud, vm1, vm2, 5201, size=2_000_000, timeout=15, address=a2)
    assert ipaddress.ip_address(a2) in ipaddress.ip_network("10.9.0.0/24")
