"""The openstack CLI against a real neutron-server with sbnet's drivers; sbnet's host agents on
real Linux stacks (each host a namespace with its own OVS userspace datapath, VMs as
namespaces) carry the packets, and the ports go ACTIVE in Neutron."""

from __future__ import annotations

import time
import uuid

import httpx

from sbnet.agent.agent import ApiSource
from sbnet.agent.netns import Topology, require_netns
from sbnet.agent.realcloud import RealCloud
from sbnet.api.local import LocalApi
from tests.agent.test_e2e import tcp_transfer


def ping_soon(topo, src, dst: str, tries: int = 20):
    """ping until it passes (the hosts apply the last flows a moment after ACTIVE)."""
    for _ in range(tries):
        r = topo.ping(src, dst, count=2)
        if r.returncode == 0:
            return r
        time.sleep(0.5)
    return r


def test_openstack_cli_through_neutron_server_to_the_wire(stack):
    require_netns(ovs=True)
    Topology.cleanup_stale()
    n = stack.neutron
    with Topology() as topo:
        cloud = RealCloud(topo, "ovs", api=LocalApi(store=stack.store))
        for agent in cloud.agents.values():
            agent.source = ApiSource(httpx.Client(base_url=stack.sbnet.url))
            agent.start_thread(wait=0.5)
        try:
            ext = n.osc("network", "create", "ext", "--external", "--provider-network-type",
                        "flat", "--provider-physical-network", "physnet1")
            n.osc("subnet", "create", "ext-sub", "--network", ext["id"], "--subnet-range",
                  "203.0.113.0/24", "--no-dhcp")
            # The outside world's router: a port on the external network, so its MAC is known.
            upstream = n.osc("port", "create", "upstream", "--network", ext["id"],
                             "--fixed-ip", "ip-address=203.0.113.50")
            outside = topo.add_external("outside", "h1", "203.0.113.50/24",
                                        mac=upstream["mac_address"])
            h1 = cloud.agents["h1"]
            h1.physnets = {"physnet1": outside.ofport}
            h1.start()                                   # re-register with physnet1
            net = n.osc("network", "create", "n1")
            sub = n.osc("subnet", "create", "s1", "--network", net["id"], "--subnet-range",
                        "10.10.0.0/24")
            sg = n.osc("security", "group", "create", "web")
            n.osc("security", "group", "rule", "create", "--ingress", "--protocol", "icmp",
                  sg["id"])
            n.osc("security", "group", "rule", "create", "--ingress", "--protocol", "tcp",
                  "--dst-port", "8080", sg["id"])
            router = n.osc("router", "create", "r", "--external-gateway", ext["id"])
            n.osc("router", "add", "subnet", router["id"], sub["id"], json=False)
            vm_a, vm_b = str(uuid.uuid4()), str(uuid.uuid4())     # Nova's instances
            pa = n.osc("port", "create", "a", "--network", net["id"], "--security-group",
                       sg["id"], "--host", "h1", "--device-owner", "compute:nova",
                       "--device", vm_a)
            pb = n.osc("port", "create", "b", "--network", net["id"], "--security-group",
                       sg["id"], "--host", "h2", "--device-owner", "compute:nova",
                       "--device", vm_b)
            fip = n.osc("floating", "ip", "create", ext["id"], "--port", pa["id"])
            assert pa["binding_vif_type"] == pb["binding_vif_type"] == "ovs"

            # Nova plugs the VIFs; the agents find them and report them up.
            subnet = n.get("subnets", sub["id"])
            a = cloud.plug("a", n.get("ports", pa["id"]), subnet)
            b = cloud.plug("b", n.get("ports", pb["id"]), subnet)
            for port, instance in ((pa, vm_a), (pb, vm_b)):
                took = n.wait_port_status(port["id"], "ACTIVE", timeout=90)
                print(f"port {port['name']} ACTIVE in Neutron {took:.1f}s after plugging")
                # Neutron's notifier told Nova the VIF is plugged (the flows are in).
                event = stack.nova.plugged(port["id"])
                assert event is not None, stack.nova.events
                assert (event["server_uuid"], event["status"]) == (instance, "completed")

            assert ping_soon(topo, a, b.address).returncode == 0
            assert topo.ping(b, a.address).returncode == 0
            assert tcp_transfer(cloud, a, b, 8080)              # the allowed service
            assert not tcp_transfer(cloud, a, b, 9090, timeout=2)   # the refused one
            assert ping_soon(topo, outside, fip["floating_ip_address"]).returncode == 0
            assert n.get("floatingips", fip["id"])["status"] == "ACTIVE"
        finally:
            for agent in cloud.agents.values():
                agent.stop()
