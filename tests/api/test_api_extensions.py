"""/v2.0/extensions lists exactly what is served: every listed alias has a probe that uses it."""

from __future__ import annotations

from typing import Callable

from apihelpers import Api


def _net(api: Api, **kw: object) -> dict:
    return api.create("networks", "network", **kw)


def _port(api: Api, **attrs) -> dict:
    net = _net(api)
    api.create("subnets", "subnet", network_id=net["id"], cidr="10.77.0.0/24")
    return api.create("ports", "port", network_id=net["id"], **attrs)


def _gateway(api: Api) -> dict:
    ext = _net(api, **{"router:external": True})
    api.create("subnets", "subnet", network_id=ext["id"], cidr="172.27.0.0/24")
    return api.create("routers", "router", external_gateway_info={
        "network_id": ext["id"], "enable_snat": False})


def _listed(api: Api, path: str) -> bool:
    return isinstance(api.req("GET", path, status=200), dict)


def _if_match(api: Api) -> bool:
    net = _net(api)
    api.req("PUT", f"networks/{net['id']}", {"network": {"name": "x"}}, 412,
            headers={"If-Match": "revision_number=99"})
    return True


def _paged(api: Api) -> bool:
    _net(api), _net(api)
    return "networks_links" in api.req("GET", "networks?limit=1", status=200)


def _extraroute_atomic(api: Api) -> bool:
    router = api.create("routers", "router")
    return api.req("PUT", f"routers/{router['id']}/add_extraroutes", {"router": {"routes": []}},
                   200)["router"]["routes"] == []


def _qos_rule(api: Api, kind: str, **attrs: object) -> bool:
    policy = api.create("qos/policies", "policy", name="p")
    return api.create(f"qos/policies/{policy['id']}/{kind}", kind[:-1], **attrs)["direction"] == "ingress"


def _extra_dhcp_opts(api: Api) -> bool:
    net = _net(api)
    api.create("subnets", "subnet", network_id=net["id"], cidr="10.76.0.0/24")
    opts = [{"opt_name": "bootfile-name", "opt_value": "pxelinux.0", "ip_version": 4}]
    port = api.create("ports", "port", network_id=net["id"], extra_dhcp_opts=opts)
    # Neutron's checks: a value for each name, one line; a blank value only for router.
    for bad in ([{"opt_name": "bootfile-name", "opt_value": ""}], [{"opt_name": "x"}],
                [{"opt_name": "", "opt_value": "v"}],
                [{"opt_name": "a", "opt_value": "v", "ip_version": 5}], "pxe",
                [{"opt_name": "a", "opt_value": "v\nw"}]):
        api.req("POST", "ports", {"port": {"network_id": net["id"], "extra_dhcp_opts": bad}}, 400)
    # Any one-line value is taken, as by Neutron (one that is not the option's is not sent).
    odd = [{"opt_name": "server-ip-address", "opt_value": "2015::badd", "ip_version": 4}]
    api.req("POST", "ports", {"port": {"network_id": net["id"], "extra_dhcp_opts": odd}}, 201)
    return port["extra_dhcp_opts"] == opts


