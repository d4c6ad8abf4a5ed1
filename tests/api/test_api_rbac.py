"""RBAC policies: a network or QoS policy shared with chosen projects, and what that lets them do."""

from __future__ import annotations

import uuid

from apihelpers import ADMIN, Api, project

OWNER, FRIEND, STRANGER = (uuid.uuid4().hex for _ in range(3))


def _setup(api: Api) -> tuple[Api, Api, Api, dict]:
    owner, friend, stranger = api.as_(project(OWNER)), api.as_(project(FRIEND)), api.as_(project(STRANGER))
    net = owner.create("networks", "network", name="n")
    owner.create("subnets", "subnet", network_id=net["id"], cidr="10.30.0.0/24")
    return owner, friend, stranger, net


def test_a_network_shared_with_one_project_takes_its_ports_and_no_one_elses(api: Api) -> None:
    owner, friend, stranger, net = _setup(api)
    for who in (friend, stranger):
        assert who.err("POST", "ports", {"port": {"network_id": net["id"]}}, 404)["type"] == \
            "NetworkNotFound"
    rule = owner.create("rbac-policies", "rbac_policy", object_type="network", object_id=net["id"],
                        action="access_as_shared", target_tenant=FRIEND)
    assert (rule["project_id"], rule["target_tenant"], rule["object_type"]) == (OWNER, FRIEND, "network")
    # The friend sees the network (shared, as Neutron shows it to a project it is shared
    # with) and its subnet, and plugs a port into it; the stranger still sees nothing.
    seen = friend.req("GET", f"networks/{net['id']}", status=200)["network"]
    assert seen["shared"] is True
    assert [s["cidr"] for s in friend.req("GET", "subnets", status=200)["subnets"]] == ["10.30.0.0/24"]
    port = friend.create("ports", "port", network_id=net["id"])
    assert port["fixed_ips"][0]["ip_address"].startswith("10.30.0.")
    assert net["id"] not in {n["id"] for n in stranger.req("GET", "networks", status=200)["networks"]}
    assert stranger.err("POST", "ports", {"port": {"network_id": net["id"]}}, 404)["type"] == \
        "NetworkNotFound"
    # The owner still sees it unshared; only the owner (and the admin) see the entry.
    assert owner.req("GET", f"networks/{net['id']}", status=200)["network"]["shared"] is False
    assert friend.req("GET", "rbac-policies", status=200)["rbac_policies"] == []
    assert [r["id"] for r in owner.req("GET", "rbac-policies", status=200)["rbac_policies"]] == [rule["id"]]
    # A shared network's member may not pick addresses (Neutron's policy on shared networks).
    assert friend.err("POST", "ports", {"port": {"network_id": net["id"], "fixed_ips": [
        {"ip_address": "10.30.0.99"}]}}, 403)["type"] == "PolicyNotAuthorized"
    # Taking access away while the friend's port is there: 409; moving it elsewhere too.
    assert owner.err("DELETE", f"rbac-policies/{rule['id']}", status=409)["type"] == "RbacPolicyInUse"
    assert owner.err("PUT", f"rbac-policies/{rule['id']}", {"rbac_policy": {
        "target_tenant": STRANGER}}, 409)["type"] == "RbacPolicyInUse"
    friend.req("DELETE", f"ports/{port['id']}", status=204)
    owner.req("PUT", f"rbac-policies/{rule['id']}", {"rbac_policy": {"target_tenant": STRANGER}}, 200)
    assert friend.err("POST", "ports", {"port": {"network_id": net["id"]}}, 404)["type"] == \
        "NetworkNotFound"
    stranger.create("ports", "port", network_id=net["id"])


def test_rbac_entries_are_checked_as_neutron_checks_them(api: Api) -> None:
    owner, friend, stranger, net = _setup(api)
    body = {"object_type": "network", "object_id": net["id"], "action": "access_as_shared",
            "target_tenant": FRIEND}
    owner.create("rbac-policies", "rbac_policy", **body)
    assert owner.err("POST", "rbac-policies", {"rbac_policy": body}, 409)["type"] == "DuplicateRbacPolicy"
    # Sharing with everyone is the operator's; another project's network is not yours to share.
    assert owner.err("POST", "rbac-policies", {"rbac_policy": {**body, "target_tenant": "*"}},
                     403)["type"] == "PolicyNotAuthorized"
    assert stranger.err("POST", "rbac-policies", {"rbac_policy": {**body, "target_tenant": STRANGER}},
                        404)["type"] == "NetworkNotFound"
    assert friend.err("POST", "rbac-policies", {"rbac_policy": {**body, "target_tenant": STRANGER}},
                      400)["type"] == "InvalidInput"
    for bad in ({"target_tenant": "not a project"}, {"object_type": "router"},
                {"object_id": "nope"}, {"action": "access_as_owner"}):
        owner.err("POST", "rbac-policies", {"rbac_policy": {**body, **bad}}, 400)
    # A QoS policy cannot be external.
    pol = api.create("qos/policies", "policy", name="q", project_id=OWNER)
    assert owner.err("POST", "rbac-policies", {"rbac_policy": {
        "object_type": "qos_policy", "object_id": pol["id"], "action": "access_as_external",
        "target_tenant": FRIEND}}, 400)["type"] == "InvalidInput"
    assert owner.err("GET", f"rbac-policies/{uuid.uuid4()}", status=404)["type"] == "RbacPolicyNotFound"


