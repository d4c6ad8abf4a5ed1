"""Simulated hosts, VMs, an underlay and an outside world in network namespaces, for datapaths on real traffic."""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

# Host datapaths: Open vSwitch (userspace), the reference switch on AF_PACKET, and the
# kernel eBPF tier with the reference switch as its slow path.  Real-stack tests run on each.
BACKENDS = ("ovs", "reference", "ebpf")
HOST_BACKENDS = BACKENDS
UNDERLAY_NET = ipaddress.ip_network("10.250.0.0/24")
UNDERLAY_OFPORT = 1000          # the reference switch's port on the underlay veth
VM_MTU = 1450                   # room for a VXLAN/Geneve header on a 1500-byte underlay
PREFIX = "sbnet"


class TopologyError(RuntimeError):
    """A namespace, link or daemon could not be set up; the message has the command's stderr."""


def netns_available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth pairs)"
    for tool in ("ip", "ethtool"):
        if not shutil.which(tool):
            return f"needs the {tool} command"
    return None


def require_netns(ovs: bool = False) -> None:
    """Skip the calling test when namespaces (or OVS) are unavailable; fail instead in CI."""
    import pytest

    from sbnet.ovs.dummy import ovs_available
    why = netns_available()
    if why is None and ovs and not ovs_available():
        why = "needs Open vSwitch (ovs-vswitchd)"
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"real-host tests {why}, and CI must run them")
    pytest.skip(f"real-host tests {why}")


def sh(*argv: str, netns: str | None = None, check: bool = True, timeout: float = 30,
       input: str | None = None) -> subprocess.CompletedProcess:
    """Run a command (inside `netns` if given); TopologyError with its stderr on failure."""
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(argv)
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                         input=input)
    if check and res.returncode != 0:
        raise TopologyError(f"{' '.join(cmd)} failed ({res.returncode}): "
                            f"{res.stderr.strip() or res.stdout.strip()}")
    return res


def link_mac(netns: str, dev: str) -> str:
    out = sh("ip", "-n", netns, "-j", "link", "show", dev).stdout
    return json.loads(out)[0]["address"]


@dataclass
class Vm:
    """A namespace with one interface (eth0) whose peer is a port of a host's switch."""

    name: str
    netns: str
    host: Host
    port: str                # the host-side interface name
    ofport: int
    mac: str
    ip: str | None           # with prefix length, e.g. "10.0.0.1/24"; None: no IPv4
    gateway: str | None = None
    kind: str = "vm"         # or "external"
    ip6: tuple[str, ...] = ()            # IPv6 addresses with prefix length; () = IPv6 off
    gateway6: str | None = None

    @property
    def address(self) -> str | None:
        return self.ip.split("/")[0] if self.ip else None

    @property
    def address6(self) -> str | None:
        return self.ip6[0].split("/")[0] if self.ip6 else None


@dataclass(frozen=True)
class Ipv6Address:
    """One IPv6 address of an interface and where its duplicate address detection stands."""

    address: str             # with prefix length
    scope: str               # "global", "link"
    tentative: bool          # DAD still running (or failed, with dadfailed)
    dadfailed: bool          # another node answered for it

    @property
    def settled(self) -> bool:
        return self.dadfailed or not self.tentative


@dataclass(frozen=True)
class Neighbour:
    """One entry of a neighbour table: the R bit of the last advertisement sets `router`."""

    address: str
    lladdr: str | None
    router: bool
    state: tuple[str, ...]


@dataclass
class Host:
    """A hypervisor: a namespace with a switch (OVS netdev bridge or the reference switch)."""

    name: str
    netns: str
    backend: str
    index: int
    underlay_ip: str
    underlay_mac: str
    datapath: object = None          # OvsDatapath or AfPacketDatapath
    ovs: object = None               # the host's DummyOVS daemons (backend "ovs")
    phy: object = None               # OvsDatapath of br-phy, which holds the underlay IP
    vms: list[Vm] = field(default_factory=list)
    tunnels: dict[str, int] = field(default_factory=dict)     # port name -> ofport
    _next_ofport: int = 1

    def ofport(self) -> int:
        n = self._next_ofport
        self._next_ofport += 1
        return n


