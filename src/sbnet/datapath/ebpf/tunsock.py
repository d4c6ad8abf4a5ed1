"""The slow path's underlay through the host's own IP stack: tunnel packets the reference switch encapsulates leave through a raw socket, and GRE and Geneve packets (which this kernel has no device for) come in through a raw GRE socket and UDP sockets."""

from __future__ import annotations

import errno
import socket
import struct
import sys

from sbnet.datapath.afpacket import in_netns
from sbnet.datapath.batch import Batch
from sbnet.datapath.checksum import internet_checksum
from sbnet.datapath.ports import Port

IPPROTO_GRE = 47
# Linux's socket options and control-message types the socket module does not name.
IP_PKTINFO, IP_RECVTTL, IP_RECVTOS = 8, 12, 13
IP_TTL, IP_TOS = 2, 1
UNDERLAY_MAC = b"\x02\0\0\0\0\x01"        # the frames the switch decapsulates: ours
RECEIVE_BUDGET = 256                      # datagrams a socket gives up per loop pass
_ETH_IP = b"\x08\x00"


def udp_frame(payload: bytes, src: int, dst: int, sport: int, dport: int,
              tos: int = 0, ttl: int = 64) -> bytes:
    """An Ethernet/IPv4/UDP frame around `payload`, as the underlay brought it (UDP checksum
    0: none, which IPv4 allows; the kernel checked the one that came)."""
    udp_len = 8 + len(payload)
    ip = bytearray(struct.pack("!BBHHHBBHII", 0x45, tos, 20 + udp_len, 0, 0x4000, ttl, 17, 0,
                               src, dst))
    ip[10:12] = internet_checksum(bytes(ip)).to_bytes(2, "big")
    return (UNDERLAY_MAC * 2 + _ETH_IP + bytes(ip) + struct.pack("!HHHH", sport, dport, udp_len, 0)
            + payload)


class TunnelSockets:
    """The host-stack sockets of the tunnel kinds that have no kernel device here, opened as
    their ports are added: one raw GRE socket (it receives every GRE packet addressed to the
    host, IPv4 header included), one UDP socket per
    Geneve destination port.  While one is open the kernel no longer answers that traffic
    with ICMP unreachables, as it would with nothing listening."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self.gre: socket.socket | None = None
        self.udp: dict[int, socket.socket] = {}      # dst port -> bound socket
        self.errors = 0        # receive calls that failed (reported as drops)

    def open(self, kind: str, dst_port: int) -> socket.socket:
        """The socket that receives tunnel `kind` (gre, or a UDP kind on dst_port)."""
        if kind == "gre":
            if self.gre is None:
                with in_netns(self.netns):
                    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE)
                s.setblocking(False)
                self.gre = s
            return self.gre
        if dst_port not in self.udp:
            with in_netns(self.netns):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind(("0.0.0.0", dst_port))
            except OSError as exc:
                s.close()
                raise OSError(exc.errno, f"cannot listen for {kind} on UDP port {dst_port}: "
                                         f"{exc.strerror}") from None
            for opt in (IP_PKTINFO, IP_RECVTTL, IP_RECVTOS):
                s.setsockopt(socket.IPPROTO_IP, opt, 1)
            s.setblocking(False)
            self.udp[dst_port] = s
        return self.udp[dst_port]

    def fds(self) -> list[int]:
        return [s.fileno() for s in self._all()]

    def _all(self) -> list[socket.socket]:
        return ([self.gre] if self.gre is not None else []) + list(self.udp.values())

    def receive(self, budget: int = RECEIVE_BUDGET) -> list[bytes]:
        """The tunnel packets that came since the last call, as underlay frames (Ethernet,
        then the outer IPv4 header as it arrived, or as the UDP socket describes it)."""
        frames: list[bytes] = []
        if self.gre is not None:
            for _ in range(budget):
                try:
                    pkt = self.gre.recv(65535)
                except BlockingIOError:
                    break
                except OSError:
                    self.errors += 1
                    break
                frames.append(UNDERLAY_MAC * 2 + _ETH_IP + pkt)
        for port, s in self.udp.items():
            for _ in range(budget):
                try:
                    data, anc, _, (src, sport) = s.recvmsg(65535, 64)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # An ICMP error a peer sent back about an earlier datagram: not data.
                    if exc.errno not in (errno.ECONNREFUSED, errno.EHOSTUNREACH):
                        self.errors += 1
                        break
                    continue
                dst, tos, ttl = 0, 0, 64
                for level, kind, value in anc:
                    if level != socket.IPPROTO_IP:
                        continue
                    if kind == IP_PKTINFO and len(value) >= 12:
                        dst = int.from_bytes(value[8:12], "big")     # the header's address
                    elif kind == IP_TOS and value:
                        tos = value[0]
                    elif kind == IP_TTL and len(value) >= 4:
                        ttl = int.from_bytes(value[:4], sys.byteorder)
                src_ip = int.from_bytes(socket.inet_aton(src), "big")
                frames.append(udp_frame(data, src_ip, dst, sport, port, tos, ttl))
        return frames

    def close(self) -> None:
        for s in self._all():
            s.close()
        self.gre, self.udp = None, {}


class UnderlayPort(Port):
    """The slow path's underlay port: each tunnel frame the switch encapsulates leaves with
    the switch's own IPv4 header (its UDP source port, checksum, TTL and DF choices kept)
    through a raw socket, the host's kernel routing it and finding the neighbour, so the
    switch needs no underlay MACs of its own.  A frame longer than the route's MTU is
    refused by the kernel and counted, as a tunnel port that cannot fragment does."""

    def __init__(self, ofport: int, netns: str | None = None) -> None:
        super().__init__(ofport, "underlay")
        self.tx_errors = 0
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def deliver(self, batch: Batch, nbytes: int | None = None) -> None:
        super().deliver(batch, nbytes)
        for pkt in batch.packets():
            if len(pkt) < 34 or pkt[12:14] != _ETH_IP or pkt[14] >> 4 != 4:
                self.tx_errors += 1          # the slow path's underlay is IPv4 only
                continue
            try:
                self.sock.sendto(pkt[14:], (socket.inet_ntoa(pkt[30:34]), 0))
            except OSError:
                self.tx_errors += 1

    def close(self) -> None:
        self.sock.close()
