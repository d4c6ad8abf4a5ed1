"""The kernel tier on real interfaces: the TC program at each port's ingress, misses up a ring buffer to the reference switch."""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import struct
import subprocess
import threading
import time

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.afpacket import AfPacketDatapath, in_netns
from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import internet_checksum
from sbnet.datapath.ebpf import layout as L
from sbnet.datapath.ebpf.conns import established
from sbnet.datapath.ebpf.libbpf import RingBuffer, tc_attach_ingress, tc_detach_ingress
from sbnet.datapath.ebpf.tier import EbpfTier
from sbnet.datapath.ports import Port
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow

VXLAN_PORT = 4789
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

    def deliver(self, batch: Batch) -> None:
        super().deliver(batch)
        for pkt in batch.packets():
            try:
                self.sock.send(pkt)
            except OSError:
                self.tx_errors += 1

    def close(self) -> None:
        self.sock.close()


class UdpUnderlayPort(Port):
    """The slow path's underlay port: each tunnel frame the switch encapsulates leaves as the
    UDP datagram it carries, sent by the host's kernel (its routes and neighbours choose
    the way), so the switch needs no underlay MACs of its own."""

    def __init__(self, ofport: int, netns: str | None = None) -> None:
        super().__init__(ofport, "underlay")
        self.tx_errors = 0
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def deliver(self, batch: Batch) -> None:
        super().deliver(batch)
        for pkt in batch.packets():
            if len(pkt) < 42 or pkt[12:14] != b"\x08\x00" or pkt[23] != socket.IPPROTO_UDP:
                self.tx_errors += 1
                continue
            ihl = (pkt[14] & 15) * 4
            dst = socket.inet_ntoa(pkt[30:34])
            dport = int.from_bytes(pkt[14 + ihl + 2:14 + ihl + 4], "big")
            try:
                self.sock.sendto(pkt[14 + ihl + 8:], (dst, dport))
            except OSError:
                self.tx_errors += 1

    def close(self) -> None:
        self.sock.close()


