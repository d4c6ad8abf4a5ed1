"""The reference switch on real Linux interfaces: AF_PACKET ports and a poll loop feeding Switch.process."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from sbnet.datapath import ctmove
import numpy as np

from sbnet.datapath.arrival import Arrivals
from sbnet.datapath.batch import HEADROOM, TAILROOM, Batch, filled
from sbnet.datapath import gro, holdfilter, mmsg, vnet
from sbnet.datapath.mmsg import Receiver, Sender
from sbnet.datapath.ports import Port
from sbnet.datapath.prewarm import Warmup
from sbnet.datapath.switch import Switch
from sbnet.datapath.tunnel import TunnelPort
from sbnet.flows.flow import Flow

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23     # Linux 4.20+: the socket does not see frames it (or anyone) sends
PACKET_OUTGOING = 4             # sll_pkttype of a frame this host transmitted
PACKET_AUXDATA = 8              # ancillary struct tpacket_auxdata with each frame
PACKET_VNET_HDR = 15            # a virtio-net header before each frame, both ways
TP_STATUS_VLAN_VALID, TP_STATUS_VLAN_TPID_VALID = 0x10, 0x40
_AUXDATA = struct.Struct("=IIIHHHH")   # status, len, snaplen, mac, net, vlan_tci, vlan_tpid
CLONE_NEWNET = 0x40000000
MAX_FRAME = 65536
BATCH = 256                     # frames read from one socket per pass
RX_BATCH = 64                   # frames per recvmmsg call

_libc = ctypes.CDLL(None, use_errno=True)


@contextlib.contextmanager
def in_netns(name: str | None):
    """Run the body with the calling thread in network namespace `name` (None: stay).

    Sockets opened inside stay in that namespace after the thread switches back.
    """
    if name is None:
        yield
        return
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {name}: {os.strerror(err)}")
        try:
            yield
        finally:
            if _libc.setns(back, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns back from {name}: {os.strerror(err)}")
    finally:
        os.close(target)
        os.close(back)


class AfPacketPort(Port):
    """A switch port bound to a Linux interface with an AF_PACKET raw socket.

    `receive()` drains up to `limit` frames without blocking; `deliver` writes the
    switch's frames to the interface.  Frames this host transmits are not read back
    (PACKET_IGNORE_OUTGOING, or the packet type on kernels without it).  The kernel
    strips a received frame's VLAN tag before packet sockets see it; the tag comes back
    from PACKET_AUXDATA and is put back in the frame, as OVS's netdev-linux does.
    """

    def __init__(self, ofport: int, ifname: str, netns: str | None = None,
                 name: str | None = None) -> None:
        super().__init__(ofport, name or ifname)
        self.ifname, self.netns = ifname, netns
        self.tx_errors = 0
        with in_netns(netns):
            # Protocol 0 until bound: a packet socket made for ETH_P_ALL hears every
            # interface (loopback included) until bind() narrows it to one.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._filter_outgoing = False
        except OSError:
            self._filter_outgoing = True
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.sock.bind((ifname, ETH_P_ALL))
        self._buf = bytearray(MAX_FRAME)
        # Batched I/O (one system call per batch) once outgoing frames are filtered by
        # the kernel; the per-frame calls below otherwise.  With batched I/O the socket
        # carries virtio-net headers, as a NIC's queue would: a VM that keeps its
        # segmentation and checksum offloads (a virtio VM does) hands over whole GSO
        # packets and partial checksums, which the port cuts and completes.
        self.vnet = False
        if not self._filter_outgoing:
            try:
                self.sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
                self.vnet = True
            except OSError:
                pass
        self._rx = None if self._filter_outgoing else Receiver(RX_BATCH, vnet=self.vnet)
        # With virtio-net headers a flow's consecutive TCP segments go out as one GSO
        # frame (as a host's GRO hands them to a virtio VM): one skb for the receiving
        # stack instead of dozens, and the kernel cuts it if a device on the way must.
        self._tx = gro.Coalescer() if self.vnet else Sender()
        self.rx_dropped = 0
        self.rx_segmented = 0           # GSO packets received (cut into their frames)

    def receive_rows(self, limit: int = BATCH) -> list[tuple[np.ndarray, np.ndarray]]:
        """Frames waiting on the interface, at most about `limit`, as (rows of a buffer with
        each frame at column HEADROOM, lengths) chunks, copied out of the receive buffer."""
        if self._rx is None:
            frames = self.receive(limit)
            if not frames:
                return []
            b = Batch.from_packets(frames, self.ofport)
            return [(b.data, b.length)]
        out = []
        fd = self.sock.fileno()
        rx = self._rx
        while limit > 0:
            got, chunk, lens, tags, work = rx.receive_rows(fd)
            if not got:
                break
            if work:
                chunk, lens, tags = self._offloads(rx.buf[:got], lens, tags)
            if tags or (lens < 0).any():
                before = len(lens)
                chunk, lens = _retag(chunk, lens, tags)
                self.rx_dropped += before - len(lens)
            if len(lens):
                out.append((chunk, lens))
                self.rx_packets += len(lens)
                self.rx_bytes += int(lens.sum())
            limit -= got
            if got < rx.n:
                break
        return out

    def _offloads(self, rows: np.ndarray, lens: np.ndarray, tags: list):
        """What a NIC would have done with the frames the VM left to it: GSO packets cut
        into frames, partial checksums completed (vnet.expand); tags follow their rows."""
        chunk, out_len, src, dropped = vnet.expand(rows, lens)
        self.rx_dropped += dropped
        kinds = rows[:, HEADROOM - vnet.VNET_LEN + 1] & vnet.GSO_KIND
        self.rx_segmented += int(np.count_nonzero(kinds))
        if tags:
            at: dict[int, list[int]] = {}
            for o, r in enumerate(src.tolist()):
                at.setdefault(r, []).append(o)
            tags = [(o, tpid, tci) for r, tpid, tci in tags for o in at.get(r, ())]
        return chunk, out_len, tags

    def coalesce_udp(self, on: bool) -> None:
        """Send runs of a tunnel's UDP datagrams as GSO frames too (gro.Coalescer)."""
        if isinstance(self._tx, gro.Coalescer):
            self._tx.udp = on

    @property
    def tx_coalesced(self) -> int:
        """Frames sent inside GSO frames (gro.Coalescer), of tx_packets."""
        return self._tx.merged if isinstance(self._tx, gro.Coalescer) else 0

    def fileno(self) -> int:
        return self.sock.fileno()

    def receive(self, limit: int = BATCH) -> list[bytes]:
        """Frames waiting on the interface, at most `limit`, without blocking."""
        out = []
        view = memoryview(self._buf)
        recv, anc = self.sock.recvmsg_into, socket.CMSG_SPACE(_AUXDATA.size)
        for _ in range(limit):
            try:
                n, ancdata, _, addr = recv([view], anc, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:         # closed by a detach while the loop was reading
                break
            if self._filter_outgoing and addr[2] == PACKET_OUTGOING:
                continue
            frames = self._unwrap(view, n) if self.vnet else [bytes(view[:n])]
            for level, kind, data in ancdata:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
                    status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)
                    if status & TP_STATUS_VLAN_VALID:
                        tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else 0x8100
                        tag = struct.pack("!HH", tpid, tci)
                        frames = [f[:12] + tag + f[12:] for f in frames]
            out += frames
        self.rx_packets += len(out)
        self.rx_bytes += sum(map(len, out))
        return out

    def _unwrap(self, view: memoryview, n: int) -> list[bytes]:
        """A frame read behind its virtio-net header, as the frames the wire carries."""
        hdr = bytes(view[:vnet.VNET_LEN])
        if not (hdr[0] & vnet.F_NEEDS_CSUM or hdr[1]):
            return [bytes(view[vnet.VNET_LEN:n])]
        buf = np.zeros((1, HEADROOM + n + TAILROOM), np.uint8)
        buf[0, HEADROOM - vnet.VNET_LEN:HEADROOM + n - vnet.VNET_LEN] = np.frombuffer(view[:n],
                                                                                     np.uint8)
        out, lens, _, dropped = vnet.expand(buf, np.array([n - vnet.VNET_LEN], np.int32))
        self.rx_dropped += dropped
        return [out[i, HEADROOM:HEADROOM + lens[i]].tobytes() for i in range(len(lens))]

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        super().deliver(batch, nbytes)
        if self._rx is not None:
            try:
                self.tx_errors += self._tx.send(self.sock.fileno(), batch)
            except OSError:          # closed by a detach while the loop was sending
                self.tx_errors += len(batch)
            return
        send = self.sock.send
        for pkt in batch.packets():
            try:
                send(pkt)
            except OSError:      # full queue or interface down: a transmit drop, as a NIC's
                self.tx_errors += 1

    def close(self) -> None:
        self.sock.close()


