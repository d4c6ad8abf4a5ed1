"""Neutron's list semantics, revisions, If-Match, tags, error format and the change feed."""

from __future__ import annotations

from apihelpers import Api
from sbnet.store import Store


def _nets(api: Api, *names: str) -> list[dict]:
    return [api.create("networks", "network", name=n) for n in names]


def test_filters_fields_sort_and_pagination(api: Api) -> None:
    nets = _nets(api, "c", "a", "b", "d")
    api.req("PUT", f"networks/{nets[0]['id']}", {"network": {"admin_state_up": False}}, 200)
    assert [n["name"] for n in api.req("GET", "networks?admin_state_up=false")["networks"]] == ["c"]
    both = api.req("GET", "networks?name=a&name=b&sort_key=name")["networks"]
    assert [n["name"] for n in both] == ["a", "b"]
    only = api.req("GET", "networks?fields=id&fields=name")["networks"]
    assert all(set(n) == {"id", "name"} for n in only)
    desc = api.req("GET", "networks?sort_key=name&sort_dir=desc")["networks"]
    assert [n["name"] for n in desc] == ["d", "c", "b", "a"]
    page1 = api.req("GET", "networks?sort_key=name&sort_dir=asc&limit=2")
    assert [n["name"] for n in page1["networks"]] == ["a", "b"]
    nxt = [link for link in page1["networks_links"] if link["rel"] == "next"][0]["href"]
    page2 = api.client.get(nxt, headers=api.headers).json()
    assert [n["name"] for n in page2["networks"]] == ["c", "d"]
    assert api.err("GET", "networks?sort_dir=sideways&sort_key=name")["type"] == "HTTPBadRequest"
    assert api.err("GET", "networks?limit=x")["type"] == "HTTPBadRequest"


def test_revision_if_match_and_timestamps(api: Api) -> None:
    net = api.create("networks", "network", name="rev")
    assert net["revision_number"] == 1 and net["created_at"] == net["updated_at"]
    path = f"networks/{net['id']}"
    out = api.req("PUT", path, {"network": {"name": "rev2"}}, 200,
                  headers={"If-Match": "revision_number=1"})["network"]
    assert out["revision_number"] == 2
    err = api.req("PUT", path, {"network": {"name": "rev3"}}, 412,
                  headers={"If-Match": "revision_number=1"})["NeutronError"]
    assert err["type"] == "RevisionNumberConstraintFailed"
    api.req("DELETE", path, None, 412, headers={"If-Match": "revision_number=7"})
    api.req("DELETE", path, None, 204, headers={"If-Match": "revision_number=2"})


def test_tags_api(api: Api) -> None:
    net = api.create("networks", "network", name="t")
    base = f"networks/{net['id']}/tags"
    api.req("PUT", f"{base}/red", None, 201)
    assert api.req("PUT", base, {"tags": ["x", "y"]}, 200) == {"tags": ["x", "y"]}
    api.req("GET", f"{base}/x", None, 204)
    assert api.err("GET", f"{base}/red", status=404)["type"] == "TagNotFound"
    api.req("DELETE", f"{base}/x", None, 204)
    assert api.req("GET", base, None, 200) == {"tags": ["y"]}
    assert [n["id"] for n in api.req("GET", "networks?tags=y")["networks"]] == [net["id"]]
    assert api.req("GET", "networks?tags-any=nope")["networks"] == []
    api.req("DELETE", base, None, 204)
    assert api.req("GET", f"networks/{net['id']}")["network"]["tags"] == []


