"""IPAM and MAC allocation under 300 concurrent port creates, on SQLite and on PostgreSQL."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from apihelpers import ADMIN, start_server, stop_server

REQUESTS, FREE = 300, 250


def _flood(urls: list[str], requests: int = REQUESTS, free: int = FREE) -> None:
    """`requests` creates against `free` addresses, spread over every server in urls."""
    url = urls[0]
    with httpx.Client(base_url=url, headers=ADMIN, timeout=120) as c:
        net = c.post("/v2.0/networks", json={"network": {"name": "flood"}}).json()["network"]
        sub = c.post("/v2.0/subnets", json={"subnet": {
            "network_id": net["id"], "cidr": "10.50.0.0/24",
            "allocation_pools": [{"start": "10.50.0.2", "end": f"10.50.0.{1 + free}"}]}})
        assert sub.status_code == 201, sub.text

    limits = httpx.Limits(max_connections=requests, max_keepalive_connections=requests)
    clients = [httpx.Client(base_url=u, headers=ADMIN, timeout=180, limits=limits) for u in urls]
    try:
        def create(i: int) -> httpx.Response:
            return clients[i % len(clients)].post(
                "/v2.0/ports", json={"port": {"network_id": net["id"], "name": f"p{i}"}})

        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(create, range(requests)))
        ports = clients[-1].get("/v2.0/ports", params={"network_id": net["id"]}).json()["ports"]

        def create_net(i: int) -> httpx.Response:
            return clients[i % len(clients)].post("/v2.0/networks", json={"network": {}})

        with ThreadPoolExecutor(max_workers=30) as pool:
            nets = [r.json()["network"] for r in pool.map(create_net, range(60))]
    finally:
        for c in clients:
            c.close()

    ok = [r.json()["port"] for r in results if r.status_code == 201]
    failed = [r for r in results if r.status_code != 201]
    assert len(ok) == free
    assert {r.status_code for r in failed} == {409}
    assert {r.json()["NeutronError"]["type"] for r in failed} == {"IpAddressGenerationFailure"}
    ips = [p["fixed_ips"][0]["ip_address"] for p in ok]
    macs = [p["mac_address"] for p in ok]
    assert len(set(ips)) == free and len(set(macs)) == free
    # What the server stored agrees with what it answered: no lost update, no phantom port.
    assert sorted(p["id"] for p in ports) == sorted(p["id"] for p in ok)
    assert {p["fixed_ips"][0]["ip_address"] for p in ports} == set(ips)
    # Segment allocation is serialised the same way: every network its own VNI.
    assert len({n["provider:segmentation_id"] for n in nets}) == 60


def _servers(db_url: str, count: int, requests: int = REQUESTS, free: int = FREE) -> None:
    procs, urls = [], []
    try:
        for _ in range(count):
            proc, url = start_server(db_url)
            procs.append(proc)
            urls.append(url)
        _flood(urls, requests, free)
    finally:
        for proc in procs:
            stop_server(proc)


def test_concurrent_port_creates_sqlite(tmp_path: pytest.TempPathFactory) -> None:
    _servers(f"sqlite:///{tmp_path}/flood.db", 1)


def test_concurrent_port_creates_postgres(pg_db: str) -> None:
    _servers(pg_db, 1)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_two_server_processes_share_one_database(backend: str, tmp_path: pytest.TempPathFactory,
                                                 request: pytest.FixtureRequest) -> None:
    """The guarantee holds across processes too: the database, not the process, serialises."""
    url = f"sqlite:///{tmp_path}/shared.db" if backend == "sqlite" else request.getfixturevalue("pg_db")
    _servers(url, 2, requests=150, free=120)


def _mixed(url: str, db_url: str) -> None:
    """Creates, updates and deletes racing each other: no 5xx, and the allocation tables end up
    exactly matching the ports' fixed IPs and MACs (nothing lost, nothing leaked)."""
    import random

    from sqlalchemy import select

    from sbnet.store import Store
    from sbnet.store import schema as t

    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(base_url=url, headers=ADMIN, timeout=180, limits=limits) as c:
        net = c.post("/v2.0/networks", json={"network": {}}).json()["network"]
        sub = c.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.60.0.0/26"}})
        sub = sub.json()["subnet"]
        seed = [c.post("/v2.0/ports", json={"port": {"network_id": net["id"]}}).json()["port"]
                for _ in range(20)]

        def op(i: int) -> int:
            rng = random.Random(i)
            victim = rng.choice(seed)["id"]
            kind = i % 4
            if kind == 0:
                r = c.post("/v2.0/ports", json={"port": {"network_id": net["id"]}})
            elif kind == 1:
                r = c.delete(f"/v2.0/ports/{victim}")
            elif kind == 2:
                ip = f"10.60.0.{rng.randrange(2, 62)}"
                r = c.put(f"/v2.0/ports/{victim}", json={"port": {"fixed_ips": [
                    {"subnet_id": sub["id"], "ip_address": ip}]}})
            else:
                r = c.put(f"/v2.0/ports/{victim}", json={"port": {"mac_address": f"fa:16:3e:aa:00:{i % 9:02x}"}})
            return r.status_code

        with ThreadPoolExecutor(max_workers=40) as pool:
            codes = list(pool.map(op, range(200)))
        ports = c.get("/v2.0/ports", params={"network_id": net["id"]}).json()["ports"]
    assert all(code < 500 for code in codes), codes
    store = Store(db_url)
    with store.read() as tx:
        ips = {(r.subnet_id, r.ip_address, r.port_id) for r in tx.conn.execute(select(t.ip_allocations))}
        macs = {(r.mac_address, r.port_id) for r in tx.conn.execute(select(t.mac_allocations))}
    store.dispose()
    assert ips == {(f["subnet_id"], f["ip_address"], p["id"]) for p in ports for f in p["fixed_ips"]}
    assert macs == {(p["mac_address"], p["id"]) for p in ports}


def test_mixed_races_keep_allocations_exact_sqlite(tmp_path: pytest.TempPathFactory) -> None:
    db = f"sqlite:///{tmp_path}/mixed.db"
    proc, url = start_server(db)
    try:
        _mixed(url, db)
    finally:
        stop_server(proc)


def test_mixed_races_keep_allocations_exact_postgres(pg_db: str) -> None:
    proc, url = start_server(pg_db)
    try:
        _mixed(url, pg_db)
    finally:
        stop_server(proc)
