"""The Octavia v2 API: python-octaviaclient's `openstack loadbalancer` against `sbnet serve`, and
Octavia's rules, statuses, policy, quotas and error format over plain HTTP."""

from __future__ import annotations

from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from apihelpers import ADMIN, project
from oscrun import Osc

P1, P2 = project("p1"), project("p2")
READER = {"X-Project-Id": "p1", "X-Roles": "reader"}


# --- the real CLI against the real server process ---

@pytest.fixture(scope="module")
def osc(server: str) -> Iterator[Osc]:
    o = Osc(server)
    o("network create lbnet -f json")
    o("subnet create lbsub --network lbnet --subnet-range 10.7.0.0/24 -f json")
    yield o


def test_cli_builds_a_load_balancer_and_deletes_it_in_cascade(osc: Osc) -> None:
    lb = osc("loadbalancer create --name web --vip-subnet-id lbsub --wait -f json")
    assert lb["provisioning_status"] == "ACTIVE" and lb["provider"] == "sbnet"
    port = osc(f"port show {lb['vip_port_id']} -f json")
    assert port["device_owner"] == "Octavia"
    assert port["fixed_ips"][0]["ip_address"] == lb["vip_address"]
    li = osc("loadbalancer listener create --name http --protocol TCP --protocol-port 80 "
             "--wait web -f json")
    pool = osc("loadbalancer pool create --name backends --listener http --protocol TCP "
               "--lb-algorithm SOURCE_IP_PORT --session-persistence type=SOURCE_IP --wait -f json")
    assert pool["listeners"] == [{"id": li["id"]}] or li["id"] in str(pool["listeners"])
    for addr, weight in (("10.7.0.20", 1), ("10.7.0.21", 3)):
        osc(f"loadbalancer member create --address {addr} --protocol-port 8080 --weight {weight} "
            "--wait backends -f json")
    members = osc("loadbalancer member list backends -f json")
    assert sorted((x["address"], x["weight"], x["operating_status"]) for x in members) == \
        [("10.7.0.20", 1, "NO_MONITOR"), ("10.7.0.21", 3, "NO_MONITOR")]
    hm = osc("loadbalancer healthmonitor create --delay 2 --timeout 1 --max-retries 2 "
             "--type HTTP --url-path /health --expected-codes 200-204 --wait backends -f json")
    assert hm["http_method"] == "GET" and hm["expected_codes"] == "200-204"
    assert osc("loadbalancer listener show http -f json")["default_pool_id"] == pool["id"]
    err = osc.fails("loadbalancer delete web")
    assert "it has children" in err
    osc("loadbalancer delete --cascade --wait web")
    assert osc("loadbalancer list -f json") == []
    assert osc("loadbalancer pool list -f json") == []
    assert lb["vip_port_id"] not in {p["ID"] for p in osc("port list -f json")}


def test_cli_reports_what_the_provider_does_not_do(osc: Osc) -> None:
    osc("loadbalancer create --name other --vip-subnet-id lbsub --wait -f json")
    err = osc.fails("loadbalancer listener create --protocol HTTPS --protocol-port 443 other")
    assert "does not support" in err and "HTTPS" in err
    err = osc.fails("loadbalancer pool create --loadbalancer other --protocol TCP "
                    "--lb-algorithm LEAST_CONNECTIONS")
    assert "LEAST_CONNECTIONS" in err
    osc("loadbalancer delete --cascade --wait other")


# --- plain HTTP ---

class Lb:
    def __init__(self, client: TestClient, headers: dict) -> None:
        self.c, self.h = client, headers

    def __call__(self, method: str, path: str, body: object = None, status: int = 200,
                 headers: dict | None = None) -> dict:
        r = self.c.request(method, f"/v2/lbaas/{path}", json=body, headers=headers or self.h)
        assert r.status_code == status, (r.status_code, r.text)
        out = r.json() if r.content else {}
        if status >= 400:
            assert set(out) == {"faultcode", "faultstring", "debuginfo"}
            assert out["faultcode"] == ("Client" if status < 500 else "Server")
        return out

    def make(self, kind: str, path: str, headers: dict | None = None, **attrs: object) -> dict:
        return self("POST", path, {kind: attrs}, 201, headers)[kind]


@pytest.fixture
def lb_api(app_client: TestClient) -> Lb:
    return Lb(app_client, P1)


@pytest.fixture
def vip_subnet(app_client: TestClient) -> dict:
    net = app_client.post("/v2.0/networks", json={"network": {"name": "n"}}, headers=P1).json()
    return app_client.post("/v2.0/subnets", json={"subnet": {
        "network_id": net["network"]["id"], "cidr": "10.8.0.0/24"}}, headers=P1).json()["subnet"]


