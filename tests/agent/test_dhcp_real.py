"""Native DHCP as an operator meets it: VMs that boot with a real DHCP client (Debian's
dhclient and its dhclient-script) get their address, gateway, routes, DNS and the network's
MTU from their own host's agent, then carry TCP at full MTU across hosts over VXLAN."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from sbnet.agent.netns import BACKENDS, Topology, require_netns
from sbnet.agent.realcloud import RealCloud, first_ipv4
from tests.agent.dhcpclient import Dhclients, require_dhclient
from tests.agent.test_e2e import tcp_transfer


@pytest.fixture(scope="module", params=BACKENDS)
def cloud1500(request, tmp_path_factory):
    """A RealCloud whose VMs come up with Linux's default MTU (1500), as a cloud image does:
    only DHCP can tell them the network's.  One per backend for the module: its tests make
    networks and VMs of their own."""
    require_netns(ovs=request.param == "ovs")
    require_dhclient()
    Topology.cleanup_stale()
    with Topology(vm_mtu=1500) as topo:
        cloud = RealCloud(topo, request.param)
        cloud.dhcp = Dhclients(topo, tmp_path_factory.mktemp("dhcp"))
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


def _ipv6_on(topo, vm) -> None:
    """IPv6 as a cloud image has it: on, router advertisements accepted, autoconfiguration
    on; the link goes down and up so the kernel solicits a router at once."""
    topo.run(vm, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=0",
             "net.ipv6.conf.eth0.accept_ra=1", "net.ipv6.conf.eth0.autoconf=1",
             "net.ipv6.conf.eth0.router_solicitations=3", "net.ipv6.conf.eth0.dad_transmits=1")
    topo.run(vm, "ip", "link", "set", "eth0", "down")
    topo.run(vm, "ip", "link", "set", "eth0", "up")


def _global6(topo, vm) -> list[str]:
    out = topo.run(vm, "ip", "-j", "-6", "addr", "show", "dev", "eth0", "scope", "global").stdout
    import json
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", ())
            if "local" in a and not a.get("tentative")]


def test_ipv6_slaac_from_router_advertisements_and_dhcpv6_stateful(cloud1500):
    """Linux's own RA handling takes the prefix, the router and the MTU; dhclient -6 gets
    a stateful subnet's address; the VMs then ping each other across hosts."""
    cloud, topo, dhcp = cloud1500, cloud1500.topo, cloud1500.dhcp

    def dhclient6(vm) -> None:
        # dhclient -6 needs the link-local address, past its DAD.
        deadline = time.monotonic() + 20
        while not any(a.scope == "link" and not a.tentative for a in topo.ipv6_addresses(vm)):
            assert time.monotonic() < deadline, topo.ipv6_addresses(vm)
            time.sleep(0.1)
        dhcp.run(vm, v6=True)

    for mode, cidr in (("slaac", "2001:db8:7::/64"), ("dhcpv6-stateful", "2001:db8:8::/64")):
        net = cloud.api.create("networks", project="p1", name=mode)
        sub = cloud.api.create("subnets", project="p1", network_id=net["id"], cidr=cidr,
                               ip_version=6, ipv6_ra_mode=mode, ipv6_address_mode=mode)
        router = cloud.api.create("routers", project="p1")
        cloud.api.action(f"routers/{router['id']}/add_router_interface",
                         {"subnet_id": sub["id"]})
        net["subnet"] = sub
        vms = [cloud.vm(f"{mode[:5]}{i}", "p1", net, h, dhcp=True)
               for i, h in enumerate(("h1", "h2"))]
        cloud.sync()
        for _, vm in vms:
            _ipv6_on(topo, vm)
        if mode == "dhcpv6-stateful":        # both VMs' clients at once, as both boot
            with ThreadPoolExecutor(len(vms)) as pool:
                for done in [pool.submit(dhclient6, vm) for _, vm in vms]:
                    done.result()
        for port, vm in vms:
            want = next(f["ip_address"] for f in port["fixed_ips"])
            deadline = time.monotonic() + 30
            while want not in _global6(topo, vm):
                assert time.monotonic() < deadline, (mode, want, _global6(topo, vm))
                time.sleep(0.3)
            if mode == "slaac":
                routes = topo.run(vm, "ip", "-6", "route", "show", "default").stdout
                assert "via fe80::" in routes, routes
                mtu = topo.run(vm, "sysctl", "-n", "net.ipv6.conf.eth0.mtu").stdout
                assert mtu.strip() == "1450"
        other = next(f["ip_address"] for f in vms[1][0]["fixed_ips"])
        ping = topo.run(vms[0][1], "ping", "-6", "-c", "2", "-W", "2", other, check=False)
        assert ping.returncode == 0, (mode, ping.stdout)
