"""vnic_type direct ports bind as the host's NIC profile allows: refusals name the missing capability."""

from __future__ import annotations

import pytest

from sbnet.api.local import LocalApi
from sbnet.offload import ProfileError, parse_profile

HOSTS = {"sr": "sriov", "sw": "software", "nic": "smartnic"}


@pytest.fixture(scope="module")
def api():
    return LocalApi(host_profiles=HOSTS)


def _net(api, kind, **kw):
    attrs = {"provider:network_type": kind, **kw}
    if kind in ("vlan", "flat"):
        attrs["provider:physical_network"] = "physnet1"
    net = api.create("networks", project="p", **attrs)
    api.create("subnets", project="p", network_id=net["id"], cidr="10.9.0.0/24", ip_version=4)
    return net


def _direct(api, net, host, **kw):
    return api.create("ports", project="p", network_id=net["id"], **{
        "binding:host_id": host, "binding:vnic_type": "direct", **kw})


@pytest.fixture(scope="module")
def vlan(api):
    return _net(api, "vlan")


def test_sriov_binds_a_vlan_port_without_security_groups(api, vlan):
    p = _direct(api, vlan, "sr", port_security_enabled=False)
    assert p["binding:vif_type"] == "hw_veb"
    assert p["binding:vif_details"]["offloaded"] == ["vlan"]
    flat = _net(api, "flat")
    q = _direct(api, flat, "sr", security_groups=[])
    assert q["binding:vif_type"] == "hw_veb"
    assert q["binding:vif_details"]["offloaded"] == ["flat", "port_security"]


def test_sriov_refuses_security_groups(api, vlan):
    p = _direct(api, vlan, "sr")          # the project's default group
    assert p["binding:vif_type"] == "binding_failed"
    assert p["binding:vif_details"] == {
        "reason": "sriov: the embedded switch has no connection tracking (security groups)"}
    # Taking the groups off binds it.
    p = api.update("ports", p["id"], security_groups=[], port_security_enabled=False)
    assert p["binding:vif_type"] == "hw_veb"


def test_sriov_refuses_tunnels(api):
    vx = _net(api, "vxlan")
    p = _direct(api, vx, "sr", port_security_enabled=False)
    assert p["binding:vif_type"] == "binding_failed"
    assert p["binding:vif_details"]["reason"] == \
        "sriov: the embedded switch has no tunnels (VLAN only)"


def test_sriov_refuses_dscp_marking_but_binds_bandwidth_limits(api, vlan):
    dscp = api.create("qos/policies", project="p", name="dscp")
    api.request("POST", f"qos/policies/{dscp['id']}/dscp_marking_rules",
                {"dscp_marking_rule": {"dscp_mark": 26}}, "p")
    p = _direct(api, vlan, "sr", port_security_enabled=False, qos_policy_id=dscp["id"])
    assert p["binding:vif_details"]["reason"] == \
        "sriov: the embedded switch rewrites no headers (QoS DSCP marking)"
    bw = api.create("qos/policies", project="p", name="bw")
    api.request("POST", f"qos/policies/{bw['id']}/bandwidth_limit_rules",
                {"bandwidth_limit_rule": {"max_kbps": 1000}}, "p")
    q = _direct(api, vlan, "sr", port_security_enabled=False, qos_policy_id=bw["id"])
    assert q["binding:vif_type"] == "hw_veb"
    assert "qos_bandwidth" in q["binding:vif_details"]["offloaded"]


def test_sriov_refuses_a_trunk_parent_and_a_port_chain_hop(api, vlan):
    parent = api.create("ports", project="p", network_id=vlan["id"], port_security_enabled=False)
    api.create("trunks", project="p", port_id=parent["id"])
    p = api.update("ports", parent["id"], **{"binding:host_id": "sr", "binding:vnic_type": "direct"})
    assert p["binding:vif_details"]["reason"] == \
        "sriov: the embedded switch gives a VF one VLAN, not a trunk"
    sf = api.create("ports", project="p", network_id=vlan["id"], port_security_enabled=False)
    api.create("sfc/port_pairs", project="p", ingress=sf["id"], egress=sf["id"])
    p = api.update("ports", sf["id"], **{"binding:host_id": "sr", "binding:vnic_type": "direct"})
    assert p["binding:vif_details"]["reason"] == ("sriov: the embedded switch cannot steer "
                                                  "traffic through service functions (port chains)")


def test_software_host_has_no_vfs(api, vlan):
    p = _direct(api, vlan, "sw", port_security_enabled=False)
    assert p["binding:vif_type"] == "binding_failed"
    assert p["binding:vif_details"]["reason"].startswith("software: no VFs")
    # A normal port binds to the host's agent (binding_failed without one: tests/agent/
    # test_bindings.py), whatever the NIC.
    api.request("PUT", "sbnet/hosts/sw", {"host": {"tunnel_ip": "192.0.2.3"}})
    normal = api.create("ports", project="p", network_id=vlan["id"], **{"binding:host_id": "sw"})
    assert normal["binding:vif_type"] == "ovs"


def test_smartnic_binds_everything_and_says_what_stays_in_software(api):
    vx = _net(api, "vxlan")
    p = _direct(api, vx, "nic")
    assert p["binding:vif_type"] == "ovs"
    d = p["binding:vif_details"]
    assert d["switchdev"] is True
    assert d["offloaded"] == ["vxlan", "port_security", "security_groups"]
    assert d["software"] == {}
    sf = _direct(api, vx, "nic", port_security_enabled=False)
    api.create("sfc/port_pairs", project="p", ingress=sf["id"], egress=sf["id"])
    sf = api.update("ports", sf["id"], name="sf")
    assert sf["binding:vif_type"] == "ovs"
    assert sf["binding:vif_details"]["software"] == {
        "port_chain": "TC has no NSH push/pop action (port chains run on host cores)"}


def test_hosts_without_a_profile_bind_as_before(api, vlan):
    p = _direct(api, vlan, "elsewhere")
    assert p["binding:vif_type"] == "hw_veb"


def test_the_loader_checks_the_binding_section():
    base = "name: x\ntier: software\ndescription: d\nsources: [s]\n"
    with pytest.raises(ProfileError, match="binding.features.vxlam: unknown feature"):
        parse_profile(base + "binding: {direct: {vif_type: ovs}, features: {vxlam: nic}}")
    with pytest.raises(ProfileError, match="needs its reason"):
        parse_profile(base + "binding: {direct: {vif_type: ovs}, features: {vxlan: refused}}")
    with pytest.raises(ProfileError, match="binding.features: missing features: flat"):
        parse_profile(base + "binding: {direct: {vif_type: ovs}, features: {vlan: nic}}")


def test_a_registered_hosts_profile_is_honoured(api, vlan):
    api.request("PUT", "sbnet/hosts/agent1", {"host": {"tunnel_ip": "192.0.2.9",
                                                       "profile": "sriov"}})
    p = _direct(api, vlan, "agent1")
    assert p["binding:vif_details"]["reason"] == \
        "sriov: the embedded switch has no connection tracking (security groups)"


def test_the_offload_report_is_admin_only_and_needs_embedded_hosts(api):
    from sbnet.api.local import ApiError
    with pytest.raises(ApiError, match="404"):
        api.request("GET", "sbnet/offload")
    served = LocalApi(offload_report=lambda: {"ports": []})
    assert served.request("GET", "sbnet/offload") == {"offload": {"ports": []}}
    with pytest.raises(ApiError, match="403"):
        served.request("GET", "sbnet/offload", project="p", admin=False)
