"""Neutron behaviours tempest's network API tests found missing, one test each, in-process."""

from __future__ import annotations

import uuid

from apihelpers import Api, project


def _group(api: Api) -> dict:
    return api.create("security-groups", "security_group", name="g")


def _rule(api: Api, group: dict, status: int = 201, **attrs: object) -> dict:
    body = {"security_group_rule": {"security_group_id": group["id"], "direction": "ingress",
                                    **attrs}}
    return api.req("POST", "security-group-rules", body, status)


def test_rule_protocol_as_integer_is_kept_as_its_string(api: Api) -> None:
    rule = _rule(api, _group(api), protocol=17)["security_group_rule"]
    assert rule["protocol"] == "17"
    assert api.req("GET", f"security-group-rules/{rule['id']}", status=200)[
        "security_group_rule"]["protocol"] == "17"
    assert _rule(api, _group(api), protocol="UDP")["security_group_rule"]["protocol"] == "udp"
    bad = _rule(api, _group(api), 400, protocol=256)["NeutronError"]
    assert bad["type"] == "SecurityGroupRuleInvalidProtocol"


def test_icmp_on_ipv6_becomes_ipv6_icmp_and_ipv6_icmp_on_ipv4_is_refused(api: Api) -> None:
    group = _group(api)
    for legacy in ("icmp", "icmpv6"):
        rule = _rule(api, _group(api), ethertype="IPv6", protocol=legacy,
                     port_range_min=128, port_range_max=0)["security_group_rule"]
        assert rule["protocol"] == "ipv6-icmp"
    # Canonical names make duplicates visible whatever name the first rule used.
    _rule(api, group, ethertype="IPv6", protocol="icmp")
    assert _rule(api, group, 409, ethertype="IPv6", protocol="ipv6-icmp")[
        "NeutronError"]["type"] == "SecurityGroupRuleExists"
    err = _rule(api, group, 400, ethertype="IPv4", protocol="ipv6-icmp")["NeutronError"]
    assert err["type"] == "SecurityGroupEthertypeConflictWithProtocol"


def test_unknown_remote_group_is_404_even_when_not_a_uuid(api: Api) -> None:
    group = _group(api)
    for remote in ("bad_group_id", str(uuid.uuid4())):
        err = _rule(api, group, 404, protocol="tcp", remote_group_id=remote)["NeutronError"]
        assert err["type"] == "SecurityGroupNotFound"
    other = _group(api)
    assert _rule(api, group, protocol="tcp", remote_group_id=other["id"])[
        "security_group_rule"]["remote_group_id"] == other["id"]


def test_port_range_errors_say_which_port(api: Api) -> None:
    group = _group(api)
    for lo, hi, text in ((-16, 80, "Invalid value for port -16"),
                         (80, 65536, "Invalid value for port 65536"),
                         (80, 79, "port_range_min must be <= port_range_max"),
                         (None, 6, "port_range_min must be <= port_range_max")):
        err = _rule(api, group, 400, protocol="tcp", port_range_min=lo, port_range_max=hi)
        assert text in err["NeutronError"]["message"]
    for lo, hi, text in ((1, 256, "Invalid value for ICMP code"),
                         (300, 1, "Invalid value for ICMP type"),
                         (None, 6, "ICMP type (port-range-min) is missing")):
        err = _rule(api, group, 400, protocol="icmp", port_range_min=lo, port_range_max=hi)
        assert text in err["NeutronError"]["message"]


def _routed(api: Api) -> tuple[dict, dict, dict]:
    net = api.create("networks", "network", name="inside")
    sub = api.create("subnets", "subnet", network_id=net["id"], cidr="10.30.0.0/24")
    router = api.create("routers", "router", name="r")
    return net, sub, router


def test_router_interface_ports_are_active(api: Api) -> None:
    net, sub, router = _routed(api)
    info = api.req("PUT", f"routers/{router['id']}/add_router_interface",
                   {"subnet_id": sub["id"]}, 200)
    assert api.req("GET", f"ports/{info['port_id']}", status=200)["port"]["status"] == "ACTIVE"
    # A port the user made is ACTIVE once it is the router's interface.
    sub2 = api.create("subnets", "subnet", network_id=api.create("networks", "network")["id"],
                      cidr="10.31.0.0/24")
    port = api.create("ports", "port", network_id=sub2["network_id"])
    assert port["status"] == "DOWN"
    api.req("PUT", f"routers/{router['id']}/add_router_interface", {"port_id": port["id"]}, 200)
    assert api.req("GET", f"ports/{port['id']}", status=200)["port"]["status"] == "ACTIVE"


