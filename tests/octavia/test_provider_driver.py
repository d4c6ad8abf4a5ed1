"""sbnet as a real Octavia's provider: octavia-lib's ProviderDriver calls build the load balancer in sbnet, its statuses come back through octavia-lib's driver library, and the switch balances by what the driver wrote."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections import Counter

from sbnet.southbound.neutron_server import ApiThread
from tests.compiler.scenario import IP, TCP, Cloud, Ether, ip_of, tcp
from tests.octavia.conftest import REPO, DriverAgent, octavia_python

WEIGHTS = (1, 2, 3)


class Octavia:
    """tests/octavia/drive.py in the octavia-lib venv: Octavia's API calling the driver."""

    def __init__(self, python: str, url: str, plan: dict) -> None:
        env = {**os.environ, "SBNET_URL": url, "PYTHONPATH": str(REPO / "src")}
        self.proc = subprocess.Popen([python, str(REPO / "tests" / "octavia" / "drive.py")],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.watchdog = threading.Timer(120, self.proc.kill)
        self.watchdog.start()
        self.proc.stdin.write(json.dumps(plan) + "\n")
        self.proc.stdin.flush()

    def next(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=10)
            raise AssertionError(f"drive.py ended: {self.proc.stderr.read()[-2000:]}")
        return json.loads(line)

    def go(self) -> dict:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return self.next()

    def close(self) -> None:
        self.watchdog.cancel()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (got := check()):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)
    return got


def spread(c: Cloud, client: dict, vip: dict, backends: list[dict], sports: range) -> Counter:
    """Members chosen for new connections from `client` to the VIP port's address, port 80
    (each SYN seen DNATed to a member's address and port 8080)."""
    d = c.send(client, [tcp(client, vip, sport, 80) for sport in sports])
    seen: Counter = Counter()
    for member in backends:
        for frame in d.to(member["id"]):
            p = Ether(frame)
            assert (p[IP].dst, p[TCP].dport) == (ip_of(member), 8080)
            seen[member["id"]] += 1
    assert sum(seen.values()) == len(sports)
    return seen


