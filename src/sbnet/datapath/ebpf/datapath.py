"""The kernel tier on real interfaces: the TC program at each port's ingress, misses up a ring buffer to the reference switch."""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import socket
import subprocess
import threading
import time
from typing import Callable

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.afpacket import AfPacketDatapath, in_netns
from sbnet.datapath.arrival import AGAIN
from sbnet.datapath.batch import Batch
from sbnet.datapath.ebpf import layout as L, pins
from sbnet.datapath.ebpf.connsync import ConnSync
from sbnet.datapath.ebpf.libbpf import (XDP_MODES, RingReader, tc_attach_ingress, tc_detach_ingress,
                                        xdp_attach, xdp_detach)
from sbnet.datapath.ebpf.tier import EbpfTier
from sbnet.datapath.ebpf.tunsock import TunnelSockets, UnderlayPort
from sbnet.datapath.ebpf.upcalls import VXLAN_PORT, decode
from sbnet.datapath.mmsg import Sender
from sbnet.datapath.ports import Port
from sbnet.datapath.prewarm import established_ahead
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow

_RECIRC = F.SLOT_INDEX["recirc_id"]
# How often the slow path's loop looks for a held VIF's first frame while announcements
# wait for it (the program forwards the frame and releases the hold by itself).
ARRIVAL_POLL = 0.003

_UNDERLAY_OPS = ("add_port", "add_local", "add_route", "add_neighbour")


class TxPort(Port):
    """A switch port whose frames the slow path sends with an AF_PACKET socket that receives
    nothing (protocol 0): the port's packets reach the switch through the TC program only,
    so no packet is switched twice."""

    def __init__(self, ofport: int, ifname: str, netns: str | None = None) -> None:
        super().__init__(ofport, ifname)
        self.ifname, self.tx_errors = ifname, 0
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.sock.bind((ifname, 0))
            self.ifindex = socket.if_nametoindex(ifname)
        self._tx = Sender()
        # While the VM behind it is arriving (EbpfDatapath.hold, until activation): its MAC,
        # the tunnel and underlay ports, and whether the kernel still holds it; forced: the
        # batch being switched holds copies the kernel sent up while it held it.
        self.held: tuple[bytes, frozenset, Callable[[], bool]] | None = None
        self.forced = False

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        if self.held is not None:
            batch = self._unheld(batch)
            if not len(batch):
                return
            nbytes = None           # some frames may be held back: summed again
        super().deliver(batch, nbytes)
        # One sendmmsg call per batch (a frame past the device's MTU fails and is counted).
        self.tx_errors += self._tx.send(self.sock.fileno(), batch)

    def _unheld(self, batch: Batch) -> Batch:
        """The batch without the tunnels' frames for the held VM (the slow path's part of
        the hold: what the kernel sends up is switched, not delivered)."""
        mac, tunnels, still = self.held
        if not self.forced and not still():
            return batch
        drop = [i for i, port in enumerate(batch.in_port.tolist())
                if port in tunnels and batch.packet(i)[:6] == mac]
        return batch.take(np.setdiff1d(np.arange(len(batch)), drop)) if drop else batch

    def close(self) -> None:
        self.sock.close()


