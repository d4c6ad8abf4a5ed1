"""sbnet's side of the plug-in, without neutron: the southbound endpoints a neutron-server
writes to, the binding answer, and the compare/repair of the full sync."""

from __future__ import annotations

import pytest

from sbnet.southbound.client import Southbound, SouthboundError
from sbnet.southbound.neutron_server import ApiThread
from sbnet.southbound.sync import compare, repair
from sbnet.store import Store

NET = "11111111-1111-4111-8111-111111111111"
PORT = "22222222-2222-4222-8222-222222222222"


@pytest.fixture
def sb():
    store = Store("sqlite://")
    api = ApiThread(store).start()
    yield Southbound(api.url)
    api.stop()


def network(rev: int, **kw) -> dict:
    return {"id": NET, "name": "n", "project_id": "p", "revision_number": rev,
            "provider:network_type": "vxlan", "provider:segmentation_id": 7, **kw}


def port(rev: int, host: str = "h1", status: str = "DOWN", vif: str = "ovs") -> dict:
    return {"id": PORT, "network_id": NET, "project_id": "p", "revision_number": rev,
            "status": status, "binding:host_id": host, "binding:vif_type": vif,
            "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [], "device_owner": "compute:nova"}


def test_a_copy_takes_newer_revisions_and_refuses_older_ones(sb):
    assert sb.put("network", network(1)) == "created"
    assert sb.put("network", network(1)) == "unchanged"
    assert sb.put("network", network(3, name="newer")) == "updated"
    assert sb.put("network", network(2, name="older")) == "stale"
    body = sb.request("GET", f"networks/{NET}")["network"]
    assert body["name"] == "newer" and body["revision_number"] == 3
    assert sb.inventory()["network"] == {NET: {"revision_number": 3}}
    rows, _ = sb.changes(0)
    assert [(r["resource"], r["op"]) for r in rows] == [("network", "create"), ("network", "update")]
    assert sb.delete("network", NET) is True
    assert sb.delete("network", NET) is False


def test_the_agents_own_port_status_until_the_port_moves(sb):
    sb.put("network", network(1))
    # Neutron names the host before it binds: no agent takes the port until it is bound.
    sb.put("port", port(1, vif="unbound"))
    assert sb.request("GET", f"ports/{PORT}")["port"]["binding:host_id"] == ""
    sb.put("port", port(1, vif="ovs"))
    assert sb.request("GET", f"ports/{PORT}")["port"]["binding:host_id"] == "h1"
    sb.request("PUT", f"sbnet/ports/{PORT}/status", {"status": "ACTIVE"})
    sb.put("port", port(2))                      # Neutron still says DOWN: the agent knows
    assert sb.inventory()["port"][PORT] == {"revision_number": 2, "status": "ACTIVE"}
    sb.put("port", port(3, host="h2"))           # moved: the new host's agent reports anew
    assert sb.inventory()["port"][PORT]["status"] == "DOWN"


@pytest.mark.parametrize("path, body, why", [
    ("sbnet/southbound/volume/x", {"resource": {"revision_number": 1}}, "Unknown southbound"),
    (f"sbnet/southbound/network/{NET}", {"resource": {"name": "x"}}, "Invalid revision_number"),
    (f"sbnet/southbound/network/{NET}", {"network": {}}, "must be"),
    (f"sbnet/southbound/network/{NET}", {"resource": {"id": PORT, "revision_number": 1}},
     "does not match"),
    (f"sbnet/southbound/port/{PORT}", {"resource": {"revision_number": 1}}, "needs its network_id"),
])
def test_bad_writes_are_refused_with_a_reason(sb, path, body, why):
    with pytest.raises(SouthboundError) as exc:
        sb.request("PUT", path, body)
    assert exc.value.status == 400 and why in str(exc.value)


def test_only_admins_write_the_copy(sb):
    member = Southbound(sb.url)
    member.headers = {"X-Project-Id": "p", "X-Roles": "member"}
    with pytest.raises(SouthboundError) as exc:
        member.put("network", network(1))
    assert exc.value.status == 403


def test_binding_answers_per_host_datapath_and_refuses_with_reasons(sb):
    seg = {"network_type": "vxlan", "physical_network": None, "segmentation_id": 7}
    net = network(1)
    assert "no sbnet agent" in sb.bind("h9", port(1), net, seg)["refused"]
    sb.request("PUT", "sbnet/hosts/ovs1", {"host": {"tunnel_ip": "192.0.2.1"}})
    sb.request("PUT", "sbnet/hosts/ref1", {"host": {"tunnel_ip": "192.0.2.2",
                                                    "agent_type": "sbnet-reference",
                                                    "physnets": {"physnet1": 900},
                                                    "profile": "sriov"}})
    ovs = sb.bind("ovs1", port(1), net, seg)
    assert ovs["vif_type"] == "ovs" and ovs["vif_details"]["datapath_type"] == "netdev"
    assert sb.bind("ref1", port(1), net, seg)["vif_type"] == "tap"
    vlan = {"network_type": "vlan", "physical_network": "physnet1", "segmentation_id": 100}
    assert "no port on physical network 'physnet1'" in sb.bind("ovs1", port(1), net, vlan)["refused"]
    assert sb.bind("ref1", port(1), net, vlan)["vif_type"] == "tap"
    local = {"network_type": "local", "physical_network": None, "segmentation_id": None}
    assert "does not carry 'local'" in sb.bind("ovs1", port(1), net, local)["refused"]
    # vnic_type direct: the host's NIC profile decides (an SR-IOV NIC carries VLAN only).
    direct = dict(port(1), **{"binding:vnic_type": "direct", "port_security_enabled": False})
    assert sb.bind("ref1", direct, net, vlan)["vif_type"] == "hw_veb"
    assert "sriov" in sb.bind("ref1", direct, net, seg)["refused"]


def test_compare_and_repair_make_the_copy_equal_neutron(sb):
    truth = {"network": {NET: network(5, name="truth")}, "port": {PORT: port(2)}}
    stray = dict(network(1), id="33333333-3333-4333-8333-333333333333")
    sb.put("network", network(7, name="from the future"))      # newer than the truth
    sb.put("network", stray)
    drift = compare(truth, sb.inventory())
    assert drift.missing == [("port", PORT)]
    assert drift.stale == [("network", NET, 5, 7)]
    assert drift.extra == [("network", stray["id"])]
    assert repair(drift, truth, sb) == 3
    assert compare(truth, sb.inventory()).count == 0
    assert sb.request("GET", f"networks/{NET}")["network"]["name"] == "truth"
