"""Embedded hosts: reference switches in one process, joined by a simulated underlay and
physical network, each running the pipeline the compiler makes for it."""

from __future__ import annotations

import ipaddress
import logging
import time
from dataclasses import dataclass, field

from sbnet.agent.agent import apply_diff, vif_name
from sbnet.compiler.compile import Compiler, Diff, HostPipeline
from sbnet.agent.dhcp import Responder
from sbnet.compiler.topology import SERVICE_OFPORT, TUNNEL_OFPORTS, Chassis, Topology
from sbnet.datapath.batch import Batch
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort
from sbnet.offload import nic_tier

log = logging.getLogger("sbnet.agent")

UNDERLAY_OFPORT = 65000
PHYSNET_BASE = 65100
FIRST_VIF = 1
MAX_HOPS = 16                      # underlay/physnet relays per send, against loops


@dataclass
class EmbeddedHost:
    """One host: a reference switch, its VIF ofports, and what is installed on it."""

    name: str
    tunnel_ip: str
    index: int
    physnets: dict[str, int]
    switch: Switch
    ofports: dict[str, int] = field(default_factory=dict)      # port id -> ofport
    installed: HostPipeline | None = None
    next_ofport: int = FIRST_VIF
    compiler: Compiler | None = None
    service: bool = False          # a slow-path port whose questions the cluster answers

    @property
    def underlay_mac(self) -> int:
        return 0x0200_0000_0000 | (self.index + 1)

    def chassis(self) -> Chassis:
        tier = self.switch.tier
        return Chassis(self.name, self.tunnel_ip, dict(self.ofports), dict(self.physnets),
                       tier.profile.name if tier is not None else "software",
                       SERVICE_OFPORT if self.service else None)


@dataclass
class Delivery:
    """Where the frames of one send came out: by port id, and on the physical networks
    outside every host (the external world)."""

    ports: dict[str, list[bytes]] = field(default_factory=dict)
    external: dict[str, list[bytes]] = field(default_factory=dict)
    hosts: dict[str, list[str]] = field(default_factory=dict)   # port id -> host of each frame

    def to(self, port_id: str) -> list[bytes]:
        return self.ports.get(port_id, [])

    def hosts_of(self, port_id: str) -> list[str]:
        """The host whose VIF sent out each frame to the port (a migrating VM has two)."""
        return sorted(self.hosts.get(port_id, []))

    @property
    def total(self) -> int:
        return sum(map(len, self.ports.values())) + sum(map(len, self.external.values()))


