"""Underlay ARP for the reference datapath: answer for our tunnel address, resolve peers' with a cache and timeouts, and keep the switch's neighbour table in step."""

from __future__ import annotations

import ipaddress
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from sbnet.agent.slowpath import in_netns
from sbnet.flows.fields import ETH_ARP, ETH_IP

REQUEST, REPLY = 1, 2
BROADCAST = b"\xff" * 6


def arp_frame(op: int, src_mac: bytes, src_ip: str, dst_mac: bytes, dst_ip: str) -> bytes:
    eth_dst = BROADCAST if op == REQUEST else dst_mac
    return (eth_dst + src_mac + struct.pack("!H", ETH_ARP)
            + struct.pack("!HHBBH", 1, ETH_IP, 6, 4, op) + src_mac
            + ipaddress.IPv4Address(src_ip).packed + (b"\x00" * 6 if op == REQUEST else dst_mac)
            + ipaddress.IPv4Address(dst_ip).packed).ljust(60, b"\x00")


@dataclass
class Entry:
    mac: bytes | None = None
    confirmed: float = float("-inf")      # when an ARP from the peer last said its MAC
    asked: float = float("-inf")          # when we last asked
    tries: int = 0                        # requests since the last confirmation


@dataclass
class ArpCache:
    """Which peers to resolve and what we know of them; every method takes `now` and says
    what to do (frames to send, entries to install or remove) instead of doing it.  An entry
    is refreshed `refresh` s after its confirmation and dropped `expire` s after it;
    an unresolved peer is asked every `retry` s."""

    mac: bytes
    ip: str
    refresh: float = 30.0
    expire: float = 90.0
    retry: float = 1.0
    entries: dict[str, Entry] = field(default_factory=dict)

    def want(self, ips: set[str]) -> list[str]:
        """Resolve exactly these peers; the ones no longer wanted (to remove)."""
        gone = [ip for ip in self.entries if ip not in ips]
        for ip in gone:
            del self.entries[ip]
        for ip in ips - set(self.entries):
            self.entries[ip] = Entry()
        return gone

    def receive(self, frame: bytes, now: float) -> tuple[bytes | None, tuple[str, bytes] | None]:
        """A frame from the underlay: (our reply to send, (peer ip, mac) learnt)."""
        if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_ARP:
            return None, None
        htype, ptype, hlen, plen, op = struct.unpack_from("!HHBBH", frame, 14)
        if (htype, ptype, hlen, plen) != (1, ETH_IP, 6, 4):
            return None, None
        sha, spa = frame[22:28], str(ipaddress.IPv4Address(frame[28:32]))
        tpa = str(ipaddress.IPv4Address(frame[38:42]))
        learnt = None
        e = self.entries.get(spa)
        if e is not None and spa != "0.0.0.0":
            changed = e.mac != sha
            e.mac, e.confirmed, e.tries = sha, now, 0
            learnt = (spa, sha) if changed else None
        reply = None
        if op == REQUEST and tpa == self.ip and spa != self.ip:
            reply = arp_frame(REPLY, self.mac, self.ip, sha, spa)
        return reply, learnt

    def tick(self, now: float, silent_after: int = 3) -> tuple[list[bytes], list[str],
                                                               list[str]]:
        """(requests to send, peers whose entry expired: remove them from the switch, peers
        that have just left `silent_after` requests unanswered: worth saying once)."""
        asks, expired, silent = [], [], []
        for ip, e in self.entries.items():
            if e.mac is not None and now - e.confirmed > self.expire:
                e.mac = None
                expired.append(ip)
            due = e.confirmed + self.refresh if e.mac is not None else e.asked + self.retry
            if now >= due and now - e.asked >= self.retry:
                if e.mac is None and e.tries == silent_after:
                    silent.append(ip)
                e.asked, e.tries = now, e.tries + 1
                asks.append(arp_frame(REQUEST, self.mac, self.ip, BROADCAST, ip))
        return asks, expired, silent


class UnderlayArp:
    """ArpCache on a real interface: a thread reads ARP frames (an AF_PACKET socket gets
    its own copy beside the switch's), answers, asks, and calls install(ip, mac) /
    remove(ip) on the switch's underlay; say() gets one line per event worth a log."""

    def __init__(self, ifname: str, mac: str, ip: str, install: Callable[[str, str], None],
                 remove: Callable[[str], None], say: Callable[[str], None] = lambda s: None,
                 netns: str | None = None, clock=time.monotonic, **timers) -> None:
        self.cache = ArpCache(bytes.fromhex(mac.replace(":", "")), ip, **timers)
        self.ifname, self.netns, self.clock = ifname, netns, clock
        self.install, self.remove, self.say = install, remove, say
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        with in_netns(netns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_ARP))
        self.sock.bind((ifname, ETH_ARP))

    def want(self, ips: set[str]) -> None:
        with self.lock:
            for ip in self.cache.want(set(ips) - {self.cache.ip}):
                self.remove(ip)

    def start(self) -> "UnderlayArp":
        self._thread = threading.Thread(target=self._run, name="sbnet-arp", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.2)
            with self.lock:
                now = self.clock()
                if ready:
                    try:
                        frame, addr = self.sock.recvfrom(2048)
                    except OSError:
                        return
                    if addr[2] != 4:                        # not our own transmissions
                        reply, learnt = self.cache.receive(frame, now)
                        if reply is not None:
                            self._send(reply)
                        if learnt is not None:
                            mac = learnt[1].hex(":")
                            self.install(learnt[0], mac)
                            self.say(f"underlay neighbour {learnt[0]} is {mac} ({self.ifname})")
                asks, expired, silent = self.cache.tick(now)
                for frame in asks:
                    self._send(frame)
                for ip in expired:
                    self.remove(ip)
                    self.say(f"underlay neighbour {ip} expired: no ARP from it for "
                             f"{self.cache.expire:g} s")
                for ip in silent:
                    self.say(f"no answer to ARP for {ip} on {self.ifname} (a peer's tunnel "
                             f"endpoint): tunnels to it drop until it answers")

    def _send(self, frame: bytes) -> None:
        try:
            self.sock.send(frame)
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sock.close()
