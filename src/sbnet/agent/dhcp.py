"""Native DHCP on the host agent's slow path: a port's request (tagged by the switch) in, its answer out, from the model alone (DHCPv4 here, IPv6 in dhcp6)."""

from __future__ import annotations

import ipaddress
import struct
from typing import Callable

from sbnet.agent.dhcp6 import answer_ipv6
from sbnet.compiler.dhcp import (AGENT_MAC, BOOTPC, BOOTPS, ETH_ARP, ETH_IP, ETH_IPV6,
                                 METADATA_IP, SERVER_MAC, UDP, dhcp_subnet, port_tag, tag_key)
from sbnet.compiler.topology import ROUTER_OWNERS
from sbnet.flows.fields import ETH_RARP, IP_ICMPV6
from sbnet.datapath.checksum import internet_checksum
from sbnet.model.dhcp_opts import encode_v4

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = 1, 2, 3, 4, 5, 6, 7, 8
LEASE_SECONDS = 86400           # Neutron's dhcp_lease_duration default
BROADCAST_FLAG = 0x8000
# Options by number (RFC 2132, RFC 3442).
OPT_MASK, OPT_ROUTER, OPT_DNS, OPT_HOSTNAME, OPT_MTU, OPT_BROADCAST = 1, 3, 6, 12, 26, 28
OPT_REQUESTED_IP, OPT_LEASE, OPT_TYPE, OPT_SERVER_ID = 50, 51, 53, 54
OPT_T1, OPT_T2, OPT_CLASSLESS_ROUTES, OPT_END = 58, 59, 121, 255