PROBES: dict[str, Callable[[Api], bool]] = {
    "address-scope": lambda api: api.create("subnetpools", "subnetpool", prefixes=["10.75.0.0/16"],
                                            address_scope_id=api.create(
        "address-scopes", "address_scope", ip_version=4)["id"])["address_scope_id"] is not None,
    "allowed-address-pairs": lambda api: "allowed_address_pairs" in _port(api),
    "binding": lambda api: _port(api)["binding:vnic_type"] == "normal",
    "default-subnetpools": lambda api: api.create("subnetpools", "subnetpool", prefixes=[
        "10.78.0.0/16"], is_default=True)["is_default"] is True,
    "external-net": lambda api: _net(api, **{"router:external": True})["router:external"],
    "binding-extended": lambda api: [b["status"] for b in api.req(
        "GET", f"ports/{_port(api, device_owner='compute:nova')['id']}/bindings",
        status=200)["bindings"]] == ["ACTIVE"],
    "ext-gw-mode": lambda api: _gateway(api)["external_gateway_info"]["enable_snat"] is False,
    "extraroute": lambda api: api.create("routers", "router")["routes"] == [],
    "extraroute-atomic": _extraroute_atomic,
    "extra_dhcp_opt": lambda api: _extra_dhcp_opts(api),
    "fields": lambda api: all(set(n) == {"id"} for n in api.req(
        "GET", "networks?fields=id", status=200)["networks"]),
    "flow_classifier": lambda api: _listed(api, "sfc/flow_classifiers"),
    "ip-substring-filtering": lambda api: _listed(api, "ports?fixed_ips=ip_address_substr=10."),
    "net-mtu": lambda api: _net(api)["mtu"] == 1450,
    "net-mtu-writable": lambda api: api.req("PUT", f"networks/{_net(api)['id']}", {
        "network": {"mtu": 1400}}, 200)["network"]["mtu"] == 1400,
    "network_availability_zone": lambda api: _net(api)["availability_zone_hints"] == [],
    "pagination": _paged,
    "port-security": lambda api: _port(api)["port_security_enabled"] is True,
    "project-id": lambda api: _net(api)["project_id"] == "admin-project",
    "provider": lambda api: _net(api)["provider:network_type"] == "vxlan",
    "qos": lambda api: _listed(api, "qos/policies"),
    "qos-bw-limit-direction": lambda api: _qos_rule(api, "bandwidth_limit_rules", max_kbps=100,
                                                    direction="ingress"),
    "qos-bw-minimum-ingress": lambda api: _qos_rule(api, "minimum_bandwidth_rules", min_kbps=100,
                                                    direction="ingress"),
    "qos-default": lambda api: api.create("qos/policies", "policy", is_default=True)["is_default"],
    "qos-rule-type-details": lambda api: _listed(api, "qos/rule-types/bandwidth_limit"),
    "quotas": lambda api: api.req("PUT", "quotas/p9", {"quota": {"port": 7}}, 200)["quota"]["port"] == 7,
    "quota_details": lambda api: api.req("GET", "quotas/p9/details", status=200)["quota"]["port"][
        "used"] == 0,
    "rbac-policies": lambda api: api.create("rbac-policies", "rbac_policy", object_type="network",
                                            object_id=_net(api)["id"], action="access_as_shared",
                                            target_tenant="*")["target_tenant"] == "*",
    "revision-if-match": _if_match,
    "router": lambda api: _listed(api, "routers") and _listed(api, "floatingips"),
    "security-group": lambda api: _listed(api, "security-groups"),
    "service-type": lambda api: _listed(api, "service-providers"),
    "sfc": lambda api: _listed(api, "sfc/port_chains") and _listed(api, "sfc/port_pair_groups"),
    "sorting": lambda api: _listed(api, "networks?sort_key=name&sort_dir=desc"),
    "standard-attr-description": lambda api: _net(api, description="d")["description"] == "d",
    "standard-attr-revisions": lambda api: _net(api)["revision_number"] == 1,
    "standard-attr-tag": lambda api: api.req("PUT", "subnetpools/" + api.create(
        "subnetpools", "subnetpool", prefixes=["10.79.0.0/16"])["id"] + "/tags/t", status=201) == {},
    "standard-attr-timestamp": lambda api: bool(_net(api)["created_at"]),
    "stateful-security-group": lambda api: api.create("security-groups", "security_group",
                                                      stateful=False)["stateful"] is False,
    "subnet_allocation": lambda api: _listed(api, "subnetpools"),
    "tag-creation": lambda api: _net(api, tags=["a"])["tags"] == ["a"],
    "trunk": lambda api: _listed(api, "trunks"),
    "trunk-details": lambda api: _port(api)["trunk_details"] is None,
}


def test_every_listed_extension_is_served(api: Api) -> None:
    listed = {e["alias"] for e in api.req("GET", "extensions", status=200)["extensions"]}
    assert listed == set(PROBES), ("listed without a probe", listed - set(PROBES),
                                   "probed but not listed", set(PROBES) - listed)
    for alias in sorted(listed):
        assert PROBES[alias](api), alias
        assert api.req("GET", f"extensions/{alias}", status=200)["extension"]["alias"] == alias
    assert api.err("GET", "extensions/dvr", status=404)["type"] == "ExtensionNotFound"
