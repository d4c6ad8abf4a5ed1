"""Gratuitous ARPs for the floating IPs that have come to live on this host alone (a VM bound or migrated here), sent on their physical network."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

from sbnet.agent.slowpath import in_netns
from sbnet.compiler.l3 import fip_host, floating_ips
from sbnet.flows.fields import ETH_ARP, ETH_IP

BROADCAST = b"\xff" * 6
# When each announcement is sent again (seconds after the first), as OVN repeats its own: a
# frame the old host still sends from the floating IP's MAC (its slow path catching up) may
# turn the outside's switches back once.
REPEATS = (0.2, 0.5, 1.0, 2.0)


def hosted_fips(topo, host: str) -> dict[tuple[str, str], str]:
    """(floating IP, its MAC) -> physical network, for the floating IPs NATed on `host`
    whose port is migrating nowhere: this host alone answers for them (during a migration
    both hosts do, and the outside's switches follow whichever spoke last)."""
    out = {}
    for rid in topo.routers:
        for fip, own, vm in floating_ips(topo, rid):
            if fip_host(topo, rid, vm) != host or topo.moving_to.get(vm["id"]):
                continue
            net = topo.networks.get(own["network_id"]) or {}
            physnet = net.get("provider:physical_network")
            if physnet:
                out[(fip["floating_ip_address"], own["mac_address"])] = physnet
    return out


def garp(ip: str, mac: str) -> bytes:
    """A gratuitous ARP request: who-has ip, tell ip, from mac, to everyone."""
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = ipaddress.IPv4Address(ip).packed
    arp = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, 1) + hw + addr + b"\x00" * 6 + addr
    return (BROADCAST + hw + struct.pack("!H", ETH_ARP) + arp).ljust(60, b"\x00")


def send(netns: str | None, ifname: str, frames: list[bytes]) -> None:
    """Frames out of a host interface (the physical network's), past the switch."""
    with in_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((ifname, 0))
        for f in frames:
            sock.send(f)


class FipAnnouncer:
    """Remembers what it announced; step() announces what has newly come here."""

    def __init__(self, host: str, netns: str | None = None) -> None:
        self.host = host
        self.netns = netns
        self.hosted: dict[tuple[str, str], str] = {}
        self.sent = 0

    def step(self, topo, physnets: dict[str, int], names: dict[str, int]) -> list[str]:
        """Announce each floating IP newly hosted here alone on its physical network's
        interface (physnets: name -> ofport; names: interface -> ofport); the IPs sent."""
        now = hosted_fips(topo, self.host)
        new = {k: v for k, v in now.items() if self.hosted.get(k) != v}
        self.hosted = now
        ifname = {ofport: name for name, ofport in names.items()}
        done = []
        for (ip, mac), physnet in sorted(new.items()):
            dev = ifname.get(physnets.get(physnet, -1))
            if dev is None:
                continue
            send(self.netns, dev, [garp(ip, mac)])
            self.sent += 1
            done.append(ip)
            threading.Thread(target=self._repeat, args=(dev, ip, mac), daemon=True,
                             name=f"announce-{ip}").start()
        return done

    def _repeat(self, dev: str, ip: str, mac: str) -> None:
        start = time.monotonic()
        for at in REPEATS:
            time.sleep(max(0.0, start + at - time.monotonic()))
            if self.hosted.get((ip, mac)) is None:
                return                      # gone from here meanwhile
            try:
                send(self.netns, dev, [garp(ip, mac)])
            except OSError:
                return
