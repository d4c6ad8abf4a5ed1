"""The hypervisor's part of a live migration, on namespaces: the VM's interface is plugged on the destination, switched over, and leaves the source."""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass, field

from sbnet.agent.announce import rarp
from sbnet.agent.netns import Host, Topology, Vm, sh

INCOMING = "mig0"           # the VM's interface on the destination until the switch-over
OUTGOING = "old0"           # its interface on the source after it


@dataclass
class VmMove:
    """One VM moving to `dest`, as libvirt does it: the destination's tap exists (plugged on
    its switch) before the VM runs there; at the switch-over the VM's eth0 is the new one,
    same MAC and addresses, its sockets untouched, and the hypervisor sends a RARP from its
    MAC there at once (QEMU's announce-self on resume); then the source's tap goes."""

    topo: Topology
    vm: Vm
    dest: Host
    ofport: int = 0
    port: str = ""
    source: Host | None = None
    old_port: str = ""
    old_ofport: int = 0
    neigh: list = field(default_factory=list)
    announcer: socket.socket | None = None      # a packet socket on the VM's new interface

    def plug(self) -> int:
        """The destination's tap (`INCOMING` inside the VM, down): its ofport there."""
        ns, host = self.vm.netns, self.dest
        self.ofport = host.ofport()
        self.port = f"tap{self.ofport}"
        sh("ip", "link", "add", INCOMING, "netns", ns, "type", "veth",
           "peer", "name", self.port, "netns", host.netns)
        sh("ip", "-n", ns, "link", "set", INCOMING, "address", self.vm.mac, "mtu",
           str(self.topo.vm_mtu))
        if host.backend != "ebpf":
            sh("ethtool", "-K", INCOMING, "tx", "off", netns=ns)
        sh("ip", "-n", host.netns, "link", "set", self.port, "arp", "off", "up")
        if host.backend == "ovs":
            host.datapath.add_port(self.port, self.ofport)
        else:
            host.datapath.attach(self.ofport, self.port)
        # Its neighbours, read now: the switch-over (the VM paused) is one command.
        self.neigh = json.loads(sh("ip", "-n", ns, "-j", "-4", "neigh", "show", "dev", "eth0")
                                .stdout or "[]")
        from sbnet.datapath.afpacket import in_netns
        with in_netns(ns):
            self.announcer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.announcer.bind((INCOMING, 0))      # by index: it stays bound once renamed
        return self.ofport

    def switch_over(self) -> None:
        """The VM now runs on the destination: one `ip -batch` in its namespace moves its
        addresses, routes and neighbours to the new interface."""
        ns, vm, neigh = self.vm.netns, self.vm, self.neigh
        cmds = ["link set eth0 down", "addr flush dev eth0", f"link set eth0 name {OUTGOING}",
                f"link set {INCOMING} name eth0", "link set eth0 up"]
        if vm.ip:
            cmds.append(f"addr add {vm.ip} dev eth0")
        if vm.gateway:
            cmds.append(f"route replace default via {vm.gateway} dev eth0")
        cmds += [f"neigh replace {n['dst']} lladdr {n['lladdr']} dev eth0 nud stale"
                 for n in neigh if n.get("lladdr")]
        sh("ip", "-n", ns, "-batch", "-", input="\n".join(cmds) + "\n")
        # As QEMU announces a migrated guest on resume (announce-self): a RARP from its MAC.
        with contextlib.suppress(OSError):
            self.announcer.send(rarp(vm.mac))
        self._close_announcer()
        self.source, self.old_port, self.old_ofport = vm.host, vm.port, vm.ofport
        self.source.vms.remove(vm)
        self.dest.vms.append(vm)
        vm.host, vm.port, vm.ofport = self.dest, self.port, self.ofport

    def unplug_source(self) -> None:
        """The source's tap goes (the source domain is destroyed)."""
        src = self.source
        if src.backend == "ovs":
            src.datapath.delete_port(self.old_port)
        else:
            src.datapath.detach(self.old_ofport)
        sh("ip", "-n", self.vm.netns, "link", "del", OUTGOING)

    def _close_announcer(self) -> None:
        if self.announcer is not None:
            self.announcer.close()
            self.announcer = None

    def abort(self) -> None:
        """The migration failed before the switch-over: the destination's tap goes."""
        self._close_announcer()
        if self.dest.backend == "ovs":
            self.dest.datapath.delete_port(self.port)
        else:
            self.dest.datapath.detach(self.ofport)
        sh("ip", "-n", self.vm.netns, "link", "del", INCOMING)
