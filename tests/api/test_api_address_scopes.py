"""Address scopes: pools in one scope never overlap, scopes are shared or the owner's, and a
network shows the scope its subnets' pools are in."""

from __future__ import annotations

from apihelpers import ADMIN, Api, project

P, Q = project("scope-p"), project("scope-q")


def test_pools_in_a_scope_do_not_overlap_and_networks_show_their_scope(api: Api) -> None:
    p = api.as_(P)
    scope = p.create("address-scopes", "address_scope", name="s4", ip_version=4)
    assert (scope["shared"], scope["ip_version"], scope["project_id"]) == (False, 4, "scope-p")
    pool = p.create("subnetpools", "subnetpool", name="a", prefixes=["10.90.0.0/16"],
                    address_scope_id=scope["id"], default_prefixlen=24)
    assert pool["address_scope_id"] == scope["id"]
    # Another pool overlapping it cannot join the scope (it may exist outside it).
    err = p.err("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.90.128.0/17"],
                                                       "address_scope_id": scope["id"]}}, 409)
    assert err["type"] == "AddressScopePrefixConflict"
    loose = p.create("subnetpools", "subnetpool", prefixes=["10.90.128.0/17"])
    assert p.err("PUT", f"subnetpools/{loose['id']}", {"subnetpool": {
        "address_scope_id": scope["id"]}}, 409)["type"] == "AddressScopePrefixConflict"
    # Wrong IP version, someone else's unshared scope, an unknown one.
    v6 = p.create("subnetpools", "subnetpool", prefixes=["2001:db8::/48"])
    assert p.err("PUT", f"subnetpools/{v6['id']}", {"subnetpool": {"address_scope_id": scope["id"]}},
                 400)["type"] == "IllegalSubnetPoolIpVersionAssociationToAddressScope"
    q = api.as_(Q)
    assert q.err("POST", "subnetpools", {"subnetpool": {"prefixes": ["10.91.0.0/16"],
                                                        "address_scope_id": scope["id"]}},
                 404)["type"] == "AddressScopeNotFound"
    # A subnet from the pool puts its network in the scope; deleting it takes it out.
    net = p.create("networks", "network", name="n")
    assert net["ipv4_address_scope"] is None
    sub = p.create("subnets", "subnet", network_id=net["id"], subnetpool_id=pool["id"], ip_version=4)
    assert sub["cidr"].startswith("10.90.") and sub["cidr"].endswith("/24")
    shown = p.req("GET", f"networks/{net['id']}", status=200)["network"]
    assert (shown["ipv4_address_scope"], shown["ipv6_address_scope"]) == (scope["id"], None)
    # A scope with pools cannot go; a pool leaving it takes its networks out.
    assert p.err("DELETE", f"address-scopes/{scope['id']}", status=409)["type"] == "AddressScopeInUse"
    p.req("PUT", f"subnetpools/{pool['id']}", {"subnetpool": {"address_scope_id": None}}, 200)
    assert p.req("GET", f"networks/{net['id']}", status=200)["network"]["ipv4_address_scope"] is None
    p.req("DELETE", f"address-scopes/{scope['id']}", status=204)


def test_shared_scopes_are_the_operators_and_stay_shared(api: Api) -> None:
    admin, p, q = api.as_(ADMIN), api.as_(P), api.as_(Q)
    assert p.err("POST", "address-scopes", {"address_scope": {"ip_version": 4, "shared": True}},
                 403)["type"] == "PolicyNotAuthorized"
    shared = admin.create("address-scopes", "address_scope", name="pub", ip_version=6, shared=True)
    assert shared["id"] in {s["id"] for s in q.req("GET", "address-scopes", status=200)["address_scopes"]}
    pool = q.create("subnetpools", "subnetpool", prefixes=["2001:db8:5::/48"],
                    address_scope_id=shared["id"])
    assert pool["address_scope_id"] == shared["id"]
    # A pool in a shared scope it does not own cannot be moved by its member.
    assert q.err("PUT", f"subnetpools/{pool['id']}", {"subnetpool": {"address_scope_id": None}},
                 400)["type"] == "IllegalSubnetPoolUpdate"
    assert admin.err("PUT", f"address-scopes/{shared['id']}", {"address_scope": {"shared": False}},
                     400)["type"] == "AddressScopeUpdateError"
    assert q.err("PUT", f"address-scopes/{shared['id']}", {"address_scope": {"name": "x"}},
                 403)["type"] == "PolicyNotAuthorized"
    for bad in ({"ip_version": 5}, {}, {"ip_version": 4, "name": 7}):
        p.err("POST", "address-scopes", {"address_scope": bad}, 400)
