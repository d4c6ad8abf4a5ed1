"""Two hypervisors running `sbnet agent --datapath reference` as an operator starts them:
no --neighbour (peers are found by ARP on the underlay), VMs plugged as Nova plugs taps,
booting with dhclient; traffic at full MTU over VXLAN."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import httpx
import pytest

from sbnet.agent.agent import vif_name
from sbnet.agent.netns import Topology, require_netns, sh
from sbnet.api.process import spawn, stop as stop_server
from tests.agent.dhcpclient import Dhclients, require_dhclient
from tests.agent.test_agent_faults import Lines
from tests.agent.test_dhcp_real import check_full_mtu
from tests.agent.test_e2e import tcp_transfer
from tests.agent.test_metadata_real import GET, SECRET, nova  # noqa: F401 (a fixture)
from tests.agent.trains import iperf3_across, ping_across

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}
PREFIX = "10.250.0.0/24"


def hypervisor(topo: Topology, name: str, index: int) -> str:
    """A bare host namespace with its underlay NIC ul0 on the underlay bridge; no switch."""
    ns = topo.add_namespace(name)
    ul = topo._underlay()
    sh("ip", "link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name", f"{name}-ul",
       "netns", ul)
    sh("ip", "-n", ul, "link", "set", f"{name}-ul", "master", "br0", "up")
    sh("ip", "-n", ns, "link", "set", "ul0", "address", f"02:fe:00:00:01:{index:02x}", "arp",
       "off", "up")
    return ns


def plug(topo: Topology, host_ns: str, vm: str, port: dict) -> None:
    """What Nova's libvirt driver does for vif_type tap: a tap named for the port in the
    host (here the host end of a veth), the VM's NIC with the port's MAC."""
    ns = topo.add_namespace(vm)
    tap = vif_name(port["id"])
    sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", tap,
       "netns", host_ns)
    sh("ip", "-n", ns, "link", "set", "eth0", "address", port["mac_address"], "up")
    sh("ethtool", "-K", "eth0", "tx", "off", netns=ns)
    sh("ip", "-n", host_ns, "link", "set", tap, "arp", "off", "up")


def network_with_agents(url: str, cidr: str, procs: dict, timeout: float = 60):
    """An admin client and a network with an IPv4 subnet, once every agent in `procs`
    (Lines) has registered."""
    http = httpx.Client(base_url=url, timeout=60, headers=ADMIN)
    net = http.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
    http.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                "cidr": cidr}})
    deadline = time.monotonic() + timeout
    while len(http.get("/v2.0/agents").json()["agents"]) < len(procs):
        assert time.monotonic() < deadline, [p.text() for p in procs.values()]
        time.sleep(0.2)
    return http, net


def iperf_across(topo: Topology, client: str, server: str, address: str, seconds: float,
                 during) -> tuple[dict, float]:
    """iperf3 from client to server in 100 ms intervals with during() called 1.5 s in:
    iperf3's JSON result and the longest run of intervals that carried nothing (s)."""
    srv = topo.popen(server, "iperf3", "-s", "-1", "-J")
    time.sleep(0.5)
    cli = topo.popen(client, "iperf3", "-c", address, "-t", str(seconds), "-i", "0.1", "-J")
    time.sleep(1.5)
    during()
    out, _ = cli.communicate(timeout=60)
    srv.communicate(timeout=30)
    result = json.loads(out)
    assert "error" not in result, result.get("error")
    gap = longest = 0.0
    for iv in result["intervals"]:
        s = iv["sum"]
        gap = gap + s["seconds"] if s["bytes"] == 0 else 0.0
        longest = max(longest, gap)
    return result, longest


