"""Gratuitous ARPs for the floating IPs that have come to live on this host alone (a VM bound or migrated here), sent on their physical network, and the frames an arriving VM's datapath sends for it on its first frame."""

from __future__ import annotations

import ipaddress
import socket
import struct
import threading
import time

from sbnet.agent.slowpath import in_netns
from sbnet.compiler.l3 import fip_host, floating_ips, router_ifaces
from sbnet.datapath.checksum import internet_checksum
from sbnet.flows.fields import ETH_ARP, ETH_IP, ETH_IPV6, ETH_RARP, ETH_VLAN, IP_ICMPV6

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


def rarp(mac: str) -> bytes:
    """A reverse ARP request from mac about itself, to everyone: how QEMU announces a
    migrated guest on resume (announce-self)."""
    hw = bytes.fromhex(mac.replace(":", ""))
    arp = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, 3) + hw + bytes(4) + hw + bytes(4)
    return (BROADCAST + hw + struct.pack("!H", ETH_RARP) + arp).ljust(60, b"\x00")


def na(ip: str, mac: str) -> bytes:
    """An unsolicited neighbour advertisement (override set) for ip, from mac, to all nodes."""
    hw = bytes.fromhex(mac.replace(":", ""))
    src = ipaddress.IPv6Address(ip).packed
    dst = ipaddress.IPv6Address("ff02::1").packed
    body = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + src + struct.pack("!BB", 2, 1) + hw
    pseudo = src + dst + struct.pack("!IxxxB", len(body), IP_ICMPV6)
    csum = internet_checksum(pseudo + body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), IP_ICMPV6, 255) + src + dst
    return b"\x33\x33\x00\x00\x00\x01" + hw + struct.pack("!H", ETH_IPV6) + ip6 + body


def arrival_frames(topo, port: dict, physnets: dict[str, int]) -> list[tuple[int, bytes]]:
    """(ofport, frame) pairs a destination's datapath sends the moment a port arriving by
    live migration sends its first frame there (the VM runs there now), without waiting for
    its agent: a gratuitous ARP (IPv4) or an unsolicited neighbour advertisement (IPv6) for
    each fixed address of a port on a provider network, from the port's MAC, and a
    gratuitous ARP for each of its floating IPs from the floating IP's MAC, each out of its
    physical network's port here (VLAN-tagged on a VLAN network).  The outside's switches
    then send there before Nova has even activated the binding.  Overlay networks get
    none: every host's flows already send the port's MAC to both hosts during the move."""
    if not physnets:
        return []
    out = []
    nets = topo.networks
    net = nets.get(port.get("network_id")) or {}
    if net.get("provider:physical_network") in physnets:
        for f in port.get("fixed_ips") or ():
            ip = f["ip_address"]
            frame = na(ip, port["mac_address"]) if ":" in ip else garp(ip, port["mac_address"])
            out.append(_on(topo, net, physnets, frame))
    for rid in topo.routers:
        for fip, own, vm in floating_ips(topo, rid):
            ext = nets.get(own["network_id"]) or {}
            if vm["id"] == port["id"] and ext.get("provider:physical_network") in physnets:
                out.append(_on(topo, ext, physnets,
                               garp(fip["floating_ip_address"], own["mac_address"])))
    return out


def arrival_relay(topo, port: dict) -> dict | None:
    """What the host `port` is leaving relays to it from outside once it runs here (the
    traffic to its floating IP that reached that host first: sbnet.datapath.holdfilter.Relay
    as a dict), for the destination's datapath to drop from the VM's first frame here until
    activation; None for a port with no floating IP, or a source with no IPv4 tunnel
    endpoint known here."""
    src = topo.chassis.get(topo.active_host(port))
    if src is None or ":" in (src.tunnel_ip or ":"):
        return None
    for rid in topo.routers:
        if not any(vm["id"] == port["id"] for _, _, vm in floating_ips(topo, rid)):
            continue
        inside = [i for i in router_ifaces(topo, rid) if not i.external]
        mine = next((i for i in inside if i.net_id == port["network_id"]), None)
        if mine is not None:
            return {"source": src.tunnel_ip, "mac": port["mac_address"],
                    "router_mac": mine.port["mac_address"],
                    "inside": tuple(sorted({str(i.cidr) for i in inside
                                            if i.cidr.version == 4}))}
    return None


def _on(topo, net: dict, physnets: dict[str, int], frame: bytes) -> tuple[int, bytes]:
    ofport = physnets[net["provider:physical_network"]]
    if topo.network_type(net) != "vlan":
        return ofport, frame
    tag = struct.pack("!HH", ETH_VLAN, int(net.get("provider:segmentation_id") or 0) & 0xFFF)
    return ofport, frame[:12] + tag + frame[12:]


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
