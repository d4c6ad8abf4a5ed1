"""The pure domain: IPAM, segments and security-group rule checks, without HTTP or a database."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sbnet.model import ipam, secgroups, segments
from sbnet.model.errors import BadRequest, Conflict, ServiceUnavailable


def test_default_pools_and_gateway() -> None:
    assert ipam.default_gateway("10.0.0.0/24") == "10.0.0.1"
    assert ipam.default_pools("10.0.0.0/24", "10.0.0.1") == [{"start": "10.0.0.2", "end": "10.0.0.254"}]
    assert ipam.default_pools("10.0.0.0/24", "10.0.0.100") == [
        {"start": "10.0.0.1", "end": "10.0.0.99"}, {"start": "10.0.0.101", "end": "10.0.0.254"}]
    assert ipam.default_pools("fd00::/64", None) == [{"start": "fd00::1", "end": "fd00::ffff:ffff:ffff:ffff"}]


def test_pool_validation_errors() -> None:
    with pytest.raises(BadRequest) as e:
        ipam.validate_pools("10.0.0.0/24", [{"start": "10.0.0.9", "end": "10.0.0.2"}], None)
    assert e.value.type_name == "InvalidAllocationPool"
    with pytest.raises(Conflict) as c:
        ipam.validate_pools("10.0.0.0/24", [{"start": "10.0.0.2", "end": "10.0.0.9"},
                                            {"start": "10.0.0.9", "end": "10.0.0.20"}], None)
    assert c.value.type_name == "OverlappingAllocationPools"
    with pytest.raises(Conflict) as c:
        ipam.validate_pools("10.0.0.0/24", [{"start": "10.0.0.1", "end": "10.0.0.9"}], "10.0.0.1")
    assert c.value.type_name == "GatewayConflictWithAllocationPools"


@settings(max_examples=50, deadline=None)
@given(used=st.sets(st.integers(2, 40)), seed=st.integers(0, 1000))
def test_pick_ip_finds_a_free_address_iff_one_exists(used: set[int], seed: int) -> None:
    pools = [{"start": "10.0.0.2", "end": "10.0.0.20"}, {"start": "10.0.0.30", "end": "10.0.0.40"}]
    free_ints = set(range(2, 21)) | set(range(30, 41))
    used_ips = {f"10.0.0.{n}" for n in used}
    got = ipam.pick_ip(pools, used_ips.__contains__, lambda: used_ips, random.Random(seed))
    if free_ints <= used:
        assert got is None
    else:
        assert got is not None and got not in used_ips and int(got.split(".")[-1]) in free_ints


def test_eui64_and_overlap() -> None:
    assert ipam.eui64("2001:db8::/64", "fa:16:3e:12:34:56") == "2001:db8::f816:3eff:fe12:3456"
    assert ipam.overlapping("10.0.0.0/25", ["10.0.0.0/24"]) == "10.0.0.0/24"
    assert ipam.overlapping("10.0.1.0/24", ["10.0.0.0/24", "fd00::/64"]) is None


def test_segments() -> None:
    cfg = segments.SegmentConfig(vlan_ranges={"physnet1": [(100, 101)]})
    assert segments.check_provider(cfg, None, None, None) == ("vxlan", None, None)
    assert segments.check_provider(cfg, "vlan", None, None) == ("vlan", "physnet1", None)
    assert segments.allocate(cfg, "vlan", "physnet1", {100}) == 101
    with pytest.raises(ServiceUnavailable):
        segments.allocate(cfg, "vlan", "physnet1", {100, 101})
    for bad in (("flat", None, None), ("flat", "physnet1", 5), ("vlan", "physnet1", 4095),
                ("vxlan", "physnet1", None), ("gre", None, 2**32)):
        with pytest.raises(BadRequest):
            segments.check_provider(cfg, *bad)
    assert cfg.mtu("vxlan") == 1450 and cfg.mtu("vlan") == 1500


def _rule(**kw: object) -> dict:
    return {"direction": "ingress", "ethertype": "IPv4", **kw}


def test_security_group_rules() -> None:
    assert secgroups.check_rule(_rule(protocol="6", port_range_min=22, port_range_max=22))["protocol"] == "6"
    assert secgroups.protocol_number("TCP") == 6 and secgroups.protocol_number("ipv6-icmp") == 58
    for bad, typ in ((_rule(port_range_min=1, port_range_max=2), "SecurityGroupProtocolRequiredWithPorts"),
                     (_rule(protocol="udp", port_range_min=9, port_range_max=1), "SecurityGroupInvalidPortRange"),
                     (_rule(protocol="icmp", port_range_min=300), "SecurityGroupInvalidIcmpValue"),
                     (_rule(protocol="icmp", port_range_max=3), "SecurityGroupMissingIcmpType"),
                     (_rule(protocol="gre", port_range_min=1, port_range_max=1),
                      "SecurityGroupInvalidProtocolForPortRange"),
                     (_rule(protocol="bogus"), "SecurityGroupRuleInvalidProtocol"),
                     (_rule(remote_ip_prefix="fd00::/8"), "SecurityGroupRuleParameterConflict"),
                     (_rule(remote_ip_prefix="10.0.0.0/8", remote_group_id="x"),
                      "SecurityGroupRemoteGroupAndRemoteIpPrefix")):
        with pytest.raises(BadRequest) as e:
            secgroups.check_rule(bad)
        assert e.value.type_name == typ
    existing = [dict(_rule(protocol="tcp", port_range_min=22, port_range_max=22), id="r1")]
    with pytest.raises(Conflict):
        secgroups.check_duplicate(_rule(protocol="6", port_range_min=22, port_range_max=22), existing)
    rules = secgroups.default_rules("g", is_default=True)
    assert sorted((r["direction"], r["ethertype"], r["remote_group_id"]) for r in rules) == [
        ("egress", "IPv4", None), ("egress", "IPv6", None), ("ingress", "IPv4", "g"),
        ("ingress", "IPv6", "g")]


def test_segment_config_from_ml2_strings() -> None:
    cfg = segments.SegmentConfig.parse("vlan", ["phys-a"], ["phys-a:10:11", "phys-b"], ["vxlan:5:6"])
    assert cfg.vlan_ranges == {"phys-a": [(10, 11)], "phys-b": []}
    assert cfg.tunnel_ranges["vxlan"] == [(5, 6)] and cfg.tunnel_ranges["gre"] == []
    assert segments.check_provider(cfg, None, None, None) == ("vlan", None, None)
    for bad in (dict(vlan_ranges=["p:5000:5001"]), dict(tunnel_ranges=["vxlan:9"]),
                dict(tenant_network_type="ib")):
        with pytest.raises(ValueError):
            segments.SegmentConfig.parse(**bad)


def test_tenant_vlan_networks_take_ids_from_the_ranges() -> None:
    from fastapi.testclient import TestClient

    from sbnet.api import create_app

    cfg = segments.SegmentConfig.parse("vlan", vlan_ranges=["p1:7:7", "p2:9:9"])
    with TestClient(create_app("sqlite://", segments=cfg)) as c:
        got = [c.post("/v2.0/networks", json={"network": {}}) for _ in range(3)]
        assert [(r.json()["network"]["provider:physical_network"],
                 r.json()["network"]["provider:segmentation_id"]) for r in got[:2]] == [("p1", 7), ("p2", 9)]
        assert got[2].status_code == 503
        assert got[2].json()["NeutronError"]["type"] == "NoNetworkAvailable"
