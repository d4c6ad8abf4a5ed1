"""Deep fuzzing: valid bodies with one attribute replaced by arbitrary JSON never get a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apihelpers import ADMIN
from sbnet.api import create_app
from sbnet.model.resources import BY_NAME

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False,
                                                                       allow_infinity=False)
    | st.text(max_size=20) | st.sampled_from(["10.0.0.5", "10.0.0.0/24", "fd00::1", "vlan",
                                               "fa:16:3e:00:00:09", "tcp", "ingress", "IPv6"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["subnet_id", "ip_address", "start", "end", "destination", "nexthop",
                         "network_id", "port_id", "segmentation_id", "mac_address", "x"]),
        inner, max_size=3),
    max_leaves=6)


@pytest.fixture(scope="module")
def world() -> Any:
    with TestClient(create_app("sqlite://"), raise_server_exceptions=False) as c:
        def post(path: str, member: str, body: dict) -> dict:
            r = c.post(f"/v2.0/{path}", json={member: body}, headers=ADMIN)
            assert r.status_code == 201, r.text
            return r.json()[member]
        ext = post("networks", "network", {"router:external": True})
        post("subnets", "subnet", {"network_id": ext["id"], "cidr": "192.0.2.0/24"})
        net = post("networks", "network", {"name": "n"})
        sub = post("subnets", "subnet", {"network_id": net["id"], "cidr": "10.0.0.0/24"})
        port = post("ports", "port", {"network_id": net["id"]})
        port2 = post("ports", "port", {"network_id": net["id"]})
        sg = post("security-groups", "security_group", {"name": "g"})
        router = post("routers", "router", {"external_gateway_info": {"network_id": ext["id"]}})
        pol = post("qos/policies", "policy", {"name": "q"})
        pp = post("sfc/port_pairs", "port_pair", {"ingress": port2["id"], "egress": port2["id"]})
        ids = {"net": net, "sub": sub, "port": port, "sg": sg, "router": router, "ext": ext,
               "pol": pol, "pp": pp}
        bases = {
            "network": ("networks", {"name": "x"}),
            "subnet": ("subnets", {"network_id": net["id"], "cidr": "10.1.0.0/24"}),
            "port": ("ports", {"network_id": net["id"]}),
            "security_group_rule": ("security-group-rules", {"security_group_id": sg["id"],
                                                             "direction": "ingress"}),
            "router": ("routers", {"name": "r"}),
            "floatingip": ("floatingips", {"floating_network_id": ext["id"]}),
            "trunk": ("trunks", {"port_id": port["id"]}),
            "port_pair_group": ("sfc/port_pair_groups", {"port_pairs": []}),
            "flow_classifier": ("sfc/flow_classifiers", {}),
            "port_chain": ("sfc/port_chains", {"port_pair_groups": []}),
            "bandwidth_limit_rule": (f"qos/policies/{pol['id']}/bandwidth_limit_rules",
                                     {"max_kbps": 1}),
        }
        yield c, ids, bases


@pytest.mark.parametrize("resource", ["network", "subnet", "port", "security_group_rule", "router",
                                      "floatingip", "trunk", "port_pair_group", "flow_classifier",
                                      "port_chain", "bandwidth_limit_rule"])
@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_create_and_update_never_5xx(world: Any, resource: str, data: st.DataObject) -> None:
    client, ids, bases = world
    path, base = bases[resource]
    spec = BY_NAME[resource]
    attr = data.draw(st.sampled_from(sorted(spec.attrs)))
    value = data.draw(JSON)
    r = client.post(f"/v2.0/{path}", json={resource: {**base, attr: value}}, headers=ADMIN)
    assert r.status_code < 500, (attr, value, r.text)
    target = {"network": ids["net"], "subnet": ids["sub"], "port": ids["port"],
              "router": ids["router"]}.get(resource)
    if target is not None:
        r = client.put(f"/v2.0/{path}/{target['id']}", json={resource: {attr: value}}, headers=ADMIN)
        assert r.status_code < 500, (attr, value, r.text)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(body=JSON, action=st.sampled_from(["add_router_interface", "remove_router_interface",
                                          "add_extraroutes", "remove_extraroutes"]))
def test_router_actions_never_5xx(world: Any, body: Any, action: str) -> None:
    client, ids, _ = world
    r = client.put(f"/v2.0/routers/{ids['router']['id']}/{action}", json=body, headers=ADMIN)
    assert r.status_code < 500, (body, r.text)
