"""Bare-metal servers behind SmartNICs, in namespaces: the API on a management network, each NIC running `sbnet agent` (datapath, uplink, channel), the server with VFs and containers."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from sbnet.agent.netns import UNDERLAY_NET, Topology, TopologyError, sh
from sbnet.agent.slowpath import in_netns

MGMT_PREFIX = "192.168.254"
API_ADDRESS = f"{MGMT_PREFIX}.254"
CHANNEL_NIC, CHANNEL_SERVER = "169.254.169.1", "169.254.169.2"
CHANNEL_PORT = 9697
PHYSNET_OFPORT = 900            # a NIC's uplink port to physnet1


class ManagementNet:
    """A management network (a bridge in a namespace of its own) with the API served on it
    over HTTP from this process (the same store as `api`, so tests drive it in-process):
    hosts and NICs joined to it reach the API; what is not joined cannot."""

    def __init__(self, topo: Topology, api) -> None:
        import uvicorn
        self.topo = topo
        self.netns = topo.add_namespace("mgmt")
        sh("ip", "-n", self.netns, "link", "add", "br-mgmt", "type", "bridge")
        sh("ip", "-n", self.netns, "addr", "add", f"{API_ADDRESS}/24", "dev", "br-mgmt")
        sh("ip", "-n", self.netns, "link", "set", "br-mgmt", "up")
        self.members = 0
        with in_netns(self.netns):
            self.sock = socket.socket()
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((API_ADDRESS, 9696))
        self.url = f"http://{API_ADDRESS}:9696"
        app = api.client.app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="sbnet-mgmt-api", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise TopologyError("the API did not start on the management network")
            time.sleep(0.05)

    def join(self, netns: str) -> str:
        """Give `netns` an interface (mgmt0) on the management network; its address."""
        self.members += 1
        n = self.members
        ip = f"{MGMT_PREFIX}.{n}"
        sh("ip", "link", "add", "mgmt0", "netns", netns, "type", "veth", "peer", "name",
           f"m{n}", "netns", self.netns)
        sh("ip", "-n", self.netns, "link", "set", f"m{n}", "master", "br-mgmt", "up")
        sh("ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "mgmt0")
        sh("ip", "-n", netns, "link", "set", "mgmt0", "up")
        return ip

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@dataclass
class AgentHost:
    """A namespace running `sbnet agent` (a hypervisor or a SmartNIC) in a process of its own."""

    name: str
    netns: str
    tunnel_ip: str
    proc: subprocess.Popen | None = None
    socket: str = ""
    log: str = ""
    ovs: object = None               # OVS: the host's daemons (DummyOVS in its namespace)
    underlay_mac: str = ""
    switchd: subprocess.Popen | None = None   # reference: the switch daemon
    pending: tuple | None = None              # (agent options, ports) until it starts


@dataclass
class Server:
    """A bare-metal server: a namespace holding the VFs (the NIC's representors' peers) and
    a channel link to its NIC; no sbnet process, no credentials, no route to the API."""

    name: str
    netns: str
    nic: AgentHost
    vfs: dict[str, str] = field(default_factory=dict)        # VF -> representor
    containers: dict[str, str] = field(default_factory=dict)  # name -> netns path


class Fleet:
    """Hosts whose agents run as operators run them (`sbnet agent` in the host's namespace,
    following the API over the management network), on the reference switch or on Open
    vSwitch (netdev datapath, br-int and br-phy, daemons in the host's namespace)."""

    def __init__(self, topo: Topology, api, workdir: str, backend: str = "reference") -> None:
        if backend not in ("reference", "ovs"):
            raise ValueError(f"backend must be reference or ovs, not {backend!r}")
        self.topo = topo
        self.api = api
        self.workdir = workdir
        self.backend = backend
        self.mgmt = ManagementNet(topo, api)
        self.hosts: dict[str, AgentHost] = {}
        self.servers: dict[str, Server] = {}

    def _bare(self, name: str) -> AgentHost:
        """A namespace with its underlay NIC ul0 on the underlay bridge and a management
        link (OVS: its daemons running, the underlay address on br-phy)."""
        if self.backend == "ovs":
            h = self.topo.add_host(name, "ovs")
            self.mgmt.join(h.netns)
            host = AgentHost(name, h.netns, h.underlay_ip, ovs=h.ovs, underlay_mac=h.underlay_mac)
            self.hosts[name] = host
            return host
        index = len(self.hosts) + 1
        ns = self.topo.add_namespace(name)
        ul = self.topo._underlay()
        sh("ip", "link", "add", "ul0", "netns", ns, "type", "veth", "peer", "name",
           f"{name[:10]}-ul", "netns", ul)
        sh("ip", "-n", ul, "link", "set", f"{name[:10]}-ul", "master", "br0", "up")
        mac = f"02:fe:00:00:02:{index:02x}"
        sh("ip", "-n", ns, "link", "set", "ul0", "address", mac, "arp", "off", "up")
        self.mgmt.join(ns)
        host = AgentHost(name, ns, str(UNDERLAY_NET.network_address + 100 + index),
                         underlay_mac=mac)
        self.hosts[name] = host
        return host

    def _agent(self, host: AgentHost, *extra: str, ports: dict[int, str] | None = None) -> None:
        """`sbnet agent` for `host`, started by wait_agents() (hosts start side by side);
        `ports`: interfaces the operator attaches to the switch first (ofport -> name: a
        physical network's port).  The reference switch's daemon starts now: it outlives
        agents by design, and on a busy machine its start takes longer than an agent waits."""
        host.log = os.path.join(self.workdir, f"{host.name}.log")
        if self.backend == "reference":
            host.socket = os.path.join(self.workdir, f"{host.name}.sock")
            host.switchd = subprocess.Popen(
                [sys.executable, "-m", "sbnet.agent.switchd", host.socket, "br-sbnet",
                 host.netns], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True)
        host.pending = (list(extra), dict(ports or {}))

    def _launch(self, host: AgentHost) -> None:
        extra, ports = host.pending
        host.pending = None
        if self.backend == "ovs":
            for ofport, dev in ports.items():
                host.ovs.vsctl("add-port", "br-int", dev, "--", "set", "Interface", dev,
                               f"ofport_request={ofport}")
            argv = ["--datapath", "ovs", "--ovs-rundir", host.ovs.dir, "--bridge", "br-int"]
        else:
            from sbnet.agent.switchd import SwitchClient
            deadline = time.monotonic() + 120
            while not os.path.exists(host.socket + ".pid"):      # bound and listening
                if host.switchd.poll() is not None or time.monotonic() > deadline:
                    raise TopologyError(f"{host.name}: the switch daemon did not start")
                time.sleep(0.1)
            dp = SwitchClient.connect(host.socket, "br-sbnet", host.netns, timeout=30)
            for ofport, dev in ports.items():
                dp.attach(ofport, dev)
            dp.close()
            argv = ["--datapath", "reference", "--underlay", "ul0", "--underlay-prefix",
                    str(UNDERLAY_NET), "--switch-socket", host.socket]
        with open(host.log, "w") as log:
            host.proc = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, sys.executable, "-m", "sbnet", "agent",
                 "--host", host.name, "--api", self.mgmt.url, "--tunnel-ip", host.tunnel_ip,
                 "--wait", "0.3", "--stats-every", "1", *argv, *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def hypervisor(self, name: str) -> AgentHost:
        """A hypervisor: the agent and its switch on the host itself (VMs plug taps)."""
        host = self._bare(name)
        self._agent(host)
        return host

    def smartnic_server(self, name: str, nic: str, vfs: int, networks: list[str],
                        outside: str | None = None,
                        neighbours: dict[str, str] | None = None) -> Server:
        """A bare-metal server `name` behind SmartNIC `nic`: `vfs` VF/representor pairs
        (pf0vfN on the NIC, vfN on the server) and the channel link; the NIC's agent
        offers `networks` (NAME[=GROUP,...]) to the server's containers.  `outside`: a
        namespace of that name on the NIC's uplink to physnet1 (the outside world's
        router; give its eth0 the address and MAC of its Neutron port).  `neighbours`:
        peers' tunnel endpoints (IP -> MAC) the NIC's agent is given rather than resolving."""
        host = self._bare(nic)
        uplink: dict[int, str] = {}
        if outside:
            out = self.topo.add_namespace(outside)
            sh("ip", "link", "add", "eth0", "netns", out, "type", "veth", "peer", "name", "pn0",
               "netns", host.netns)
            sh("ip", "-n", host.netns, "link", "set", "pn0", "arp", "off", "up")
            sh("ip", "-n", out, "link", "set", "eth0", "up")
            sh("ethtool", "-K", "eth0", "tx", "off", netns=out)
            uplink[PHYSNET_OFPORT] = "pn0"
        ns = self.topo.add_namespace(name)
        server = Server(name, ns, host)
        for i in range(vfs):
            vf, rep = f"vf{i}", f"pf0vf{i}"
            sh("ip", "link", "add", vf, "netns", ns, "type", "veth", "peer", "name", rep,
               "netns", host.netns)
            sh("ip", "-n", host.netns, "link", "set", rep, "arp", "off", "up")
            server.vfs[vf] = rep
        sh("ip", "link", "add", "nic0", "netns", ns, "type", "veth", "peer", "name", "srv0",
           "netns", host.netns)
        sh("ip", "-n", host.netns, "addr", "add", f"{CHANNEL_NIC}/30", "dev", "srv0")
        sh("ip", "-n", host.netns, "link", "set", "srv0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{CHANNEL_SERVER}/30", "dev", "nic0")
        sh("ip", "-n", ns, "link", "set", "nic0", "up")
        self._agent(host, "--nic-channel", f"{CHANNEL_NIC}:{CHANNEL_PORT}",
                    *(f"--vf={v}={r}" for v, r in server.vfs.items()),
                    *(f"--container-network={n}" for n in networks),
                    *((f"--physnet=physnet1={PHYSNET_OFPORT}",) if outside else ()),
                    *(f"--neighbour={ip}={mac}" for ip, mac in (neighbours or {}).items()),
                    ports=uplink)
        self.servers[name] = server
        return server

    def wait_agents(self, timeout: float = 120.0) -> None:
        """Start the agents not started yet; until every agent has registered (and, for
        NICs, the channel answers)."""
        for h in self.hosts.values():
            if h.pending is not None:
                self._launch(h)
        deadline = time.monotonic() + timeout
        while True:
            alive = {a["host"] for a in self.api.request("GET", "agents")["agents"]
                     if a["alive"]}
            if set(self.hosts) <= alive and all(self._channel_up(s) for s in self.servers.values()):
                return
            for h in self.hosts.values():
                if h.proc.poll() is not None:
                    raise TopologyError(f"agent {h.name} exited: {self.log(h.name)}")
            if time.monotonic() > deadline:
                raise TopologyError(f"agents not up after {timeout}s: "
                                    + " | ".join(self.log(h) for h in self.hosts))
            time.sleep(0.2)

    def _channel_up(self, server: Server) -> bool:
        with in_netns(server.netns), socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((CHANNEL_NIC, CHANNEL_PORT)) == 0

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return open(self.hosts[name].log).read()[-3000:]
        return ""

    def vm(self, name: str, host: str, port: dict) -> str:
        """What Nova does for vif_type tap: a tap named for the port, the VM's eth0 with the
        port's MAC; the VM configures the port's address and gateway itself.  Its node name."""
        from sbnet.cni.ports import vif_name
        h = self.hosts[host]
        ns = self.topo.add_namespace(name)
        tap = vif_name(port["id"])
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", tap,
           "netns", h.netns)
        sh("ip", "-n", ns, "link", "set", "eth0", "address", port["mac_address"], "mtu", "1450",
           "up")
        sh("ethtool", "-K", "eth0", "tx", "off", netns=ns)
        sh("ip", "-n", h.netns, "link", "set", tap, "arp", "off", "up")
        if h.ovs is not None:                     # vif_type ovs: os-vif's add-port
            h.ovs.vsctl("add-port", "br-int", tap, "--", "set", "Interface", tap,
                        f"external_ids:iface-id={port['id']}",
                        f"external_ids:attached-mac={port['mac_address']}")
        return name

    def netns_path(self, node: str) -> str:
        return f"/run/netns/{self.topo.ns_name(node)}"

    def container(self, server: Server | str, name: str) -> str:
        """An empty container network namespace (as a runtime makes one); its path
        (CNI_NETNS); topo.run(name, ...) runs a command in it."""
        ns = self.topo.add_namespace(name)
        path = f"/run/netns/{ns}"
        if isinstance(server, str):
            server = self.servers[server] if server in self.servers else None
        if server is not None:
            server.containers[name] = path
        return path

    def cni(self, where: str, command: str, container_id: str, netns: str, config: dict,
            ifname: str = "eth0") -> tuple[int, dict | None]:
        """Run sbnet-cni exactly as a runtime does (CNI_* in the environment, the network
        configuration on stdin), in namespace `where`; (exit status, its JSON output)."""
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=container_id,
                   CNI_NETNS=netns, CNI_IFNAME=ifname, CNI_PATH="/opt/cni/bin")
        res = subprocess.run(["ip", "netns", "exec", where, sys.executable, "-m",
                              "sbnet.cni.plugin"], input=json.dumps(config), env=env,
                             capture_output=True, text=True, timeout=60)
        out = json.loads(res.stdout) if res.stdout.strip() else None
        return res.returncode, out

    def nic_leftovers(self, server: Server, macs: set[str],
                      wait: float = 0.0) -> tuple[list[str], list[str]]:
        """What `server`'s NIC switch still holds for containers that are gone: the
        representors attached to it, and the flows naming a representor's port or one of
        `macs`.  OVS answers beside its agent, which may still be removing them: asked
        again until none is left or `wait` seconds have passed.  The reference switch
        answers one client at a time, so its agent is stopped first (the switch goes on, as
        after a crash)."""
        deadline = time.monotonic() + wait
        while True:
            reps, flows = self._nic_holds(server, macs)
            if not (reps or flows) or self.backend != "ovs" or time.monotonic() > deadline:
                return reps, flows
            time.sleep(0.3)

    def _nic_holds(self, server: Server, macs: set[str]) -> tuple[list[str], list[str]]:
        from sbnet.flows.ofctl import format_flow
        nic = server.nic
        if self.backend == "ovs":
            from sbnet.ovs.backend import OvsDatapath
            dp = OvsDatapath(nic.ovs, "br-int", "netdev", create=False)
            names = dp.port_names()
            flows = [format_flow(s.flow) for s in dp.dump_flows(sync=False)]   # counters unread
        else:
            from sbnet.agent.switchd import SwitchClient
            if nic.proc is not None and nic.proc.poll() is None:
                os.killpg(nic.proc.pid, signal.SIGTERM)
                nic.proc.wait(timeout=30)
            dp = SwitchClient.connect(nic.socket, timeout=30)
            try:
                names, flows = dp.ports(), [format_flow(s.flow) for s in dp.dump_flows()]
            finally:
                dp.close()
        if not flows:
            raise TopologyError(f"{nic.name}'s switch has no flows at all: nothing was read")
        reps = {n: o for n, o in names.items() if n in server.vfs.values()}
        ofports = {str(o) for o in reps.values()}
        naming = [f for f in flows
                  if set(re.findall(r"(?:in_port=|output:)(\d+)", f)) & ofports
                  or any(m in f for m in macs)]
        return sorted(reps), naming

    def close(self) -> None:
        """Stop the agents and their switch daemons (by pid), then the API."""
        for h in self.hosts.values():
            if h.proc is not None and h.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(h.proc.pid, signal.SIGTERM)
                try:
                    h.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(h.proc.pid, signal.SIGKILL)
                    h.proc.wait()
            if h.switchd is not None and h.switchd.poll() is None:
                h.switchd.terminate()
                try:
                    h.switchd.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    h.switchd.kill()
                    h.switchd.wait()
        self.mgmt.close()
