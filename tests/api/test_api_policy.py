"""Neutron's default policy, generated from sbnet.api.policy's table: for every attribute rule
and every kind of caller, the request is refused (403) exactly when the table says so."""

from __future__ import annotations

import itertools
import random

import pytest

from apihelpers import ADMIN, Api
from sbnet.api import policy

# Who each kind of caller is, in the scenario below, written out by hand (not asked of
# the policy module): the principals they hold for the resource they act on.
ROLES = {
    "admin": ({"X-Project-Id": "own", "X-Roles": "admin"},
              {policy.ADMIN, policy.MEMBER, policy.READER, policy.NET_OWNER, policy.ANY}),
    "owner": ({"X-Project-Id": "own", "X-Roles": "member"},
              {policy.MEMBER, policy.READER, policy.NET_OWNER, policy.ANY}),
    "reader": ({"X-Project-Id": "own", "X-Roles": "reader"}, {policy.READER, policy.ANY}),
    # a member of another project, on the network the admin shared
    "shared_member": ({"X-Project-Id": "other", "X-Roles": "member"},
                      {policy.MEMBER, policy.READER, policy.SHARED, policy.ANY}),
    "service": ({"X-Project-Id": "other", "X-Roles": "member,service"},
                {policy.MEMBER, policy.READER, policy.SHARED, policy.SERVICE, policy.ANY}),
}
PORT_ROLES = tuple(ROLES)
OWN_ROLES = ("admin", "owner", "reader")   # resources not on someone's network

_mac = itertools.count(1)


def _new_mac() -> str:
    n = next(_mac)
    return f"fa:16:3e:aa:{n >> 8:02x}:{n & 0xff:02x}"


def _value(world: dict, resource: str, attr: str):
    """A value that sets `attr` (and nothing the table guards besides what it implies)."""
    net = world["net"]
    return {
        ("port", "device_owner"): "network:dhcp",
        ("port", "mac_address"): _new_mac(),
        ("port", "fixed_ips"): [{"subnet_id": net["subnet"]}],
        ("port", "fixed_ips:subnet_id"): [{"subnet_id": net["subnet"]}],
        ("port", "fixed_ips:ip_address"): [{"ip_address": f"10.50.{random.randint(1, 250)}."
                                                          f"{random.randint(2, 250)}"}],
        ("port", "port_security_enabled"): False,
        ("port", "binding:host_id"): "h1",
        ("port", "binding:profile"): {"k": "v"},
        ("port", "binding:vnic_type"): "direct",
        ("port", "allowed_address_pairs"): [{"ip_address": "10.9.9.9"}],
        ("network", "shared"): True,
        ("network", "router:external"): True,
        ("network", "is_default"): True,
        ("network", "provider:network_type"): "vxlan",
        ("network", "provider:physical_network"): "physnet1",
        ("network", "provider:segmentation_id"): 4000 + random.randint(0, 9000),
        ("subnet", "service_types"): ["compute:nova"],
        ("router", "distributed"): True,
        ("router", "ha"): True,
        ("router", "external_gateway_info"): {"network_id": world["ext"]},
        ("router", "external_gateway_info:network_id"): {"network_id": world["ext"]},
        ("router", "external_gateway_info:enable_snat"): {"network_id": world["ext"],
                                                          "enable_snat": False},
        ("router", "external_gateway_info:external_fixed_ips"): {
            "network_id": world["ext"], "external_fixed_ips": [{"subnet_id": world["ext_sub"]}]},
        ("floatingip", "floating_ip_address"): f"172.24.{random.randint(0, 3)}.{random.randint(2, 250)}",
    }.get((resource, attr))


def _head(resource: str, attr: str) -> str:
    """The request attribute a rule's attr is about ("fixed_ips:ip_address" -> fixed_ips)."""
    from sbnet.model.resources import BY_NAME
    return attr if attr in BY_NAME[resource].attrs else attr.split(":")[0]


def _cases():
    from sbnet.model.resources import BY_NAME
    for rule in policy.RULES:
        if rule.attr is None or rule.action not in ("create", "update"):
            continue
        attr = BY_NAME[rule.resource].attrs[_head(rule.resource, rule.attr)]
        if not (attr.post if rule.action == "create" else attr.put):
            continue   # the API takes no such attribute in this request at all
        roles = PORT_ROLES if rule.resource == "port" else OWN_ROLES
        for role in roles:
            yield pytest.param(rule, role, id=f"{rule.name}-{role}")


