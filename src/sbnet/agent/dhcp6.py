"""Native IPv6 configuration on the host agent's slow path: router advertisements (prefixes, M/O flags, MTU) and DHCPv6 (stateful addresses, DNS), from the model."""

from __future__ import annotations

import ipaddress
import struct

from sbnet.compiler.dhcp import (DHCP6_CLIENT, DHCP6_SERVER, ETH_IPV6, ICMPV6, ND_RS,
                                 SERVER_MAC, UDP)
from sbnet.compiler.port_security import link_local
from sbnet.compiler.topology import ROUTER_OWNERS
from sbnet.datapath.checksum import internet_checksum
from sbnet.model.dhcp_opts import encode_v6

ND_RA = 134
ALL_NODES = ipaddress.IPv6Address("ff02::1")
VALID, PREFERRED = 2592000, 604800         # radvd's defaults, as Neutron's routers use
ROUTER_LIFETIME = 1800
# DHCPv6 (RFC 8415): message types and options.
SOLICIT, ADVERTISE, REQUEST, CONFIRM, RENEW, REBIND, REPLY, RELEASE, DECLINE = range(1, 10)
INFORMATION_REQUEST = 11
OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_IAADDR, OPT_STATUS = 1, 2, 3, 5, 13
OPT_RAPID_COMMIT, OPT_DNS = 14, 23
LEASE = 86400


def _subnets(topo, port: dict) -> list[tuple[str, dict]]:
    out = []
    for f in port.get("fixed_ips") or ():
        sub = topo.subnets.get(f.get("subnet_id"))
        if sub is not None and sub.get("ip_version") == 6 and sub.get("enable_dhcp", True):
            out.append((f["ip_address"], sub))
    return out


def _router_mac(topo, port: dict, subnets: list[tuple[str, dict]]) -> int | None:
    """The MAC of the router port holding one of these subnets' gateway addresses."""
    gateways = {s.get("gateway_ip") for _, s in subnets if s.get("gateway_ip")}
    for p in topo.ports_of.get(port["network_id"], ()):
        if p.get("device_owner") in ROUTER_OWNERS and any(
                f["ip_address"] in gateways for f in p.get("fixed_ips") or ()):
            return int(p["mac_address"].replace(":", ""), 16)
    return None


def _ipv6(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, proto: int,
          payload: bytes) -> bytes:
    """An IPv6 header (hop limit 255, as ND needs) before `payload`, whose checksum (at
    offset 2 for ICMPv6, 6 for UDP) is filled in over the pseudo-header."""
    at = 2 if proto == ICMPV6 else 6
    pseudo = src.packed + dst.packed + struct.pack("!IxxxB", len(payload), proto)
    csum = internet_checksum(pseudo + payload)
    payload = payload[:at] + struct.pack("!H", csum or 0xFFFF) + payload[at + 2:]
    return struct.pack("!IHBB", 6 << 28, len(payload), proto, 255) + src.packed + dst.packed \
        + payload


def router_advert(topo, port: dict, tag: int) -> bytes | None:
    """The RA a port's router solicitation gets: each IPv6 subnet's /64 prefix (autonomous
    for slaac and dhcpv6-stateless), M for dhcpv6-stateful, O for any DHCPv6 mode, the
    network's MTU, from the router port's link-local address (lifetime 0 without one)."""
    subnets = [(a, s) for a, s in _subnets(topo, port)
               if (s.get("ipv6_ra_mode") or s.get("ipv6_address_mode"))]
    if not subnets:
        return None
    modes = {s.get("ipv6_address_mode") or s.get("ipv6_ra_mode") for _, s in subnets}
    router = _router_mac(topo, port, subnets)
    mac = router if router is not None else SERVER_MAC
    flags = (0x80 if "dhcpv6-stateful" in modes else 0) | \
        (0x40 if modes & {"dhcpv6-stateful", "dhcpv6-stateless"} else 0)
    body = struct.pack("!BBHBBHII", ND_RA, 0, 0, 64, flags,
                       ROUTER_LIFETIME if router is not None else 0, 0, 0)
    body += struct.pack("!BB", 1, 1) + mac.to_bytes(6, "big")
    mtu = (topo.networks.get(port["network_id"]) or {}).get("mtu")
    if mtu:
        body += struct.pack("!BBHI", 5, 1, 0, int(mtu))
    for _, s in subnets:
        net = ipaddress.IPv6Network(s["cidr"])
        mode = s.get("ipv6_address_mode") or s.get("ipv6_ra_mode")
        pflags = 0x80 | (0x40 if mode in ("slaac", "dhcpv6-stateless") else 0)
        body += struct.pack("!BBBBIII", 3, 4, net.prefixlen, pflags, VALID, PREFERRED, 0) \
            + net.network_address.packed
    src = ipaddress.IPv6Address(link_local(mac.to_bytes(6, "big").hex(":")))
    return (tag.to_bytes(6, "big") + mac.to_bytes(6, "big") + struct.pack("!H", ETH_IPV6)
            + _ipv6(src, ALL_NODES, ICMPV6, body))


