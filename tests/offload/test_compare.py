"""`sbnet compare` on a small workload: the figures come from runs and meet the offload claim."""

from __future__ import annotations

import json

import pytest

from typer.testing import CliRunner

from sbnet.cli.main import app
from sbnet.offload import compare as C
from sbnet.offload.report import cluster_report


def test_smartnic_keeps_steady_packets_off_the_host():
    cmp = C.compare(connections=40, cap=12, profiles=("software", "smartnic", "sriov"),
                    features=False)
    sw, nic, sriov = (cmp.measured[p] for p in ("software", "smartnic", "sriov"))
    assert sw.delivered == sw.sent == nic.delivered == nic.sent
    assert sw.steady_share == 0.0 and nic.steady_share == 1.0
    # Established traffic costs the host (almost) nothing on the smartnic. Over the whole
    # of so small a run both columns are mostly set-up (upcalls, software on both), so
    # their totals lie within this machine's noise of each other.
    assert nic.steady_host_cpu < 0.2 * sw.steady_host_cpu
    assert sriov.refused == ("sriov: the embedded switch has no tunnels (VLAN only); "
                             "sriov: the embedded switch has no connection tracking "
                             "(security groups)")
    md = C.markdown(cmp, "sbnet compare --connections 40")
    assert md.startswith("`sbnet compare --connections 40`")
    assert "| NIC share, steady state | 0.00% | 100.00% | refused |" in md


@pytest.mark.parametrize("feature,profile,verdict", [
    ("stateful firewall", "sriov", "refused"),
    # A VF on a VLAN network: its megaflows match only what the embedded switch can.
    ("VLAN overlay", "sriov", "NIC"),
    ("stateful firewall", "smartnic", "NIC"),
    ("VXLAN overlay", "software", "software"),
    ("anti-spoofing", "smartnic", "NIC"),
])
def test_feature_cells_come_from_packet_tests(feature, profile, verdict):
    cell = C.FEATURES[feature](profile)
    assert cell.verdict == verdict, cell.detail


def test_the_report_attributes_packets_to_rules_ports_and_networks():
    m = C.run_scenario("web", "smartnic", connections=20, cap=4)
    rep = cluster_report(m.cloud.cluster)
    rules = [r for r in rep["resources"] if r["kind"] == "security_group_rule"]
    # The web rule's megaflow (+new, commit) is software: one packet per connection per host.
    web = [r for r in rules if r["packets_software"] == 20]
    assert web and all("ct_state=+new" in next(iter(r["reasons"])) for r in web)
    vms = {p["id"] for p in m.cloud.api.snapshot()["port"] if p["binding:host_id"]}
    ports = [r for r in rep["resources"] if r["kind"] == "port" and r["id"] in vms]
    assert len(ports) == 2 and all(r["packets_nic"] > r["packets_software"] for r in ports)
    hosts = {h["host"]: h for h in rep["hosts"]}
    # Every packet of both halves (VM and floating IP) crosses the server's host once.
    assert hosts["h2"]["nic_packets"] + hosts["h2"]["software_packets"] == m.sent


def test_offload_show_runs_a_scenario():
    out = CliRunner().invoke(app, ["offload", "show", "--scenario", "web", "--connections",
                                   "5", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert {h["profile"] for h in data["hosts"]} == {"smartnic"}
    bad = CliRunner().invoke(app, ["offload", "show"])
    assert bad.exit_code == 2


def test_offload_show_reads_a_running_api():
    import socket
    import threading
    import time

    import uvicorn

    from sbnet.api import create_app
    from sbnet.offload.report import cluster_provider
    m = C.run_scenario("web", "smartnic", connections=5, cap=3)
    api = create_app("sqlite://", offload_report=cluster_provider(m.cloud.cluster))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(api, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(100):
            if server.started:
                break
            time.sleep(0.05)
        out = CliRunner().invoke(app, ["offload", "show", "--url", f"http://127.0.0.1:{port}",
                                       "--json"])
    finally:
        server.should_exit = True
        thread.join(5)
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert sum(h["nic_packets"] for h in data["hosts"]) > 0
    assert any(r["kind"] == "security_group_rule" for r in data["resources"])