def test_router_routes_null_means_none(api: Api) -> None:
    net, sub, router = _routed(api)
    api.req("PUT", f"routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]}, 200)
    route = {"destination": "10.99.0.0/24", "nexthop": "10.30.0.9"}
    assert api.req("PUT", f"routers/{router['id']}", {"router": {"routes": [route]}},
                   200)["router"]["routes"] == [route]
    assert api.req("PUT", f"routers/{router['id']}", {"router": {"routes": None}},
                   200)["router"]["routes"] == []
    assert api.req("PUT", f"routers/{router['id']}", {"router": {"routes": "x"}}, 400)


def test_auto_address_subnet_deletion_takes_its_addresses_from_ports(api: Api) -> None:
    for mode in ("slaac", "dhcpv6-stateless"):
        net = api.create("networks", "network", name=mode)
        v4 = api.create("subnets", "subnet", network_id=net["id"], cidr="10.40.0.0/24")
        v6 = api.create("subnets", "subnet", network_id=net["id"], cidr="2001:db8:40::/64",
                        ip_version=6, ipv6_ra_mode=mode, ipv6_address_mode=mode)
        port = api.create("ports", "port", network_id=net["id"])
        assert {f["subnet_id"] for f in port["fixed_ips"]} == {v4["id"], v6["id"]}
        api.req("DELETE", f"subnets/{v6['id']}", status=204)
        after = api.req("GET", f"ports/{port['id']}", status=200)["port"]
        assert [f["subnet_id"] for f in after["fixed_ips"]] == [v4["id"]]
        # A stateful subnet still refuses while a port holds one of its addresses.
        assert api.err("DELETE", f"subnets/{v4['id']}", status=409)["type"] == "SubnetInUse"


def test_auto_address_subnet_with_a_router_interface_is_in_use(api: Api) -> None:
    net = api.create("networks", "network")
    v6 = api.create("subnets", "subnet", network_id=net["id"], cidr="2001:db8:41::/64",
                    ip_version=6, ipv6_ra_mode="slaac", ipv6_address_mode="slaac")
    router = api.create("routers", "router")
    api.req("PUT", f"routers/{router['id']}/add_router_interface", {"subnet_id": v6["id"]}, 200)
    assert api.err("DELETE", f"subnets/{v6['id']}", status=409)["type"] == "SubnetInUse"


def test_external_network_goes_with_its_unassociated_floating_ips(api: Api) -> None:
    ext = api.create("networks", "network", **{"router:external": True})
    api.create("subnets", "subnet", network_id=ext["id"], cidr="172.20.0.0/24")
    fip = api.create("floatingips", "floatingip", floating_network_id=ext["id"])
    api.req("DELETE", f"networks/{ext['id']}", status=204)
    assert api.req("GET", f"floatingips/{fip['id']}", status=404)
    assert not [p for p in api.req("GET", "ports", status=200)["ports"]
                if p["network_id"] == ext["id"]]


def test_external_network_with_an_associated_floating_ip_is_in_use(api: Api) -> None:
    ext = api.create("networks", "network", **{"router:external": True})
    api.create("subnets", "subnet", network_id=ext["id"], cidr="172.21.0.0/24")
    net, sub, router = _routed(api)
    api.req("PUT", f"routers/{router['id']}", {"router": {
        "external_gateway_info": {"network_id": ext["id"]}}}, 200)
    api.req("PUT", f"routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]}, 200)
    port = api.create("ports", "port", network_id=net["id"])
    fip = api.create("floatingips", "floatingip", floating_network_id=ext["id"], port_id=port["id"])
    assert api.err("DELETE", f"networks/{ext['id']}", status=409)["type"] == "NetworkInUse"
    assert api.req("GET", f"floatingips/{fip['id']}", status=200)["floatingip"]["port_id"] == port["id"]


# --- subnet pools ---

def test_subnet_pool_allocates_prefixes(api: Api) -> None:
    pool = api.create("subnetpools", "subnetpool", name="p",
                      prefixes=["10.50.0.0/17", "10.50.128.0/17"], default_prefixlen=24)["id"]
    got = api.req("GET", f"subnetpools/{pool}", status=200)["subnetpool"]
    assert got["prefixes"] == ["10.50.0.0/16"] and got["ip_version"] == 4
    assert (got["min_prefixlen"], got["max_prefixlen"]) == (8, 32)
    net = api.create("networks", "network")["id"]
    first = api.create("subnets", "subnet", network_id=net, subnetpool_id=pool)
    second = api.create("subnets", "subnet", network_id=net, subnetpool_id=pool, prefixlen=28)
    assert (first["cidr"], second["cidr"]) == ("10.50.0.0/24", "10.50.1.0/28")
    assert first["subnetpool_id"] == pool and "prefixlen" not in first
    # Allocations never overlap, on any network.
    other = api.create("networks", "network")["id"]
    third = api.create("subnets", "subnet", network_id=other, subnetpool_id=pool)
    assert third["cidr"] == "10.50.2.0/24"
    clash = api.err("POST", "subnets", {"subnet": {"network_id": other, "subnetpool_id": pool,
                                                   "cidr": "10.50.0.0/25"}}, 409)
    assert clash["type"] == "SubnetAllocationError"
    outside = api.err("POST", "subnets", {"subnet": {"network_id": other, "subnetpool_id": pool,
                                                     "cidr": "10.60.0.0/24"}})
    assert "not within" in outside["message"]
    assert api.err("POST", "subnets", {"subnet": {"network_id": other, "subnetpool_id": pool,
                                                  "prefixlen": 33}})
    assert api.err("DELETE", f"subnetpools/{pool}", status=409)["type"] == "SubnetPoolInUse"
    for s in (first, second, third):
        api.req("DELETE", f"subnets/{s['id']}", status=204)
    api.req("DELETE", f"subnetpools/{pool}", status=204)


def test_subnet_pool_runs_out_and_keeps_its_quota(api: Api) -> None:
    pool = api.create("subnetpools", "subnetpool", prefixes=["10.51.0.0/30"], min_prefixlen=30,
                      default_quota=4)["id"]
    net = api.create("networks", "network")["id"]
    assert api.create("subnets", "subnet", network_id=net, subnetpool_id=pool)["cidr"] == "10.51.0.0/30"
    err = api.err("POST", "subnets", {"subnet": {"network_id": net, "subnetpool_id": pool}}, 409)
    assert err["type"] == "SubnetAllocationError"
    api.req("PUT", f"subnetpools/{pool}", {"subnetpool": {"prefixes": ["10.51.0.0/30", "10.52.0.0/30"]}}, 200)
    quota = api.err("POST", "subnets", {"subnet": {"network_id": net, "subnetpool_id": pool}}, 409)
    assert quota["type"] == "SubnetPoolQuotaExceeded"
    shrink = api.err("PUT", f"subnetpools/{pool}", {"subnetpool": {"prefixes": ["10.52.0.0/30"]}})
    assert "only grow" in shrink["message"]


def test_subnet_pool_ipv6_default_pool_and_bounds(api: Api) -> None:
    pool = api.create("subnetpools", "subnetpool", prefixes=["2001:db8:50::/48"], is_default=True)
    assert (pool["ip_version"], pool["default_prefixlen"]) == (6, 64)
    net = api.create("networks", "network")["id"]
    sub = api.create("subnets", "subnet", network_id=net, ip_version=6, use_default_subnetpool=True)
    assert sub["cidr"] == "2001:db8:50::/64" and sub["subnetpool_id"] == pool["id"]
    assert api.err("POST", "subnetpools", {"subnetpool": {
        "prefixes": ["2001:db8:51::/48"], "is_default": True}}, 409)
    assert api.err("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.0.0.0/8", "2001:db8::/32"]}})
    assert api.err("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.0.0.0/8"],
                                                          "min_prefixlen": 24, "max_prefixlen": 16}})
    wrong = api.err("POST", "subnets", {"subnet": {"network_id": net, "subnetpool_id": pool["id"],
                                                   "ip_version": 4}})
    assert "ip_version" in wrong["message"]
    assert api.err("POST", "subnets", {"subnet": {"network_id": net}})["type"] == "BadRequest"


