"""`sbnet run`: the demo's report (counted right, by rule and host) and the API served alongside."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import textwrap
import time

import httpx
from typer.testing import CliRunner

from sbnet.agent.embedded import Cluster
from sbnet.agent.follow import Follower
from sbnet.agent.report import DROP, FORWARD, drive
from sbnet.agent.traffic import Endpoint, Traffic, tcp
from sbnet.api.local import LocalApi
from sbnet.api.topology import load
from sbnet.cli.main import app

SMALL = textwrap.dedent("""\
    projects:
      p1:
        security_groups:
          - name: web
            rules:
              - {direction: ingress, protocol: tcp, port: 80}
        networks:
          - name: net
            type: vxlan
            subnets:
              - {name: net-v4, cidr: 10.0.0.0/24}
        ports:
          - {name: srv, network: net, host: h1, security_groups: [web], fixed_ip: 10.0.0.10}
          - {name: cli, network: net, host: h2, fixed_ip: 10.0.0.20}
    """)


def test_a_known_traffic_set_is_counted_by_rule_and_host():
    api = LocalApi()
    loaded = load(api, SMALL)
    cluster = Cluster(["h1", "h2"])
    Follower(api.store, cluster).catch_up()
    ep = {n: Endpoint(n, p["mac_address"], p["fixed_ips"][0]["ip_address"])
          for n, p in loaded.ports.items()}
    t = Traffic(seed=1)
    for _ in range(3):
        t.tcp_connection("allowed", ep["cli"], ep["srv"], 80)     # 3 x 5 frames
    for _ in range(2):
        t.add("denied", ep["cli"], ep["srv"], tcp(ep["cli"], ep["srv"], t.port(), 22, "S"), False)
    t.add("spoofed", ep["cli"], ep["srv"],
          tcp(ep["cli"], ep["srv"], t.port(), 80, "S", ip_src="10.0.0.99"), False)
    rep = drive(cluster, t.probes, {n: p["id"] for n, p in loaded.ports.items()},
                api.snapshot())

    allowed, denied, spoofed = (rep.categories[n] for n in ("allowed", "denied", "spoofed"))
    assert (allowed.sent, allowed.forwarded, allowed.as_expected, allowed.drops) == (15, 15, 15, {})
    assert (denied.sent, denied.forwarded, denied.as_expected) == (2, 0, 2)
    assert denied.drops == {("h1", "ingress_sg: table miss"): 2}
    assert spoofed.drops == {("h2", "port_security: table miss"): 1}
    assert rep.rules == {
        # srv gets SYN, ACK and the request of each connection; cli the two replies.
        ("h1", FORWARD, "deliver: port srv"): 9,
        ("h2", FORWARD, "deliver: port cli"): 6,
        # Everything cli sends that passes its own checks crosses the tunnel, the denied
        # SYNs too: the receiver's host applies the receiver's groups.
        ("h2", FORWARD, "deliver: network net"): 11,
        ("h1", FORWARD, "deliver: network net"): 6,
        ("h1", DROP, "ingress_sg: table miss"): 2,
        ("h2", DROP, "port_security: table miss"): 1,
    }
    assert rep.host_totals() == {"h1": {FORWARD: 15, DROP: 2}, "h2": {FORWARD: 17, DROP: 1}}
    assert not rep.copies_dropped       # tunnels carry frames only to the host that needs them


def test_demo_prints_forwarded_and_dropped_per_host_with_rule_names(tmp_path):
    out = tmp_path / "report.json"
    res = CliRunner().invoke(app, ["run", "--demo", "--port", "0", "--report", str(out)])
    assert res.exit_code == 0, res.output
    text = res.output
    for host in ("host1", "host2", "host3"):
        assert host in text
    assert "ingress_sg: table miss" in text and "port_security: table miss" in text
    assert "deliver: port web1" in text and text.count("forwarded") >= 3

    rep = json.loads(out.read_text())
    cats = rep["categories"]
    for name in ("allowed: TCP to web :80", "allowed: UDP, default group", "allowed: ICMP"):
        c = cats[name]
        assert c["sent"] == c["arrived"] == c["as_expected"] > 0 and c["leaked"] == 0
    denied = cats["denied: no rule admits it"]
    assert denied["sent"] == denied["dropped"] == 60
    assert {d["rule"] for d in denied["dropped_by"]} == {"ingress_sg: table miss"}
    assert sum(d["packets"] for d in denied["dropped_by"]) == 60
    spoofed = cats["denied: spoofed source"]
    assert {d["rule"] for d in spoofed["dropped_by"]} == {"port_security: table miss"}
    assert sum(d["packets"] for d in spoofed["dropped_by"]) == spoofed["sent"] == 36
    cross = cats["denied: cross-project"]
    assert cross["arrived"] == cross["leaked"] == 0 and cross["sent"] == 32
    # Through the router: arrived means seen with the addresses NAT must give (the gateway
    # IP for SNAT, the VM's own address behind its floating IP and the floating IP back).
    for name in ("routed: alpha-front to alpha-back", "routed: SNAT to the outside",
                 "floating IP from the outside"):
        c = cats[name]
        assert c["sent"] == c["arrived"] == c["as_expected"] > 0, (name, c)
    # Every host's printed totals agree with the per-rule rows.
    for host in ("host1", "host2", "host3"):
        fwd = sum(r["packets"] for r in rep["rules"] if r["host"] == host and
                  r["verdict"] == FORWARD)
        drop = sum(r["packets"] for r in rep["rules"] if r["host"] == host and r["verdict"] == DROP)
        assert f"forwarded {fwd}, dropped {drop}" in text
        # Each drop is either why some frame was lost or a copy of a frame that arrived.
        lost = sum(d["packets"] for c in cats.values() for d in c["dropped_by"]
                   if d["host"] == host)
        assert drop == lost + rep["copies_dropped"].get(host, 0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_api_answers_while_run_serves(tmp_path):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sbnet", "run", "--demo", "--serve",
                             "--port", str(port), "--db", str(tmp_path / "demo.db")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving") or time.monotonic() > deadline:
                break
        assert any(line.startswith("serving") for line in lines), "".join(lines)
        base = f"http://127.0.0.1:{port}/v2.0"
        nets = httpx.get(f"{base}/networks", headers={"X-Roles": "admin"}).json()["networks"]
        assert {n["name"] for n in nets} == {"public", "alpha-front", "alpha-back", "beta-net",
                                             "beta-svc"}
        ports = httpx.get(f"{base}/ports", headers={"X-Roles": "admin"}).json()["ports"]
        vms = {p["name"]: p["status"] for p in ports if p["binding:host_id"]}
        assert vms and set(vms.values()) == {"ACTIVE"}, vms
        # A change through the API reaches the hosts while serving.
        alpha = next(n for n in nets if n["name"] == "alpha-front")
        # Binding a port is Nova's (admin's) job.
        r = httpx.post(f"{base}/ports", headers={"X-Project-Id": "alpha", "X-Roles": "admin"},
                       json={"port": {"network_id": alpha["id"], "name": "late",
                                      "binding:host_id": "host2"}})
        assert r.status_code == 201, r.text
        late = r.json()["port"]["id"]
        for _ in range(100):
            got = httpx.get(f"{base}/ports/{late}", headers={"X-Project-Id": "alpha"})
            if got.json()["port"]["status"] == "ACTIVE":
                break
            time.sleep(0.1)
        assert got.json()["port"]["status"] == "ACTIVE"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            rest, _ = proc.communicate()
    assert proc.returncode == 0, "".join(lines) + rest
    # While serving, each sync says how many flows changed on each host.
    assert "flow changes host1" in rest and "host2" in rest, rest


def test_a_bad_topology_file_stops_run_with_its_line_and_reason(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects:\n  p1:\n    networks:\n      - {name: n1, colour: red}\n")
    res = CliRunner().invoke(app, ["run", "--topology", str(bad), "--port", "0"])
    assert res.exit_code == 2, res.output
    assert f"{bad}:4: unknown key 'colour' in a network" in res.output.replace("\n", "")