def test_error_format_and_types(api: Api) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    for path, typ in (("networks", "NetworkNotFound"), ("subnets", "SubnetNotFound"),
                      ("ports", "PortNotFound"), ("routers", "RouterNotFound"),
                      ("floatingips", "FloatingIPNotFound"),
                      ("security-groups", "SecurityGroupNotFound"),
                      ("qos/policies", "QosPolicyNotFound"), ("trunks", "TrunkNotFound"),
                      ("sfc/port_chains", "PortChainNotFound")):
        assert api.err("GET", f"{path}/{missing}", status=404)["type"] == typ
    r = api.client.post("/v2.0/networks", content=b"{not json", headers=api.headers)
    assert r.status_code == 400 and r.json()["NeutronError"]["message"] == "Malformed request body"
    err = api.err("POST", "networks", {"network": {"bogus": 1}})
    assert "Unrecognized attribute(s) 'bogus'" in err["message"]
    assert "Invalid input for mtu" in api.err("POST", "networks", {"network": {"mtu": "big"}})["message"]
    assert api.err("POST", "networks", {"nope": {}})["type"] == "HTTPBadRequest"
    assert api.err("GET", "nothing-here", status=404)["type"] == "HTTPNotFound"


def test_ipam_errors(api: Api) -> None:
    net = api.create("networks", "network", name="ipam")
    sub = api.create("subnets", "subnet", network_id=net["id"], cidr="10.9.0.0/29",
                     allocation_pools=[{"start": "10.9.0.2", "end": "10.9.0.3"}])
    bad = api.err("POST", "ports", {"port": {"network_id": net["id"],
                                             "fixed_ips": [{"ip_address": "10.8.0.1"}]}})
    assert bad["type"] == "InvalidIpForNetwork"
    api.create("ports", "port", network_id=net["id"])
    p2 = api.create("ports", "port", network_id=net["id"])
    assert api.err("POST", "ports", {"port": {"network_id": net["id"]}},
                   409)["type"] == "IpAddressGenerationFailure"
    # Addresses outside the pools but inside the CIDR may still be asked for.
    api.create("ports", "port", network_id=net["id"], fixed_ips=[{"ip_address": "10.9.0.5"}])
    err = api.err("POST", "ports", {"port": {"network_id": net["id"], "mac_address": p2["mac_address"]}},
                  409)
    assert err["type"] == "MacAddressInUse"
    assert api.err("DELETE", f"subnets/{sub['id']}", status=409)["type"] == "SubnetInUse"
    assert api.err("DELETE", f"networks/{net['id']}", status=409)["type"] == "NetworkInUse"
    bad_pool = api.err("POST", "subnets", {"subnet": {
        "network_id": net["id"], "cidr": "10.10.0.0/24",
        "allocation_pools": [{"start": "10.10.0.1", "end": "10.10.1.5"}]}})
    assert bad_pool["type"] == "OutOfBoundsAllocationPool"
    host_bits = api.err("POST", "subnets", {"subnet": {"network_id": net["id"], "cidr": "10.11.0.1/24"}})
    assert "10.11.0.0/24" in host_bits["message"]


def test_change_feed_and_snapshot(api: Api, app_client: object) -> None:
    store: Store = app_client.app.state.api.store
    start = store.current_revision()
    net = api.create("networks", "network", name="feed")
    api.req("PUT", f"networks/{net['id']}", {"network": {"name": "feed2"}}, 200)
    api.req("DELETE", f"networks/{net['id']}", None, 204)
    changes = store.changes_since(start)
    assert [(c["resource"], c["op"]) for c in changes] == [
        ("network", "create"), ("network", "update"), ("network", "delete")]
    assert [c["revision"] for c in changes] == list(range(start + 1, start + 4))
    resumed = store.changes_since(changes[0]["revision"])
    assert resumed == changes[1:]
    over_http = api.req("GET", f"sbnet/changes?since={start}", None, 200)
    assert [c["op"] for c in over_http["changes"]] == ["create", "update", "delete"]
    assert over_http["revision"] == start + 3
    api.as_({"X-Project-Id": "p", "X-Roles": "member"}).req("GET", "sbnet/changes", None, 403)
    kept = api.create("networks", "network", name="kept")
    snap = store.snapshot()
    assert snap["network"] == [api.req("GET", f"networks/{kept['id']}")["network"]]
    assert snap["revision"] == store.current_revision()


