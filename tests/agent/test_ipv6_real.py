"""IPv6 on real Linux stacks through sbnet: VMs pass duplicate address detection, resolve
their neighbours and gateways (NS/NA) and ping -6 each other, on one network and through a
router, on Open vSwitch (userspace datapath) and on the reference switch (AF_PACKET)."""

from __future__ import annotations

import pytest

from sbnet.agent.netns import Vm
from sbnet.agent.realcloud import RealCloud

pytestmark = [pytest.mark.root, pytest.mark.ovs]

NET1, NET2 = "2001:db8:1::/64", "2001:db8:2::/64"
DAD_TIMEOUT = 10.0          # one probe, one second's wait, up to a second's random delay


def redo_dad(cloud: RealCloud, vm: Vm) -> None:
    """Take the VM's IPv6 addresses away and give them back, as a VM booting on its port
    once the switches have their flows would: duplicate address detection runs again, now
    with sbnet forwarding (and answering) neighbour discovery."""
    topo = cloud.topo
    for addr in vm.ip6:
        topo.run(vm, "ip", "-6", "addr", "del", addr, "dev", "eth0")
        topo.run(vm, "ip", "-6", "addr", "add", addr, "dev", "eth0")
    # Detection takes a second at least (one probe, then a second of silence): tentative now.
    states = {a.address: a for a in topo.ipv6_addresses(vm)}
    assert all(states[addr].tentative for addr in vm.ip6), states
    if vm.gateway6:
        topo.run(vm, "ip", "-6", "route", "replace", "default", "via", vm.gateway6, "dev", "eth0")


def assert_dad_passed(cloud: RealCloud, *vms: Vm) -> None:
    """Every IPv6 address of each VM (link-local included) leaves the tentative state
    within the time limit, and none failed: nobody answered for it."""
    for vm in vms:
        addrs = cloud.topo.wait_dad(vm, timeout=DAD_TIMEOUT)
        assert {a.address for a in addrs} >= set(vm.ip6), addrs
        assert any(a.scope == "link" for a in addrs), addrs
        assert not [a for a in addrs if a.dadfailed or a.tentative], (vm.name, addrs)


def settle(cloud: RealCloud, *vms: Vm) -> None:
    """Flows in place, then every VM's duplicate address detection run again and passed."""
    cloud.sync()
    for vm in vms:
        redo_dad(cloud, vm)
    assert_dad_passed(cloud, *vms)


def assert_ping(cloud: RealCloud, src: Vm, dst: str) -> None:
    """Every echo request from src to dst answered; else the neighbour tables of both ends
    of the failure say who could not be resolved."""
    res = cloud.topo.ping(src, dst)
    if res.returncode != 0:
        tables = {vm.name: cloud.topo.neighbours6(vm) for vm in cloud.topo.vms.values()}
        pytest.fail(f"ping -6 {src.name} -> {dst}: {res.stdout.strip()} {res.stderr.strip()}\n"
                    f"neighbour tables: {tables}")


def neighbour(cloud: RealCloud, vm: Vm, address: str):
    entries = [n for n in cloud.topo.neighbours6(vm) if n.address == address]
    assert entries, f"{vm.name} has no neighbour entry for {address}: {cloud.topo.neighbours6(vm)}"
    return entries[0]


def router_port_mac(cloud: RealCloud, router: dict, subnet: dict) -> str:
    ports = cloud.api.request("GET", f"ports?device_id={router['id']}")["ports"]
    (mac,) = [p["mac_address"] for p in ports
              if any(f["subnet_id"] == subnet["id"] for f in p["fixed_ips"])]
    return mac


def assert_ipv6_tcp_runs_in_the_kernel(cloud: RealCloud, a: Vm, b: Vm) -> None:
    """On the kernel tier an IPv6 TCP connection through the stateful security groups (and
    a router's hop-limit decrement, when routed) is handed down to both hosts' IPv6
    connection maps once established: its segments pass ct() in the kernel, only a handful
    go up."""
    from tests.agent.test_e2e import tcp_transfer
    hosts = [cloud.topo.hosts[h].datapath for h in ("h1", "h2")]
    before = [h.kernel_stats() for h in hosts]
    assert tcp_transfer(cloud, a, b, 8080, size=4_000_000, address=b.address6)
    for name, h, was in zip(("h1", "h2"), hosts, before):
        now = h.kernel_stats()
        grew = {k: now[k] - was[k] for k in ("ct6", "upcall", "hit")}
        print(f"IPv6 TCP on {name}'s kernel tier: {grew}")
        # (Quiet machine: ~160 segments through ct() in each kernel, ~15 up.)
        assert grew["ct6"] > 50 and grew["ct6"] > 3 * grew["upcall"], (name, grew)