def _outer(inner: bytes, vni: int, src: int, dst: int) -> bytes:
    """An Ethernet/IPv4/UDP/VXLAN frame around `inner`, as the kernel's VXLAN device received
    it (the slow path decapsulates it again, so its switch sees the tunnel key)."""
    udp_len = 8 + 8 + len(inner)
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, 0, 20 + udp_len, 0, 0x4000, 64, 17, 0, src, dst))
    total = sum(struct.unpack("!10H", bytes(ip)))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    ip[10:12] = struct.pack("!H", ~total & 0xFFFF)
    udp = struct.pack("!HHHH", 49152, VXLAN_PORT, udp_len, 0)
    return (b"\x02\0\0\0\0\x01" * 2 + b"\x08\x00" + bytes(ip) + udp
            + struct.pack("!II", 0x08000000, vni << 8) + inner)


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
                 upcall_rate: int = 0, upcall_burst: int = 0) -> None:
        self.switch = switch or Switch()
        # The kernel forwards established segments the slow path's conntrack never sees, so
        # its TCP windows go stale: it must not call a later FIN or RST invalid for that
        # (Linux's flowtable offload marks its connections "be liberal" the same way).
        self.switch.conntrack.tcp_liberal = True
        self.netns = netns
        self.lock = threading.RLock()
        self.maintain_every = maintain_every
        self.tier = EbpfTier(capacity=capacity)
        if upcall_rate:
            self.tier.set_upcall_limit(upcall_rate, upcall_burst or upcall_rate)
        self._frames: list[bytes] = []
        self._in_ports: list[int] = []
        self._inner: list[bytes] = []          # the same frames before any tunnel header
        self.truncated = 0
        self.ring = RingBuffer(self.tier.upcalls_fd, self._upcall)
        self._offered = 0                     # megaflow ids below this were offered to the kernel
        self._zones: set[int] = set()         # ct zones of megaflows in the kernel
        self._conns: set[tuple] = set()       # connection map entries, as ConnEntry keys
        self.switch.on_evict.append(self._evicted)
        self._attached: dict[int, int] = {}   # ofport -> ifindex
        self._devices: list[str] = []          # tunnel devices made here, deleted by close()
        self._underlay_port: int | None = None
        self._meters: dict[int, object] = {}    # datapath meter id -> MeterMod in the kernel
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.batches = self.errors = 0
        self.last_error: str | None = None

    # -- ports ---------------------------------------------------------------------
    def attach(self, ofport: int, ifname: str, name: str | None = None) -> Port:
        port = TxPort(ofport, ifname, self.netns)
        with self.lock:
            try:
                self.switch.add_port(ofport, name or ifname, port=port)
            except BaseException:
                port.close()
                raise
            self.tier.add_port(ofport, port.ifindex)
            with in_netns(self.netns):
                tc_attach_ingress(port.ifindex, self.tier.prog_fd)
            self._attached[ofport] = port.ifindex
        return port

    def add_tunnel_port(self, tunnel: TunnelPort, name: str | None = None) -> Port:
        """A tunnel port: a kernel VXLAN device in external (collect_md) mode, the program at
        its ingress reading the tunnel key; the switch knows the port for the slow path."""
        name = name or f"{tunnel.kind}{tunnel.ofport}"
        with self.lock:
            port = self.switch.add_tunnel_port(tunnel, name)
            if tunnel.kind != "vxlan":
                return port        # the slow path alone carries it (placement says why)
            ns = ["ip", "netns", "exec", self.netns] if self.netns else []
            res = subprocess.run([*ns, "ip", "link", "add", name, "type", "vxlan", "external",
                                  "dstport", str(tunnel.dst_port or VXLAN_PORT)],
                                 capture_output=True, text=True)
            if res.returncode:
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
    # the established ones): a migration moves those, the kernel picks them up on upcall.
    export_conns = AfPacketDatapath.export_conns
    import_conns = AfPacketDatapath.import_conns
    forget_conns = AfPacketDatapath.forget_conns
    dump_meters = AfPacketDatapath.dump_meters
    port_stats = AfPacketDatapath.port_stats
    loop_errors = AfPacketDatapath.loop_errors

    def underlay(self, op: str, *args) -> None:
        """The slow path's underlay (an Underlay method: add_port, add_local, add_route,
        add_neighbour); its port sends what the switch encapsulates as UDP through the kernel."""
        if op not in _UNDERLAY_OPS:
            raise ValueError(f"underlay op must be one of {_UNDERLAY_OPS}")
        with self.lock:
            if op == "add_port":
                self.switch.add_port(args[0], "underlay", port=UdpUnderlayPort(args[0], self.netns))
                self._underlay_port = args[0]
            getattr(self.switch.underlay, op)(*args)

    def detach(self, ofport: int) -> None:
        with self.lock:
            ifindex = self._attached.pop(ofport, None)
            if ifindex is not None:
                with in_netns(self.netns), contextlib.suppress(OSError):
                    tc_detach_ingress(ifindex)
            self.tier.remove_port(ofport)
            self.switch.remove_port(ofport)

    # -- the slow path -------------------------------------------------------------
    def _upcall(self, rec: bytes) -> None:
        (_, in_port, length, caplen, _, tun, tun_id, tun_src, tun_dst, vlan, _) = \
            L.UPCALL.unpack_from(rec)
        frame = rec[L.UPCALL.size:L.UPCALL.size + caplen]
        if caplen < length - (4 if vlan else 0):
            self.truncated += 1           # larger than an upcall carries: its sender resends
            return
        if vlan:
            frame = frame[:12] + vlan.to_bytes(4, "big") + frame[12:]
        # A VM with checksum offload leaves its TCP/UDP checksum to the NIC (the kernel path
        # keeps that state with the packet, across veths and tunnels; the bytes that came
        # up do not).
        frame = complete_l4_checksum(frame)
        self._inner.append(frame)
        if tun and self._underlay_port is not None:
            frame, in_port = _outer(frame, tun_id, tun_src, tun_dst), self._underlay_port
        self._frames.append(frame)
        self._in_ports.append(in_port)

    def poll_once(self, timeout: float = 0.1) -> int:
        """Wait up to `timeout` s for upcalls; switch what came up and install its megaflows."""
        self.ring.poll(int(timeout * 1000))
        frames, ports, inner = self._frames, self._in_ports, self._inner
        if not frames:
            return 0
        self._frames, self._in_ports, self._inner = [], [], []
        with self.lock:
            self.switch.process(Batch.from_packets(frames, ports))
            self._install_new()
            self._hand_down(inner)
        self.batches += 1
        return len(frames)

    def _install_new(self) -> None:
        cache = self.switch.cache
        for mf_id in range(self._offered, cache.next_id):
            mf = cache.flows.get(mf_id)
            if mf is not None and self.tier.put(mf).tier == "ebpf":
                mf.tier = "ebpf"
                self._zones.update(a.zone for a in mf.actions if isinstance(a, odp.Ct))
        self._offered = cache.next_id

    def _hand_down(self, frames: list[bytes]) -> None:
        """Connections of these frames that the switch's conntrack now holds established."""
        if not self._zones:
            return
        for t in {_five_tuple(f) for f in frames} - {None}:
            for zone in self._zones:
                if (zone, *t) in self._conns:
                    continue
                entries = established(self.switch.conntrack, zone, *t)
                if entries is None:
                    continue
                for e in entries:
                    self.tier.add_conn(e.zone, e.proto, e.src, e.dst, e.sport, e.dport, e.state, e.mark)
                    self._conns.add((e.zone, e.proto, e.src, e.dst, e.sport, e.dport))

    def _age_conns(self) -> None:
        """Connections the slow path no longer holds established leave the kernel."""
        for key in list(self._conns):
            zone, proto, src, dst, sport, dport = key
            if established(self.switch.conntrack, zone, proto, src, dst, sport, dport) is None:
                self.tier.remove_conn(*key)
                self._conns.discard(key)

    def _evicted(self, mf, packets: int, nbytes: int) -> None:
        self.tier.remove(mf.mf_id)

    def fold(self) -> None:
        """Kernel counters into the switch's megaflows (so rule counters are exact)."""
        c = self.switch.cache
        for mf_id, k in self.tier.take_counters().items():
            if mf_id in c.flows:
                c.packets[mf_id] += k.packets
                c.bytes[mf_id] += k.bytes
                c.used[mf_id] = max(c.used[mf_id], k.used)
                c.tcp_flags[mf_id] |= np.uint16(k.tcp_flags)

    def maintain(self) -> None:
        with self.lock:
            self.fold()
            self.switch.maintain()
            self._age_conns()

    # -- the loop ------------------------------------------------------------------
    def run(self, until: float | None = None) -> None:
        next_maint = time.monotonic() + self.maintain_every
        while not self._stop.is_set():
            now = time.monotonic()
            if until is not None and now >= until:
                return
            try:
                self.poll_once(0.05)
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

    def close(self) -> None:
        """Stop the loop, take the program off every interface, close the maps."""
        self.stop()
        with self.lock:
            for ofport in list(self._attached):
                self.detach(ofport)
            ns = ["ip", "netns", "exec", self.netns] if self.netns else []
            for dev in self._devices:
                subprocess.run([*ns, "ip", "link", "del", dev], capture_output=True)
            for port in list(self.switch.ports.values()):
                if isinstance(port, UdpUnderlayPort):
                    port.close()
            self.ring.close()
            self.tier.close()

    def __enter__(self) -> EbpfDatapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the Datapath interface, under the lock -----------------------------------------
    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (), groups=(), **kw) -> None:
        with self.lock:
            self.switch.bundle(add=add, delete=delete, groups=groups, **kw)
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
            for mf, line in zip(self.switch.cache.flows.values(), lines):
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
            return self.switch.drop_counts()

    def kernel_stats(self) -> dict[str, int]:
        """The program's counters: hits, misses, upcalls, drops (sbnet.datapath.ebpf.layout.STATS)."""
        return self.tier.stats()


