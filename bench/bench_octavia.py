"""A real Octavia (API, driver agent) with sbnet as its provider: how long each object takes to be ACTIVE, and that the VIP it built balances.

Run: python bench/bench_octavia.py [--connections 600]
One sbnet store: its API served in this process, two embedded hosts (reference switches);
Octavia 19 from scripts/octavia-venv (noauth, a throwaway PostgreSQL server: on SQLite the
driver agent's status writes and the API's collide), its `sbnet` provider driver writing to
sbnet's API.  Through Octavia's own v2 API, as a project member: a load balancer on a
subnet of sbnet's, a TCP listener, a pool, three members (weights 1/2/3), a TCP health
monitor; each timed from the request until Octavia shows the load balancer ACTIVE again (the
driver's write to sbnet, then its status report through the driver agent).  Then: a
LEAST_CONNECTIONS pool, which Octavia answers with the provider's refusal; `--connections`
TCP SYNs from a client on h1 to the VIP, counted per member on the switches; a member the
agents report ERROR, timed until Octavia shows it; the cascade delete, timed until Octavia
has forgotten the load balancer and sbnet holds neither it nor its VIP port.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from sbnet.agent.embedded import Cluster
from sbnet.southbound.neutron_server import ApiThread
from sbnet.southbound.octavia_server import OctaviaError, OctaviaServer
from sbnet.store import Store
from sbnet.store.pgtemp import create_database, temp_postgres

ADMIN = {"X-Project-Id": "p1", "X-Roles": "admin"}
WEIGHTS = (1, 2, 3)


def until(check, timeout: float = 60.0, step: float = 0.05) -> float:
    """Seconds until check() is true (TimeoutError past `timeout`)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not reached in {timeout}s")
        time.sleep(step)
    return time.monotonic() - start


def relay_split(log: Path) -> dict:
    """Medians, over the driver's status reports, of the seconds each waited in its queue,
    waited for Octavia's commit, and took to read sbnet's statuses and report them."""
    pat = re.compile(r"reported: queued ([0-9.]+) s, waited ([0-9.]+) s for Octavia's commit, "
                     r"read and reported in ([0-9.]+) s")
    rows = [tuple(map(float, m.groups())) for m in pat.finditer(log.read_text(errors="replace"))]
    if not rows:
        return {"reports": 0}
    out: dict = {"reports": len(rows)}
    for i, k in enumerate(("queued", "commit_wait", "send")):
        out[f"report_{k}_median_s"] = round(statistics.median(r[i] for r in rows), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=600)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbnet-bench-octavia-") as tmp, temp_postgres() as pg:
        figures = run(Path(tmp), create_database(pg, "octavia"), args.connections)
    print(json.dumps(figures, indent=1))