def _retag(rows: np.ndarray, lens: np.ndarray, tags) -> tuple[np.ndarray, np.ndarray]:
    """The frames with their VLAN tag put back (the kernel strips it before packet
    sockets see the frame; OVS's netdev-linux does the same), the too-long ones left out."""
    tagged = {r: (tpid, tci) for r, tpid, tci in tags}
    frames = []
    for r, ln in enumerate(lens.tolist()):
        if ln < 0:
            continue
        f = rows[r, HEADROOM:HEADROOM + ln].tobytes()
        if r in tagged:
            tpid, tci = tagged[r]
            f = f[:12] + struct.pack("!HH", tpid, tci) + f[12:]
        frames.append(f)
    if not frames:
        return rows[:0], np.zeros(0, np.int32)
    b = Batch.from_packets(frames, 0)
    return b.data, b.length


def _batch(chunks: list[tuple[np.ndarray, np.ndarray, int]]) -> Batch:
    """One batch from every port's chunks (frames at column HEADROOM, zero behind)."""
    if len(chunks) == 1:
        rows, lens, port = chunks[0]
        n = len(lens)
        return Batch(rows, filled(n, HEADROOM, np.int32), lens.astype(np.int32),
                     filled(n, port, np.uint32))
    width = max(r.shape[1] for r, _, _ in chunks)
    n = sum(len(ln) for _, ln, _ in chunks)
    data = np.zeros((n, width), np.uint8)
    at = 0
    for rows, lens, _ in chunks:
        data[at:at + len(lens), :rows.shape[1]] = rows
        at += len(lens)
    return Batch(data, np.full(n, HEADROOM, np.int32),
                 np.concatenate([ln for _, ln, _ in chunks]).astype(np.int32),
                 np.concatenate([np.full(len(ln), p, np.uint32) for _, ln, p in chunks]))


