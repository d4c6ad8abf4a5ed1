"""A migrated VM's announcement sent by the destination's reference switch itself, on the VM's first frame there: its floating IP's gratuitous ARP reaches the outside before Nova activates the binding, the source's relay of its traffic is dropped until then, and the VM's ping train through the move stays short."""

from __future__ import annotations

import socket
import struct
import threading
import time

from sbnet.agent.probes import PingTrain
from sbnet.agent.slowpath import in_netns
from sbnet.datapath.arrival import AGAIN

ETH_P_ALL = 3
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4


class ArpCapture:
    """Gratuitous ARPs a host's switch sends out of its physical network's port, as the
    physical network's bridge receives them: (sender IP, sender MAC, the kernel's receive
    time made monotonic)."""

    def __init__(self, netns: str, ifname: str) -> None:
        with in_netns(netns):
            # Every protocol: a bridge port's frames reach only taps for all of them.
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.1)
        self.seen: list[tuple[str, str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="arp-capture")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame, anc, _, addr = self.sock.recvmsg(2048, 64)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] == PACKET_OUTGOING:      # the bridge's flooding toward the host
                continue
            stamp = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                          if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
            wall = stamp[0] + stamp[1] / 1e9 if stamp else time.time()
            arp = frame[14:42]
            if frame[12:14] == b"\x08\x06" and len(arp) == 28 and arp[6:8] == b"\x00\x01" and arp[14:18] == arp[24:28]:
                self.seen.append((socket.inet_ntoa(arp[14:18]), arp[8:14].hex(":"),
                                  wall - time.time() + time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def test_the_destination_switch_announces_the_floating_ip_on_the_vms_first_frame(migration_lab):
    topo, lab = migration_lab
    # The destination's side of the physical network's bridge (RealCloud's wiring).
    capture = ArpCapture(topo.underlay_ns, "h3-pn0")
    try:
        fip_mac = next(p["mac_address"] for p in lab.cloud.api.request("GET", "ports")["ports"]
                       if p.get("device_owner") == "network:floatingip")
        pings = PingTrain(topo, lab.mover, lab.peer.address, count=150)
        time.sleep(0.5)
        before_activation: list = []

        def switched() -> None:
            # Nova activates only after this returns: what reaches the outside now was
            # sent by the destination's switch, the agents announce at activation.
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and len(
                    [s for s in capture.seen if s[0] == lab.fip]) < 2:
                time.sleep(0.01)
            before_activation.extend(s for s in capture.seen if s[0] == lab.fip)
            relays.update(topo.hosts["h3"].datapath.holds()["relays"])
        relays: dict = {}
        _, t_move = lab.move("h3", switched=switched)
        t_end = lab.switched[1]
        gap, replies, sent = pings.gap(timeout=20, at=t_move, until=t_end + 0.5)
        assert before_activation, "no gratuitous ARP for the floating IP before activation"
        _, mac, t_garp = before_activation[0]
        assert mac == fip_mac
        holds = topo.hosts["h3"].datapath.holds()
        first = [t for _, t, what in holds["events"] if what == "first frame"]
        sent_at = [t for _, t, n in holds["announced"] if n >= 1]
        assert first and sent_at, holds
        # Sent in the loop iteration that saw the VM's first frame, ahead of it, and on
        # the wire at once.
        assert 0 <= first[-1] - sent_at[-1] < 0.05, holds
        assert t_move <= sent_at[-1] and t_garp - sent_at[-1] < 0.05, (t_move, sent_at, t_garp)
        # And again, while what h2 relays is dropped (a frame h2 still sends from the
        # floating IP's MAC would turn the outside back there).
        assert len(before_activation) >= 2, before_activation
        assert before_activation[1][2] - t_garp >= AGAIN / 2, before_activation
        # From the first frame until activation h3 dropped what h2 relayed of the
        # floating IP's traffic (a copy relayed late is a stale one); activation ends it.
        assert relays == {lab.mover.ofport: topo.hosts["h2"].underlay_ip}, relays
        deadline = time.monotonic() + 10
        while topo.hosts["h3"].datapath.holds()["relays"]:
            assert time.monotonic() < deadline, "the relay drop outlived activation"
            time.sleep(0.05)
        # The switch-over's silence in the ping train (the VM is without an interface
        # for part of it): bounded, on a loaded machine too.
        assert gap < 0.5 and replies >= sent - 60, (gap, replies, sent)
    finally:
        capture.close()