@pytest.fixture(scope="module")
def world(request):
    from fastapi.testclient import TestClient

    from sbnet.api import create_app
    from sbnet.api.quotas import DEFAULTS
    # One case per rule and role, hundreds of resources in a few projects: no quota here.
    client = TestClient(create_app("sqlite://", quota_defaults=dict.fromkeys(DEFAULTS, -1)),
                        raise_server_exceptions=False)
    admin = Api(client, ADMIN)
    own = admin.as_(ROLES["owner"][0])
    shared = admin.create("networks", "network", name="shared", shared=True)
    sub = admin.create("subnets", "subnet", network_id=shared["id"], cidr="10.50.0.0/16")
    mine = own.create("networks", "network", name="mine")
    own_sub = own.create("subnets", "subnet", network_id=mine["id"], cidr="10.50.0.0/16")
    ext = admin.create("networks", "network", name="ext", **{"router:external": True})
    ext_sub = admin.create("subnets", "subnet", network_id=ext["id"], cidr="172.24.0.0/22")
    return {"api": admin, "shared": {"id": shared["id"], "subnet": sub["id"]},
            "mine": {"id": mine["id"], "subnet": own_sub["id"]}, "ext": ext["id"],
            "ext_sub": ext_sub["id"]}


@pytest.mark.parametrize("rule,role", list(_cases()))
def test_attribute_rule(world, rule, role):
    headers, holds = ROLES[role]
    # Ports: the owner's kinds act on their own network, the others on the shared one.
    world = {**world, "net": world["mine"] if role in OWN_ROLES else world["shared"]}
    value = _value(world, rule.resource, rule.attr)
    if value is None:
        pytest.skip(f"{rule.name}: no value sbnet accepts sets it")
    head = _head(rule.resource, rule.attr)
    # Every rule of this action that the request's value falls under must allow it (the
    # action's own, fixed_ips' and fixed_ips:subnet_id's for a subnet_id, ...).
    apply = [r for r in policy.RULES if (r.resource, r.action) == (rule.resource, rule.action)
             and (r.attr is None or (_head(r.resource, r.attr) == head and r.applies(value)))]
    expect = all(holds & set(r.allow) for r in apply)
    api, caller = world["api"], world["api"].as_(headers)
    base = {"port": {"network_id": world["net"]["id"]}, "network": {},
            "subnet": {"network_id": world["mine"]["id"], "cidr": f"10.{random.randint(60, 250)}.{random.randint(0, 250)}.0/24"},
            "router": {}, "floatingip": {"floating_network_id": world["ext"]}}[rule.resource]
    path = {"floatingip": "floatingips"}.get(rule.resource, rule.resource + "s")
    if rule.action == "create":
        r = caller.client.post(f"/v2.0/{path}", json={rule.resource: {**base, head: value}},
                               headers=headers)
    else:
        # The caller's own resource, made by the admin in the caller's project.
        project = headers["X-Project-Id"]
        made = api.create(path, rule.resource, **base, project_id=project)
        r = caller.client.put(f"/v2.0/{path}/{made['id']}", json={rule.resource: {head: value}},
                              headers=headers)
    assert r.status_code < 500, r.text
    refused = r.status_code == 403 and "disallowed by policy" in r.text
    assert refused != expect, (rule.name, role, r.status_code, r.text)


@pytest.mark.parametrize("rule", [r for r in policy.RULES if r.action == "get" and r.attr],
                         ids=lambda r: r.name)
def test_hidden_attributes_are_neither_shown_nor_filtered(world, rule):
    api = world["api"]
    member = api.as_(ROLES["owner"][0])
    path = {"port": "ports", "network": "networks", "router": "routers"}[rule.resource]
    attrs = {"port": {"network_id": world["mine"]["id"], "binding:host_id": "secret-host"},
             "network": {"provider:network_type": "vxlan", "provider:segmentation_id": random.randint(100, 3000)},
             "router": {}}[rule.resource]
    made = api.create(path, rule.resource, project_id="own", **attrs)
    shown = member.req("GET", f"{path}/{made['id']}", status=200)[rule.resource]
    assert rule.attr not in shown
    assert rule.attr in api.req("GET", f"{path}/{made['id']}", status=200)[rule.resource]
    # A filter on what the member cannot see tells nothing: it is ignored.
    value = made[rule.attr]
    for probe in (value, "not-the-value"):
        listed = member.req("GET", f"{path}?{rule.attr}={probe}", status=200)[path]
        assert made["id"] in {x["id"] for x in listed}
    member.req("GET", f"{path}?sort_key={rule.attr}", status=400)


def test_table_names_only_known_principals_and_resources():
    from sbnet.model.resources import BY_NAME
    for rule in policy.RULES:
        assert set(rule.allow) <= set(policy.PRINCIPALS), rule
        assert rule.resource in BY_NAME or rule.resource in policy.SUB_RESOURCES, rule
        if rule.attr:
            assert _head(rule.resource, rule.attr) in BY_NAME[rule.resource].attrs, rule
