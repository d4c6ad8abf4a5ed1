"""Native DHCP as an operator meets it: VMs that boot with a real DHCP client (Debian's
dhclient and its dhclient-script) get their address, gateway, routes, DNS and the network's
MTU from their own host's agent, then carry TCP at full MTU across hosts over VXLAN."""

from __future__ import annotations

import pytest

from sbnet.agent.netns import BACKENDS, Topology, require_netns
from sbnet.agent.realcloud import RealCloud, first_ipv4
from tests.agent.dhcpclient import Dhclients, require_dhclient
from tests.agent.test_e2e import tcp_transfer


@pytest.fixture(params=BACKENDS)
def cloud1500(request, tmp_path):
    """A RealCloud whose VMs come up with Linux's default MTU (1500), as a cloud image does:
    only DHCP can tell them the network's."""
    require_netns(ovs=request.param == "ovs")
    require_dhclient()
    Topology.cleanup_stale()
    with Topology(vm_mtu=1500) as topo:
        cloud = RealCloud(topo, request.param)
        cloud.dhcp = Dhclients(topo, tmp_path)
        try:
            yield cloud
        finally:
            cloud.dhcp.close()


def check_full_mtu(topo, src, dst, address: str) -> None:
    """The largest packet a 1450-byte MTU allows crosses; one byte more is refused by the
    VM's own stack (it knows its MTU), not lost on the way; TCP carries 2 MB."""
    ok = topo.run(src, "ping", "-c", "2", "-W", "2", "-M", "do", "-s", "1422", address,
                  check=False)
    assert ok.returncode == 0, ok.stdout
    big = topo.run(src, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1423", address,
                   check=False)
    assert big.returncode != 0 and "message too long" in (big.stderr + big.stdout).lower()


def test_dhclient_gets_address_gateway_routes_dns_and_mtu_then_tcp_at_full_mtu(cloud1500):
    cloud = cloud1500
    net = cloud.network("p1", "10.9.0.0/24")
    cloud.api.update("subnets", net["subnet"]["id"], dns_nameservers=["10.9.0.53"],
                     host_routes=[{"destination": "172.31.0.0/16", "nexthop": "10.9.0.254"}])
    p1, vm1 = cloud.vm("vm1", "p1", net, "h1", dhcp=True)
    p2, vm2 = cloud.vm("vm2", "p1", net, "h2", dhcp=True)
    cloud.sync()
    for vm in (vm1, vm2):
        cloud.dhcp.run(vm)
    for port, vm in ((p1, vm1), (p2, vm2)):
        got = cloud.dhcp.state(vm)
        assert got["addrs"] == [f"{first_ipv4(port)}/24"]
        assert got["mtu"] == 1450 == net["mtu"]             # VXLAN on a 1500-byte underlay
        assert got["routes"]["default"] == "10.9.0.1"
        assert got["routes"]["172.31.0.0/16"] == "10.9.0.254"
        assert "nameserver 10.9.0.53" in got["resolv"]
    a2 = first_ipv4(p2)
    check_full_mtu(cloud.topo, vm1, vm2, a2)
    assert tcp_transfer(cloud, vm1, vm2, 5201, size=2_000_000, timeout=15, address=a2)
