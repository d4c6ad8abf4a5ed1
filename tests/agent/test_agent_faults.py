"""`sbnet agent` as an operator meets it when things are not ready: started before its API,
and against an API that requires a token."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from sbnet.agent.netns import Topology, require_netns, sh
from sbnet.api.process import free_port, spawn, stop as stop_server
from tests.agent.test_agent_cli import agent, first_sync, stop

ADMIN = {"X-Project-Id": "admin", "X-Roles": "admin"}


@pytest.fixture
def ovs_host():
    require_netns(ovs=True)
    Topology.cleanup_stale()
    with Topology() as topo:
        yield topo.add_host("h1", "ovs")


class Lines:
    """Every stderr line of a process, read by a thread (select on a buffered pipe misses
    lines already read into its buffer)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading
        self.proc, self.lines = proc, []
        self.thread = threading.Thread(target=lambda: self.lines.extend(proc.stderr), daemon=True)
        self.thread.start()

    def wait_for(self, pattern: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(pattern in x for x in self.lines):
            assert time.monotonic() < deadline, f"no line with {pattern!r}: {self.text()}"
            time.sleep(0.1)

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(5)
        return self.text()

    def text(self) -> str:
        return "".join(self.lines)


def test_agent_started_before_the_api_waits_for_it_then_follows(ovs_host, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = agent(url, ovs_host)
    out = Lines(proc)
    server = None
    try:
        out.wait_for("retrying in")
        assert proc.poll() is None
        server, _ = spawn(f"sqlite:///{tmp_path}/db.sqlite", port=port)
        deadline = time.monotonic() + 60
        while True:
            hosts = httpx.get(f"{url}/v2.0/sbnet/hosts", headers=ADMIN).json()["hosts"]
            if [h["name"] for h in hosts] == ["h1"]:
                break
            assert time.monotonic() < deadline and proc.poll() is None, out.text()
            time.sleep(0.3)
        out.wait_for(" flows")                  # and it syncs
    finally:
        text = out.stop()
        if server is not None:
            stop_server(server)
    assert "Traceback" not in text, text
    retry = [x for x in out.lines if "retrying in" in x]
    assert retry and all("API unreachable" in x for x in retry), text
    assert "following" in text, text


def test_agent_authenticates_with_a_token_file_against_require_token(ovs_host, tmp_path):
    (tmp_path / "tokens.yaml").write_text(
        "agent-secret: {project_id: services, roles: [admin], user_id: sbnet-agent}\n")
    (tmp_path / "agent.token").write_text("agent-secret\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "sbnet", "serve", "--port", str(port),
                               "--db", f"sqlite:///{tmp_path}/db.sqlite", "--token-file",
                               str(tmp_path / "tokens.yaml"), "--require-token"],
                              stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v2.0/networks", timeout=1).status_code == 401:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and server.poll() is None
            time.sleep(0.2)
        # Without a token: refused at once, one line saying what to do, exit status 1.
        bare = agent(url, ovs_host)
        _, err = bare.communicate(timeout=60)
        assert bare.returncode == 1, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "401" in err and "--token-file" in err
        # With it: registered, and it syncs.
        proc = agent(url, ovs_host, "--token-file", str(tmp_path / "agent.token"))
        try:
            assert " flows" in first_sync(proc)
            hosts = httpx.get(f"{url}/v2.0/sbnet/hosts",
                              headers={"X-Auth-Token": "agent-secret"}).json()["hosts"]
            assert [h["name"] for h in hosts] == ["h1"]
        finally:
            stop(proc)
    finally:
        stop_server(server)


def test_an_existing_bridge_is_never_rewritten(ovs_host, tmp_path):
    """A hypervisor's br-int with other settings (VMs may be on it): the agent refuses to
    start, names the setting, and leaves the bridge exactly as it was."""
    ovs = ovs_host.ovs
    ovs.vsctl("add-br", "br-vms", "--", "set", "Bridge", "br-vms", "datapath_type=netdev",
              "fail_mode=standalone", "protocols=OpenFlow10,OpenFlow13")
    before = ovs.vsctl("list", "Bridge", "br-vms")
    server, url = spawn(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        for setting, fix in (("fail_mode=standalone", ("set-fail-mode", "br-vms", "secure")),
                             ("protocols=", ("set", "Bridge", "br-vms",
                                             "protocols=OpenFlow13,OpenFlow15"))):
            proc = agent(url, ovs_host, "--bridge", "br-vms")
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1, err
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
            assert setting in err and "br-vms" in err, err
            assert ovs.vsctl("list", "Bridge", "br-vms") == before
            ovs.vsctl(*fix)                       # the operator changes it, not sbnet
            before = ovs.vsctl("list", "Bridge", "br-vms")
        # Now acceptable: taken as it is (its datapath type too), and it syncs.
        cols = ("datapath_type", "fail_mode", "protocols")
        settings = [ovs.vsctl("get", "Bridge", "br-vms", c) for c in cols]
        proc = agent(url, ovs_host, "--bridge", "br-vms")
        try:
            assert " flows" in first_sync(proc)
        finally:
            stop(proc)
        got = httpx.get(f"{url}/v2.0/sbnet/hosts", headers=ADMIN).json()["hosts"][0]
        assert (got["bridge"], got["datapath_type"]) == ("br-vms", "netdev")
        assert [ovs.vsctl("get", "Bridge", "br-vms", c) for c in cols] == settings
    finally:
        stop_server(server)


def test_a_tunnel_address_the_datapath_cannot_send_from_is_refused(ovs_host, tmp_path):
    """The address on the underlay NIC itself (not on br-phy), or no address of this host at
    all: tunnels would be lost without a word, so the agent says so and does not start."""
    sh("ip", "-n", ovs_host.netns, "addr", "add", "10.250.0.77/24", "dev", "ul0")
    server, url = spawn(f"sqlite:///{tmp_path}/db.sqlite")
    try:
        for ip, words in (("10.250.0.77", ("10.250.0.77 is on ul0", "br-phy")),
                          ("10.250.0.99", ("10.250.0.99 is not an address of this host",))):
            proc = subprocess.Popen([sys.executable, "-m", "sbnet", "agent", "--host", "h1",
                                     "--api", url, "--tunnel-ip", ip, "--ovs-rundir",
                                     ovs_host.ovs.dir], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and len(err.strip().splitlines()) == 1, err
            assert all(w in err for w in words), err
        assert httpx.get(f"{url}/v2.0/agents", headers=ADMIN).json()["agents"] == []
    finally:
        stop_server(server)


def _cpu_seconds(pid: int) -> float:
    """User + system time of a process and of the children it waited for (ovs-ofctl...)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def test_an_idle_ovs_agent_with_64_interfaces_uses_little_cpu(ovs_host, tmp_path):
    """Interfaces are followed through an OVSDB IDL: 64 plugged interfaces cost an idle
    agent nothing per second (it used to run one ovs-vsctl per interface every second)."""
    server, url = spawn(f"sqlite:///{tmp_path}/db.sqlite")
    # The command's own defaults (the helper's faster polls are for tests that wait on them).
    proc = agent(url, ovs_host, "--wait", "1", "--stats-every", "10")
    try:
        assert " flows" in first_sync(proc)
        cmd = []
        for i in range(64):
            cmd += ["--", "add-port", "br-int", f"idle{i}", "--", "set", "Interface",
                    f"idle{i}", "type=internal", f"external_ids:iface-id={uuid.uuid4()}"]
        ovs_host.ovs.vsctl(*cmd[1:])
        time.sleep(2)
        # 5 s: an agent that ran a command per interface every second would show 64 of them.
        before, start = _cpu_seconds(proc.pid), time.monotonic()
        time.sleep(5)
        cores = (_cpu_seconds(proc.pid) - before) / (time.monotonic() - start)
        print(f"idle OVS agent with 64 interfaces: {cores:.4f} cores")
        assert cores < 0.02
        assert proc.poll() is None
    finally:
        stop(proc)
        stop_server(server)
