"""Tenant isolation: project A cannot list, show, update or attach to project B's resources."""

from __future__ import annotations

from apihelpers import ADMIN, Api, project

A, B = project("project-a"), project("project-b")


def test_project_cannot_see_or_touch_another(api: Api) -> None:
    a, b = api.as_(A), api.as_(B)
    net = b.create("networks", "network", name="b-net")
    sub = b.create("subnets", "subnet", network_id=net["id"], cidr="10.20.0.0/24")
    port = b.create("ports", "port", network_id=net["id"])
    sg = b.create("security-groups", "security_group", name="b-sg")
    # QoS policies are the operator's to create (Neutron's create_policy is admin-only).
    pol = api.as_(ADMIN).create("qos/policies", "policy", name="b-q", project_id="project-b")
    router = b.create("routers", "router", name="b-r")
    for path, member, ident, typ in (
            ("networks", "network", net["id"], "NetworkNotFound"),
            ("subnets", "subnet", sub["id"], "SubnetNotFound"),
            ("ports", "port", port["id"], "PortNotFound"),
            ("security-groups", "security_group", sg["id"], "SecurityGroupNotFound"),
            ("qos/policies", "policy", pol["id"], "QosPolicyNotFound"),
            ("routers", "router", router["id"], "RouterNotFound")):
        listed = a.req("GET", path, None, 200)
        assert ident not in {x["id"] for x in next(iter(listed.values()))}
        assert a.err("GET", f"{path}/{ident}", status=404)["type"] == typ
        assert a.err("PUT", f"{path}/{ident}", {member: {"name": "x"}}, status=404)["type"] == typ
        assert a.err("DELETE", f"{path}/{ident}", status=404)["type"] == typ
    # Attaching: a port on B's network, B's group or policy on A's port, B's subnet on A's router.
    assert a.err("POST", "ports", {"port": {"network_id": net["id"]}}, 404)["type"] == "NetworkNotFound"
    own = a.create("networks", "network", name="a-net")
    a.create("subnets", "subnet", network_id=own["id"], cidr="10.21.0.0/24")
    assert a.err("POST", "ports", {"port": {"network_id": own["id"], "security_groups": [sg["id"]]}},
                 404)["type"] == "SecurityGroupNotFound"
    assert a.err("POST", "ports", {"port": {"network_id": own["id"], "qos_policy_id": pol["id"]}},
                 404)["type"] == "QosPolicyNotFound"
    a_router = a.create("routers", "router", name="a-r")
    assert a.err("PUT", f"routers/{a_router['id']}/add_router_interface", {"subnet_id": sub["id"]},
                 404)["type"] == "SubnetNotFound"
    assert a.err("PUT", f"routers/{a_router['id']}/add_router_interface", {"port_id": port["id"]},
                 404)["type"] == "PortNotFound"
    assert a.err("POST", "trunks", {"trunk": {"port_id": port["id"]}}, 404)["type"] == "PortNotFound"
    assert a.err("POST", "security-group-rules", {"security_group_rule": {
        "security_group_id": sg["id"], "direction": "ingress"}}, 404)["type"] == "SecurityGroupNotFound"
    # Claiming to be B in the body is refused.
    api.as_(A).req("POST", "networks", {"network": {"project_id": "project-b"}}, 400)
    # B still sees only its own things; admin sees both.
    assert {n["name"] for n in b.req("GET", "networks")["networks"]} == {"b-net"}
    assert {"a-net", "b-net"} <= {n["name"] for n in api.as_(ADMIN).req("GET", "networks")["networks"]}


def test_shared_and_external_resources_are_visible_not_writable(api: Api) -> None:
    admin, a = api.as_(ADMIN), api.as_(A)
    shared = admin.create("networks", "network", name="shared", shared=True)
    admin.create("subnets", "subnet", network_id=shared["id"], cidr="10.30.0.0/24")
    ext = admin.create("networks", "network", name="ext", **{"router:external": True})
    names = {n["name"] for n in a.req("GET", "networks")["networks"]}
    assert {"shared", "ext"} <= names
    port = a.create("ports", "port", network_id=shared["id"])
    assert port["project_id"] == "project-a"
    # Binding details are the operator's business, as in Neutron's policy.
    assert "binding:host_id" not in port and port["binding:vnic_type"] == "normal"
    assert a.err("PUT", f"networks/{shared['id']}", {"network": {"name": "mine"}},
                 403)["type"] == "PolicyNotAuthorized"
    assert a.err("DELETE", f"networks/{ext['id']}", status=403)["type"] == "PolicyNotAuthorized"
    assert a.err("POST", "networks", {"network": {"shared": True}}, 403)["type"] == "PolicyNotAuthorized"
    assert a.err("POST", "networks", {"network": {"provider:network_type": "vlan"}},
                 403)["type"] == "PolicyNotAuthorized"
    # Each project gets its own default security group, with Neutron's four rules.
    groups = a.req("GET", "security-groups")["security_groups"]
    assert [g["name"] for g in groups] == ["default"]
    assert len(groups[0]["security_group_rules"]) == 4
    assert port["security_groups"] == [groups[0]["id"]]