def test_same_network_dual_stack_ping6_both_ways(cloud):
    net = cloud.network("p1", ("10.10.0.0/24", "2001:db8:10::/64"))
    _, a = cloud.vm("a", "p1", net, "h1", ipv6=True)
    _, b = cloud.vm("b", "p1", net, "h2", ipv6=True)
    settle(cloud, a, b)
    assert_ping(cloud, a, b.address6)
    assert_ping(cloud, b, a.address6)
    if cloud.topo.hosts["h1"].backend == "ebpf":
        assert_ipv6_tcp_runs_in_the_kernel(cloud, a, b)
    assert cloud.topo.ping(a, b.address).returncode == 0    # IPv4 beside it still works
    # Each resolved the other by neighbour discovery: the peer's own MAC, not a router.
    for vm, peer in ((a, b), (b, a)):
        n = neighbour(cloud, vm, peer.address6)
        assert (n.lladdr, n.router) == (peer.mac, False), n


def test_routed_ipv6_between_networks_across_hosts(cloud):
    n1, n2 = cloud.network("p1", NET1), cloud.network("p1", NET2)
    router = cloud.api.create("routers", project="p1", name="r")
    for n in (n1, n2):
        cloud.api.action(f"routers/{router['id']}/add_router_interface",
                         {"subnet_id": n["subnet"]["id"]})
    _, a = cloud.vm("a", "p1", n1, "h1", ipv6=True)
    _, b = cloud.vm("b", "p1", n2, "h2", ipv6=True)
    assert a.address is None and b.address is None              # IPv6 only
    assert (a.gateway6, b.gateway6) == ("2001:db8:1::1", "2001:db8:2::1")
    settle(cloud, a, b)
    assert_ping(cloud, a, b.address6)
    assert_ping(cloud, b, a.address6)
    if cloud.topo.hosts["h1"].backend == "ebpf":
        assert_ipv6_tcp_runs_in_the_kernel(cloud, a, b)
    assert_ping(cloud, a, a.gateway6)              # the router answers on its own address
    # Each VM resolved its gateway to the router port's MAC, from an advertisement with
    # the R (router) bit set.
    for vm, subnet in ((a, n1["subnet"]), (b, n2["subnet"])):
        n = neighbour(cloud, vm, vm.gateway6)
        assert n.lladdr == router_port_mac(cloud, router, subnet), n
        assert n.router, f"{vm.name}: {vm.gateway6} is not flagged as a router: {n}"


def test_dad_passes_for_unique_addresses_and_catches_a_duplicate(cloud):
    """Three VMs on one IPv6-only network over two hosts pass duplicate address detection
    run while sbnet forwards; a fourth VM configured with a's address (on its own port,
    on the other host) is told the address is taken and marks it dadfailed."""
    net = cloud.network("p1", "2001:db8:30::/64")
    _, a = cloud.vm("a", "p1", net, "h1", ipv6=True)
    _, b = cloud.vm("b", "p1", net, "h2", ipv6=True)
    _, c = cloud.vm("c", "p1", net, "h1", ipv6=True)
    port = cloud.api.create("ports", project="p1", network_id=net["id"],
                            **{"binding:host_id": "h2"})
    settle(cloud, a, b, c)
    dup = cloud.plug("dup", {**port, "fixed_ips": [{"subnet_id": net["subnet"]["id"],
                                                     "ip_address": a.address6}]}, ipv6=True)
    cloud.sync()
    redo_dad(cloud, dup)
    addrs = {x.address: x for x in cloud.topo.wait_dad(dup, timeout=DAD_TIMEOUT)}
    assert addrs[a.ip6[0]].dadfailed, addrs
    # a keeps its address and its connectivity.
    assert_dad_passed(cloud, a)
    assert_ping(cloud, b, a.address6)
