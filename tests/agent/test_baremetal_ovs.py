"""The bare-metal server behind a SmartNIC whose datapath is Open vSwitch (netdev, in the NIC's namespace), and a hypervisor on OVS."""

from __future__ import annotations

import json

import pytest

from sbnet.agent.netns import sh
from sbnet.ovs.backend import OvsDatapath
from tests.agent.test_baremetal import (add, bare_metal, container_ports, delete, pings,
                                        spoof_reaches_vm)

pytestmark = [pytest.mark.root, pytest.mark.ovs]


@pytest.fixture(scope="module")
def bm(tmp_path_factory):
    yield from bare_metal(tmp_path_factory, "ovs")


def test_pods_behind_an_ovs_smartnic(bm):
    srv = bm.server.netns
    links = lambda: sorted(l["ifname"] for l in json.loads(  # noqa: E731
        sh("ip", "-n", srv, "-j", "link").stdout))
    before = links()
    out = add(bm, "c1")
    [port] = container_ports(bm.api, "c1")
    assert port["binding:vnic_type"] == "smart-nic" and port["status"] == "ACTIVE"
    assert pings(bm, "c1", bm.vm_ip) and pings(bm, "vm1", port["fixed_ips"][0]["ip_address"])
    bm.topo.run("c1", "ip", "link", "set", "eth0", "address", "02:66:66:66:66:66")
    assert not spoof_reaches_vm(bm, "c1")
    bm.topo.run("c1", "ip", "link", "set", "eth0", "address", port["mac_address"])
    assert spoof_reaches_vm(bm, "c1")
    # The NIC's bridge holds the representor while it serves the pod, and no flow for it after.
    nic = bm.fleet.hosts["nic1"]
    br = OvsDatapath(nic.ovs, "br-int", "netdev", create=False)
    rep = port["binding:profile"]["local_link_information"][0]["port_id"]
    ofport = br.port_names()[rep]
    uses = lambda: [str(s.flow) for s in br.dump_flows()  # noqa: E731
                    if f"in_port={ofport}," in str(s.flow) + "," or f"output:{ofport}" in str(s.flow)]
    assert uses()
    delete(bm, "c1")
    assert container_ports(bm.api) == [] and links() == before
    import time
    deadline = time.monotonic() + 20
    while uses() or port["mac_address"] in "".join(str(s.flow) for s in br.dump_flows()):
        assert time.monotonic() < deadline, uses()
        time.sleep(0.2)
    assert out["interfaces"][0]["mac"] == port["mac_address"]


def test_direct_mode_plugs_an_ovs_hypervisor(bm):
    """vif_type ovs: the plugin adds the host end to br-int with the port's iface-id."""
    h1 = bm.fleet.hosts["h1"]
    conf = {"cniVersion": "1.0.0", "name": "pods", "type": "sbnet-cni",
            "api": bm.fleet.mgmt.url, "network": "pods", "project_id": "p1", "host": "h1",
            "ovsdb": f"unix:{h1.ovs.dir}/db.sock", "wait_active": 30}
    path = bm.fleet.container(None, "d1")
    rc, out = bm.fleet.cni(h1.netns, "ADD", "d1", path, conf)
    assert rc == 0, out
    tap = out["interfaces"][0]["name"]
    [port] = container_ports(bm.api, "d1")
    assert port["binding:vif_type"] == "ovs"
    iface_id = h1.ovs.vsctl("get", "Interface", tap, "external_ids:iface-id")
    assert iface_id.strip().strip('"') == port["id"]
    assert pings(bm, "d1", bm.vm_ip)
    assert bm.fleet.cni(h1.netns, "DEL", "d1", path, conf) == (0, None)
    assert tap not in h1.ovs.vsctl("list-ifaces", "br-int").split()
    assert container_ports(bm.api, "d1") == []