def _ip4(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def _cidr4(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr, strict=False)
    return int(net.network_address), int(net.netmask)


def veth_to_elsewhere(ifname: str, netns: str | None = None) -> bool:
    """The device is a veth whose other end is in another namespace (as a VM's is): the
    program may then deliver into that end directly (bpf_redirect_peer, which refuses an
    end in the same namespace)."""
    ns = ["-n", netns] if netns else []
    res = subprocess.run(["ip", *ns, "-d", "-j", "link", "show", "dev", ifname],
                         capture_output=True, text=True)
    try:
        (link,) = json.loads(res.stdout) if res.returncode == 0 else [{}]
    except ValueError:
        return False
    return link.get("linkinfo", {}).get("info_kind") == "veth" and "link_netnsid" in link


class EbpfDatapath:
    """A reference Switch as the slow path of the kernel tier on real interfaces.

    attach() puts the program at the interface's ingress (clsact, direct action).  Packets
    whose megaflow is in the kernel never leave it; the others come up the ring buffer, the
    switch translates and executes them (the first packet is not lost), and each new
    megaflow the ebpf placement accepts is installed in the kernel.  Connections the switch's
    conntrack sees established are handed to the kernel's connection map.  Kernel counters are
    folded into the megaflows before any dump and before idle expiry; a megaflow the switch
    evicts leaves the kernel at once.
    """

    def __init__(self, switch: Switch | None = None, netns: str | None = None,
                 maintain_every: float = 1.0, capacity: int = 65536,
                 upcall_rate: int = 0, upcall_burst: int = 0, pin: str | None = None,
                 kernel_ct: bool = True, xdp: str | None = None) -> None:
        """pin: the name its maps are pinned under (sbnet.datapath.ebpf.pins), so they
        outlive this process; close(keep=True) then leaves the program forwarding, and the
        next EbpfDatapath of that name takes it up (kept_ports(), revalidate_kept()).
        kernel_ct: new UDP connections, and TCP ones through their handshake, are
        committed and established by the kernel itself (no upcall), the slow path's
        conntrack told of each (ConnSync); zone limits hold for them too.
        xdp ("native" or "generic"): the XDP program too on every attached port (not
        tunnels), forwarding what it can before the TC program (bpf/sbnet_xdp.h) and
        redirecting only to ports attached the same way."""
        if xdp is not None and xdp not in XDP_MODES:
            raise ValueError(f"xdp must be one of {sorted(XDP_MODES)} or None")
        self.xdp = xdp
        self.switch = switch or Switch()
        # The kernel forwards established segments the slow path's conntrack never sees, so
        # its TCP windows go stale: it must not call a later FIN or RST invalid for that
        # (Linux's flowtable offload marks its connections "be liberal" the same way).
        self.switch.conntrack.tcp_liberal = True
        # A packet the kernel sends up must fit an upcall; a segmentation-offloaded one (a
        # VM's TCP burst, up to 64 kB) does not and is lost.  So a busy megaflow that a
        # table change moves is put back at once, translated anew, rather than left for
        # its next packet to set up (its sender would wait out a retransmission timeout).
        self.switch.revalidator.keep_hot = 1.0
        self.netns = netns
        self.lock = threading.RLock()
        self.maintain_every = maintain_every
        self.pin = pin
        self.tier = EbpfTier(capacity=capacity, pin=pin, kernel_ct=kernel_ct, tcp_liberal=True,
                             xdp=xdp is not None)
        self.reopened = self.tier.reopened    # a previous agent's maps were taken up
        if upcall_rate:
            self.tier.set_upcall_limit(upcall_rate, upcall_burst or upcall_rate)
        self.truncated = 0            # upcalls too long to carry (past layout.UPCALL_MAX)
        self.gso_upcalls = 0          # GSO packets that came up and were segmented
        self.ring = RingReader(self.tier.upcalls_fd, self.tier.upcalls_size)
        self._offered = 0                     # megaflow ids below this were offered to the kernel
        self.conns = ConnSync(self.tier, self.switch.conntrack, kernel_ct)
        self.switch.on_evict.append(self._evicted)
        self._attached: dict[int, int] = {}   # ofport -> ifindex
        self._devices: list[str] = []          # tunnel devices made here, deleted by close()
        self._underlay_port: int | None = None
        self.tunnel_sockets = TunnelSockets(netns)   # GRE and Geneve: no kernel device here
        self._meters: dict[int, object] = {}    # datapath meter id -> MeterMod in the kernel
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.batches = self.errors = 0
        self.last_error: str | None = None
        self.held: dict[int, str] = {}   # VIF ofport -> MAC of the VM that has not arrived yet
        self.hold_events: list[tuple[int, float, str]] = []     # (ofport, monotonic, what)
        self.on_arrival: dict[int, list[tuple[int, bytes]]] = {}  # held VIF -> what to send
        self.announced: list[tuple[int, float, int]] = []       # (VIF, monotonic, frames)
        self.relay_drop: dict[int, tuple] = {}  # held VIF -> (source, its relay's rule)
        self.relays: dict[int, str] = {}       # arrived VIF -> source whose relay is dropped
        self.again: dict[int, list[tuple[int, bytes]]] = {}  # arrived VIF -> sent again
        self.next_again = 0.0
        if self.tier.reopened:
            self.conns.take_up(self.switch.clock())

    # -- ports ---------------------------------------------------------------------
    def attach(self, ofport: int, ifname: str, name: str | None = None) -> Port:
        port = TxPort(ofport, ifname, self.netns)
        with self.lock:
            try:
                self.switch.add_port(ofport, name or ifname, port=port)
            except BaseException:
                port.close()
                raise
            self.tier.add_port(ofport, port.ifindex, xdp_out=self.xdp is not None,
                               peer=veth_to_elsewhere(ifname, self.netns))
            with in_netns(self.netns):
                tc_attach_ingress(port.ifindex, self.tier.prog_fd)
                if self.xdp:
                    xdp_attach(port.ifindex, self.tier.xdp_prog_fd, self.xdp)
            self._attached[ofport] = port.ifindex
        return port

    def add_tunnel_port(self, tunnel: TunnelPort, name: str | None = None) -> Port:
        """A tunnel port: a kernel VXLAN device in external (collect_md) mode, the program at
        its ingress reading the tunnel key; the switch knows the port for the slow path."""
        name = name or f"{tunnel.kind}{tunnel.ofport}"
        with self.lock:
            port = self.switch.add_tunnel_port(tunnel, name)
            if tunnel.kind != "vxlan":
                # No such device in this kernel: the slow path carries the tunnel through
                # the host's IP stack (placement keeps its megaflows in software, saying why).
                try:
                    sock = self.tunnel_sockets.open(tunnel.kind, tunnel.dst_port)
                except OSError:
                    self.switch.remove_port(tunnel.ofport)
                    raise
                self.ring.watch(sock.fileno())
                return port
            ns = ["ip", "netns", "exec", self.netns] if self.netns else []
            kept = self.tier.reopened and subprocess.run(
                [*ns, "ip", "link", "show", name], capture_output=True).returncode == 0
            res = subprocess.run([*ns, "ip", "link", "add", name, "type", "vxlan", "external",
                                  "dstport", str(tunnel.dst_port or VXLAN_PORT)],
                                 capture_output=True, text=True) if not kept else None
            if res is not None and res.returncode:
                self.switch.remove_port(tunnel.ofport)
                raise OSError(f"cannot make VXLAN device {name}: {res.stderr.strip()}")
            self._devices.append(name)
            subprocess.run([*ns, "ip", "link", "set", name, "up"], check=True)
            with in_netns(self.netns):
                ifindex = socket.if_nametoindex(name)
                tc_attach_ingress(ifindex, self.tier.prog_fd)
            self.tier.add_port(tunnel.ofport, ifindex, tunnel)
            self._attached[tunnel.ofport] = ifindex
            return port

    # The Datapath protocol's methods that are the same on AfPacketDatapath: both drive a
    # Switch under self.lock, with attach/detach/add_tunnel_port for ports.
    plug = AfPacketDatapath.plug
    unplug = AfPacketDatapath.unplug
    add_tunnel = AfPacketDatapath.add_tunnel
    port_names = AfPacketDatapath.port_names
    delete_group = AfPacketDatapath.delete_group
    add_flows = AfPacketDatapath.add_flows
    delete_flows = AfPacketDatapath.delete_flows
    trace = AfPacketDatapath.trace
    dump_conntrack = AfPacketDatapath.dump_conntrack
    # The slow path's conntrack holds every connection (the kernel's map only a copy of
    # the established ones): a migration exports those from it.
    export_conns = AfPacketDatapath.export_conns

    def import_conns(self, entries) -> list[tuple]:
        """A migrating port's connections into the slow path's conntrack and at once into
        the kernel's connection map, written anew whatever the map held for their tuples:
        the peer's segments reach the kernel before the VM answers from here, and a
        segmentation-offloaded one could not go up to be recognised."""
        with self.lock:
            done = AfPacketDatapath.import_conns(self, entries)
            by_zone: dict[tuple, list] = {}
            m = (1 << 64) - 1
            for zone, proto, v6, src, dst, sport, dport in done:
                row = ((proto, src >> 64, src & m, dst >> 64, dst & m, sport, dport) if v6
                       else (proto, src, dst, sport, dport))
                by_zone.setdefault((zone, bool(v6)), []).append(row)
            for (zone, v6), rows in by_zone.items():
                self.conns.zones.add(zone)
                if v6:
                    self.conns.hand_down6(np.array(rows, dtype=np.uint64), zones=(zone,), force=True)
                else:
                    self.conns.hand_down(np.array(rows, dtype=np.int64), zones=(zone,), force=True)
            return done

    def forget_conns(self, tuples) -> int:
        with self.lock:
            n = AfPacketDatapath.forget_conns(self, tuples)
            self.conns.sync(self.switch.clock())
            return n

    prewarm = AfPacketDatapath.prewarm
    # The outside's answers through a floating IP taken by the kernel from their first
    # segment stalled that stream for 300-1,100 ms in 3 of 5 bench_migration runs (0 of 3
    # without them, their first segments going up): left to the upcall until understood.
    prewarm_answers = False
    dump_meters = AfPacketDatapath.dump_meters
    port_stats = AfPacketDatapath.port_stats
    loop_errors = AfPacketDatapath.loop_errors
    upcalls = AfPacketDatapath.upcalls

    def underlay(self, op: str, *args) -> None:
        """The slow path's underlay (an Underlay method: add_port, add_local, add_route,
        add_neighbour); its port sends what the switch encapsulates through the kernel."""
        if op not in _UNDERLAY_OPS:
            raise ValueError(f"underlay op must be one of {_UNDERLAY_OPS}")
        with self.lock:
            if op == "add_port":
                port = UnderlayPort(args[0], self.netns)
                self.switch.add_port(args[0], "underlay", port=port)
                self._underlay_port = args[0]
            getattr(self.switch.underlay, op)(*args)

    def detach(self, ofport: int) -> None:
        with self.lock:
            if ofport in self.held or ofport in self.relays:
                self.release(ofport, "detached")
            ifindex = self._attached.pop(ofport, None)
            if ifindex is not None:
                with in_netns(self.netns), contextlib.suppress(OSError):
                    tc_detach_ingress(ifindex)
                    if self.xdp:
                        xdp_detach(ifindex, self.xdp)
            self.tier.remove_port(ofport)
            self.switch.remove_port(ofport)

    # -- a VM arriving by live migration (AfPacketDatapath.hold's semantics) -------------
    def hold(self, ofport: int, mac: str) -> None:
        """The VM behind VIF `ofport` (MAC `mac`) is arriving and does not run here yet:
        what tunnels bring for it (the other hosts' copies of its traffic during the move)
        is switched as before but not delivered into the VIF, by the program and by the
        slow path, until the VIF's first frame, which releases the hold in the kernel, or
        release().  Otherwise the copies wait in the VIF for the VM and reach it on
        arrival, stale (duplicate replies, segments TCP discards by PAWS); switching them
        still puts the megaflows and connection entries the VM's traffic will take in
        place before it runs here, as the dual delivery did."""
        with self.lock:
            self._sync_holds()
            if ofport not in self.tier.ports:
                return                  # not attached: nothing reaches it
            self.tier.hold(ofport, int(mac.replace(":", ""), 16))
            port = self.switch.ports.get(ofport)
            if isinstance(port, TxPort):
                port.held = (bytes.fromhex(mac.replace(":", "")),
                             frozenset(self.switch.tunnels) | {self._underlay_port},
                             lambda: self._still_held(ofport))
            self.held[ofport] = mac
            self._event(ofport, time.monotonic(), "held")

    def announce_on_arrival(self, ofport: int, frames: list[tuple[int, bytes]],
                            relay: dict | None = None) -> None:
        """AfPacketDatapath.announce_on_arrival's: when held VIF `ofport` sends its first
        frame, `frames` ((out port, frame): the VM's and its floating IPs' announcements)
        leave (the slow path's loop looks at the hold every ARRIVAL_POLL seconds while one
        is expected: the frame itself is forwarded by the program at once), and from then
        until release() what `relay` describes (holdfilter.Relay's fields: what the host
        the VM left relays of its floating IP's traffic) is kept from the VIF by the
        program; before the announcement, the outside still sends there."""
        with self.lock:
            if ofport not in self.held:
                return
            self.on_arrival[ofport] = [(int(o), bytes(f)) for o, f in frames]
            if relay:
                self.relay_drop[ofport] = (relay["source"], (
                    _ip4(relay["source"]), int(relay["router_mac"].replace(":", ""), 16),
                    [_cidr4(c) for c in relay["inside"]][:L.MAX_INSIDE]))

    def release(self, ofport: int, why: str = "released") -> None:
        """Deliver the VM's traffic at `ofport` again (no-op if not held), and what its
        source relays (after its first frame)."""
        with self.lock:
            self._sync_holds()
            self.on_arrival.pop(ofport, None)
            self.relay_drop.pop(ofport, None)
            if why != "first frame" and self.relays.pop(ofport, None) is not None:
                self.tier.release(ofport)
            if why != "first frame":
                self._unhold_port(ofport)
                self.again.pop(ofport, None)
            if self.held.pop(ofport, None) is not None:
                self.tier.release(ofport)
                self._event(ofport, time.monotonic(), why)

    def holds(self) -> dict:
        """{"held": {ofport: MAC}, "events": [(ofport, monotonic, "held" or why released),
        ...], "announced": [(ofport, monotonic, frames sent on its first frame), ...]} (the
        last 16 of each; "first frame" when the kernel saw it, or when its announcements
        left), "relays": {ofport: source tunnel endpoint} (what it left relays, kept from it)."""
        with self.lock:
            self._sync_holds()
            return {"held": dict(self.held), "events": list(self.hold_events),
                    "announced": list(self.announced), "relays": dict(self.relays)}

    def _sync_holds(self) -> None:
        """Holds the kernel released on a VIF's first frame leave the tables here too."""
        for ofport in list(self.held):
            st = self.tier.hold_state(ofport)
            if st is None or st[1]:
                del self.held[ofport]
                when = st[1] if st else time.monotonic()
                frames = self.on_arrival.pop(ofport, ())
                for out, frame in frames:       # ahead of the first frame, which came up
                    port = self.switch.ports.get(out)
                    if port is not None:
                        port.deliver(Batch.from_packets([frame], out))
                if frames:
                    when = time.monotonic()
                    self.announced.append((ofport, when, len(frames)))
                    del self.announced[:-16]
                source, rule = self.relay_drop.pop(ofport, (None, None))
                if source is not None and st is not None:
                    self.tier.keep_relay(ofport, rule)
                    self.relays[ofport] = source        # the kernel keeps them from the VIF
                    if frames:                          # and the VM is announced again
                        self.again[ofport] = list(frames)
                        self.next_again = time.monotonic() + AGAIN
                else:
                    self.tier.release(ofport)
                self._event(ofport, when, "first frame")

    def _announce_again(self) -> None:
        """While an old host's relay is dropped, the VM's announcements again (arrival.AGAIN)."""
        with self.lock:
            self.next_again = time.monotonic() + AGAIN
            for out, frame in [f for frames in self.again.values() for f in frames]:
                port = self.switch.ports.get(out)
                if port is not None:
                    port.deliver(Batch.from_packets([frame], out))

    def _still_held(self, ofport: int) -> bool:
        st = self.tier.hold_state(ofport)
        return st is not None and not st[1]

    def _unhold_port(self, ofport: int) -> None:
        port = self.switch.ports.get(ofport)
        if isinstance(port, TxPort):
            port.held = None

    def _event(self, ofport: int, when: float, what: str) -> None:
        self.hold_events.append((ofport, when, what))
        del self.hold_events[:-16]

    # -- the slow path -------------------------------------------------------------
    def poll_once(self, timeout: float = 0.1) -> int:
        """Wait up to `timeout` s for upcalls; switch every one that came up (one batch) and
        install its megaflows and established connections in the kernel."""
        records, frames = self.ring.drain(), self.tunnel_sockets.receive()
        if not records and not frames and self.ring.wait(int(timeout * 1000)):
            records, frames = self.ring.drain(), self.tunnel_sockets.receive()
        if frames:
            self._tunnelled(frames)
        if not records:
            return len(frames)
        up = decode(records, self._underlay_port)
        self.truncated += up.truncated
        self.gso_upcalls += up.segmented
        with self.lock:
            if len(up.events):
                self.conns.events(up.events, up.kinds, self.switch.clock())
            if len(up.batch):
                guards = self.conns.guard(up.tuples)
                forced = [p for p in self.switch.ports.values()
                          if up.held and isinstance(p, TxPort) and p.held is not None]
                for p in forced:
                    p.forced = True
                try:
                    self.switch.process(up.batch)
                finally:
                    for p in forced:
                        p.forced = False
                self._install_new()
                self.conns.hand_down(up.tuples)
                self.conns.hand_down6(up.tuples6)
                self.conns.unguard(guards)
                self.conns.write_limits()
        self.batches += 1
        return len(up.batch) + len(up.conn_keys)

    def _tunnelled(self, frames: list[bytes]) -> None:
        """GRE and Geneve packets the host's stack received, switched as the underlay port's
        (the switch decapsulates them)."""
        ports = np.full(len(frames), self._underlay_port or 0, dtype=np.uint32)
        with self.lock:
            self.switch.process(Batch.from_packets(frames, ports))
            self._install_new()

    def _install_new(self) -> None:
        new, self._offered = self.switch.dpif.flows_since(self._offered)
        if established_ahead(self.switch, new, self.switch.clock()):
            more, self._offered = self.switch.dpif.flows_since(self._offered)
            new = [*new, *more]
        zones = len(self.conns.zones)
        acts, cts = None, ()
        for mf, p in zip(new, self.tier.put_many(new)):
            if p.tier == "ebpf":
                mf.tier = "ebpf"
                if mf.actions is not acts:      # a batch's megaflows share their actions
                    acts = mf.actions
                    cts = [a.zone for a in acts if isinstance(a, odp.Ct)]
                if cts:
                    self.conns.zones.update(cts)
        if len(self.conns.zones) > zones:
            # A zone the kernel does ct() in from now on: every connection the slow path
            # holds there goes down first (with kernel_ct the kernel would take one it
            # does not hold for new).
            self.conns.sync(self.switch.clock())

    _installed = _install_new          # prewarm's megaflows go down at once

    def _evicted(self, mf, packets: int, nbytes: int) -> None:
        self.tier.remove(mf.mf_id)

    def fold(self) -> None:
        """Kernel counters into the switch's megaflows (so rule counters are exact)."""
        self.switch.dpif.fold_counts(self.tier.take_counters())

    def maintain(self) -> None:
        with self.lock:
            self.fold()
            self.switch.maintain()
            self.conns.sync(self.switch.clock())

    # -- the loop ------------------------------------------------------------------
    def run(self, until: float | None = None) -> None:
        next_maint = time.monotonic() + self.maintain_every
        while not self._stop.is_set():
            now = time.monotonic()
            if until is not None and now >= until:
                return
            try:
                wait = max(0.0, min(0.05, self.next_again - now)) if self.again else 0.05
                if self.on_arrival:
                    wait = min(wait, ARRIVAL_POLL)
                    with self.lock:
                        self._sync_holds()
                self.poll_once(wait)
                if self.again and time.monotonic() >= self.next_again:
                    self._announce_again()
            except Exception as exc:          # a bad batch must not stop forwarding for good
                self.errors += 1
                self.last_error = repr(exc)
            if now >= next_maint:
                self.maintain()
                next_maint = now + self.maintain_every

    def start(self) -> EbpfDatapath:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=f"ebpf-{self.switch.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self, keep: bool = False) -> None:
        """Stop the loop, take the program off every interface, close the maps and remove
        their pins.  keep (pinned only): leave the program forwarding on every interface
        with its maps pinned, for the next agent to take up."""
        self.stop()
        keep = keep and self.pin is not None
        with self.lock:
            if not keep:
                for ofport in list(self._attached):
                    self.detach(ofport)
                ns = ["ip", "netns", "exec", self.netns] if self.netns else []
                for dev in self._devices:
                    subprocess.run([*ns, "ip", "link", "del", dev], capture_output=True)
            for port in list(self.switch.ports.values()):
                if isinstance(port, (UnderlayPort, TxPort)):
                    port.close()
            self.ring.close()
            self.tunnel_sockets.close()
            self.tier.close()
            if self.pin is not None and not keep:
                pins.remove(self.pin, self.netns)

    def __enter__(self) -> EbpfDatapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the Datapath interface, under the lock -----------------------------------------
    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (), groups=(), **kw) -> None:
        with self.lock:
            self.fold()                   # which megaflows are busy (Revalidator.keep_hot)
            self.switch.bundle(add=add, delete=delete, groups=groups, **kw)
            self._install_new()
            if kw.get("meters"):
                self._sync_meters()

    def _sync_meters(self) -> None:
        """The switch's meters in the kernel's meter map (a changed one starts full, as the
        switch's does); megaflows name them by datapath id."""
        want = {self.switch.meters.dp_id(m.meter_id): m for m in self.switch.dump_meters()}
        for dp_id, m in want.items():
            if self._meters.get(dp_id) != m:
                self.tier.set_meter(dp_id, m.rate, m.burst or m.rate, m.unit == "pktps")
                self._meters[dp_id] = m
        for dp_id in set(self._meters) - set(want):
            self.tier.remove_meter(dp_id)
            del self._meters[dp_id]

    def dump_flows(self):
        with self.lock:
            self.fold()
            return self.switch.dump_flows()

    def dump_megaflows(self) -> list[str]:
        """Each megaflow with its tier (ebpf / software) and, for software, the reason."""
        with self.lock:
            self.fold()
            lines = self.switch.dump_megaflows()
            out = []
            for mf, line in zip(self.switch.dpif.flow_dump(), lines):
                p = self.tier.placement(mf.mf_id)
                if p is not None and p.tier != "ebpf":
                    line = line.replace("tier:software", f"tier:software ({p.reason})")
                out.append(line)
            return out

    def delete_meter(self, meter_id: int) -> list[Flow]:
        with self.lock:
            gone = self.switch.delete_meter(meter_id)
            self._sync_meters()
            return gone

    def meter_stats(self) -> list:
        """The switch's meter counters plus what the kernel's buckets passed and dropped."""
        with self.lock:
            out = []
            for st in self.switch.meter_stats():
                pk, dpk, by, dby = self.tier.meter_totals(self.switch.meters.dp_id(st.meter_id))
                out.append(dataclasses.replace(
                    st, packet_in_count=st.packet_in_count + pk + dpk,
                    byte_in_count=st.byte_in_count + by + dby,
                    band_packet_count=st.band_packet_count + dpk,
                    band_byte_count=st.band_byte_count + dby))
            return out

    def drop_counts(self) -> dict[str, int]:
        with self.lock:
            self.fold()
            drops = self.switch.drop_counts()
            if self.tunnel_sockets.errors:
                drops["tunnel socket receive error"] = self.tunnel_sockets.errors
            return drops

    # -- taking up what a previous agent left (pinned maps) -------------------------------
    def kept_ports(self) -> dict[str, int]:
        """Devices the previous agent's switch had, with their ports: name -> ofport."""
        out = {}
        with in_netns(self.netns):
            for ifindex, ofport in self.tier.kept_ports.items():
                with contextlib.suppress(OSError):
                    out[socket.if_indextoname(ifindex)] = ofport
        return out

    def revalidate_kept(self) -> int:
        """Once this switch has its tables (after the agent's first sync): each megaflow
        entry the previous agent left is translated again and replaced by the megaflow
        of these tables (installed before the old entry goes, so its packets never
        stall); returns how many were taken up.  Entries of later passes (recirc_id set)
        only go: their ids named the previous switch's frozen states, which this one
        allocates anew, so their packets come up once and get megaflows of their own."""
        with self.lock:
            kept = self.tier.kept()
            now = self.switch.clock()
            for _, key in kept:
                if key[_RECIRC]:
                    continue
                if self.switch.dpif.flow_find(key) < 0:
                    self.switch.upcall(key, now)
            self._install_new()
            for fkey, _ in kept:
                self.tier.drop_kept(fkey)
            return sum(1 for _, key in kept if not key[_RECIRC])

    def connections_in_kernel(self) -> int:
        """Connections the kernel's connection map holds established (both directions each)."""
        with self.lock:
            return self.conns.established()

    def megaflows_in_kernel(self) -> int:
        """Megaflows in the kernel's flow map (under the lock: an install in progress has
        counted its entries before the one system call that writes them)."""
        with self.lock:
            return len(self.tier)

    def kernel_stats(self) -> dict[str, int]:
        """The program's counters: hits, misses, upcalls, drops (sbnet.datapath.ebpf.layout.STATS)."""
        return self.tier.stats()


