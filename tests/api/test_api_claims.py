"""A port's MAC and addresses claimed in one statement: exact under races, quota never exceeded."""

from __future__ import annotations

import ipaddress
import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from apihelpers import ADMIN, Api, project, start_server, stop_server
from sbnet.api import create_app
from sbnet.model import ipam
from sbnet.store import Store
from sbnet.store import schema as t

QUOTA, RACERS = 12, 30          # creates racing for a project's last ports
MACS, MAC_RACERS = 3, 15        # creates racing for the same chosen MACs


def _allocations(db_url: str) -> tuple[set, set]:
    store = Store(db_url, migrate=False)
    try:
        with store.read() as tx:
            ips = {(r.subnet_id, r.ip_address, r.port_id)
                   for r in tx.conn.execute(select(t.ip_allocations))}
            macs = {(r.network_id, r.mac_address, r.port_id)
                    for r in tx.conn.execute(select(t.mac_allocations))}
    finally:
        store.dispose()
    return ips, macs


def test_racing_creates_keep_quota_macs_and_addresses_exact(pg_db: str) -> None:
    """On a real server over PostgreSQL: one project's creates race past its port quota, and
    another's race for a few chosen MACs.  Exactly the quota's worth and one port per MAC
    land, the rest get Neutron's 409s, and the allocation tables hold exactly the ports'."""
    proc, url = start_server(pg_db)
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        with httpx.Client(base_url=url, timeout=120, limits=limits) as c:
            assert c.put("/v2.0/quotas/q", headers=ADMIN,
                         json={"quota": {"port": QUOTA}}).status_code == 200
            nets = {}
            for name in ("q", "m"):
                hdr = project(name)
                net = c.post("/v2.0/networks", headers=hdr, json={"network": {}}).json()["network"]
                sub = c.post("/v2.0/subnets", headers=hdr, json={"subnet": {
                    "network_id": net["id"], "cidr": "10.81.0.0/24"}})
                assert sub.status_code == 201, sub.text
                nets[name] = net["id"]

            jobs = [("q", None)] * RACERS + [("m", k % MACS) for k in range(MAC_RACERS)]
            random.Random(16).shuffle(jobs)

            def create(job: tuple[str, int | None]) -> httpx.Response:
                name, mac = job
                port = {"network_id": nets[name]}
                if mac is not None:
                    port["mac_address"] = f"fa:16:3e:00:00:{mac:02x}"
                return c.post("/v2.0/ports", headers=project(name), json={"port": port})

            with ThreadPoolExecutor(40) as pool:
                results = list(pool.map(create, jobs))
            ports = c.get("/v2.0/ports", headers=ADMIN).json()["ports"]
    finally:
        stop_server(proc)
    by_project: dict[str, list[httpx.Response]] = {"q": [], "m": []}
    for (name, _), r in zip(jobs, results):
        by_project[name].append(r)
    assert all(r.status_code in (201, 409) for r in results), [r.text for r in results]
    q_ok = [r.json()["port"] for r in by_project["q"] if r.status_code == 201]
    m_ok = [r.json()["port"] for r in by_project["m"] if r.status_code == 201]
    assert len(q_ok) == QUOTA
    assert {r.json()["NeutronError"]["type"] for r in by_project["q"] if r.status_code == 409} \
        == {"OverQuota"}
    assert len(m_ok) == MACS
    assert {r.json()["NeutronError"]["type"] for r in by_project["m"] if r.status_code == 409} \
        == {"MacAddressInUse"}
    assert sorted(p["mac_address"] for p in m_ok) == [f"fa:16:3e:00:00:{k:02x}" for k in range(MACS)]
    for mine in (q_ok, m_ok):
        assert len({p["fixed_ips"][0]["ip_address"] for p in mine}) == len(mine)
        assert len({p["mac_address"] for p in mine}) == len(mine)
    assert sorted(p["id"] for p in ports) == sorted(p["id"] for p in q_ok + m_ok)
    ips, macs = _allocations(pg_db)
    assert ips == {(f["subnet_id"], f["ip_address"], p["id"]) for p in ports for f in p["fixed_ips"]}
    assert macs == {(p["network_id"], p["mac_address"], p["id"]) for p in ports}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_random_mac_another_port_has_is_drawn_again(backend: str, tmp_path, monkeypatch,
                                                       request: pytest.FixtureRequest) -> None:
    """The random MAC a create draws is claimed together with its first address; when another
    port of the network has it, the create draws again and takes its addresses again (the
    SLAAC one derives from the MAC), leaving nothing claimed under the first MAC."""
    db = f"sqlite:///{tmp_path}/mac.db" if backend == "sqlite" else request.getfixturevalue("pg_db")
    with TestClient(create_app(db)) as client:
        api = Api(client, project("mac"))
        net = api.create("networks", "network", name="n")
        v4 = api.create("subnets", "subnet", network_id=net["id"], cidr="10.82.0.0/24")
        v6 = api.create("subnets", "subnet", network_id=net["id"], cidr="fd82::/64",
                        ip_version=6, ipv6_address_mode="slaac", ipv6_ra_mode="slaac")
        first = api.create("ports", "port", network_id=net["id"])
        draws = iter([first["mac_address"], "fa:16:3e:82:82:82"])
        monkeypatch.setattr(ipam, "random_mac", lambda: next(draws))
        second = api.create("ports", "port", network_id=net["id"])
        ports = api.req("GET", "ports", status=200)["ports"]
    assert second["mac_address"] == "fa:16:3e:82:82:82"
    slaac = next(f["ip_address"] for f in second["fixed_ips"] if f["subnet_id"] == v6["id"])
    assert slaac == ipam.eui64(v6["cidr"], "fa:16:3e:82:82:82")
    assert ipaddress.ip_address(slaac) in ipaddress.ip_network(v6["cidr"])
    assert any(f["subnet_id"] == v4["id"] for f in second["fixed_ips"])
    ips, macs = _allocations(db)
    assert ips == {(f["subnet_id"], f["ip_address"], p["id"]) for p in ports for f in p["fixed_ips"]}
    assert macs == {(p["network_id"], p["mac_address"], p["id"]) for p in ports}
