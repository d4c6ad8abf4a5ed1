"""Scenario building for compiler tests: a model through the real API, hosts, and frames."""

from __future__ import annotations

import ipaddress

from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import raw

from sbnet.agent.embedded import Cluster
from sbnet.api.local import LocalApi


class Cloud:
    """A LocalApi plus an embedded cluster that follows it (sync after each change)."""

    def __init__(self, hosts=("h1", "h2"), physnets=("physnet1",), clock=lambda: 0.0) -> None:
        self.api = LocalApi()
        self.cluster = Cluster(list(hosts), physnets=physnets, clock=clock)

    def network(self, project: str, cidr: str | None = "10.0.0.0/24", kind: str = "vxlan",
                physnet: str | None = None, seg: int | None = None, **kw) -> dict:
        attrs = {"provider:network_type": kind, **kw}
        if physnet:
            attrs["provider:physical_network"] = physnet
        if seg is not None:
            attrs["provider:segmentation_id"] = seg
        net = self.api.create("networks", project=project, **attrs)
        if cidr:
            version = 6 if ":" in cidr else 4
            extra = {}
            block = ipaddress.ip_network(cidr)
            if version == 4 and block.prefixlen <= 24:
                # The API allocates at random: keep .200 and up for the addresses tests make
                # up (spoofed sources, unknown targets), so no port is ever given one.
                extra["allocation_pools"] = [{"start": str(block.network_address + 2),
                                              "end": str(block.network_address + 199)}]
            net["subnet"] = self.api.create("subnets", project=project, network_id=net["id"],
                                            cidr=cidr, ip_version=version, **extra)
        return net

    def port(self, project: str, net: dict, host: str | None, **kw) -> dict:
        attrs = dict(kw)
        if host:
            attrs["binding:host_id"] = host
        return self.api.create("ports", project=project, network_id=net["id"], **attrs)

    def sync(self, plug: bool = True):
        return self.cluster.sync(self.api.snapshot(), plug=plug)

    def send(self, port: dict, frames):
        return self.cluster.send(port["id"], [raw(f) if not isinstance(f, bytes) else f
                                             for f in frames])


def ip_of(port: dict, version: int = 4) -> str:
    return next(f["ip_address"] for f in port["fixed_ips"] if (":" in f["ip_address"]) == (version == 6))


def icmp(src: dict, dst: dict, **kw) -> bytes:
    return raw(Ether(src=src["mac_address"], dst=dst["mac_address"])
               / IP(src=kw.get("ip_src", ip_of(src)), dst=kw.get("ip_dst", ip_of(dst)))
               / ICMP(type=kw.get("type", 8), id=kw.get("id", 1), seq=kw.get("seq", 1)))


def tcp(src: dict, dst: dict, sport: int, dport: int, flags: str = "S", seq: int = 1000,
        ack: int = 0, **kw) -> bytes:
    return raw(Ether(src=kw.get("eth_src", src["mac_address"]), dst=dst["mac_address"])
               / IP(src=kw.get("ip_src", ip_of(src)), dst=kw.get("ip_dst", ip_of(dst)))
               / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack))


def udp(src: dict, dst: dict, sport: int, dport: int, payload: bytes = b"x", **kw) -> bytes:
    return raw(Ether(src=kw.get("eth_src", src["mac_address"]), dst=kw.get("eth_dst", dst["mac_address"]))
               / IP(src=kw.get("ip_src", ip_of(src)), dst=kw.get("ip_dst", ip_of(dst)))
               / UDP(sport=sport, dport=dport) / payload)


def arp_request(src: dict, target_ip: str, **kw) -> bytes:
    return raw(Ether(src=kw.get("eth_src", src["mac_address"]), dst="ff:ff:ff:ff:ff:ff")
               / ARP(op=1, hwsrc=kw.get("hwsrc", src["mac_address"]),
                     psrc=kw.get("psrc", ip_of(src)), pdst=target_ip))


def checksums_valid(frame: bytes) -> bool:
    """Whether every checksum in the frame (IPv4 header, ICMP, ICMPv6, TCP, UDP) is the one
    scapy computes afresh for the bytes as they are."""
    p = Ether(frame)
    for layer in p.iterpayloads():
        for name in ("chksum", "cksum"):
            if name in layer.fields:
                setattr(layer, name, None)
    return raw(p) == frame


def solicit(src: dict, target_ip: str, **kw) -> bytes:
    """The neighbour solicitation `src` multicasts for `target_ip` (a DAD probe with src="::")."""
    from socket import AF_INET6, inet_ntop, inet_pton

    from scapy.layers.inet6 import (
        ICMPv6ND_NS,
        ICMPv6NDOptSrcLLAddr,
        in6_getnsma,
        in6_getnsmac,
    )
    group = in6_getnsma(inet_pton(AF_INET6, target_ip))
    src_ip = kw.get("ip_src", ip_of(src, 6))
    pkt = (Ether(src=src["mac_address"], dst=in6_getnsmac(group))
           / IPv6(src=src_ip, dst=inet_ntop(AF_INET6, group), hlim=kw.get("hlim", 255))
           / ICMPv6ND_NS(tgt=target_ip))
    if src_ip != "::":
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=kw.get("sll", src["mac_address"]))
    return raw(pkt)


__all__ = ["Cloud", "ip_of", "icmp", "tcp", "udp", "arp_request", "solicit", "checksums_valid", "Ether", "IP", "IPv6", "ICMP",
           "TCP", "UDP", "ARP", "Dot1Q", "raw"]
