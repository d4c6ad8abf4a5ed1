"""Input validation at the API boundary, as properties (hypothesis): canonical addresses and
MACs, caps on lists, bodies and nesting, never a 5xx."""

from __future__ import annotations

import ipaddress
import json

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apihelpers import ADMIN
from sbnet.api import create_app
from sbnet.model import attrs as a

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))

ADDRESS_TEXT = st.one_of(
    st.ip_addresses().map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded.upper()),
    st.ip_addresses().map(lambda ip: f"{ip}%eth0"),
    st.ip_addresses().map(lambda ip: f" {ip}"),
    st.ip_addresses().map(lambda ip: f"{ip}\n"),
    st.ip_addresses(v=4).map(lambda ip: ".".join(f"0{o}" for o in str(ip).split("."))),
    st.text(max_size=40),
)


def neutron_accepts(text: str) -> bool:
    """The oracle, written from Neutron's validate_ip_address: a plain address (no
    whitespace, no zone), IPv4 in its one canonical form."""
    if text != text.strip() or "%" in text or not text:
        return False
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return False
    return ip.version == 6 or str(ip) == text


@SETTINGS
@given(ADDRESS_TEXT)
def test_addresses_are_accepted_exactly_when_neutron_would_and_come_back_canonical(text):
    try:
        out = a.to_ip(text)
    except a.Invalid:
        assert not neutron_accepts(text)
        return
    assert neutron_accepts(text)
    assert out == str(ipaddress.ip_address(text))


@SETTINGS
@given(st.text(alphabet="0123456789abcdefABCDEF:-\n \t", min_size=10, max_size=20))
def test_macs_are_whole(text):
    try:
        out = a.to_mac(text)
    except a.Invalid:
        return
    assert len(out) == 17 and out == out.strip() and out.lower() == out
    assert out.replace(":", "").isalnum() and len(out.split(":")) == 6


@pytest.fixture(scope="module")
def client():
    with TestClient(create_app("sqlite://"), raise_server_exceptions=False) as c:
        net = c.post("/v2.0/networks", json={"network": {}}, headers=ADMIN).json()["network"]
        c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/16"}},
               headers=ADMIN)
        c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "fd00::/64",
                                                 "ip_version": 6}}, headers=ADMIN)
        c.net = net["id"]
        yield c


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ADDRESS_TEXT)
def test_fixed_ip_requests(client, text):
    r = client.post("/v2.0/ports", json={"port": {"network_id": client.net,
                                                  "fixed_ips": [{"ip_address": text}]}},
                    headers=ADMIN)
    assert r.status_code < 500, r.text
    if r.status_code == 201:
        assert neutron_accepts(text)
        got = r.json()["port"]["fixed_ips"][0]["ip_address"]
        assert got == str(ipaddress.ip_address(text))
        client.delete(f"/v2.0/ports/{r.json()['port']['id']}", headers=ADMIN)
    elif not neutron_accepts(text):
        assert r.status_code == 400


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 40), st.sampled_from(["fixed_ips", "allowed_address_pairs",
                                            "security_groups", "tags"]))
def test_lists_are_capped(client, n, attr):
    cap = {"fixed_ips": a.LIMITS.fixed_ips, "allowed_address_pairs": a.LIMITS.address_pairs,
           "security_groups": a.LIMITS.list_items, "tags": a.LIMITS.tags}[attr]
    item = {"fixed_ips": lambda i: {"subnet_id": "00000000-0000-0000-0000-000000000000"},
            "allowed_address_pairs": lambda i: {"ip_address": f"10.9.0.{i}"},
            "security_groups": lambda i: f"00000000-0000-0000-0000-{i:012d}",
            "tags": lambda i: f"t{i}"}[attr]
    n = n if attr != "security_groups" else n * 4
    r = client.post("/v2.0/ports", json={"port": {"network_id": client.net,
                                                  attr: [item(i) for i in range(n)]}},
                    headers=ADMIN)
    assert r.status_code < 500, r.text
    if n > cap:
        assert r.status_code == 400 and "maximum" in r.text


@settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.integers(1, 3000), st.sampled_from(["/v2.0/networks", "/v2.0/sbnet/hosts/h1",
                                              "/v2.0/sbnet/hosts/h1/stats",
                                              "/v2.0/sbnet/ports/x/status"]))
def test_nesting_is_capped_and_never_a_5xx(client, depth, path):
    body = "[" * depth + "]" * depth
    method = "POST" if path == "/v2.0/networks" else "PUT"
    r = client.request(method, path, content=body.encode(), headers=ADMIN)
    assert r.status_code < 500, r.text
    assert r.status_code == 400 or depth <= a.LIMITS.depth
    # Without credentials (a token file configured) nothing is parsed: 401 first.


def test_big_bodies_get_413_and_anonymous_bodies_are_not_read(tmp_path):
    tokens = tmp_path / "t.yaml"
    tokens.write_text("tok:\n  project_id: p\n  roles: [admin]\n")
    with TestClient(create_app("sqlite://", token_file=str(tokens)),
                    raise_server_exceptions=False) as c:
        big = json.dumps({"network": {"name": "x" * (a.LIMITS.body_bytes + 1)}})
        r = c.post("/v2.0/networks", content=big, headers={"X-Auth-Token": "tok"})
        assert r.status_code == 413 and r.json()["NeutronError"]["type"] == "HTTPRequestEntityTooLarge"
        # No credentials at all: refused before the (malformed) body is looked at.
        r = c.put("/v2.0/sbnet/hosts/h1", content=b"[" * 100000)
        assert r.status_code == 401
        assert c.get("/v2.0/networks").status_code == 401
        assert c.get("/v2.0/networks", headers={"X-Auth-Token": "tok"}).status_code == 200


@pytest.mark.parametrize("query", ["since=" + "9" * 30, "limit=" + "9" * 30, "wait=nan",
                                   "wait=inf", "since=-1"])
def test_feed_integers_are_bounded(client, query):
    r = client.get(f"/v2.0/sbnet/changes?{query}", headers=ADMIN)
    assert r.status_code == 400, r.text


def test_bulk_is_capped(client):
    r = client.post("/v2.0/networks", json={"networks": [{} for _ in range(a.LIMITS.bulk + 1)]},
                    headers=ADMIN)
    assert r.status_code == 400 and "maximum" in r.text