class Cluster:
    """Hosts on one underlay subnet (tunnels between every pair) and shared physical networks.

    `sync(snapshot)` compiles every host's pipeline and applies the difference to its
    switch in one bundle; `send(port_id, frames)` injects what a VM sends and relays the
    frames the switches put on the underlay and physical networks until nothing moves.
    """

    def __init__(self, hosts: list[str], physnets: tuple[str, ...] = ("physnet1",),
                 underlay: str = "192.168.100.0/24", clock=lambda: 0.0,
                 offload: dict | str | None = None, dhcp: bool = False,
                 compiled: bool = True) -> None:
        """offload: a NIC profile (name or sbnet.offload.Profile) for every host, or a
        host -> profile map; such hosts' switches run that NIC tier (Switch(offload=nic_tier(..))).
        dhcp: every host gets a slow-path port answered by the agent's DHCP responder, as
        `sbnet agent` does (native DHCP).
        compiled: the switches' compiled fast path (False: the numpy reference code)."""
        net = ipaddress.ip_network(underlay)
        self.offload = offload if isinstance(offload, dict) else {h: offload for h in hosts}
        self.clock = clock
        # CPU seconds this process spent in the hosts' switches (each batch taken in and
        # switched), not in relaying frames between them: the wire is not host work.
        self.switch_seconds = 0.0
        self.physnet_names = physnets
        self.hosts: dict[str, EmbeddedHost] = {}
        for i, name in enumerate(hosts):
            ip = str(net.network_address + i + 1)
            profile = self.offload.get(name)
            sw = Switch(name=f"br-{name}", clock=clock, compiled=compiled,
                        offload=None if profile is None else nic_tier(profile))
            phys = {p: PHYSNET_BASE + j for j, p in enumerate(physnets)}
            h = EmbeddedHost(name, ip, i, phys, sw, service=dhcp)
            if dhcp:
                sw.add_port(SERVICE_OFPORT, "sbnet-svc")
            sw.add_port(UNDERLAY_OFPORT, "underlay")
            sw.underlay.add_port(UNDERLAY_OFPORT, h.underlay_mac)
            sw.underlay.add_local(ip)
            sw.underlay.add_route(str(net), UNDERLAY_OFPORT, src=ip)
            for kind, ofport in TUNNEL_OFPORTS.items():
                sw.add_tunnel_port(TunnelPort(ofport, kind, remote_ip="flow", key="flow"),
                                   name=f"{kind}0")
            for p, ofport in phys.items():
                sw.add_port(ofport, p)
            self.hosts[name] = h
        for h in self.hosts.values():
            for other in self.hosts.values():
                if other is not h:
                    h.switch.underlay.add_neighbour(other.tunnel_ip, other.underlay_mac)
        self.by_mac = {h.underlay_mac: h for h in self.hosts.values()}
        self._physnet_names = {h.name: {n: p for p, n in h.physnets.items()}
                               for h in self.hosts.values()}
        self.where: dict[str, tuple[str, int]] = {}     # port id -> (host, ofport)
        self.port_at: dict[tuple[str, int], str] = {}
        self.snapshot: dict | None = None
        self.responder: Responder | None = None

    # --- the agent's side: plug VIFs, apply compiled pipelines ---------------------------

    def plug(self, port_id: str, host: str) -> int:
        """Plug a port's VIF on a host (the ofport the compiler will see for it)."""
        if port_id in self.where:
            return self.where[port_id][1]
        h = self.hosts[host]
        ofport = h.next_ofport
        h.next_ofport += 1
        h.switch.add_port(ofport, vif_name(port_id))
        h.ofports[port_id] = ofport
        self.where[port_id] = (host, ofport)
        self.port_at[(host, ofport)] = port_id
        return ofport

    def plug_destination(self, port_id: str, host: str) -> int:
        """A migrating VM's VIF on its destination too, as Nova plugs it before the
        switch-over (the port stays where it was for send())."""
        h = self.hosts[host]
        ofport = h.next_ofport
        h.next_ofport += 1
        h.switch.add_port(ofport, vif_name(port_id))
        h.ofports[port_id] = ofport
        self.port_at[(host, ofport)] = port_id
        return ofport

    def unplug(self, port_id: str, host: str | None = None) -> None:
        """The port's VIF goes (host: from that host, for a migrating VM plugged on two)."""
        if host is None or self.where.get(port_id, ("",))[0] == host:
            host, ofport = self.where.pop(port_id)
        else:
            ofport = self.hosts[host].ofports[port_id]
        h = self.hosts[host]
        h.switch.remove_port(ofport)
        del h.ofports[port_id]
        del self.port_at[(host, ofport)]

    def plug_bound(self, snapshot: dict) -> None:
        """Plug every VIF port bound to one of our hosts (what Nova would do on boot)."""
        for p in snapshot.get("port", ()):
            host = p.get("binding:host_id")
            owner = p.get("device_owner") or ""
            if host in self.hosts and not owner.startswith("network:"):
                self.plug(p["id"], host)

    def topology(self, snapshot: dict) -> Topology:
        return Topology(snapshot, [h.chassis() for h in self.hosts.values()])

    def sync(self, snapshot: dict, plug: bool = True) -> dict[str, Diff]:
        """Compile every host for this model and apply the difference; returns the diffs."""
        if plug:
            self.plug_bound(snapshot)
        self.snapshot = snapshot
        topo = self.topology(snapshot)
        self.responder = Responder(topo)
        out = {}
        for h in self.hosts.values():
            if h.compiler is None:
                h.compiler = Compiler(h.name)
            known = h.compiler.faults
            new = h.compiler.compile(topo)
            for (typ, ident), why in h.compiler.faults.items():
                if known.get((typ, ident)) != why:       # each fault once, when it appears
                    log.warning("%s: %s %s left out: %s", h.name, typ, ident, why)
            d = h.compiler.last_diff
            apply_diff(h.switch, d)
            h.installed = new
            out[h.name] = d
        return out

    # --- traffic ------------------------------------------------------------------------

    def send(self, port_id: str, frames: list[bytes]) -> Delivery:
        host, ofport = self.where[port_id]
        return self._run([(host, ofport, frames)])

    def send_external(self, physnet: str, frames: list[bytes]) -> Delivery:
        """Frames from the outside world onto a physical network: every host's port on it
        hears them (it is one L2 segment)."""
        return self._run([(h.name, h.physnets[physnet], frames) for h in self.hosts.values()])

    def _run(self, pending: list[tuple[str, int, list[bytes]]]) -> Delivery:
        """Relay in rounds: each round, every (host, port) gets one batch of what was put
        on its wire in the round before."""
        out = Delivery()
        for _ in range(MAX_HOPS):
            if not pending:
                return out
            wires: dict[tuple[str, int], list[bytes]] = {}
            for host, ofport, frames in pending:
                if frames:
                    wires.setdefault((host, ofport), []).extend(frames)
            pending = []
            for (host, ofport), frames in wires.items():
                pending += self._step(self.hosts[host], ofport, frames, out)
        if pending:
            raise RuntimeError("frames still moving after too many relays (a loop?)")
        return out

    def _step(self, h: EmbeddedHost, ofport: int, frames: list[bytes], out: Delivery) -> list:
        t0 = time.process_time()
        h.switch.process(Batch.from_packets(frames, ofport), self.clock())
        self.switch_seconds += time.process_time() - t0
        nxt = []
        for num, port in h.switch.ports.items():
            take = getattr(port, "take_sent", None)
            sent = take() if take else []
            if not sent:
                continue
            if num == UNDERLAY_OFPORT:
                for f in sent:
                    peer = self.by_mac.get(int.from_bytes(f[:6], "big"))
                    if peer is not None:
                        nxt.append((peer.name, UNDERLAY_OFPORT, [f]))
            elif num == SERVICE_OFPORT and h.service and self.responder is not None:
                answers = [a for a in map(self.responder.answer, sent) if a is not None]
                nxt.append((h.name, SERVICE_OFPORT, answers))
            elif num in self._physnet_names[h.name]:
                name = self._physnet_names[h.name][num]
                out.external.setdefault(name, []).extend(sent)
                nxt += [(o.name, o.physnets[name], sent) for o in self.hosts.values() if o is not h]
            elif (h.name, num) in self.port_at:
                pid = self.port_at[(h.name, num)]
                out.ports.setdefault(pid, []).extend(sent)
                out.hosts.setdefault(pid, []).extend(h.name for _ in sent)
        return nxt