@pytest.fixture
def stack(lb_api: Lb, vip_subnet: dict) -> dict:
    lb = lb_api.make("loadbalancer", "loadbalancers", vip_subnet_id=vip_subnet["id"],
                     vip_address="10.8.0.100")
    li = lb_api.make("listener", "listeners", loadbalancer_id=lb["id"], protocol="UDP",
                     protocol_port=53)
    pool = lb_api.make("pool", "pools", listener_id=li["id"], protocol="UDP",
                       lb_algorithm="SOURCE_IP")
    return {"lb": lb, "listener": li, "pool": pool}


def test_vip_port_holds_the_requested_address(app_client: TestClient, stack: dict) -> None:
    port = app_client.get(f"/v2.0/ports/{stack['lb']['vip_port_id']}", headers=P1).json()["port"]
    assert port["fixed_ips"][0]["ip_address"] == "10.8.0.100"
    assert port["device_id"] == f"lb-{stack['lb']['id']}"


def test_rules_octavia_enforces(lb_api: Lb, stack: dict, vip_subnet: dict) -> None:
    lb, pool = stack["lb"], stack["pool"]
    # the same port on the same protocol family: 409; TCP beside UDP on one port is fine
    lb_api("POST", "listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "UDP",
                                              "protocol_port": 53}}, 409)
    lb_api.make("listener", "listeners", loadbalancer_id=lb["id"], protocol="TCP",
                protocol_port=53)
    # a UDP listener cannot forward to a TCP pool
    tcp_pool = lb_api.make("pool", "pools", loadbalancer_id=lb["id"], protocol="TCP",
                           lb_algorithm="ROUND_ROBIN")
    lb_api("PUT", f"listeners/{stack['listener']['id']}",
           {"listener": {"default_pool_id": tcp_pool["id"]}}, 400)
    # members: duplicates 409, another family 400, weights 0..256
    path = f"pools/{pool['id']}/members"
    lb_api.make("member", path, address="10.8.0.5", protocol_port=53)
    lb_api("POST", path, {"member": {"address": "10.8.0.5", "protocol_port": 53}}, 409)
    lb_api("POST", path, {"member": {"address": "fd00::5", "protocol_port": 53}}, 400)
    lb_api("POST", path, {"member": {"address": "10.8.0.6", "protocol_port": 53,
                                     "weight": 257}}, 400)
    # health monitors: one per pool, types the pool's protocol allows, codes well formed
    lb_api("POST", "healthmonitors", {"healthmonitor": {
        "pool_id": tcp_pool["id"], "type": "UDP-CONNECT", "delay": 2, "timeout": 1,
        "max_retries": 2}}, 400)
    lb_api("POST", "healthmonitors", {"healthmonitor": {
        "pool_id": tcp_pool["id"], "type": "HTTP", "delay": 2, "timeout": 1, "max_retries": 2,
        "expected_codes": "200-1000"}}, 400)
    lb_api.make("healthmonitor", "healthmonitors", pool_id=pool["id"], type="UDP-CONNECT",
                delay=2, timeout=1, max_retries=2)
    lb_api("POST", "healthmonitors", {"healthmonitor": {
        "pool_id": pool["id"], "type": "PING", "delay": 2, "timeout": 1, "max_retries": 2}}, 409)
    # unknown provider, missing VIP, unknown attribute, bad JSON
    lb_api("POST", "loadbalancers", {"loadbalancer": {"vip_subnet_id": vip_subnet["id"],
                                                      "provider": "amphora"}}, 400)
    lb_api("POST", "loadbalancers", {"loadbalancer": {"name": "x"}}, 400)
    lb_api("POST", "loadbalancers", {"loadbalancer": {"vip_subnet_id": vip_subnet["id"],
                                                      "bogus": 1}}, 400)
    lb_api("POST", "loadbalancers", "[", 400)
    lb_api("GET", "loadbalancers/00000000-0000-0000-0000-000000000000", status=404)


def test_an_admin_may_give_the_id_a_project_may_not(lb_api: Lb, stack: dict) -> None:
    """The provider driver of a real Octavia writes Octavia's ids (tests/octavia)."""
    path = f"pools/{stack['pool']['id']}/members"
    ident = "5d1c6a5e-0c9f-4e6b-9a55-1f0d5b2a7c01"
    body = {"member": {"id": ident, "address": "10.8.0.7", "protocol_port": 53}}
    lb_api("POST", path, body, 400)
    assert lb_api("POST", path, body, 201, headers=ADMIN)["member"]["id"] == ident
    assert lb_api("GET", f"{path}/{ident}")["member"]["address"] == "10.8.0.7"
    lb_api("POST", path, {"member": {**body["member"], "address": "10.8.0.8"}}, 409, ADMIN)
    lb_api("POST", path, {"member": {**body["member"], "id": "not-a-uuid"}}, 400, ADMIN)


