"""`sbnet agent` as its own process on each host's Open vSwitch, following `sbnet serve`."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from sbnet.agent.netns import Topology, require_netns
from tests.api.apihelpers import start_server, stop_server

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}


def agent(url: str, host, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sbnet", "agent", "--host", host.name,
                             "--api", url, "--tunnel-ip", host.underlay_ip,
                             "--ovs-rundir", host.ovs.dir, "--wait", "0.5",
                             "--stats-every", "0.5", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def first_sync(proc: subprocess.Popen, timeout: float = 60) -> str:
    """The agent's first "revision N: ... flows" line (stderr), waiting for it.  A thread
    reads the lines: select() on a buffered pipe misses lines already read into its buffer."""
    import queue
    import threading
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        if " flows" in line:
            return line
    raise AssertionError(f"the agent reported no sync: {''.join(seen)}")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def test_agent_processes_on_ovs_hosts_and_a_restart_keeps_traffic(tmp_path):
    require_netns(ovs=True)
    Topology.cleanup_stale()
    server, url = start_server(f"sqlite:///{tmp_path}/db.sqlite")
    procs = {}
    try:
        with Topology() as topo:
            hosts = [topo.add_host(n, "ovs") for n in ("h1", "h2")]
            for h in hosts:
                procs[h.name] = agent(url, h)
            http = httpx.Client(base_url=url, timeout=60, headers=ADMIN)
            net = http.post("/v2.0/networks", json={"network": {"name": "n"}}).json()["network"]
            http.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4,
                                                        "cidr": "10.40.0.0/24"}})
            vms, ids = [], {}
            for name, h in (("a", hosts[0]), ("b", hosts[1])):
                port = http.post("/v2.0/ports", json={"port": {
                    "network_id": net["id"], "binding:host_id": h.name}}).json()["port"]
                vm = topo.add_vm(name, h, f"{port['fixed_ips'][0]['ip_address']}/24",
                                 mac=port["mac_address"])
                h.ovs.vsctl("set", "Interface", vm.port, f"external_ids:iface-id={port['id']}")
                ids[name] = port["id"]
                vms.append(vm)
            a, b = vms
            deadline = time.monotonic() + 15
            while topo.ping(a, b.address, count=1, wait=0.3).returncode != 0:
                assert time.monotonic() < deadline, stop(procs["h1"]) + stop(procs["h2"])
            # The agents report the VIFs' counters, read from OVS's flow counters.
            deadline = time.monotonic() + 15
            while True:
                r = http.get(f"/v2.0/sbnet/ports/{ids['a']}/stats")
                if r.status_code == 200 and r.json()["stats"]["rx_packets"] > 0:
                    break
                assert time.monotonic() < deadline, r.text
                time.sleep(0.3)
            hosts_seen = http.get("/v2.0/sbnet/hosts").json()["hosts"]
            assert {h["name"] for h in hosts_seen} == {"h1", "h2"}
            # Restart h2's agent while a ping runs: nothing is lost, no flow changes.
            pinger = topo.popen(a, "ping", "-n", "-q", "-c", "40", "-i", "0.1", b.address)
            time.sleep(0.5)
            stop(procs["h2"])
            procs["h2"] = agent(url, hosts[1])
            out, _ = pinger.communicate(timeout=30)
            assert " 0% packet loss" in out, out
            assert "+0 ~0 -0 flows" in first_sync(procs["h2"])   # the restart's first sync
    finally:
        for p in procs.values():
            if p.poll() is None:
                stop(p)
        stop_server(server)