def test_octavia_builds_and_tears_down_a_balanced_vip_through_the_provider_driver(tmp_path):
    python = octavia_python()
    c = Cloud()
    net = c.network("p1", "10.0.0.0/24")
    fixed = lambda ip: [{"subnet_id": net["subnet"]["id"], "ip_address": ip}]  # noqa: E731
    client = c.port("p1", net, "h1", fixed_ips=fixed("10.0.0.10"))
    backends = [c.port("p1", net, "h2", fixed_ips=fixed(f"10.0.0.{20 + i}")) for i in range(3)]
    ids = {k: str(uuid.uuid4()) for k in ("lb", "listener", "pool", "hm")}
    ids.update(members=[str(uuid.uuid4()) for _ in backends],
               spare=[str(uuid.uuid4()) for _ in range(3)], rolled_back=str(uuid.uuid4()))
    graph = {k: str(uuid.uuid4()) for k in ("lb", "listener", "pool", "hm", "new_member")}
    graph.update(members=[str(uuid.uuid4()) for _ in range(2)],
                 addresses=["10.0.0.30", "10.0.0.31"], new_address="10.0.0.32")
    api = ApiThread(c.api.store).start()
    agent = DriverAgent(tmp_path, rolled_back=frozenset({ids["rolled_back"]}))
    octavia = Octavia(python, api.url, {
        "sockets": agent.paths, "project": "p1", "ids": ids, "subnet": net["subnet"]["id"],
        "vip_address": "10.0.0.100", "graph": graph,
        "members": [[ip_of(b), w] for b, w in zip(backends, WEIGHTS)]})
    try:
        out = octavia.next()
        # the objects carry Octavia's ids; the VIP port is in sbnet's Neutron model
        vip = out["vip"]
        assert vip["vip_address"] == "10.0.0.100" and out["additional"] == []
        port = c.api.request("GET", f"ports/{vip['vip_port_id']}")["port"]
        assert (port["device_owner"], port["fixed_ips"][0]["ip_address"]) == \
            ("Octavia", "10.0.0.100")
        lb = c.api.request("GET", f"lbaas/loadbalancers/{ids['lb']}")["loadbalancer"]
        assert lb["vip_port_id"] == vip["vip_port_id"]
        assert [x["id"] for x in lb["listeners"]] == [ids["listener"]]
        pool = c.api.request("GET", f"lbaas/pools/{ids['pool']}")["pool"]
        assert pool["listeners"] == [{"id": ids["listener"]}]
        assert pool["healthmonitor_id"] == ids["hm"]
        # (a member Octavia rolled back was written, then taken out again, never reported ACTIVE)
        assert out["rolled_back_written"] == ids["rolled_back"]
        assert sorted((m["id"], m["weight"]) for m in c.api.request(
            "GET", f"lbaas/pools/{ids['pool']}/members")["members"]) == \
            sorted(zip(ids["members"], WEIGHTS))
        # Octavia hears every object ACTIVE through the driver library's status socket
        latest = agent.latest()
        for kind, ident in [("loadbalancers", ids["lb"]), ("listeners", ids["listener"]),
                            ("pools", ids["pool"]), ("healthmonitors", ids["hm"]),
                            *[("members", m) for m in ids["members"]]]:
            assert latest[(kind, ident)][0] == "ACTIVE", (kind, latest)
        assert latest[("loadbalancers", ids["lb"])][1] == "ONLINE"
        assert latest.get(("members", ids["rolled_back"]), (None, None))[0] is None
        # what sbnet does not do comes back as Octavia's exceptions, with sbnet's reason
        errors = out["errors"]
        assert errors["least_connections"]["error"] == "UnsupportedOptionError"
        assert "LEAST_CONNECTIONS" in errors["least_connections"]["message"]
        assert errors["http_listener"]["error"] == "UnsupportedOptionError"
        assert errors["ipv6_member"]["error"] == "DriverError"
        assert "family" in errors["ipv6_member"]["message"]
        assert errors["failover"]["error"] == "NotImplementedError"
        assert errors["flavor"]["error"] == "UnsupportedOptionError"

        # the single-call graph: every object under Octavia's id, the listener on its pool;
        # then the batch update's members
        listener = c.api.request("GET", f"lbaas/listeners/{graph['listener']}")["listener"]
        assert (listener["protocol"], listener["default_pool_id"]) == ("UDP", graph["pool"])
        assert c.api.request("GET", f"lbaas/healthmonitors/{graph['hm']}")["healthmonitor"][
            "type"] == "UDP-CONNECT"
        assert sorted((m["id"], m["address"], m["weight"]) for m in c.api.request(
            "GET", f"lbaas/pools/{graph['pool']}/members")["members"]) == sorted(
            [(graph["members"][0], "10.0.0.30", 4), (graph["new_member"], "10.0.0.32", 2)])
        assert latest[("members", graph["members"][1])][0] == "DELETED"
        assert latest[("members", graph["new_member"])][0] == "ACTIVE"
        assert latest[("loadbalancers", graph["lb"])][0] == "ACTIVE"

        # the switch balances the VIP as the driver wrote it: spread by the weights
        c.sync()
        seen = spread(c, client, port, backends, range(20000, 20120))
        for member, w in zip(backends, WEIGHTS):
            assert abs(seen[member["id"]] / 120 - w / sum(WEIGHTS)) < 0.1, seen

        # an agent's health verdict reaches Octavia through the driver's status relay
        failed = ids["members"][1]
        c.api.request("PUT", "sbnet/lbaas/health", {"members": {failed: "ERROR"}})
        wait_for(lambda: agent.latest().get(("members", failed)) == ("ACTIVE", "ERROR"))
        assert agent.latest()[("pools", ids["pool"])] == ("ACTIVE", "DEGRADED")

        # an update and a delete: the deleted member is DELETED for Octavia and out of the
        # buckets, with the failed one: new connections all go to the first member
        assert octavia.go() == {"phase": 2}
        assert agent.latest()[("members", ids["members"][2])][0] == "DELETED"
        assert c.api.request("GET", f"lbaas/pools/{ids['pool']}/members/{ids['members'][0]}")[
            "member"]["weight"] == 5
        c.sync()
        seen = spread(c, client, port, backends, range(21000, 21020))
        assert set(seen) == {backends[0]["id"]}

        # cascade delete: everything DELETED for Octavia, gone from sbnet with its VIP port
        assert octavia.go() == {"phase": 3}
        latest = agent.latest()
        for kind, ident in [("loadbalancers", ids["lb"]), ("listeners", ids["listener"]),
                            ("pools", ids["pool"]), ("healthmonitors", ids["hm"]),
                            ("members", ids["members"][0])]:
            assert latest[(kind, ident)][0] == "DELETED", (kind, latest)
        snap = c.api.snapshot()
        assert [x["id"] for x in snap.get("lb_loadbalancer", [])] == [graph["lb"]]
        assert {x["pool_id"] for x in snap.get("lb_member", [])} == {graph["pool"]}
        assert vip["vip_port_id"] not in {p["id"] for p in snap["port"]}
    finally:
        octavia.close()
        api.stop()
        agent.close()