def agent(url: str, name: str, ns: str, tunnel_ip: str, sock: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sbnet", "agent", "--host", name, "--api", url,
         "--tunnel-ip", tunnel_ip, "--datapath", "reference", "--netns", ns,
         "--underlay", "ul0", "--underlay-prefix", PREFIX, "--wait", "0.5",
         "--switch-socket", sock, *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def env(tmp_path):
    require_netns()
    require_dhclient()
    Topology.cleanup_stale()
    server, url = spawn(f"sqlite:///{tmp_path}/db.sqlite")
    with Topology() as topo:
        dhcp = Dhclients(topo, tmp_path)
        try:
            yield topo, url, dhcp, tmp_path
        finally:
            dhcp.close()
            stop_server(server)
            # The switch daemons outlive their agents by design: stop them by pid.
            for pidfile in tmp_path.glob("*.sock.pid"):
                with contextlib.suppress(OSError, ValueError):
                    os.kill(int(pidfile.read_text()), signal.SIGTERM)


def test_two_reference_hypervisors_without_neighbour_options(env, nova):
    topo, url, dhcp, tmp = env
    hosts = {n: hypervisor(topo, n, i + 1) for i, n in enumerate(("h1", "h2"))}
    start = lambda n: Lines(agent(url, n, hosts[n], f"10.250.0.{n[1]}",  # noqa: E731
                                  str(tmp / f"{n}.sock"), "--metadata-url", nova,
                                  "--metadata-secret", SECRET))
    procs = {n: start(n) for n in hosts}
    try:
        http, net = network_with_agents(url, "10.41.0.0/24", procs)
        deadline = time.monotonic() + 30
        ports = {}
        for vm, h in (("a", "h1"), ("b", "h2")):
            ports[vm] = http.post("/v2.0/ports", json={"port": {
                "network_id": net["id"], "binding:host_id": h,
                "device_id": f"instance-{vm}"}}).json()["port"]
            assert ports[vm]["binding:vif_type"] == "tap"
            plug(topo, hosts[h], vm, ports[vm])
        for p in ports.values():
            while http.get(f"/v2.0/ports/{p['id']}").json()["port"]["status"] != "ACTIVE":
                assert time.monotonic() < deadline + 30, [x.text() for x in procs.values()]
                time.sleep(0.2)
        dhcp.run("a")                            # Debian's dhclient
        dhcp.udhcpc("b")                         # and busybox's udhcpc
        for vm, port in ports.items():
            got = dhcp.state(vm)
            assert got["addrs"] == [f"{port['fixed_ips'][0]['ip_address']}/24"], got
            assert got["mtu"] == 1450 and got["routes"]["default"] == "10.41.0.1", got
        # cloud-init's first question, answered through the agent's metadata proxy (the
        # subnet has no router: DHCP's default route still points at its gateway address,
        # and the switch takes the request before any routing).
        meta = json.loads(topo.run("a", "python3", "-c", GET, timeout=30).stdout)
        assert {k.lower(): v for k, v in meta["headers"].items()}["x-instance-id"] == \
            "instance-a"
        b = ports["b"]["fixed_ips"][0]["ip_address"]
        check_full_mtu(topo, "a", "b", b)
        assert tcp_transfer(SimpleNamespace(topo=topo), "a", "b", 5201, size=1_000_000,
                            timeout=20, address=b)
        # Restart h1's agent under a 10 ms ping train, then under an iperf3 stream: its
        # switch daemon goes on switching, and the restarted agent changes nothing in it.
        restarts, took = [], []

        def restart() -> None:
            t0 = time.monotonic()
            restarts.append(procs["h1"].stop())
            procs["h1"] = start("h1")
            procs["h1"].wait_for(" flows", timeout=60)
            took.append(time.monotonic() - t0)
            assert "+0 ~0 -0 flows" in procs["h1"].text(), procs["h1"].text()
        train = ping_across(topo, "a", b, restart, tmp / "ping.txt")
        # The same train for as long with no restart: what this machine's load alone does.
        quiet = ping_across(topo, "a", b, lambda: time.sleep(took[0]), tmp / "quiet.txt")
        stream = iperf3_across(topo, "a", "b", b, restart)
        print(f"reference agent restart ({took[0]:.1f} s) under a 10 ms ping train: "
              f"{train.sent} sent, {len(train.lost)} lost, slowest reply "
              f"{train.max_rtt * 1000:.0f} ms (no restart: {quiet.max_rtt * 1000:.0f} ms); "
              f"under iperf3 ({took[1]:.1f} s): {stream.mbits:.1f} Mbit/s, least in 100 ms "
              f"{min(stream.intervals)} bytes, longest without data "
              f"{stream.longest_empty() * 1000:.0f} ms")
        assert train.lost == [], train
        # No reply held up over 250 ms where the machine is quiet enough to tell (the train
        # with no restart had none over 50 ms): a switch whose flows were flushed and put
        # back would lose packets and stall for seconds, while the new agent's own start-up
        # (seconds of CPU on a 2-core machine beside both switches) delayed a reply by
        # 161 ms once in CI's full run.  On a loaded machine, whose scheduling alone holds
        # both switches up for a few hundred ms now and then, no hold-up beyond 500 ms or
        # twice the no-restart train's.
        limit = 0.25 if quiet.max_rtt <= 0.05 else max(0.5, 2 * quiet.max_rtt)
        assert train.max_rtt <= limit, (train, quiet)
        # iperf3 reports every 100 ms at best: no two intervals in a row went empty.
        assert stream.longest_empty() <= 0.1, stream
    finally:
        out = {n: p.stop() for n, p in procs.items()}
        out["h1"] = "".join(locals().get("restarts", ())) + out["h1"]
    assert "underlay neighbour 10.250.0.2 is 02:fe:00:00:01:02" in out["h1"], out["h1"]
    assert "underlay neighbour 10.250.0.1 is 02:fe:00:00:01:01" in out["h2"], out["h2"]
    assert "Traceback" not in out["h1"] + out["h2"]