def warm() -> None:
    """The socket kernels compiled (or loaded from numba's cache) now, not on the first
    frame: once per process, and inherited by the switches a warmed zygote forks."""
    mmsg.warm()
    vnet.warm()
    gro.warm()


class AfPacketDatapath:
    """A reference Switch forwarding between real interfaces, run by a poll loop.

    Attach interfaces with `attach`, tunnel ports with `add_tunnel_port` (configure
    `switch.underlay` for them), then `run(until)` in the caller's thread or `start()`
    a background thread.  The Datapath methods (bundle, dump_flows, ...) take the
    switch's lock, so they are safe while the loop runs.
    """

    def __init__(self, switch: Switch | None = None, netns: str | None = None,
                 maintain_every: float = 1.0) -> None:
        self.switch = switch or Switch()
        self.netns = netns
        self.lock = threading.RLock()
        self.maintain_every = maintain_every
        self._poll = select.poll()
        self._by_fd: dict[int, AfPacketPort] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        # A pipe to wake the loop when it should stop or re-read its ports.
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._poll.register(self._wake_r, select.POLLIN)
        self.batches = 0
        warm()
        self.errors = 0                 # batches the switch raised on (the loop goes on)
        self.last_error: str | None = None
        self.gso_underlay = False       # see underlay_gso()
        self.arrivals = Arrivals()      # VIFs a live migration brings here

    # -- ports -----------------------------------------------------------------
    def attach(self, ofport: int, ifname: str, name: str | None = None) -> AfPacketPort:
        """Make interface `ifname` (in this datapath's namespace) switch port `ofport`."""
        port = AfPacketPort(ofport, ifname, self.netns, name)
        with self.lock:
            try:
                self.switch.add_port(ofport, port.name, port=port)
            except BaseException:
                port.close()
                raise
            self._by_fd[port.fileno()] = port
            self._poll.register(port.fileno(), select.POLLIN)
            self._underlay_gso()
        self._wake()
        return port

    def add_tunnel_port(self, tunnel: TunnelPort, name: str | None = None) -> Port:
        with self.lock:
            return self.switch.add_tunnel_port(tunnel, name)

    def detach(self, ofport: int) -> None:
        with self.lock:
            if ofport in self.arrivals.held or ofport in self.arrivals.relays:
                self.release(ofport, "detached")
            port = self.switch.ports.get(ofport)
            if isinstance(port, AfPacketPort):
                self._poll.unregister(port.fileno())
                del self._by_fd[port.fileno()]
                # What the interface received before it went is switched, not dropped (as a
                # kernel datapath has already taken it): a VM migrating away sent it just
                # before its switch-over, and its replies reach it at the destination.
                try:
                    chunks = [(rows, lens, ofport) for rows, lens in port.receive_rows()]
                except OSError:
                    chunks = []
                if chunks:
                    self.switch.process(_batch(chunks))
            self.switch.remove_port(ofport)

    # The Datapath protocol's port methods (the names every backend shares).
    def plug(self, name: str, ofport: int) -> int:
        self.attach(ofport, name)
        return ofport

    def unplug(self, name: str) -> None:
        num = self.port_names().get(name)
        if num is not None:
            self.detach(num)

    def add_tunnel(self, name: str, kind: str, ofport: int, **options) -> int:
        self.add_tunnel_port(TunnelPort(ofport, kind, key="flow", **options), name)
        return ofport

    def port_names(self) -> dict[str, int]:
        with self.lock:
            return self.switch.port_names()

    def delete_group(self, group_id: int) -> None:
        with self.lock:
            self.switch.delete_group(group_id)

    # -- the loop ----------------------------------------------------------------
    def poll_once(self, timeout: float = 0.1) -> int:
        """Wait up to `timeout` s for frames; switch what is readable, a batch per port."""
        ready = self._poll.poll(timeout * 1000)
        done = 0
        for fd, _ in ready:
            port = self._by_fd.get(fd)
            if port is None:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
                continue
            chunks = [(rows, lens, port.ofport) for rows, lens in port.receive_rows()]
            if not chunks:
                continue
            if port.ofport in self.arrivals.held:   # the VM runs here now: its first frame
                with self.lock:
                    self._send(self.arrivals.arrived(port.ofport))
                    self._filter_underlay()
            # One batch per port, as OVS's PMD takes one receive queue at a time: no copy
            # to merge ports' frames that the dpif would split again (underlay or not).
            batch = _batch(chunks)
            with self.lock:
                self.switch.process(batch)
            self.batches += 1
            done += len(batch)
        return done

    def run(self, until: float | None = None) -> None:
        """Forward until time.monotonic() passes `until` (None: until stop())."""
        next_maint = time.monotonic() + self.maintain_every
        while not self._stop.is_set():
            now = time.monotonic()
            if until is not None and now >= until:
                return
            most = 0.1 if until is None else max(0.0, min(0.1, until - now))
            try:
                self.poll_once(self.arrivals.wait(now, most))
                if self.arrivals.again:
                    with self.lock:
                        self._send(self.arrivals.due(time.monotonic()))
            except Exception as exc:       # a bad batch must not stop forwarding for good
                self.errors += 1
                self.last_error = repr(exc)
            if now >= next_maint:
                with self.lock:
                    self.switch.maintain()
                next_maint = now + self.maintain_every

    def start(self) -> AfPacketDatapath:
        """Run the loop in a daemon thread until stop()."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, name=f"afpacket-{self.switch.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def close(self) -> None:
        """Stop the loop and close every socket."""
        self.stop()
        with self.lock:
            for ofport in list(self.switch.ports):
                if isinstance(self.switch.ports[ofport], AfPacketPort):
                    self.detach(ofport)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> AfPacketDatapath:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    # -- a VM arriving by live migration ---------------------------------------------
    def hold(self, ofport: int, mac: str) -> None:
        """The VM behind VIF `ofport` (MAC `mac`) is arriving and does not run here yet:
        what other hosts send it here meanwhile (their copy of its traffic during the move)
        is dropped by the kernel on the underlay ports, unread, instead of being switched to
        a VIF nobody reads, until the VIF sends its first frame (the VM runs here) or
        release().  Otherwise the copies queue behind each other on a loaded host, and the
        VM's first replies wait behind them once it arrives, delivered as duplicates."""
        with self.lock:
            self.arrivals.hold(ofport, mac)
            self._filter_underlay()

    def announce_on_arrival(self, ofport: int, frames: list[tuple[int, bytes]],
                            relay: dict | None = None) -> None:
        """When held VIF `ofport` sends its first frame, send `frames` ((out port, frame)
        pairs: the arriving VM's gratuitous ARPs and neighbour advertisements, its floating
        IPs') out of those ports at once, in the loop that saw it, ahead of the frame
        itself, and from then on drop `relay` (sbnet.datapath.holdfilter.Relay's fields:
        what the host it left relays of its floating IP's traffic) on the underlay ports,
        sending `frames` again every arrival.AGAIN s, until release(); both forgotten if
        the hold ends any other way."""
        with self.lock:
            self.arrivals.expect(ofport, frames, relay)

    def _send(self, frames: list[tuple[int, bytes]]) -> None:
        for out, frame in frames:
            port = self.switch.ports.get(out)
            if port is not None:
                port.deliver(Batch.from_packets([frame], out))

    def release(self, ofport: int, why: str = "released") -> None:
        """Deliver the VM's traffic at `ofport` again (no-op if not held), and what its
        source relays (after its first frame)."""
        with self.lock:
            if self.arrivals.release(ofport, why):
                self._filter_underlay()

    def holds(self) -> dict:
        """{"held": {ofport: MAC}, "events": [(ofport, monotonic, "held" or why released),
        ...], "announced": [(ofport, monotonic, frames sent on its first frame), ...]} (the
        last 16 of each), "relays": {ofport: source tunnel endpoint} (what it left relays,
        dropped)."""
        with self.lock:
            return self.arrivals.state()

    def _filter_underlay(self) -> None:
        tunnels = self.switch.tunnels.values()
        ports = {k: sorted({t.dst_port for t in tunnels if t.kind == k and t.dst_port})
                 for k in ("vxlan", "geneve")}
        prog = self.arrivals.program(ports["vxlan"], ports["geneve"])
        for num in self.switch.underlay.ports:
            port = self.switch.ports.get(num)
            if isinstance(port, AfPacketPort):
                holdfilter.attach(port.sock, prog)

    def underlay(self, op: str, *args) -> None:
        """Configure the switch's underlay: op is an Underlay method (add_port, add_local,
        add_route, add_neighbour, remove_neighbour)."""
        if op not in _UNDERLAY_OPS:
            raise ValueError(f"underlay op must be one of {_UNDERLAY_OPS}")
        with self.lock:
            getattr(self.switch.underlay, op)(*args)
            self._underlay_gso()

    def underlay_gso(self, on: bool) -> None:
        """Whether the underlay ports send a tunnel's datagrams in UDP segmentation
        offload frames (off to begin with): one frame for dozens through the kernel, cut
        by a NIC on the wire, but handed over whole by a veth, so only where every host
        reading the underlay takes GSO frames (the reference switch's ports do; Open
        vSwitch's netdev ports drop them)."""
        with self.lock:
            self.gso_underlay = on
            self._underlay_gso()

    def _underlay_gso(self) -> None:
        for num, port in self.switch.ports.items():
            if isinstance(port, AfPacketPort):
                port.coalesce_udp(self.gso_underlay and num in self.switch.underlay.ports)

    def port_stats(self) -> dict[int, tuple[int, int, int]]:
        """Per port: (rx packets, tx packets, tx errors)."""
        with self.lock:
            return {n: (p.rx_packets, p.tx_packets, getattr(p, "tx_errors", 0))
                    for n, p in self.switch.ports.items()}

    def drop_counts(self) -> dict[str, int]:
        with self.lock:
            return self.switch.drop_counts()

    def upcalls(self) -> int:
        """Datapath flows the switch has translated and installed so far (for misses, and
        ahead of them by prewarm)."""
        with self.lock:
            return self.switch.upcalls

    def loop_errors(self) -> tuple[int, str | None]:
        """Batches the switch raised on, and the last such error."""
        return self.errors, self.last_error

    # -- the Datapath interface, under the lock ---------------------------------------
    def bundle(self, add: list[Flow] = (), delete: list[Flow] = (), groups=(), **kw) -> None:
        with self.lock:
            self.switch.bundle(add=add, delete=delete, groups=groups, **kw)

    def add_flows(self, flows: list[Flow]) -> None:
        self.bundle(add=flows)

    def delete_flows(self, flows: list[Flow]) -> None:
        self.bundle(delete=flows)

    def dump_flows(self):
        with self.lock:
            return self.switch.dump_flows()

    def dump_megaflows(self) -> list[str]:
        with self.lock:
            return self.switch.dump_megaflows()

    def trace(self, in_port: int, packet: bytes):
        with self.lock:
            return self.switch.trace(in_port, packet)

    def dump_conntrack(self, zone: int | None = None) -> list[str]:
        with self.lock:
            return self.switch.conntrack.dump(zone)

    def export_conns(self, zones, addrs, remove: bool = False, keep=()) -> list[list]:
        """A port's connections for a migration (sbnet.datapath.ctmove.export)."""
        with self.lock:
            sw = self.switch
            return ctmove.export(sw.conntrack, zones, addrs, sw.clock(), remove, keep)

    def import_conns(self, entries) -> list[tuple]:
        with self.lock:
            return ctmove.import_(self.switch.conntrack, entries, self.switch.clock())

    def forget_conns(self, tuples) -> int:
        with self.lock:
            return ctmove.forget(self.switch.conntrack, tuples)

    # Whether prewarm() translates the answers to what its frames send out of local ports.
    prewarm_answers = True

    def prewarm(self, frames, entries) -> int:
        """The datapath flows of an arriving VM's first frames ((in_port, frame) pairs),
        installed before it runs here (sbnet.datapath.prewarm); how many were new.  The
        switch forwards between two frames' translations."""
        now = self.switch.clock()
        warm = Warmup(entries, self.switch.conntrack.tcp_liberal, now)
        n = 0
        todo = warm.with_answers(frames) if self.prewarm_answers else \
            ((in_port, frame, {}) for in_port, frame in frames)
        for in_port, frame, tun in todo:
            with self.lock:
                n += len(warm.frame(self.switch, in_port, frame, now, tun))
                self._installed()
        return n

    def _installed(self) -> None:
        """New megaflows were made outside a batch (the kernel tier offers them down)."""

    def delete_meter(self, meter_id: int) -> list[Flow]:
        with self.lock:
            return self.switch.delete_meter(meter_id)

    def dump_meters(self) -> list:
        with self.lock:
            return self.switch.dump_meters()

    def meter_stats(self) -> list:
        with self.lock:
            return self.switch.meter_stats()