class Request:
    """A parsed BOOTREQUEST: what an answer needs from it."""

    def __init__(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 + 8 + 240:
            raise ValueError("too short for DHCP")
        if struct.unpack_from("!H", frame, 12)[0] != ETH_IP:
            raise ValueError("not IPv4")
        ihl = (frame[14] & 0x0F) * 4
        if frame[14 + 9] != UDP:
            raise ValueError("not UDP")
        udp = 14 + ihl
        sport, dport = struct.unpack_from("!HH", frame, udp)
        if (sport, dport) != (BOOTPC, BOOTPS):
            raise ValueError("not DHCP client to server")
        b = udp + 8
        self.dst_mac = int.from_bytes(frame[0:6], "big")
        self.op, self.htype, self.hlen = frame[b], frame[b + 1], frame[b + 2]
        if self.op != 1 or self.htype != 1 or self.hlen != 6:
            raise ValueError("not an Ethernet BOOTREQUEST")
        self.xid = frame[b + 4:b + 8]
        self.flags = struct.unpack_from("!H", frame, b + 10)[0]
        self.ciaddr = ipaddress.IPv4Address(frame[b + 12:b + 16])
        self.giaddr = frame[b + 24:b + 28]
        self.chaddr = frame[b + 28:b + 34]
        if frame[b + 236:b + 240] != MAGIC:
            raise ValueError("no DHCP magic cookie")
        self.options = _options(frame[b + 240:])
        if OPT_TYPE not in self.options or len(self.options[OPT_TYPE]) != 1:
            raise ValueError("no DHCP message type")
        self.type = self.options[OPT_TYPE][0]


def _options(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = 0
    while i < len(data):
        code = data[i]
        if code == OPT_END:
            break
        if code == 0:                     # pad
            i += 1
            continue
        if i + 1 >= len(data) or i + 2 + data[i + 1] > len(data):
            raise ValueError("truncated DHCP option")
        out[code] = out.get(code, b"") + data[i + 2:i + 2 + data[i + 1]]
        i += 2 + data[i + 1]
    return out


def _opt(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def _classless(dest: str, hop: str) -> bytes:
    """One RFC 3442 route: prefix length, the significant octets of the destination, hop."""
    net = ipaddress.IPv4Network(dest, strict=False)
    octets = (net.prefixlen + 7) // 8
    return bytes((net.prefixlen,)) + net.network_address.packed[:octets] + \
        ipaddress.IPv4Address(hop).packed


def server_address(subnet: dict) -> ipaddress.IPv4Address:
    """The address the answers come from (option 54): the subnet's gateway, as OVN's
    server_id defaults to the router port; a subnet without one uses its last address."""
    if subnet.get("gateway_ip"):
        return ipaddress.IPv4Address(subnet["gateway_ip"])
    return ipaddress.IPv4Network(subnet["cidr"]).broadcast_address - 1


def lease_options(address: str, subnet: dict, network: dict | None,
                  routed: bool = True) -> list[bytes]:
    """The options that configure the port: mask, broadcast, router, classless routes (the
    subnet's host routes, then the default route: a client that takes option 121 ignores
    option 3, RFC 3442), DNS servers, MTU (the network's, so VXLAN fits), host name."""
    net = ipaddress.IPv4Network(subnet["cidr"])
    out = [_opt(OPT_MASK, net.netmask.packed), _opt(OPT_BROADCAST, net.broadcast_address.packed)]
    gw = subnet.get("gateway_ip")
    if gw:
        out.append(_opt(OPT_ROUTER, ipaddress.IPv4Address(gw).packed))
    routes = [(r["destination"], r["nexthop"]) for r in subnet.get("host_routes") or ()
              if ipaddress.ip_network(r["destination"], strict=False).version == 4]
    if not routed:
        # No router answers for the gateway: the metadata address is on-link (the agent
        # answers its ARP), as Neutron routes it to its DHCP port on isolated networks.
        routes.append((f"{ipaddress.IPv4Address(METADATA_IP)}/32", "0.0.0.0"))
    if routes:
        blob = b"".join(_classless(dest, hop) for dest, hop in routes)
        if gw:
            blob += _classless("0.0.0.0/0", gw)
        out.append(_opt(OPT_CLASSLESS_ROUTES, blob))
    dns = [ipaddress.IPv4Address(d).packed for d in subnet.get("dns_nameservers") or ()
           if ipaddress.ip_address(d).version == 4]
    if dns:
        out.append(_opt(OPT_DNS, b"".join(dns)))
    mtu = (network or {}).get("mtu")
    if mtu:
        out.append(_opt(OPT_MTU, struct.pack("!H", int(mtu))))
    out.append(_opt(OPT_HOSTNAME, ("host-" + address.replace(".", "-")).encode()))
    return out


def with_extra(opts: list[bytes], extra: dict[int, bytes]) -> list[bytes]:
    """The port's extra options (extra_dhcp_opts) over the native ones: each replaces the
    option of its code, an empty one removes it; the message type and server id stay first."""
    kept = [o for o in opts if o[0] not in extra or o[0] in (OPT_TYPE, OPT_SERVER_ID)]
    return kept + [_opt(code, value) for code, value in extra.items()
                   if value and code not in (OPT_TYPE, OPT_SERVER_ID)]


class Responder:
    """Answers DHCPv4 for the ports of one host from a compiler Topology (the agent's view of
    the model at its last sync).  answer() is pure: frame in, frame (or None) out."""

    def __init__(self, topo, announced: Callable[[str, str], None] | None = None) -> None:
        """announced(port_id, kind): a migrating VM announced itself here (classify sends
        its RARP, gratuitous ARP or unsolicited NA up, tagged): "rarp", "garp" or "na"."""
        self.topo = topo
        self.announced = announced
        self.by_key = {k: pid for pid, k in topo.port_key.items()}

    def _announcement(self, frame: bytes) -> str | None:
        """The kind of VM announcement this tagged frame is, or None."""
        et = struct.unpack_from("!H", frame, 12)[0]
        if et == ETH_RARP:
            return "rarp"
        if et == ETH_ARP and len(frame) >= 42 and frame[28:32] == frame[38:42]:
            return "garp"
        if et == ETH_IPV6 and len(frame) >= 55 and frame[20] == IP_ICMPV6 and frame[54] == 136:
            return "na"
        return None

    def _routed(self, port: dict, subnet: dict) -> bool:
        """Does a router port hold the subnet's gateway address?"""
        gw = subnet.get("gateway_ip")
        return bool(gw) and any(
            p.get("device_owner") in ROUTER_OWNERS and
            any(f["ip_address"] == gw for f in p.get("fixed_ips") or ())
            for p in self.topo.ports_of.get(port["network_id"], ()))

    def _arp(self, frame: bytes) -> bytes | None:
        """The metadata address's ARP (a network without a router routes it on-link): the
        agent's end of the slow-path veth has it."""
        key = tag_key(int.from_bytes(frame[0:6], "big"))
        port = self.topo.ports.get(self.by_key.get(key)) if key is not None else None
        if port is None or frame[20:22] != b"\x00\x01" or \
                frame[38:42] != METADATA_IP.to_bytes(4, "big"):
            return None
        agent = AGENT_MAC.to_bytes(6, "big")
        arp = struct.pack("!HHBBH", 1, ETH_IP, 6, 4, 2) + agent + frame[38:42] + frame[22:32]
        return (port_tag(key).to_bytes(6, "big") + agent + struct.pack("!H", ETH_ARP) + arp
                ).ljust(60, b"\x00")

    def answer(self, frame: bytes) -> bytes | None:
        if self.announced is not None and len(frame) >= 14:
            kind = self._announcement(frame)
            key = tag_key(int.from_bytes(frame[0:6], "big"))
            pid = self.by_key.get(key) if key is not None else None
            if kind is not None and pid is not None:
                self.announced(pid, kind)
                return None
        if len(frame) >= 42 and struct.unpack_from("!H", frame, 12)[0] == ETH_ARP:
            return self._arp(frame)
        if len(frame) >= 14 and struct.unpack_from("!H", frame, 12)[0] == ETH_IPV6:
            key = tag_key(int.from_bytes(frame[0:6], "big"))
            port = self.topo.ports.get(self.by_key.get(key)) if key is not None else None
            if port is None or frame[6:12] != bytes.fromhex(port["mac_address"].replace(":", "")):
                return None
            return answer_ipv6(frame, self.topo, port, port_tag(key))
        try:
            req = Request(frame)
        except ValueError:
            return None
        key = tag_key(req.dst_mac)
        port = self.topo.ports.get(self.by_key.get(key)) if key is not None else None
        if port is None or req.chaddr != bytes.fromhex(port["mac_address"].replace(":", "")):
            return None             # not a port of ours, or a client asking for another MAC
        lease = dhcp_subnet(self.topo, port)
        if lease is None:
            return None
        address, subnet = lease
        mine = ipaddress.IPv4Address(address)
        wanted = req.options.get(OPT_REQUESTED_IP)
        asked = ipaddress.IPv4Address(wanted) if wanted and len(wanted) == 4 else req.ciaddr
        if req.type == DISCOVER:
            kind, yiaddr = OFFER, mine
        elif req.type == REQUEST:
            kind = ACK if asked == mine else NAK
            yiaddr = mine if kind == ACK else ipaddress.IPv4Address(0)
        elif req.type == INFORM:
            kind, yiaddr = ACK, ipaddress.IPv4Address(0)
        else:                       # RELEASE, DECLINE: nothing to say (the address is fixed)
            return None
        server = server_address(subnet)
        opts = [_opt(OPT_TYPE, bytes((kind,))), _opt(OPT_SERVER_ID, server.packed)]
        if kind != NAK:
            if req.type != INFORM:
                opts += [_opt(OPT_LEASE, struct.pack("!I", LEASE_SECONDS)),
                         _opt(OPT_T1, struct.pack("!I", LEASE_SECONDS // 2)),
                         _opt(OPT_T2, struct.pack("!I", LEASE_SECONDS * 7 // 8))]
            opts += lease_options(address, subnet, self.topo.networks.get(port["network_id"]),
                                  self._routed(port, subnet))
        extra, siaddr = encode_v4(port.get("extra_dhcp_opts") or []) if kind != NAK else ({}, None)
        opts = with_extra(opts, extra)
        bootp = struct.pack("!BBBB4sHH4s4s4s4s16s64s128s", 2, 1, 6, 0, req.xid, 0, req.flags,
                            req.ciaddr.packed, yiaddr.packed, siaddr or server.packed, req.giaddr,
                            req.chaddr, b"", b"") + MAGIC + b"".join(opts) + bytes((OPT_END,))
        bootp += b"\x00" * max(0, 300 - len(bootp))    # BOOTP's minimum, some clients care
        if kind == NAK or req.flags & BROADCAST_FLAG or yiaddr == ipaddress.IPv4Address(0) \
                and req.ciaddr == ipaddress.IPv4Address(0):
            dst = ipaddress.IPv4Address("255.255.255.255")
        elif req.ciaddr != ipaddress.IPv4Address(0):
            dst = req.ciaddr        # renewing: unicast to the address it has
        else:
            dst = yiaddr
        return _ethernet(port_tag(key), SERVER_MAC, _udp(server, dst, bootp))


def _udp(src: ipaddress.IPv4Address, dst: ipaddress.IPv4Address, payload: bytes) -> bytes:
    length = 8 + len(payload)
    pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, UDP, length)
    udp = struct.pack("!HHHH", BOOTPS, BOOTPC, length, 0) + payload
    csum = internet_checksum(pseudo + udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", csum) + udp[8:]
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, 0, 0, 64, UDP, 0,
                      src.packed, dst.packed)
    hdr = hdr[:10] + struct.pack("!H", internet_checksum(hdr)) + hdr[12:]
    return hdr + udp


def _ethernet(dst: int, src: int, payload: bytes, eth_type: int = ETH_IP) -> bytes:
    """A frame to the service port: `dst` the port's tag (the switch puts its MAC there)."""
    return dst.to_bytes(6, "big") + src.to_bytes(6, "big") + struct.pack("!H", eth_type) + payload