def complete_l4_checksum(frame: bytes) -> bytes:
    """The frame with its TCP or UDP checksum computed in full (IPv4 or IPv6 without
    extension headers, at most one VLAN tag); other frames as they are."""
    off = 14
    et = frame[12:14]
    if et in (b"\x81\x00", b"\x88\xa8") and len(frame) >= 18:
        off, et = 18, frame[16:18]
    if et == b"\x08\x00" and len(frame) >= off + 20:
        ihl = (frame[off] & 15) * 4
        total = int.from_bytes(frame[off + 2:off + 4], "big")
        proto = frame[off + 9]
        frag = int.from_bytes(frame[off + 6:off + 8], "big") & 0x3FFF
        if frag or ihl < 20:
            return frame
        l4, end = off + ihl, off + total
        pseudo = frame[off + 12:off + 20] + bytes([0, proto]) + (end - l4).to_bytes(2, "big")
    elif et == b"\x86\xdd" and len(frame) >= off + 40:
        proto = frame[off + 6]
        l4, end = off + 40, off + 40 + int.from_bytes(frame[off + 4:off + 6], "big")
        pseudo = frame[off + 8:off + 40] + (end - l4).to_bytes(4, "big") + bytes([0, 0, 0, proto])
    else:
        return frame
    at = {F.IP_TCP: 16, F.IP_UDP: 6}.get(proto)
    if at is None or end > len(frame) or end - l4 < at + 2:
        return frame
    seg = bytearray(frame[l4:end])
    seg[at:at + 2] = b"\0\0"
    c = internet_checksum(pseudo + bytes(seg))
    if proto == F.IP_UDP and c == 0:
        c = 0xFFFF
    return frame[:l4 + at] + c.to_bytes(2, "big") + frame[l4 + at + 2:]


def _five_tuple(frame: bytes) -> tuple | None:
    """(proto, src, dst, sport, dport) of an untagged IPv4 TCP/UDP frame, else None."""
    if len(frame) < 38 or frame[12:14] != b"\x08\x00":
        return None
    ihl = (frame[14] & 15) * 4
    proto = frame[23]
    if proto not in (F.IP_TCP, F.IP_UDP) or len(frame) < 14 + ihl + 4:
        return None
    src = int.from_bytes(frame[26:30], "big")
    dst = int.from_bytes(frame[30:34], "big")
    o = 14 + ihl
    return (proto, src, dst, int.from_bytes(frame[o:o + 2], "big"),
            int.from_bytes(frame[o + 2:o + 4], "big"))