_UNDERLAY_OPS = ("add_port", "add_local", "add_route", "add_neighbour", "remove_neighbour")
# What a switch process answers: AfPacketDatapath methods that take and return plain data.
_REMOTE = ("attach", "add_tunnel_port", "detach", "underlay", "underlay_gso", "port_stats",
           "drop_counts",
           "loop_errors", "kernel_stats", "upcalls", "plug", "unplug", "add_tunnel", "port_names",
           "delete_group",
           "bundle", "add_flows", "delete_flows", "dump_flows", "dump_megaflows", "trace",
           "dump_conntrack", "delete_meter", "dump_meters", "meter_stats",
           "export_conns", "import_conns", "forget_conns", "prewarm",
           "hold", "release", "holds", "announce_on_arrival")


class RemoteDatapath:
    """Datapath methods forwarded over a Connection to the process that runs the switch:
    same values back, same exceptions raised.  Subclasses set _conn, _lock and _gone()."""

    methods = _REMOTE

    def _gone(self) -> str:
        return "the switch process is gone"

    def _call(self, method: str, *args, **kw):
        with self._lock:
            try:
                self._conn.send((method, args, kw))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise RuntimeError(self._gone()) from exc
        if not ok:
            raise value
        return value

    def __getattr__(self, method: str):
        if method not in self.methods:
            raise AttributeError(method)
        return lambda *args, **kw: self._call(method, *args, **kw)


