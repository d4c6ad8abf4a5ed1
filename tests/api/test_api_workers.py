"""`sbnet serve --workers`: several server processes on one PostgreSQL database, agents' heartbeats shared."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from apihelpers import ADMIN, Api
from sbnet.api import create_app
from sbnet.api.process import spawn, stop
from sbnet.cli.main import app


def _workers(pid: int) -> list[int]:
    """The server's worker processes (not multiprocessing's resource tracker beside them)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(c) for c in f.read().split()]
    return [k for k in kids if b"spawn_main" in open(f"/proc/{k}/cmdline", "rb").read()]


def test_an_agent_heard_by_one_process_binds_ports_on_another(pg_db: str) -> None:
    """Each process keeps the beats it hears; the others find them in the database."""
    with TestClient(create_app(pg_db)) as one, TestClient(create_app(pg_db)) as other:
        a, b = Api(one, ADMIN), Api(other, ADMIN)
        a.req("PUT", "sbnet/hosts/h1", {"host": {"tunnel_ip": "192.0.2.1",
                                                 "datapath": "reference"}}, 200)
        net = b.create("networks", "network", name="n")
        b.create("subnets", "subnet", network_id=net["id"], cidr="10.9.0.0/24")
        port = b.create("ports", "port", network_id=net["id"], **{"binding:host_id": "h1"})
        assert port["binding:vif_type"] == "tap"
        lost = b.create("ports", "port", network_id=net["id"], **{"binding:host_id": "h2"})
        assert lost["binding:vif_type"] == "binding_failed"
        agents = b.req("GET", "agents", status=200)["agents"]
        assert [(x["host"], x["alive"]) for x in agents] == [("h1", True)]


def test_serve_with_two_workers_on_postgres(pg_db: str) -> None:
    proc, url = spawn(pg_db, via_cli=True, extra=["--workers", "2"])
    workers = _workers(proc.pid)
    try:
        assert len(workers) == 2
        with httpx.Client(base_url=url, headers=ADMIN, timeout=60) as c:
            net = c.post("/v2.0/networks", json={"network": {"name": "w"}}).json()["network"]
            c.post("/v2.0/subnets", json={"subnet": {
                "network_id": net["id"], "cidr": "10.7.0.0/24",
                "allocation_pools": [{"start": "10.7.0.2", "end": "10.7.0.17"}]}})
            c.put("/v2.0/sbnet/hosts/h1", json={"host": {"tunnel_ip": "192.0.2.1",
                                                         "datapath": "reference"}})

        def create(i: int) -> httpx.Response:
            # A connection each: the kernel hands each to whichever worker accepts first.
            with httpx.Client(base_url=url, headers=ADMIN, timeout=60, verify=False) as c:
                return c.post("/v2.0/ports", json={"port": {
                    "network_id": net["id"], "binding:host_id": "h1"}})

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(create, range(20)))
        ok = [r.json()["port"] for r in results if r.status_code == 201]
        assert len(ok) == 16
        assert {r.json()["NeutronError"]["type"] for r in results if r.status_code != 201} \
            == {"IpAddressGenerationFailure"}
        assert len({p["fixed_ips"][0]["ip_address"] for p in ok}) == 16
        assert {p["binding:vif_type"] for p in ok} == {"tap"}
    finally:
        stop(proc)
    assert not any(os.path.exists(f"/proc/{pid}") for pid in workers)  # stopped with it


def test_workers_on_sqlite_are_refused_in_one_line(tmp_path) -> None:
    r = CliRunner().invoke(app, ["serve", "--db", f"sqlite:///{tmp_path}/x.db", "--workers", "2"])
    assert r.exit_code == 2
    assert "several processes need PostgreSQL" in r.output and "Traceback" not in r.output
