"""Quotas: the admin sets a project's limits, creates beyond them get Neutron's 409 OverQuota."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from sbnet.api import create_app
from sbnet.api.quotas import DEFAULTS, parse_defaults

from apihelpers import ADMIN, Api, project

P = project("quota-p")


def test_a_limit_is_enforced_on_create_and_bulk_create(api: Api) -> None:
    admin, p = api.as_(ADMIN), api.as_(P)
    assert admin.req("PUT", "quotas/quota-p", {"quota": {"network": 2, "port": 3}},
                     200)["quota"]["network"] == 2
    p.create("networks", "network", name="a")
    # A bulk create over the limit creates nothing.
    err = p.err("POST", "networks", {"networks": [{"name": "b"}, {"name": "c"}]}, 409)
    assert err["type"] == "OverQuota" and err["message"] == "Quota exceeded for resources: ['network']."
    assert len(p.req("GET", "networks", status=200)["networks"]) == 1
    net = p.create("networks", "network", name="b")
    assert p.err("POST", "networks", {"network": {"name": "c"}}, 409)["type"] == "OverQuota"
    # The admin is held to the project's quota too when creating for it; other projects are not.
    assert admin.err("POST", "networks", {"network": {"project_id": "quota-p"}}, 409)["type"] == \
        "OverQuota"
    api.as_(project("other")).create("networks", "network", name="free")
    p.create("subnets", "subnet", network_id=net["id"], cidr="10.40.0.0/24")
    for _ in range(3):
        p.create("ports", "port", network_id=net["id"])
    assert p.err("POST", "ports", {"port": {"network_id": net["id"]}}, 409)["type"] == "OverQuota"
    # Details: limit, used, reserved, for the project itself or the admin.
    details = p.req("GET", "quotas/quota-p/details", status=200)["quota"]
    assert details["network"] == {"limit": 2, "used": 2, "reserved": 0}
    assert details["port"] == {"limit": 3, "used": 3, "reserved": 0}
    assert details["router"] == {"limit": 10, "used": 0, "reserved": 0}
    # Raising the limit lets the create through; -1 is unlimited.
    admin.req("PUT", "quotas/quota-p", {"quota": {"network": -1}}, 200)
    p.create("networks", "network", name="c")


def test_who_may_read_and_change_quotas(api: Api) -> None:
    admin, p, other = api.as_(ADMIN), api.as_(P), api.as_(project("other"))
    assert p.req("GET", "quotas/quota-p", status=200)["quota"] == DEFAULTS
    assert p.req("GET", "quotas/project", status=200) == {"project": {"project_id": "quota-p"}}
    assert other.err("GET", "quotas/quota-p", status=403)["type"] == "PolicyNotAuthorized"
    assert other.err("GET", "quotas/quota-p/details", status=403)["type"] == "PolicyNotAuthorized"
    assert p.err("PUT", "quotas/quota-p", {"quota": {"network": 1000}}, 403)["type"] == \
        "PolicyNotAuthorized"
    assert p.err("GET", "quotas", status=403)["type"] == "PolicyNotAuthorized"
    assert admin.req("GET", "quotas", status=200) == {"quotas": []}
    admin.req("PUT", "quotas/quota-p", {"quota": {"router": 1}}, 200)
    [row] = admin.req("GET", "quotas", status=200)["quotas"]
    assert (row["project_id"], row["router"], row["network"]) == ("quota-p", 1, 100)
    assert admin.req("GET", "quotas/quota-p/default", status=200)["quota"]["router"] == 10
    # The list pages as every list does.
    admin.req("PUT", "quotas/quota-z", {"quota": {"router": 3}}, 200)
    page = admin.req("GET", "quotas?limit=1&sort_key=project_id", status=200)
    assert [r["project_id"] for r in page["quotas"]] == ["quota-p"]
    nxt = page["quotas_links"][0]["href"].split("/v2.0/")[1]
    assert [r["project_id"] for r in admin.req("GET", nxt, status=200)["quotas"]] == ["quota-z"]
    admin.req("DELETE", "quotas/quota-z", status=204)
    # Bad input: unknown resources, values out of range, a limit below what is used.
    for bad in ({"widgets": 3}, {"network": -2}, {"network": "many"}, {"network": 2**31}):
        assert admin.err("PUT", "quotas/quota-p", {"quota": bad}, 400)["type"] == "HTTPBadRequest"
    p.create("routers", "router", name="r")
    assert "already used 1" in admin.err("PUT", "quotas/quota-p", {"quota": {"router": 0}},
                                         400)["message"]
    admin.req("PUT", "quotas/quota-p", {"quota": {"router": 0, "force": True}}, 200)
    assert p.err("POST", "routers", {"router": {}}, 409)["type"] == "OverQuota"
    # Deleting a project's quotas returns it to the defaults.
    admin.req("DELETE", "quotas/quota-p", status=204)
    assert admin.req("GET", "quotas/quota-p", status=200)["quota"] == DEFAULTS
    assert admin.err("DELETE", "quotas/quota-p", status=404)["type"] == "TenantQuotaNotFound"
    p.create("routers", "router", name="r2")


def test_the_servers_defaults_are_configurable() -> None:
    with TestClient(create_app("sqlite://", quota_defaults=parse_defaults(["security_group=2"]))) as c:
        a = Api(c, P)
        a.req("GET", "security-groups", status=200)   # the default group is made here: 1 of 2
        a.create("security-groups", "security_group", name="one")
        assert a.err("POST", "security-groups", {"security_group": {"name": "two"}},
                     409)["type"] == "OverQuota"
    for bad in (["gizmo=1"], ["network=x"], ["network=-5"]):
        with pytest.raises(ValueError):
            parse_defaults(bad)