class AfPacketProcess(RemoteDatapath):
    """An AfPacketDatapath in a child process that lives in the host's namespace.

    Each simulated host's switch then has its own interpreter (and GIL), as a real host's
    switch has its own cores; the Datapath methods are forwarded over a socket pair and
    answer with the same values (or raise the same exceptions) as in-process.  The child
    is a fresh `python -c` (not multiprocessing's spawn, which re-imports the caller's
    main module), or a fork of a zygote (sbnet.datapath.zygote) that has the datapath
    imported already.
    """

    def __init__(self, name: str = "br0", netns: str | None = None, kind: str = "afpacket",
                 zygote=None) -> None:
        """kind "ebpf": the kernel tier's datapath (sbnet.datapath.ebpf.datapath) instead.
        zygote: a sbnet.datapath.zygote.Zygote to fork the process from (the imports
        already done) rather than starting a fresh interpreter."""
        if kind not in ("afpacket", "ebpf"):
            raise ValueError(f"switch process kind must be afpacket or ebpf, not {kind!r}")
        ours, theirs = socket.socketpair()
        self._lock = threading.Lock()
        try:
            if zygote is not None:
                self.proc = zygote.fork(name, netns, kind, theirs.fileno())
            else:
                self.proc = subprocess.Popen(
                    [sys.executable, "-c", "from sbnet.datapath.afpacket import _child; _child()",
                     str(theirs.fileno()), name, netns or "", kind],
                    pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            theirs.close()
        self._conn = Connection(ours.detach())
        try:
            self._call("ready")
        except BaseException:
            self._kill()
            raise

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc.poll() is None else None

    def _gone(self) -> str:
        return f"switch process {self.proc.pid} is gone (exit code {self.proc.poll()})"

    def close(self) -> None:
        """Stop the loop, close its sockets, end the process (by its pid if it hangs)."""
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self._call("close")
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self._kill()

    def _kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self._conn.close()

    def __enter__(self) -> AfPacketProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _child() -> None:
    """Entry point of a switch process: argv is the socket fd, switch name, namespace, kind."""
    fd, name, netns = int(sys.argv[1]), sys.argv[2], sys.argv[3] or None
    _serve(Connection(fd), name, netns, sys.argv[4] if len(sys.argv) > 4 else "afpacket")


def _serve(conn, name: str, netns: str | None, kind: str = "afpacket") -> None:
    """The switch process: enter the namespace, run the loop in a thread, answer calls."""
    if netns is not None:
        fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        os.close(fd)
    if kind == "ebpf":
        from sbnet.datapath.ebpf.datapath import EbpfDatapath
        try:
            dp = EbpfDatapath(Switch(name)).start()
        except Exception as exc:           # no BPF here: the parent's first call says why
            with contextlib.suppress(Exception):
                conn.recv()
                conn.send((False, exc))
            return
    else:
        dp = AfPacketDatapath(Switch(name)).start()
    # What the process holds now (modules, compiled kernels, the switch) lives as long as
    # it does: out of the collector's reach, a full collection no longer walks it (190 ms
    # on a loaded machine, every packet in the loop waiting behind it).
    gc.freeze()
    while True:
        try:
            method, args, kw = conn.recv()
        except (EOFError, OSError):        # the parent is gone
            break
        if method == "close":
            break
        try:
            value = None if method == "ready" else getattr(dp, method)(*args, **kw)
            # Ports hold sockets: they stay here.
            conn.send((True, None if isinstance(value, Port) else value))
        except Exception as exc:           # the caller gets it raised
            conn.send((False, exc))
    dp.close()
    with contextlib.suppress(OSError):
        conn.send((True, None))