def run(work: Path, db_url: str, connections: int) -> dict:
    store = Store(f"sqlite:///{work / 'sbnet.db'}")
    api = ApiThread(store).start()
    sb = httpx.Client(base_url=f"{api.url}/v2.0", headers=ADMIN, timeout=60)
    octavia = None
    try:
        net = sb.post("/networks", json={"network": {"name": "lbnet"}}).json()["network"]
        subnet = sb.post("/subnets", json={"subnet": {
            "network_id": net["id"], "cidr": "10.0.0.0/24", "ip_version": 4,
            "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.199"}]}}).json()["subnet"]

        def port(host: str, ip: str) -> dict:
            return sb.post("/ports", json={"port": {
                "network_id": net["id"], "binding:host_id": host,
                "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": ip}]}}).json()["port"]
        client = port("h1", "10.0.0.10")
        members = [port("h2", f"10.0.0.{20 + i}") for i in range(3)]

        t0 = time.monotonic()
        octavia = OctaviaServer(work / "octavia", api.url, status_interval=1.0,
                                db_url=db_url).start()
        figures: dict = {"octavia_start_s": round(time.monotonic() - t0, 1)}
        o = octavia.request

        def lb_status() -> str:
            return o("GET", f"loadbalancers/{lb['id']}")["loadbalancer"]["provisioning_status"]

        def timed(name: str, method: str, path: str, body: dict) -> dict:
            """The request's own seconds (Octavia's checks and commit, the driver's writes to
            sbnet) and those until the load balancer is ACTIVE again."""
            start = time.monotonic()
            made = o(method, path, body)
            figures[f"{name}_request_s"] = round(time.monotonic() - start, 2)
            if name == "loadbalancer":
                lb.update(made["loadbalancer"])
            until(lambda: lb_status() == "ACTIVE")
            figures[f"{name}_active_s"] = round(time.monotonic() - start, 2)
            return made

        lb: dict = {}
        timed("loadbalancer", "POST", "loadbalancers", {"loadbalancer": {
            "name": "web", "vip_subnet_id": subnet["id"], "vip_address": "10.0.0.100"}})
        li = timed("listener", "POST", "listeners", {"listener": {
            "loadbalancer_id": lb["id"], "protocol": "TCP", "protocol_port": 80}})["listener"]
        pool = timed("pool", "POST", "pools", {"pool": {
            "listener_id": li["id"], "protocol": "TCP", "lb_algorithm": "ROUND_ROBIN"}})["pool"]
        made = []
        for i, (m, w) in enumerate(zip(members, WEIGHTS)):
            made.append(timed(f"member{i + 1}", "POST", f"pools/{pool['id']}/members", {
                "member": {"address": m["fixed_ips"][0]["ip_address"], "protocol_port": 8080,
                           "weight": w, "subnet_id": subnet["id"]}})["member"])
        hm = timed("healthmonitor", "POST", "healthmonitors", {"healthmonitor": {
            "pool_id": pool["id"], "type": "TCP", "delay": 2, "timeout": 1,
            "max_retries": 2}})["healthmonitor"]
        try:
            o("POST", "pools", {"pool": {"loadbalancer_id": lb["id"], "protocol": "TCP",
                                         "lb_algorithm": "LEAST_CONNECTIONS"}})
            figures["least_connections"] = "accepted"
        except OctaviaError as exc:
            figures["least_connections"] = f"{exc.status} {exc.body['faultstring']}"
        until(lambda: lb_status() == "ACTIVE")

        # sbnet holds Octavia's objects, under Octavia's ids
        held = sb.get(f"/lbaas/pools/{pool['id']}/members").json()["members"]
        assert sorted(x["id"] for x in held) == sorted(x["id"] for x in made), held
        assert sb.get(f"/lbaas/healthmonitors/{hm['id']}").status_code == 200
        vip = sb.get(f"/ports/{lb['vip_port_id']}").json()["port"]

        # the VIP Octavia made balances on the switches by the members' weights
        cluster = Cluster(["h1", "h2"])
        cluster.sync(store.snapshot())
        frames = [bytes(Ether(src=client["mac_address"], dst=vip["mac_address"])
                        / IP(src="10.0.0.10", dst="10.0.0.100") / TCP(sport=s, dport=80))
                  for s in range(20000, 20000 + connections)]
        got = cluster.send(client["id"], frames)
        seen = Counter({m["id"]: len(got.to(m["id"])) for m in members})
        figures["spread"] = "/".join(f"{seen[m['id']] / connections:.3f}" for m in members)
        figures["spread_want"] = "/".join(f"{w / sum(WEIGHTS):.3f}" for w in WEIGHTS)
        figures["connections_delivered"] = sum(seen.values())

        # a health verdict in sbnet reaches Octavia through the driver's status relay
        failed = made[1]["id"]
        start = time.monotonic()
        sb.put("/sbnet/lbaas/health", json={"members": {failed: "ERROR"}})
        until(lambda: o("GET", f"pools/{pool['id']}/members/{failed}")["member"][
            "operating_status"] == "ERROR")
        figures["member_error_in_octavia_s"] = round(time.monotonic() - start, 2)

        start = time.monotonic()
        o("DELETE", f"loadbalancers/{lb['id']}?cascade=true")

        def forgotten() -> bool:
            try:
                return lb_status() == "DELETED"
            except OctaviaError as exc:
                return exc.status == 404
        until(forgotten)
        figures["cascade_delete_s"] = round(time.monotonic() - start, 2)
        figures.update(relay_split(work / "octavia" / "octavia.log"))
        assert sb.get(f"/lbaas/loadbalancers/{lb['id']}").status_code == 404
        assert sb.get(f"/ports/{lb['vip_port_id']}").status_code == 404
        assert sb.get("/lbaas/pools").json()["pools"] == []
    except Exception:
        if octavia is not None:
            print(octavia.tail(), file=sys.stderr)
        raise
    finally:
        if octavia is not None:
            octavia.stop()
        api.stop()
        store.dispose()
    return figures


if __name__ == "__main__":
    main()
