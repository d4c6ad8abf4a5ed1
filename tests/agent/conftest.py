"""Fixtures for real-host tests: topologies of namespaces with OVS netdev or the reference switch."""

from dataclasses import dataclass

import pytest

from sbnet.agent.netns import BACKENDS, Host, Topology, Vm, overlay_flows, require_netns
from sbnet.flows.ofctl import parse_file

VNI = 5
TUNNEL_OFPORT = 100


@dataclass
class Pair:
    """Two hosts joined by VXLAN over the underlay, one VM on each, hand-written flows."""

    topo: Topology
    h1: Host
    h2: Host
    vm1: Vm
    vm2: Vm


def build_pair(topo: Topology, backend1: str, backend2: str) -> Pair:
    h1 = topo.add_host("h1", backend1)
    h2 = topo.add_host("h2", backend2)
    for h in (h1, h2):
        topo.add_tunnel(h, "vxlan", TUNNEL_OFPORT)
    vm1 = topo.add_vm("vm1", h1, "10.0.0.1/24")
    vm2 = topo.add_vm("vm2", h2, "10.0.0.2/24")
    h1.datapath.bundle(add=parse_file(overlay_flows(vm1, vm2, VNI, TUNNEL_OFPORT)).flows)
    h2.datapath.bundle(add=parse_file(overlay_flows(vm2, vm1, VNI, TUNNEL_OFPORT)).flows)
    return Pair(topo, h1, h2, vm1, vm2)


@pytest.fixture
def topology():
    """An empty Topology, torn down after the test whatever its outcome."""
    require_netns(ovs=True)
    Topology.cleanup_stale()
    with Topology() as topo:
        yield topo


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request):
    """Two hosts of one backend (OVS netdev, or the reference switch on AF_PACKET)."""
    require_netns(ovs=request.param == "ovs")
    Topology.cleanup_stale()
    with Topology() as topo:
        yield build_pair(topo, request.param, request.param)
