"""Fixtures for real-host tests: topologies of namespaces with OVS netdev or the reference switch."""

import pytest

from sbnet.agent.migrationlab import MigrationLab
from sbnet.agent.netns import BACKENDS, Topology, overlay_pair, require_netns
from sbnet.agent.realcloud import RealCloud

TUNNEL_OFPORT = 100


@pytest.fixture
def topology():
    """An empty Topology, torn down after the test whatever its outcome."""
    require_netns(ovs=True)
    Topology.cleanup_stale()
    with Topology() as topo:
        yield topo


@pytest.fixture(scope="module", params=BACKENDS)
def pair(request):
    """Two hosts of one backend (OVS netdev, or the reference switch on AF_PACKET) joined
    by VXLAN, one VM on each."""
    require_netns(ovs=request.param == "ovs")
    Topology.cleanup_stale()
    with Topology() as topo:
        yield overlay_pair(topo, request.param, tunnel_ofport=TUNNEL_OFPORT)


@pytest.fixture(params=BACKENDS)
def cloud(request):
    """A RealCloud (API, host agents, namespaces) on each backend in turn."""
    require_netns(ovs=request.param == "ovs")
    Topology.cleanup_stale()
    with Topology() as topo:
        yield RealCloud(topo, request.param)


@pytest.fixture(params=["reference", "ebpf"])
def migration_lab(request):
    """(topology, MigrationLab) on each sbnet datapath in turn: three hosts, the VM that
    moves, its peer and the outside; closed after the test whatever its outcome."""
    require_netns()
    if request.param == "ebpf":
        from tests.ebpf.conftest import require_bpf
        require_bpf()
    Topology.cleanup_stale()
    with Topology() as topo:
        lab = MigrationLab.build(topo, request.param)
        try:
            yield topo, lab
        finally:
            lab.close()
