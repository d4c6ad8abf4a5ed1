"""Stage port_security: the source MAC and addresses a port may send from (anti-spoofing)."""

from __future__ import annotations

import ipaddress

from sbnet.compiler import registers as R
from sbnet.compiler.topology import mac_int, port_secured
from sbnet.flows.fields import ETH_ARP, ETH_IP, ETH_IPV6, IP_ICMPV6, IP_UDP

ND_RS, ND_RA, ND_NS, ND_NA = 133, 134, 135, 136
MAC_ALL = (1 << 48) - 1


def build(ctx) -> None:
    topo = ctx.topo
    for port in topo.local_ports(ctx.host):
        for p in subports(topo, port, parent=True):
            ctx.unit(("port", p["id"]), topo.port_deps(p), build_port_security, ctx, p)


def subports(topo, port: dict, parent: bool = False) -> list[dict]:
    """The sub-ports of the trunk whose parent is `port` (with the parent first if asked)."""
    t = topo.trunk_of(port)
    subs = [topo.ports[sp["port_id"]] for sp in (t.get("sub_ports") or ()) if t
            and sp["port_id"] in topo.ports] if t else []
    return [port, *subs] if parent else subs


def link_local(mac: str) -> str:
    """The EUI-64 IPv6 link-local address a host derives from its MAC (RFC 4291)."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    iid = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return str(ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + iid))


def allowed_pairs(port: dict) -> list[tuple[str, str]]:
    """(mac, ip or prefix) the port may send from: its fixed IPs, their link-local, and its
    allowed address pairs (a pair without a MAC uses the port's)."""
    mac = port["mac_address"]
    out = [(mac, f["ip_address"]) for f in port.get("fixed_ips") or ()]
    out.append((mac, link_local(mac)))
    for pair in port.get("allowed_address_pairs") or ():
        out.append((pair.get("mac_address") or mac, pair["ip_address"]))
    return out


def build_port_security(ctx, port: dict) -> None:
    key = ctx.topo.port_key[port["id"]]
    inport = {R.INPORT.field: R.INPORT.match(key)}
    cookie = ctx.cookie("port", port["id"])
    nxt = [ctx.goto("dhcp")]
    if not port_secured(port, ctx.topo.networks.get(port["network_id"])):
        ctx.flow("port_security", 50, nxt, inport, cookie)
        return
    macs = set()
    for mac, addr in allowed_pairs(port):
        m = mac_int(mac)
        macs.add(m)
        net = ipaddress.ip_network(addr, strict=False)
        val, mask = int(net.network_address), int(net.netmask)
        if net.version == 4:
            ctx.flow("port_security", 100, nxt, {**inport, "eth_src": m,
                                                 "eth_type": ETH_IP, "ip_src": (val, mask)}, cookie)
            ctx.flow("port_security", 100, nxt, {**inport, "eth_src": m, "eth_type": ETH_ARP,
                                                 "arp_sha": m, "arp_spa": (val, mask)}, cookie)
        else:
            ctx.flow("port_security", 100, nxt, {**inport, "eth_src": m,
                                                 "eth_type": ETH_IPV6, "ipv6_src": (val, mask)},
                     cookie)
            # A neighbour advertisement may only claim an address the port owns; a
            # solicitation must come from one, with the port's own MAC (or none) as its
            # source link-layer address.
            nd = {**inport, "eth_src": m, "eth_type": ETH_IPV6, "ip_proto": IP_ICMPV6}
            ctx.flow("port_security", 110, nxt, {**nd, "icmpv6_type": ND_NA,
                                                 "nd_target": (val, mask)}, cookie)
            for sll in (m, 0):
                ctx.flow("port_security", 110, nxt, {**nd, "icmpv6_type": ND_NS,
                                                     "ipv6_src": (val, mask), "nd_sll": sll},
                         cookie)
    for m in macs:
        # DHCP discover/request come from 0.0.0.0 before the port has its address.
        ctx.flow("port_security", 100, nxt, {**inport, "eth_src": m, "eth_type": ETH_IP,
                                             "ip_proto": IP_UDP, "ip_src": 0, "udp_src": 68,
                                             "udp_dst": 67}, cookie)
        # Duplicate address detection solicits from :: with no source link-layer option.
        ctx.flow("port_security", 110, nxt, {**inport, "eth_src": m, "eth_type": ETH_IPV6,
                                             "ip_proto": IP_ICMPV6, "ipv6_src": 0,
                                             "icmpv6_type": ND_NS, "nd_sll": 0}, cookie)
        for t in (ND_NS, ND_NA, ND_RA):
            # What the 110 flows did not allow (and router advertisements) is spoofing.
            ctx.flow("port_security", 105, [], {**inport, "eth_src": m,
                                                "eth_type": ETH_IPV6, "ip_proto": IP_ICMPV6,
                                                "icmpv6_type": t}, cookie)