def test_version_document_and_extensions(api: Api) -> None:
    doc = api.client.get("/").json()
    assert doc["versions"][0]["id"] == "v2.0" and doc["versions"][0]["status"] == "CURRENT"
    aliases = {e["alias"] for e in api.req("GET", "extensions", None, 200)["extensions"]}
    assert {"router", "security-group", "qos", "trunk", "sfc", "provider", "binding",
            "standard-attr-tag", "revision-if-match", "pagination", "sorting"} <= aliases
    assert api.req("GET", "extensions/router", None, 200)["extension"]["alias"] == "router"


def test_token_file_auth(tmp_path: object) -> None:
    from fastapi.testclient import TestClient

    from sbnet.api import create_app

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text("tok-a: {project_id: pa, roles: [member]}\ntok-admin: {project_id: ops, roles: [admin]}\n")
    with TestClient(create_app("sqlite://", token_file=str(tokens), require_token=True)) as c:
        assert c.get("/v2.0/networks").status_code == 401
        assert c.get("/v2.0/networks", headers={"X-Auth-Token": "bad"}).status_code == 401
        r = c.post("/v2.0/networks", json={"network": {"name": "n"}}, headers={"X-Auth-Token": "tok-a"})
        assert r.status_code == 201 and r.json()["network"]["project_id"] == "pa"
        assert "provider:network_type" not in r.json()["network"]
        admin = c.get("/v2.0/networks", headers={"X-Auth-Token": "tok-admin"}).json()["networks"]
        assert admin[0]["provider:network_type"] == "vxlan"


def test_malformed_bodies_are_4xx(api: Api) -> None:
    for raw in (b'{"network": {"name": NaN}}', b'{"network": {"name": "\\ud800"}}', b"[" * 5000,
                b'"just a string"', b"\xff\xfe"):
        r = api.client.post("/v2.0/networks", content=raw, headers=api.headers)
        assert r.status_code == 400, (raw[:30], r.text)
    r = api.client.get("/v2.0/networks", headers={"X-Project-Id": "p" * 300})
    assert r.status_code == 400


def test_sbnet_serve_default_sqlite_wal(tmp_path: object) -> None:
    import sqlite3

    import httpx

    from sbnet.api.process import spawn, stop

    proc, url = spawn(None, via_cli=True, cwd=str(tmp_path))
    try:
        assert httpx.get(url + "/").json()["versions"][0]["id"] == "v2.0"
        r = httpx.post(url + "/v2.0/networks", json={"network": {"name": "n"}})
        assert r.status_code == 201
    finally:
        stop(proc)
    db = sqlite3.connect(tmp_path / "sbnet.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0004"


def test_json_suffix_of_older_clients(api: Api) -> None:
    net = api.create("networks", "network", name="suffix")
    assert api.req("GET", f"networks/{net['id']}.json", None, 200)["network"]["name"] == "suffix"
    assert "extensions" in api.req("GET", "extensions.json", None, 200)


def test_change_feed_long_poll_over_http(server: str) -> None:
    import threading
    import time

    import httpx

    from apihelpers import ADMIN

    with httpx.Client(base_url=server, headers=ADMIN, timeout=30) as c:
        rev = c.get("/v2.0/sbnet/changes", params={"since": 0}).json()["revision"]
        threading.Timer(0.5, lambda: httpx.post(server + "/v2.0/networks", headers=ADMIN,
                                                json={"network": {"name": "poll"}})).start()
        t0 = time.monotonic()
        got = c.get("/v2.0/sbnet/changes", params={"since": rev, "wait": 20}).json()
        assert time.monotonic() - t0 < 10
        assert got["changes"][0]["body"]["name"] == "poll" and got["revision"] > rev
        assert c.get("/v2.0/sbnet/changes", params={"wait": 999}).status_code == 400