def test_subnet_pools_are_private_unless_shared(api: Api) -> None:
    mine = api.as_(project("owner")).create("subnetpools", "subnetpool", prefixes=["10.53.0.0/16"])
    other = api.as_(project("other"))
    assert other.req("GET", f"subnetpools/{mine['id']}", status=404)
    assert mine["id"] not in [p["id"] for p in other.req("GET", "subnetpools", status=200)["subnetpools"]]
    assert other.req("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.54.0.0/16"],
                                                            "shared": True}}, 403)
    shared = api.create("subnetpools", "subnetpool", prefixes=["10.55.0.0/16"], shared=True,
                        default_prefixlen=24)
    net = other.create("networks", "network")["id"]
    sub = other.create("subnets", "subnet", network_id=net, subnetpool_id=shared["id"])
    assert sub["cidr"] == "10.55.0.0/24"
    tagged = api.req("PUT", f"subnetpools/{shared['id']}/tags/blue", status=201)
    assert tagged == {} and api.req("GET", f"subnetpools/{shared['id']}", status=200)[
        "subnetpool"]["tags"] == ["blue"]


def test_ports_filtered_by_part_of_an_address(api: Api) -> None:
    net = api.create("networks", "network")["id"]
    sub = api.create("subnets", "subnet", network_id=net, cidr="10.56.0.0/24")["id"]
    ports = {ip: api.create("ports", "port", network_id=net, fixed_ips=[
        {"subnet_id": sub, "ip_address": ip}])["id"] for ip in ("10.56.0.9", "10.56.0.19")}

    def listed(*filters: str) -> set[str]:
        return {p["id"] for p in api.req("GET", "ports", status=200,
                                         params=[("fixed_ips", f) for f in filters])["ports"]}
    assert listed("ip_address_substr=10.56.0.1") == {ports["10.56.0.19"]}
    assert listed("ip_address_substr=56.0.") == set(ports.values())
    assert listed("ip_address=10.56.0.9") == {ports["10.56.0.9"]}
    assert listed("ip_address_substr=10.57") == set()
    assert "ip-substring-filtering" in {e["alias"] for e in api.req("GET", "extensions", status=200)["extensions"]}


