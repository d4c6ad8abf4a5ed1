"""Stage dhcp: a local port's DHCPv4, DHCPv6 and router solicitations go to the host agent's slow path; its answers come back to that port only."""

from __future__ import annotations

import ipaddress

from sbnet.compiler import registers as R
from sbnet.compiler.topology import mac_int, version
from sbnet.flows import actions as A
from sbnet.flows.fields import ETH_ARP, ETH_IP, ETH_IPV6
from sbnet.flows.fields import IP_ICMPV6 as ICMPV6
from sbnet.flows.fields import IP_TCP as TCP
from sbnet.flows.fields import IP_UDP as UDP

BOOTPC, BOOTPS = 68, 67
DHCP6_CLIENT, DHCP6_SERVER = 546, 547
ND_RS = 133
RA_MODES = ("slaac", "dhcpv6-stateful", "dhcpv6-stateless")
HTTP = 80
METADATA_IP = 0xA9FEA9FE                    # 169.254.169.254
# The MAC of the agent's end of the slow-path veth (its kernel holds METADATA_IP there).
AGENT_MAC = 0x0A_00_5E_00_00_02
METADATA_NET = 0xA9FE0000                   # 169.254.0.0/16


def metadata_source(ofport: int) -> int | None:
    """The address a port's metadata requests come from on the agent's side: 169.254.0.0/16
    plus its VIF's ofport (unique on the host, whatever the tenant addresses overlap), so
    the agent knows the asking port from the connection alone; None where it cannot be."""
    addr = METADATA_NET + ofport
    return addr if 0 < ofport < 0xFFFF and addr != METADATA_IP else None
# The MAC the answers come from (locally administered, as OVN's server_mac is configured).
SERVER_MAC = 0x0A_00_5E_00_00_01
# On the service port a frame's destination MAC names the logical port it is from (a
# question) or for (an answer): this prefix (locally administered, unicast) and the port's
# 31-bit key below it.  The switch writes it on the way out and, on the way back, replaces
# it with the port's own MAC: the agent needs no per-packet metadata and cannot answer one
# port with another's address.
TAG_PREFIX = 0x0A_00_00_00_00_00


def port_tag(key: int) -> int:
    return TAG_PREFIX | key


def tag_key(mac: int) -> int | None:
    """The port key a tag MAC carries (None when it is no tag)."""
    return mac & 0xFFFFFFFF if mac >> 32 == TAG_PREFIX >> 32 else None


def dhcp_subnet(topo, port: dict) -> tuple[str, dict] | None:
    """(address, subnet) that DHCP gives `port`: its first IPv4 fixed IP on a subnet with
    enable_dhcp (None: the port's requests go on as any other broadcast)."""
    for f in port.get("fixed_ips") or ():
        sub = topo.subnets.get(f.get("subnet_id"))
        if (sub is not None and sub.get("enable_dhcp", True)
                and ipaddress.ip_address(f["ip_address"]).version == 4):
            return f["ip_address"], sub
    return None


def ipv6_modes(topo, port: dict) -> tuple[bool, bool]:
    """(answer router solicitations, answer DHCPv6) for `port`: an IPv6 subnet of its with
    an RA mode (or address mode) set, one with a DHCPv6 address mode."""
    ra = dhcp6 = False
    for f in port.get("fixed_ips") or ():
        sub = topo.subnets.get(f.get("subnet_id"))
        if sub is None or sub.get("ip_version") != 6 or not sub.get("enable_dhcp", True):
            continue
        ra |= (sub.get("ipv6_ra_mode") or sub.get("ipv6_address_mode")) in RA_MODES
        dhcp6 |= (sub.get("ipv6_address_mode") or "").startswith("dhcpv6")
    return ra, dhcp6


def build(ctx) -> None:
    ch = ctx.chassis
    if ch is None or ch.service_ofport is None:
        return
    topo = ctx.topo
    for port in topo.local_ports(ctx.host):
        subs = tuple(version(topo.subnets[f["subnet_id"]]) for f in port.get("fixed_ips") or ()
                     if f.get("subnet_id") in topo.subnets)
        ctx.unit(("port", port["id"]), (topo.port_deps(port), subs, ch.service_ofport),
                 build_dhcp_port, ctx, port)


def build_dhcp_port(ctx, port: dict) -> None:
    """To the slow path: the port's DHCP client packets (they passed port security), tagged
    with its key.  Back: an answer tagged with that key goes out of that port alone."""
    topo, svc = ctx.topo, ctx.chassis.service_ofport
    ra, dhcp6 = ipv6_modes(topo, port)
    questions = []
    if dhcp_subnet(topo, port) is not None:
        questions.append({"eth_type": ETH_IP, "ip_proto": UDP, "udp_src": BOOTPC,
                          "udp_dst": BOOTPS})
    if dhcp6:
        questions.append({"eth_type": ETH_IPV6, "ip_proto": UDP, "udp_src": DHCP6_CLIENT,
                          "udp_dst": DHCP6_SERVER})
    if ra:
        questions.append({"eth_type": ETH_IPV6, "ip_proto": ICMPV6, "icmpv6_type": ND_RS})
    if not questions:
        return
    key = topo.port_key[port["id"]]
    cookie = ctx.cookie("port", port["id"])
    ask = [A.SetField("eth_dst", port_tag(key)), A.Output(svc)]
    for q in questions:
        ctx.flow("dhcp", 100, ask, {R.INPORT.field: R.INPORT.match(key), **q}, cookie)
    net = port["network_id"]
    back = [A.SetField("eth_dst", mac_int(port["mac_address"])),
            R.NETWORK.load(topo.net_key[net]), R.OUTPORT.load(key), ctx.goto("deliver")]
    ctx.flow("dhcp", 100, back, {"in_port": svc, "eth_dst": port_tag(key)}, cookie)
    build_metadata_port(ctx, port, key, back, cookie)


def build_metadata_port(ctx, port: dict, key: int, back: list, cookie: int) -> None:
    """The metadata service (http://169.254.169.254): the port's TCP to it goes to the
    agent's kernel on the slow-path veth, its source rewritten to metadata_source(ofport);
    what comes back gets the port's address again and goes out of that port alone."""
    ofport = ctx.chassis.ofports[port["id"]]
    src = metadata_source(ofport)
    mine = [f["ip_address"] for f in port.get("fixed_ips") or () if ":" not in f["ip_address"]]
    if src is None or not mine:
        return
    # On a network with no router, DHCP routes 169.254.169.254 on-link (agent.dhcp): its
    # ARP is answered by the agent too.
    ctx.flow("dhcp", 100, [A.SetField("eth_dst", port_tag(key)),
                           A.Output(ctx.chassis.service_ofport)],
             {R.INPORT.field: R.INPORT.match(key), "eth_type": ETH_ARP, "arp_op": 1,
              "arp_tpa": METADATA_IP}, cookie)
    ctx.flow("dhcp", 100, [A.SetField("eth_dst", AGENT_MAC), A.SetField("ip_src", src),
                           A.Output(ctx.chassis.service_ofport)],
             {R.INPORT.field: R.INPORT.match(key), "eth_type": ETH_IP, "ip_proto": TCP,
              "ip_dst": METADATA_IP, "tcp_dst": HTTP}, cookie)
    ctx.flow("dhcp", 110, [A.SetField("ip_dst", int(ipaddress.IPv4Address(mine[0]))), *back],
             {"in_port": ctx.chassis.service_ofport, "eth_type": ETH_IP, "ip_proto": TCP,
              "ip_src": METADATA_IP, "ip_dst": src, "tcp_src": HTTP}, cookie)
