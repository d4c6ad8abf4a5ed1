"""The frames an arriving VM will send first at its destination, made from its handed-over connections, for the destination's switch to translate before the switch-over."""

from __future__ import annotations

import ipaddress

import dpkt

from sbnet.compiler.topology import ROUTER_OWNERS
from sbnet.datapath import ctmove
from sbnet.flows.fields import IP_ICMP, IP_ICMPV6, IP_TCP, IP_UDP

_ECHO = {IP_ICMP: (8, 0), IP_ICMPV6: (128, 129)}     # (request, reply) types


def first_frames(topo, port: dict, ofport: int, entries: list) -> list[tuple[int, bytes]]:
    """(ofport, frame) for each connection among `entries` that one of the port's fixed
    addresses holds in its network's zone: what the VM sends on it next (a TCP
    acknowledgement, a UDP datagram, the next echo request or reply), from its MAC to the
    next hop's (the addressee's port on its network, else the router's interface), as it
    will leave the VIF at `ofport`.  Connections through its floating IP are in that zone
    too, by its fixed address (the router NATs after it)."""
    zone = topo.zone.get(port["network_id"])
    mine = {int(ipaddress.ip_address(f["ip_address"])) for f in port.get("fixed_ips") or ()}
    hops = _next_hops(topo, port["network_id"])
    mac = _mac(port["mac_address"])
    out, seen = [], set()
    for e in entries:
        fwd, rev = ctmove.tuples(e)
        if fwd[0] != zone:
            continue
        if fwd[3] in mine:              # the VM opened it: it sends in the original direction
            t, answer = fwd, False
        elif rev[3] in mine:            # the peer did: the VM sends replies
            t, answer = rev, True
        else:
            continue
        _, proto, v6, src, dst, sport, dport = t
        hop = hops.get(dst) or hops.get(6 if v6 else 4)
        if hop is None or (proto, src, dst, sport, dport) in seen:
            continue
        seen.add((proto, src, dst, sport, dport))
        body = _l4(proto, bool(v6), sport, dport, answer)
        if body is None:
            continue
        out.append((ofport, _frame(mac, hop, bool(v6), src, dst, proto, body)))
    return out


def _next_hops(topo, network_id: str) -> dict:
    """Address -> MAC of every port on the network, and per IP version (4, 6) the router
    interface's MAC (the next hop off the network)."""
    hops: dict = {}
    for p in topo.ports_of.get(network_id, ()):
        for f in p.get("fixed_ips") or ():
            ip = ipaddress.ip_address(f["ip_address"])
            hops[int(ip)] = _mac(p["mac_address"])
            if p.get("device_owner") in ROUTER_OWNERS:
                hops.setdefault(ip.version, _mac(p["mac_address"]))
    return hops


def _l4(proto: int, v6: bool, sport: int, dport: int, answer: bool):
    if proto == IP_TCP:
        return dpkt.tcp.TCP(sport=sport, dport=dport, flags=dpkt.tcp.TH_ACK, win=512)
    if proto == IP_UDP:
        return dpkt.udp.UDP(sport=sport, dport=dport, ulen=8)
    if proto in _ECHO:                  # conntrack's ICMP tuple: id << 8 | type
        kind = _ECHO[proto][1 if answer else 0]
        echo = dpkt.icmp.ICMP.Echo(id=sport >> 8, seq=1)
        if v6:
            return dpkt.icmp6.ICMP6(type=kind, code=0, data=echo)
        return dpkt.icmp.ICMP(type=kind, code=0, data=echo)
    return None


def _frame(src_mac: bytes, dst_mac: bytes, v6: bool, src: int, dst: int, proto: int,
           body) -> bytes:
    if v6:
        ip = dpkt.ip6.IP6(src=src.to_bytes(16, "big"), dst=dst.to_bytes(16, "big"), nxt=proto,
                          hlim=64, plen=len(bytes(body)), data=body)
        et = dpkt.ethernet.ETH_TYPE_IP6
    else:
        ip = dpkt.ip.IP(src=src.to_bytes(4, "big"), dst=dst.to_bytes(4, "big"), p=proto,
                        ttl=64, data=body)
        ip.len = len(ip)
        et = dpkt.ethernet.ETH_TYPE_IP
    return bytes(dpkt.ethernet.Ethernet(src=src_mac, dst=dst_mac, type=et, data=ip))


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))
