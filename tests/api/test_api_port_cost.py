"""What one port create costs the database on PostgreSQL, and that it survives dropped connections."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg2
from fastapi.testclient import TestClient

from apihelpers import ADMIN, Api, project
from sbnet.api import create_app

# What PostgreSQL logs as statements are query strings, one a round trip: BEGIN with the
# network's and quota's locks and what the create reads (the network, the project's quota
# row, port count and default group, the network's subnets); the MAC and the address in one
# statement; the port with its change and COMMIT.  More means a round trip crept back into
# the hot path (each costs server and database CPU under load, and a wait for the GIL).
MOST_STATEMENTS = 3


def _project_net(api: Api) -> str:
    net = api.create("networks", "network", name="n")
    api.create("subnets", "subnet", network_id=net["id"], cidr="10.9.0.0/24")
    return net["id"]


def _psql(db_url: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(db_url.replace("postgresql+psycopg2", "postgresql"))
    conn.autocommit = True
    return conn


def test_a_port_create_takes_few_statements(pg_db: str) -> None:
    """Counted by PostgreSQL itself (log_statement = all): what reaches the server, however
    the store sends it."""
    with _psql(pg_db) as conn, conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{conn.info.dbname}" SET log_statement = \'all\'')
        cur.execute("SELECT current_setting('data_directory')")
        log = Path(cur.fetchone()[0]).parent / "log"    # sbnet.store.pgtemp's server log
    with TestClient(create_app(pg_db)) as client:
        api = Api(client, project("cost"))
        net = _project_net(api)
        first = api.create("ports", "port", network_id=net)  # makes the default group
        start = log.stat().st_size
        port = api.create("ports", "port", network_id=net)
        with log.open("rb") as f:
            f.seek(start)
            # An entry's continuation lines (a PREPARE's SQL) do not start with a date.
            entries = re.split(rb"\n(?=\d{4}-\d\d-\d\d )", f.read())
            seen = [e.split(b"statement: ", 1)[1].decode() for e in entries
                    if b"LOG:  statement: " in e]
    assert seen[0].startswith("BEGIN;") and seen[-1].endswith(";COMMIT"), seen
    assert len(seen) <= MOST_STATEMENTS, "\n".join(seen)
    assert port["security_groups"] == first["security_groups"]
    assert port["fixed_ips"][0]["ip_address"] != first["fixed_ips"][0]["ip_address"]


def test_connections_the_database_dropped_are_replaced(pg_db: str) -> None:
    """No ping before each use: a pooled connection the server closed fails its first
    statement, and the request runs again on a new one instead of answering 500."""
    with TestClient(create_app(pg_db)) as client:
        api = Api(client, project("drop"))
        net = _project_net(api)
        api.create("ports", "port", network_id=net)
        conn = _psql(pg_db)
        cur = conn.cursor()
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        assert cur.rowcount >= 1
        conn.close()
        for _ in range(3):
            api.create("ports", "port", network_id=net)
        assert len(api.req("GET", "ports", status=200)["ports"]) == 4


def test_what_a_create_read_ahead_is_not_stale(pg_db: str) -> None:
    """A port create reads its network, quota, port count, default group and subnets in one
    round trip: a bulk create still counts the ports it made (the quota holds within it), and
    the default group it makes is the one every port of the bulk gets."""
    with TestClient(create_app(pg_db)) as client:
        admin, p = Api(client, ADMIN), Api(client, project("ahead"))
        admin.req("PUT", "quotas/ahead", {"quota": {"port": 3}}, 200)
        net = _project_net(p)
        bulk = p.req("POST", "ports", {"ports": [{"network_id": net}, {"network_id": net}]},
                     201)["ports"]
        assert len({q["security_groups"][0] for q in bulk}) == 1
        assert p.req("GET", "security-groups", status=200)["security_groups"][0]["id"] == \
            bulk[0]["security_groups"][0]
        err = p.err("POST", "ports", {"ports": [{"network_id": net}, {"network_id": net}]}, 409)
        assert err["type"] == "OverQuota"
        p.create("ports", "port", network_id=net)
        assert p.err("POST", "ports", {"port": {"network_id": net}}, 409)["type"] == "OverQuota"
        ips = [f["ip_address"] for q in p.req("GET", "ports", status=200)["ports"]
               for f in q["fixed_ips"]]
        assert len(ips) == len(set(ips)) == 3