def test_operating_status_rolls_up_from_members(lb_api: Lb, app_client: TestClient,
                                                stack: dict) -> None:
    pool = stack["pool"]
    path = f"pools/{pool['id']}/members"
    a = lb_api.make("member", path, address="10.8.0.5", protocol_port=53)
    b = lb_api.make("member", path, address="10.8.0.6", protocol_port=53)
    assert a["operating_status"] == "NO_MONITOR"
    lb_api("PUT", f"{path}/{b['id']}", {"member": {"admin_state_up": False}})
    assert lb_api("GET", f"{path}/{b['id']}")["member"]["operating_status"] == "OFFLINE"
    lb_api.make("healthmonitor", "healthmonitors", pool_id=pool["id"], type="UDP-CONNECT",
                delay=2, timeout=1, max_retries=2)
    tree = lb_api("GET", f"loadbalancers/{stack['lb']['id']}/status")["statuses"]
    got = tree["loadbalancer"]["listeners"][0]["pools"][0]
    assert {x["id"]: x["operating_status"] for x in got["members"]} == \
        {a["id"]: "NO_MONITOR", b["id"]: "OFFLINE"}
    assert got["health_monitor"]["type"] == "UDP-CONNECT"


def test_policy_is_project_scoped(lb_api: Lb, stack: dict) -> None:
    lb = stack["lb"]
    assert lb_api("GET", "loadbalancers", headers=P2)["loadbalancers"] == []
    lb_api("GET", f"loadbalancers/{lb['id']}", status=403, headers=P2)
    lb_api("PUT", f"loadbalancers/{lb['id']}", {"loadbalancer": {"name": "x"}}, 403, P2)
    lb_api("DELETE", f"loadbalancers/{lb['id']}", status=403, headers=P2)
    lb_api("POST", "listeners", {"listener": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                              "protocol_port": 1}}, 403, P2)
    # a reader reads but does not write; the admin sees every project's
    assert lb_api("GET", f"loadbalancers/{lb['id']}", headers=READER)["loadbalancer"]["id"]
    lb_api("PUT", f"loadbalancers/{lb['id']}", {"loadbalancer": {"name": "x"}}, 403, READER)
    assert [x["id"] for x in lb_api("GET", "loadbalancers", headers=ADMIN)["loadbalancers"]] \
        == [lb["id"]]


def test_quotas(lb_api: Lb, vip_subnet: dict) -> None:
    lb_api("PUT", "quotas/p1", {"quota": {"load_balancer": 1}}, 403)
    q = lb_api("PUT", "quotas/p1", {"quota": {"load_balancer": 1, "member": 5}}, headers=ADMIN)
    assert q["quota"]["load_balancer"] == 1 and q["quota"]["listener"] == -1
    assert lb_api("GET", "quotas/p1")["quota"]["member"] == 5
    lb_api("GET", "quotas/p2", status=403)
    lb_api.make("loadbalancer", "loadbalancers", vip_subnet_id=vip_subnet["id"])
    err = lb_api("POST", "loadbalancers", {"loadbalancer": {"vip_subnet_id": vip_subnet["id"]}},
                 403)
    assert "Quota has been met" in err["faultstring"]
    lb_api("DELETE", "quotas/p1", status=204, headers=ADMIN)
    lb_api.make("loadbalancer", "loadbalancers", vip_subnet_id=vip_subnet["id"])


def test_deleting_a_pool_takes_its_members_and_monitor(lb_api: Lb, stack: dict) -> None:
    pool, li = stack["pool"], stack["listener"]
    lb_api.make("member", f"pools/{pool['id']}/members", address="10.8.0.5", protocol_port=53)
    lb_api.make("healthmonitor", "healthmonitors", pool_id=pool["id"], type="UDP-CONNECT",
                delay=2, timeout=1, max_retries=2)
    lb_api("DELETE", f"pools/{pool['id']}", status=204)
    assert lb_api("GET", "healthmonitors")["healthmonitors"] == []
    assert lb_api("GET", f"listeners/{li['id']}")["listener"]["default_pool_id"] is None
    lb_api("GET", f"pools/{pool['id']}/members", status=404)


def test_list_filters_sorts_and_pages(lb_api: Lb, vip_subnet: dict) -> None:
    for name in ("b", "a", "c"):
        lb_api.make("loadbalancer", "loadbalancers", name=name, vip_subnet_id=vip_subnet["id"])
    got = lb_api("GET", "loadbalancers?sort=name:desc")["loadbalancers"]
    assert [x["name"] for x in got] == ["c", "b", "a"]
    assert [x["name"] for x in lb_api("GET", "loadbalancers?name=a")["loadbalancers"]] == ["a"]
    page = lb_api("GET", "loadbalancers?sort=name:asc&limit=2&fields=name&fields=id")
    assert [x["name"] for x in page["loadbalancers"]] == ["a", "b"]
    assert set(page["loadbalancers"][0]) == {"id", "name"}
    assert page["loadbalancers_links"][0]["rel"] == "next"