class Topology:
    """Hosts, VMs and an underlay in namespaces named `<prefix>-<pid>-<random>-<node>`.

    Use as a context manager (or call close()): everything it made goes, even after a
    failure: its daemons are stopped by their pids, its processes killed, its namespaces
    deleted.  Namespaces left by a process that died are removed by `cleanup_stale()`.
    """

    def __init__(self, prefix: str = PREFIX, vm_mtu: int = VM_MTU) -> None:
        why = netns_available()
        if why:
            raise TopologyError(f"Topology {why}")
        self.prefix = prefix
        self.id = f"{prefix}-{os.getpid()}-{secrets.token_hex(3)}"
        self.vm_mtu = vm_mtu
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self.procs: list[subprocess.Popen] = []
        self.underlay_ns: str | None = None
        self._closed = False
        atexit.register(self.close)

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- namespaces ---------------------------------------------------------------
    def ns_name(self, node: str) -> str:
        return f"{self.id}-{node}"

    def add_namespace(self, node: str, ipv6: bool = False) -> str:
        """A bare namespace for `node` (lo up; IPv6 off unless `ipv6`), deleted by close()."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", node):
            raise ValueError(f"node name {node!r}: letters, digits, _ . - only")
        name = self.ns_name(node)
        if name in self.namespaces:
            raise ValueError(f"{node} already exists in this topology")
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        if ipv6:
            # IPv6 on but no autoconfiguration: no router solicitations, RAs ignored; duplicate
            # address detection on, one probe per address, whatever the machine's defaults.
            sh("sysctl", "-q", "-w", *(f"net.ipv6.conf.{c}.{k}={v}" for c in ("all", "default")
                                       for k, v in (("disable_ipv6", 0), ("accept_ra", 0),
                                                    ("router_solicitations", 0),
                                                    ("accept_dad", 1), ("dad_transmits", 1))),
               netns=name)
        else:
            # No IPv6 autoconfiguration chatter (MLD, router solicitations) on the wires:
            # the tests count packets.
            sh("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1", netns=name)
        return name

    def _underlay(self) -> str:
        if self.underlay_ns is None:
            self.underlay_ns = self.add_namespace("underlay")
            sh("ip", "-n", self.underlay_ns, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.underlay_ns, "link", "set", "br0", "up")
        return self.underlay_ns

    # -- hosts --------------------------------------------------------------------
    def add_host(self, name: str, backend: str = "ovs", hw_offload: bool = False,
                 process: bool = True, underlay_bridge: bool = True) -> Host:
        """A host namespace with its switch running, joined to the underlay by veth ul0.

        backend "ovs": ovsdb-server and ovs-vswitchd in the namespace, bridges br-int
        (the datapath) and br-phy (the underlay; underlay_bridge=False: neither, nor any
        underlay address or neighbour: left to the agent); "reference": the reference
        switch on AF_PACKET, in a process of its own (process=False: a thread of this one)."""
        if backend not in HOST_BACKENDS:
            raise ValueError(f"backend must be one of {HOST_BACKENDS}, not {backend!r}")
        if name in self.hosts:
            raise ValueError(f"host {name} already exists")
        index = len(self.hosts) + 1
        ul = self._underlay()
        ns = self.add_namespace(name)
        ip = str(UNDERLAY_NET.network_address + index)
        mac = f"02:fe:00:00:00:{index:02x}"
        sh("ip", "link", "add", "ul0", "netns", ns, "type", "veth",
           "peer", "name", f"h{index}", "netns", ul)
        sh("ip", "-n", ul, "link", "set", f"h{index}", "master", "br0", "up")
        # Under OVS the underlay MAC is br-phy's; the veth beneath it gets another.
        ul0_mac = mac if backend in ("reference", "ebpf") else _other_mac(mac)
        sh("ip", "-n", ns, "link", "set", "ul0", "address", ul0_mac, "arp", "off", "up")
        host = Host(name, ns, backend, index, ip, mac)
        self.hosts[name] = host
        if backend == "ovs":
            self._start_ovs(host, hw_offload, underlay_bridge)
        elif backend == "ebpf":
            self._start_ebpf(host)
        else:
            self._start_reference(host, process)
        for other in self.hosts.values():
            if other is not host:
                self._neighbours(host, other)
                self._neighbours(other, host)
        # Reference switches send a tunnel's datagrams in UDP GSO frames while every host
        # on the underlay reads them whole (a veth does not cut them; OVS's netdev drops them).
        gso = all(h.backend == "reference" for h in self.hosts.values())
        for h in self.hosts.values():
            if h.backend == "reference":
                h.datapath.underlay_gso(gso)
        return host

    def _start_ovs(self, host: Host, hw_offload: bool, underlay_bridge: bool = True) -> None:
        from sbnet.ovs.backend import OvsDatapath
        from sbnet.ovs.dummy import DummyOVS, OVSError
        config = {"hw-offload": "true"} if hw_offload else {}
        host.ovs = DummyOVS(0, "br-int", dummy=False, netns=host.netns, other_config=config)
        host.ovs.start()
        if not underlay_bridge:
            return
        host.datapath = OvsDatapath(host.ovs, "br-int", "netdev")
        # Userspace tunnelling: the underlay IP lives on br-phy (a NORMAL bridge that owns
        # the underlay veth); tunnel packets leave and arrive through it.
        host.phy = OvsDatapath(host.ovs, "br-phy", "netdev", fail_mode="standalone")
        host.ovs.vsctl("set", "Bridge", "br-phy", f"other_config:hwaddr={host.underlay_mac}")
        host.phy.add_port("ul0")
        plen = UNDERLAY_NET.prefixlen
        sh("ip", "-n", host.netns, "addr", "add", f"{host.underlay_ip}/{plen}", "dev", "br-phy")
        sh("ip", "-n", host.netns, "link", "set", "br-phy", "up")
        with contextlib.suppress(OVSError):    # the kernel route may have been learnt already
            host.ovs.appctl("ovs/route/add", str(UNDERLAY_NET), "br-phy")

    def _start_reference(self, host: Host, process: bool) -> None:
        from sbnet.datapath import zygote
        from sbnet.datapath.afpacket import AfPacketDatapath, AfPacketProcess
        from sbnet.datapath.switch import Switch
        if process:
            dp = AfPacketProcess(f"{host.name}-br", netns=host.netns, zygote=zygote.shared())
        else:
            dp = AfPacketDatapath(Switch(f"{host.name}-br"), netns=host.netns).start()
        host.datapath = dp
        dp.attach(UNDERLAY_OFPORT, "ul0")
        # The switch owns the underlay address; the kernel gets none, so it does not
        # answer tunnel packets with port-unreachable errors.
        dp.underlay("add_port", UNDERLAY_OFPORT, host.underlay_mac)
        dp.underlay("add_local", host.underlay_ip)
        dp.underlay("add_route", str(UNDERLAY_NET), UNDERLAY_OFPORT, None, host.underlay_ip)

    def _start_ebpf(self, host: Host) -> None:
        """The kernel tier in a process of its own; the host's kernel owns the underlay
        address (its VXLAN devices send and receive through the host's routes)."""
        from sbnet.datapath import zygote
        from sbnet.datapath.afpacket import AfPacketProcess
        plen = UNDERLAY_NET.prefixlen
        sh("ip", "-n", host.netns, "link", "set", "ul0", "arp", "on")
        sh("ip", "-n", host.netns, "addr", "add", f"{host.underlay_ip}/{plen}", "dev", "ul0")
        host.datapath = dp = AfPacketProcess(f"{host.name}-br", netns=host.netns, kind="ebpf",
                                             zygote=zygote.shared())
        dp.underlay("add_port", UNDERLAY_OFPORT, host.underlay_mac)
        dp.underlay("add_local", host.underlay_ip)
        dp.underlay("add_route", str(UNDERLAY_NET), UNDERLAY_OFPORT, None, host.underlay_ip)

    def _neighbours(self, host: Host, peer: Host) -> None:
        self.add_neighbour(host, peer.underlay_ip, peer.underlay_mac)

    def add_neighbour(self, host: Host, ip: str, mac: str) -> None:
        """A static underlay neighbour entry on `host`: tunnels never wait for ARP."""
        if host.backend == "ebpf":
            sh("ip", "-n", host.netns, "neigh", "replace", ip, "lladdr", mac, "dev", "ul0",
               "nud", "permanent")
        if host.backend == "ovs":
            if host.phy is not None:          # else its agent's br-phy resolves peers
                host.ovs.appctl("tnl/neigh/set", "br-phy", ip, mac)
        else:
            host.datapath.underlay("add_neighbour", ip, mac)

    def add_tunnel(self, host: Host | str, kind: str = "vxlan", ofport: int = 100,
                   name: str | None = None, **options) -> int:
        """A tunnel port taking remote_ip and key from the flow (tun_dst, tun_id)."""
        host = self._host(host)
        name = name or f"{kind}{ofport}"
        if host.backend == "ovs":
            host.datapath.add_tunnel_port(name, kind, ofport, **options)
        else:
            from sbnet.datapath.tunnel import TunnelPort
            host.datapath.add_tunnel_port(TunnelPort(ofport, kind, key="flow", **options), name)
        host.tunnels[name] = ofport
        return ofport

    # -- VMs ----------------------------------------------------------------------
    def add_vm(self, name: str, host: Host | str, ip: str | None, mac: str | None = None,
               gateway: str | None = None, ofport: int | None = None, kind: str = "vm",
               ipv6: Sequence[str] = (), gateway6: str | None = None) -> Vm:
        """A namespace with eth0 (`ip` with its prefix, `mac`, default route via `gateway`)
        whose peer is port `ofport` of the host's switch.  `ipv6`: IPv6 addresses with
        their prefixes (IPv6 stays off without them), default IPv6 route via `gateway6`;
        duplicate address detection runs on them as usual (see wait_dad)."""
        host = self._host(host)
        if name in self.vms:
            raise ValueError(f"VM {name} already exists")
        ipv6 = tuple(ipv6)
        if gateway6 and not ipv6:
            raise ValueError(f"VM {name}: gateway6 without IPv6 addresses")
        ns = self.add_namespace(name, ipv6=bool(ipv6))
        ofport = ofport or host.ofport()
        mac = mac or f"02:00:00:{host.index:02x}:{(ofport >> 8) & 0xff:02x}:{ofport & 0xff:02x}"
        port = f"tap{ofport}"
        sh("ip", "link", "add", "eth0", "netns", ns, "type", "veth",
           "peer", "name", port, "netns", host.netns)
        sh("ip", "-n", ns, "link", "set", "eth0", "address", mac, "mtu", str(self.vm_mtu), "up")
        if ip:
            sh("ip", "-n", ns, "addr", "add", ip, "dev", "eth0")
        if gateway:
            sh("ip", "-n", ns, "route", "add", "default", "via", gateway)
        for addr in ipv6:
            sh("ip", "-n", ns, "-6", "addr", "add", addr, "dev", "eth0")
        if gateway6:
            sh("ip", "-n", ns, "-6", "route", "add", "default", "via", gateway6, "dev", "eth0")
        # VMs keep their checksum and segmentation offloads, as virtio VMs have them: the
        # kernel tier (ebpf) and the reference switch's ports (virtio-net headers on their
        # packet sockets) complete and cut what the VM left to the NIC.  Open vSwitch's
        # userspace datapath here does not, so its VMs do that themselves.
        if host.backend == "ovs":
            sh("ethtool", "-K", "eth0", "tx", "off", netns=ns)
        sh("ip", "-n", host.netns, "link", "set", port, "arp", "off", "up")
        if host.backend == "ovs":
            host.datapath.add_port(port, ofport)
        else:
            host.datapath.attach(ofport, port)
        vm = Vm(name, ns, host, port, ofport, mac, ip, gateway, kind, ipv6, gateway6)
        self.vms[name] = vm
        host.vms.append(vm)
        return vm

    def add_external(self, name: str, host: Host | str, ip: str, mac: str | None = None,
                     gateway: str | None = None, ofport: int | None = None) -> Vm:
        """The outside world: a namespace on a host's provider port (an uplink), not a tenant VM."""
        return self.add_vm(name, host, ip, mac, gateway, ofport, kind="external")

    def _host(self, host: Host | str) -> Host:
        return self.hosts[host] if isinstance(host, str) else host

    # -- running things -----------------------------------------------------------
    def run(self, node: Vm | Host | str, *argv: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess:
        return sh(*argv, netns=self._ns(node), check=check, timeout=timeout, input=input)

    def popen(self, node: Vm | Host | str, *argv: str, **kw) -> subprocess.Popen:
        """A background process in a node's namespace; killed by close() if still running."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        proc = subprocess.Popen(["ip", "netns", "exec", self._ns(node), *argv],
                                text=True, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def ping(self, src: Vm | str, dst: str, count: int = 3, interval: float = 0.2,
             wait: float = 2.0) -> subprocess.CompletedProcess:
        """ping (-6 to an IPv6 address) from a node; returncode 0 when every reply came back."""
        family = ("-6",) if ":" in dst else ()
        return self.run(src, "ping", *family, "-n", "-q", "-c", str(count), "-i", str(interval),
                        "-W", str(wait), dst, check=False)

    def ipv6_addresses(self, node: Vm | str, dev: str = "eth0") -> list[Ipv6Address]:
        """The IPv6 addresses on a node's interface, link-local included, with their DAD state."""
        out = self.run(node, "ip", "-j", "-6", "addr", "show", "dev", dev).stdout
        return [Ipv6Address(f"{a['local']}/{a['prefixlen']}", a.get("scope", ""),
                            bool(a.get("tentative")), bool(a.get("dadfailed")))
                for link in json.loads(out or "[]") for a in link.get("addr_info", ())
                if a.get("family") == "inet6"]

    def wait_dad(self, node: Vm | str, timeout: float = 10.0,
                 dev: str = "eth0") -> list[Ipv6Address]:
        """The interface's IPv6 addresses once duplicate address detection has finished for
        every one (none tentative: passed, or failed and marked dadfailed); TopologyError
        after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            addrs = self.ipv6_addresses(node, dev)
            if all(a.settled for a in addrs):
                return addrs
            if time.monotonic() > deadline:
                raise TopologyError(f"{node if isinstance(node, str) else node.name}: duplicate "
                                    f"address detection still running after {timeout}s: {addrs}")
            time.sleep(0.1)

    def neighbours6(self, node: Vm | str, dev: str = "eth0") -> list[Neighbour]:
        """The IPv6 neighbour table of a node's interface (`ip -6 neigh show`)."""
        out = self.run(node, "ip", "-j", "-6", "neigh", "show", "dev", dev).stdout
        return [Neighbour(n["dst"], n.get("lladdr"), "router" in n, tuple(n.get("state", ())))
                for n in json.loads(out or "[]")]

    def _ns(self, node: Vm | Host | str) -> str:
        if isinstance(node, (Vm, Host)):
            return node.netns
        if node in self.vms:
            return self.vms[node].netns
        if node in self.hosts:
            return self.hosts[node].netns
        return self.ns_name(node)

    def pids(self) -> list[int]:
        """Processes this topology started that are still running (daemons included)."""
        out = [p.pid for p in self.procs if p.poll() is None]
        for h in self.hosts.values():
            if h.ovs is not None:
                out += h.ovs.pids
            if getattr(h.datapath, "pid", None):
                out.append(h.datapath.pid)
        return out

    # -- teardown -----------------------------------------------------------------
    def close(self) -> None:
        """Stop everything this topology started and delete its namespaces (idempotent)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        errors = []
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc)
        for h in self.hosts.values():
            try:
                if h.backend == "ovs" and h.ovs is not None:
                    h.ovs.stop()
                elif h.datapath is not None:
                    h.datapath.close()
            except Exception as exc:          # go on: the namespaces must still go
                errors.append(f"{h.name}: {exc}")
        for ns in reversed(self.namespaces):
            res = sh("ip", "netns", "del", ns, check=False)
            if res.returncode != 0 and os.path.exists(f"/run/netns/{ns}"):
                errors.append(f"ip netns del {ns}: {res.stderr.strip()}")
        self.namespaces.clear()
        if errors:
            raise TopologyError("teardown: " + "; ".join(errors))

    @staticmethod
    def cleanup_stale(prefix: str = PREFIX) -> list[str]:
        """Delete namespaces `<prefix>-<pid>-...` whose creating process is gone, after
        stopping the processes still inside them (left by a killed test run)."""
        removed = []
        try:
            names = os.listdir("/run/netns")
        except FileNotFoundError:
            return removed
        for ns in names:
            m = re.fullmatch(rf"{re.escape(prefix)}-(\d+)-[0-9a-f]+-.+", ns)
            if not m or _alive(int(m.group(1))):
                continue
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            sh("ip", "netns", "del", ns, check=False)
            removed.append(ns)
        return removed


@dataclass
class OverlayPair:
    """Two hosts joined by a tunnel over the underlay, one VM on each, hand-written flows."""

    topo: Topology
    h1: Host
    h2: Host
    vm1: Vm
    vm2: Vm


def overlay_pair(topo: Topology, backend1: str = "ovs", backend2: str | None = None,
                 kind: str = "vxlan", vni: int = 5, tunnel_ofport: int = 100,
                 names: tuple[str, str, str, str] = ("h1", "h2", "vm1", "vm2"),
                 subnet: str = "10.0.0", process: bool = True,
                 stateful: bool = False) -> OverlayPair:
    """The smallest overlay: hosts h1, h2 (backends as given), vm1 on h1 and vm2 on h2 in
    `subnet`.0/24, a `kind` tunnel port on each, and overlay_flows() installed.
    process: reference switches in processes of their own (False: threads of this one);
    stateful: each VM behind a stateful security group (overlay_flows' `stateful`)."""
    h1 = topo.add_host(names[0], backend1, process=process)
    h2 = topo.add_host(names[1], backend2 or backend1, process=process)
    for h in (h1, h2):
        topo.add_tunnel(h, kind, tunnel_ofport)
    vm1 = topo.add_vm(names[2], h1, f"{subnet}.1/24")
    vm2 = topo.add_vm(names[3], h2, f"{subnet}.2/24")
    from sbnet.flows.ofctl import parse_file
    for h, vm, remote in ((h1, vm1, vm2), (h2, vm2, vm1)):
        flows = overlay_flows(vm, remote, vni, tunnel_ofport, stateful=stateful)
        h.datapath.bundle(add=parse_file(flows).flows)
    return OverlayPair(topo, h1, h2, vm1, vm2)


# The stateful group's ingress rules (overlay_flows(stateful=True)): new connections to
# the VM are let in for ICMP and for TCP to iperf3's port; anything else new is dropped.
SG_INGRESS = ("icmp", "tcp,tp_dst=5201")
SG_EGRESS_TABLE, SG_INGRESS_TABLE = 1, 2


def overlay_flows(vm: Vm, remote: Vm, vni: int, tunnel_ofport: int, stateful: bool = False,
                  zone: int | None = None, ingress: Sequence[str] = SG_INGRESS) -> str:
    """Hand-written flows (ovs-ofctl syntax) joining `vm` on this host to `remote` on
    another over a tunnel port with remote_ip=flow and key=flow: ARP and IP to the
    tunnel, and back.  ICMP has its own rules so its packets are counted apart.

    stateful: IP goes through conntrack in `zone` (default: the VM's ofport) both ways,
    as a Neutron security group compiles: the VM's new connections are committed and
    sent, established and related packets pass either way, invalid ones are dropped, and
    from the tunnel a new connection passes (committed) only if it matches one of the
    `ingress` rules."""
    out = f"set_field:{remote.host.underlay_ip}->tun_dst,set_field:{vni}->tun_id,output:{tunnel_ofport}"
    into = f"in_port={tunnel_ofport},tun_id={vni}"
    if stateful:
        return _stateful_flows(vm, remote, into, out, vm.ofport if zone is None else zone,
                               ingress)
    return "\n".join([
        f"table=0,priority=100,arp,in_port={vm.ofport},arp_spa={vm.address} actions={out}",
        f"table=0,priority=110,icmp,in_port={vm.ofport},dl_dst={remote.mac} actions={out}",
        f"table=0,priority=100,ip,in_port={vm.ofport},dl_dst={remote.mac} actions={out}",
        f"table=0,priority=100,arp,{into},arp_tpa={vm.address} actions=output:{vm.ofport}",
        f"table=0,priority=110,icmp,{into},dl_dst={vm.mac} actions=output:{vm.ofport}",
        f"table=0,priority=100,ip,{into},dl_dst={vm.mac} actions=output:{vm.ofport}",
        "table=0,priority=0 actions=drop",
    ])


def _stateful_flows(vm: Vm, remote: Vm, into: str, out: str, zone: int,
                    ingress: Sequence[str]) -> str:
    """overlay_flows(stateful=True): ARP as without a group; IP through ct() in `zone`,
    egress in SG_EGRESS_TABLE and ingress in SG_INGRESS_TABLE."""
    eg, ig = SG_EGRESS_TABLE, SG_INGRESS_TABLE
    deliver = f"output:{vm.ofport}"
    rules = [
        f"table=0,priority=100,arp,in_port={vm.ofport},arp_spa={vm.address} actions={out}",
        f"table=0,priority=100,arp,{into},arp_tpa={vm.address} actions={deliver}",
        f"table=0,priority=90,ip,in_port={vm.ofport},dl_dst={remote.mac},nw_src={vm.address}"
        f" actions=ct(zone={zone},table={eg})",
        f"table=0,priority=90,ip,{into},dl_dst={vm.mac},nw_dst={vm.address}"
        f" actions=ct(zone={zone},table={ig})",
        "table=0,priority=0 actions=drop",
    ]
    for table, send in ((eg, out), (ig, deliver)):
        rules += [
            f"table={table},priority=100,ct_state=+trk+inv,ip actions=drop",
            f"table={table},priority=90,ct_state=+trk+est-inv,ip actions={send}",
            f"table={table},priority=85,ct_state=+trk+rel-inv,ip actions={send}",
        ]
    rules.append(f"table={eg},priority=80,ct_state=+trk+new-inv,ip"
                 f" actions=ct(commit,zone={zone}),{out}")
    rules += [f"table={ig},priority=80,ct_state=+trk+new-inv,{match}"
              f" actions=ct(commit,zone={zone}),{deliver}" for match in ingress]
    rules += [f"table={eg},priority=0 actions=drop", f"table={ig},priority=0 actions=drop"]
    return "\n".join(rules)


def _other_mac(mac: str) -> str:
    """A MAC for the underlay veth under br-phy, distinct from the bridge's own."""
    b = bytearray.fromhex(mac.replace(":", ""))
    b[1] ^= 0x01
    return ":".join(f"{x:02x}" for x in b)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_group(proc: subprocess.Popen) -> None:
    """Stop a process we started (it leads its own session) and its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