def _options(data: bytes) -> dict[int, bytes]:
    out, i = {}, 0
    while i + 4 <= len(data):
        code, n = struct.unpack_from("!HH", data, i)
        if i + 4 + n > len(data):
            raise ValueError("truncated DHCPv6 option")
        out.setdefault(code, data[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("!HH", code, len(value)) + value


def dhcp6_reply(topo, port: dict, tag: int, src: ipaddress.IPv6Address,
                msg: bytes) -> bytes | None:
    """The answer to one DHCPv6 client message: the port's address on a dhcpv6-stateful
    subnet in an IA_NA (ADVERTISE to a SOLICIT, REPLY otherwise), DNS servers always."""
    if len(msg) < 4:
        return None
    kind, xid = msg[0], msg[1:4]
    try:
        opts = _options(msg[4:])
    except ValueError:
        return None
    if OPT_CLIENTID not in opts or kind not in (SOLICIT, REQUEST, CONFIRM, RENEW, REBIND,
                                               RELEASE, DECLINE, INFORMATION_REQUEST):
        return None
    subnets = _subnets(topo, port)
    stateful = [(a, s) for a, s in subnets if s.get("ipv6_address_mode") == "dhcpv6-stateful"]
    if not any((s.get("ipv6_address_mode") or "").startswith("dhcpv6") for _, s in subnets):
        return None
    duid = struct.pack("!HH", 3, 1) + SERVER_MAC.to_bytes(6, "big")
    out = [_opt(OPT_CLIENTID, opts[OPT_CLIENTID]), _opt(OPT_SERVERID, duid)]
    answer = ADVERTISE if kind == SOLICIT and OPT_RAPID_COMMIT not in opts else REPLY
    if kind == SOLICIT and OPT_RAPID_COMMIT in opts:
        out.append(_opt(OPT_RAPID_COMMIT, b""))
    if OPT_IA_NA in opts and len(opts[OPT_IA_NA]) >= 12 and stateful and \
            kind not in (RELEASE, DECLINE):
        iaid = opts[OPT_IA_NA][:4]
        addr = ipaddress.IPv6Address(stateful[0][0]).packed
        ia = iaid + struct.pack("!II", LEASE // 2, LEASE * 4 // 5) + \
            _opt(OPT_IAADDR, addr + struct.pack("!II", LEASE, LEASE))
        out.append(_opt(OPT_IA_NA, ia))
    dns = b"".join(ipaddress.IPv6Address(d).packed for _, s in subnets
                   for d in s.get("dns_nameservers") or () if ":" in d)
    if dns:
        out.append(_opt(OPT_DNS, dns))
    if kind not in (RELEASE, DECLINE, CONFIRM):   # the port's extra options over the server's
        extra = encode_v6(port.get("extra_dhcp_opts") or [])
        fixed = (OPT_CLIENTID, OPT_SERVERID, OPT_IA_NA, OPT_RAPID_COMMIT, OPT_STATUS)
        extra = {k: v for k, v in extra.items() if k not in fixed}
        out = [o for o in out if struct.unpack_from("!H", o)[0] not in extra]
        out += [_opt(code, value) for code, value in extra.items() if value]
    if kind in (RELEASE, DECLINE, CONFIRM):
        out.append(_opt(OPT_STATUS, struct.pack("!H", 0) + b"success"))
    payload = bytes((answer,)) + xid + b"".join(out)
    udp = struct.pack("!HHHH", DHCP6_SERVER, DHCP6_CLIENT, 8 + len(payload), 0) + payload
    server = ipaddress.IPv6Address(link_local(SERVER_MAC.to_bytes(6, "big").hex(":")))
    return (tag.to_bytes(6, "big") + SERVER_MAC.to_bytes(6, "big")
            + struct.pack("!H", ETH_IPV6) + _ipv6(server, src, UDP, udp))


def answer_ipv6(frame: bytes, topo, port: dict, tag: int) -> bytes | None:
    """A router solicitation or a DHCPv6 client message from `port` (no extension headers,
    as clients send them), answered; anything else None."""
    if len(frame) < 54 + 8:
        return None
    nxt = frame[20]
    src = ipaddress.IPv6Address(frame[22:38])
    if nxt == ICMPV6 and frame[54] == ND_RS:
        return router_advert(topo, port, tag)
    if nxt == UDP and struct.unpack_from("!HH", frame, 54) == (DHCP6_CLIENT, DHCP6_SERVER):
        return dhcp6_reply(topo, port, tag, src, frame[62:])
    return None