def test_new_networks_get_the_projects_default_qos_policy(api: Api) -> None:
    member = api.as_(project("qos-default"))
    assert member.create("networks", "network")["qos_policy_id"] is None
    # QoS policies are made by an admin for the project (Neutron's policy: admin only).
    default = api.create("qos/policies", "policy", name="d", is_default=True, project_id="qos-default")
    other = api.create("qos/policies", "policy", name="o", project_id="qos-default", shared=True)
    assert member.create("networks", "network")["qos_policy_id"] == default["id"]
    assert member.create("networks", "network", qos_policy_id=other["id"])["qos_policy_id"] == other["id"]
    # Another project's default is not ours.
    assert api.as_(project("someone-else")).create("networks", "network")["qos_policy_id"] is None


def test_service_providers_name_sbnet_for_each_service_it_serves(api: Api) -> None:
    listed = api.req("GET", "service-providers", status=200)["service_providers"]
    assert {p["service_type"] for p in listed} == {"L3_ROUTER_NAT", "QOS", "TRUNK",
                                                   "FLOW_CLASSIFIER", "SFC"}
    assert all(p["name"] == "sbnet" and p["default"] for p in listed)
    only = api.req("GET", "service-providers?service_type=QOS", status=200)["service_providers"]
    assert [p["service_type"] for p in only] == ["QOS"]


def test_subnet_pools_follow_neutrons_policy(api: Api) -> None:
    reader = api.as_({"X-Project-Id": "pool-owner", "X-Roles": "reader"})
    member = api.as_(project("pool-owner"))
    pool = member.create("subnetpools", "subnetpool", prefixes=["10.57.0.0/16"])
    assert pool["id"] in {p["id"] for p in reader.req("GET", "subnetpools", status=200)["subnetpools"]}
    assert reader.req("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.58.0.0/16"]}}, 403)
    assert reader.req("PUT", f"subnetpools/{pool['id']}", {"subnetpool": {"name": "x"}}, 403)
    assert reader.req("DELETE", f"subnetpools/{pool['id']}", status=403)
    assert member.req("PUT", f"subnetpools/{pool['id']}", {"subnetpool": {"is_default": True}}, 403)
    member.req("DELETE", f"subnetpools/{pool['id']}", status=204)