def test_shared_true_is_a_wildcard_entry_and_unsharing_in_use_is_refused(api: Api) -> None:
    admin = api.as_(ADMIN)
    owner, friend, _stranger, net = _setup(api)
    admin.req("PUT", f"networks/{net['id']}", {"network": {"shared": True}}, 200)
    [wild] = admin.req("GET", f"rbac-policies?object_id={net['id']}", status=200)["rbac_policies"]
    assert (wild["target_tenant"], wild["action"], wild["project_id"]) == ("*", "access_as_shared", OWNER)
    friend.create("ports", "port", network_id=net["id"])
    assert admin.err("PUT", f"networks/{net['id']}", {"network": {"shared": False}},
                     409)["type"] == "InvalidSharedSetting"
    # A targeted entry for the friend lets the wildcard go; deleting it clears `shared`.
    admin.create("rbac-policies", "rbac_policy", object_type="network", object_id=net["id"],
                 action="access_as_shared", target_tenant=FRIEND)
    admin.req("DELETE", f"rbac-policies/{wild['id']}", status=204)
    assert owner.req("GET", f"networks/{net['id']}", status=200)["network"]["shared"] is False
    assert friend.req("GET", f"networks/{net['id']}", status=200)["network"]["shared"] is True
    # Deleting the network deletes its entries.
    for p in admin.req("GET", f"ports?network_id={net['id']}", status=200)["ports"]:
        admin.req("DELETE", f"ports/{p['id']}", status=204)
    admin.req("DELETE", f"networks/{net['id']}", status=204)
    assert admin.req("GET", f"rbac-policies?object_id={net['id']}", status=200)["rbac_policies"] == []


def test_access_as_external_gives_one_project_gateways_and_floating_ips(api: Api) -> None:
    admin = api.as_(ADMIN)
    ext = admin.create("networks", "network", name="ext", project_id=OWNER)
    admin.create("subnets", "subnet", network_id=ext["id"], cidr="192.0.2.0/24")
    friend, stranger = api.as_(project(FRIEND)), api.as_(project(STRANGER))
    rule = admin.create("rbac-policies", "rbac_policy", object_type="network", object_id=ext["id"],
                        action="access_as_external", target_tenant=FRIEND)
    assert friend.req("GET", f"networks/{ext['id']}", status=200)["network"]["router:external"] is True
    router = friend.create("routers", "router", name="r",
                           external_gateway_info={"network_id": ext["id"]})
    assert router["external_gateway_info"]["network_id"] == ext["id"]
    fip = friend.create("floatingips", "floatingip", floating_network_id=ext["id"])
    assert fip["floating_ip_address"].startswith("192.0.2.")
    assert stranger.err("POST", "floatingips", {"floatingip": {"floating_network_id": ext["id"]}},
                        404)["type"] == "NetworkNotFound"
    assert admin.err("DELETE", f"rbac-policies/{rule['id']}", status=409)["type"] == "RbacPolicyInUse"


def test_a_qos_policy_shared_with_a_project_can_be_put_on_its_ports(api: Api) -> None:
    admin = api.as_(ADMIN)
    owner, friend, stranger, _ = _setup(api)
    pol = admin.create("qos/policies", "policy", name="gold", project_id=OWNER)
    net = friend.create("networks", "network", name="f")
    friend.create("subnets", "subnet", network_id=net["id"], cidr="10.31.0.0/24")
    assert friend.err("POST", "ports", {"port": {"network_id": net["id"], "qos_policy_id": pol["id"]}},
                      404)["type"] == "QosPolicyNotFound"
    rule = admin.create("rbac-policies", "rbac_policy", object_type="qos_policy", object_id=pol["id"],
                        action="access_as_shared", target_tenant=FRIEND)
    assert friend.req("GET", f"qos/policies/{pol['id']}", status=200)["policy"]["shared"] is True
    port = friend.create("ports", "port", network_id=net["id"], qos_policy_id=pol["id"])
    assert port["qos_policy_id"] == pol["id"]
    assert stranger.err("GET", f"qos/policies/{pol['id']}", status=404)["type"] == "QosPolicyNotFound"
    assert admin.err("DELETE", f"rbac-policies/{rule['id']}", status=409)["type"] == "RbacPolicyInUse"
