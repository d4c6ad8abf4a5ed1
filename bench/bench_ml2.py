"""Port create -> ACTIVE latency through a real neutron-server with sbnet's ML2 driver, and through `sbnet serve`.

Run: python bench/bench_ml2.py [--ports 200] [--concurrency 1]
One run, one sbnet store: its API served in this process, two embedded hosts (reference
switches) following it as agents do (they plug what is bound to them, apply the compiled
flows, report the port ACTIVE), and neutron-server (scripts/neutron-venv) writing to it.
Each port is created bound to h1 or h2 in turn; its latency runs from the create request
until the API that made it shows it ACTIVE (and, apart, until the create request returned): through Neutron that is create, commit, bind,
the driver's write to sbnet, the hosts' sync, the agents' report, and the sync worker's
provisioning_complete back in Neutron; through `sbnet serve` the middle steps only.
neutron-server's database is a throwaway PostgreSQL server (Debian postgresql; on SQLite,
which takes one writer, Neutron's concurrent writes end in "database is locked"); sbnet's
store is SQLite, `sbnet serve`'s default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from sbnet.agent.embedded import Cluster
from sbnet.agent.follow import Follower
from sbnet.southbound.neutron_server import ApiThread, NeutronServer
from sbnet.store import Store
from sbnet.store.pgtemp import create_database, temp_postgres

ADMIN = {"X-Project-Id": "bench", "X-Roles": "admin"}
HOSTS = ("h1", "h2")


def measure(client: httpx.Client, ports: int, concurrency: int, label: str,
            hosts: tuple[str, str] = HOSTS) -> dict:
    """Create `ports` ports bound alternately on the hosts; seconds from request to ACTIVE."""
    net = client.post("/v2.0/networks", json={"network": {"name": f"bench-{label}"}})
    net.raise_for_status()
    net_id = net.json()["network"]["id"]
    client.post("/v2.0/subnets", json={"subnet": {
        "network_id": net_id, "cidr": "10.64.0.0/16", "ip_version": 4}}).raise_for_status()

    def one(i: int) -> tuple[float, float]:
        t0 = time.perf_counter()
        r = client.post("/v2.0/ports", json={"port": {
            "network_id": net_id, "name": f"{label}{i}", "binding:host_id": hosts[i % 2]}})
        assert r.status_code == 201, r.text
        created = time.perf_counter() - t0
        pid = r.json()["port"]["id"]
        while True:
            port = client.get(f"/v2.0/ports/{pid}").json()["port"]
            if port["status"] == "ACTIVE":
                return time.perf_counter() - t0, created
            if time.perf_counter() - t0 > 120:
                raise TimeoutError(f"{label} port {pid} not ACTIVE after 120 s ({port})")
            time.sleep(0.05)

    one(-1)                                       # warm-up: default security group, caches
    with ThreadPoolExecutor(concurrency) as pool:
        t0 = time.perf_counter()
        both = list(pool.map(one, range(ports)))
        wall = time.perf_counter() - t0
    lat = sorted(a for a, _ in both)
    return {"path": label, "ports": ports, "concurrency": concurrency,
            "median_s": round(statistics.median(lat), 3),
            "p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3),
            "create_median_s": round(statistics.median(c for _, c in both), 3),
            "active_per_s": round(ports / wall, 1)}


class Hosts:
    """An sbnet store, its API served here, and two embedded hosts following it."""

    def __init__(self, path: Path) -> None:
        self.store = Store(f"sqlite:///{path}")
        self.api = ApiThread(self.store).start()
        self.follower = Follower(self.store, Cluster(list(HOSTS)))
        self.follower.start(wait=0.2)
        self.client = httpx.Client(base_url=self.api.url, headers=ADMIN, timeout=120)
        for i, h in enumerate(HOSTS):              # the hosts' agents register them
            self.client.put(f"/v2.0/sbnet/hosts/{h}", json={"host": {
                "tunnel_ip": f"192.168.100.{i + 1}"}}).raise_for_status()

    def close(self) -> None:
        self.client.close()
        self.follower.stop()
        self.api.stop()
        self.store.dispose()


def run(ports: int, concurrency: int, workdir: Path, neutron_db: str) -> list[dict]:
    """Each path on its own store and hosts: with neutron-server attached, whatever it
    lacks in the store is drift its maintenance task deletes."""
    hosts = Hosts(workdir / "sbnet-serve.db")
    try:
        results = [measure(hosts.client, ports, concurrency, "sbnet serve")]
    finally:
        hosts.close()
    hosts = Hosts(workdir / "sbnet-southbound.db")
    neutron = NeutronServer(workdir / "neutron", hosts.api.url, db_url=neutron_db)
    try:
        neutron.start(timeout=300)
        with httpx.Client(base_url=neutron.url, timeout=120) as nc:
            try:
                results.insert(0, measure(nc, ports, concurrency, "neutron-server + sbnet ML2"))
            except Exception:
                print(neutron.tail(60), f"hosts: {hosts.follower.error}", file=sys.stderr)
                raise
        return results
    finally:
        neutron.stop()
        hosts.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ports", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbnet-bench-ml2-") as tmp, temp_postgres() as pg:
        results = run(args.ports, args.concurrency, Path(tmp), create_database(pg, "neutron"))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'path':<28} {'ports':>5} {'median s':>9} {'p95 s':>7} {'create median s':>16} "
          f"{'ACTIVE/s':>9}")
    for r in results:
        print(f"{r['path']:<28} {r['ports']:>5} {r['median_s']:>9.3f} {r['p95_s']:>7.3f} "
              f"{r['create_median_s']:>16.3f} {r['active_per_s']:>9.1f}")


if __name__ == "__main__":
    main()
