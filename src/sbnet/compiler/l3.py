"""Stages l3_*: the distributed router (the sender's host routes), floating IPs and SNAT.

Design (what each host builds, and why):
- East-west routing is distributed, as Neutron DVR and OVN do it: every host with a port on
  one of a router's networks routes that router's traffic from its own ports.  A packet to a
  router port's MAC enters l3_gateway, longest-prefix matches in l3_route (interface
  subnets, static routes, the gateway's subnet and default route), has its TTL decremented
  and its source MAC rewritten, moves into the outgoing network (NETWORK, ZONE), and
  l3_neighbour sets the next hop's MAC; l2_lookup then delivers it, locally or through the
  outgoing network's tunnel.  Topology.hosts_of puts a network's L2 pipeline on every host
  that routes into it.
- Conntrack: a connection a security group accepted (COMMIT) is committed in the source
  network's zone before the packet changes network, so the reply is +est there.
- Floating IPs are distributed (as OVN's distributed NAT): the VM's host answers ARP for the
  floating IP on the external network with the MAC of the floating IP's own Neutron port
  (network:floatingip), so outside frames to it reach that host only, and the VM's traffic
  leaves there with that MAC and the floating IP as source.  DNAT and SNAT run in the
  router's conntrack zone (NAT_ZONE).  A load balancer's VIP is bound to no host: its
  floating IP lives on the router's gateway host (fip_host), which balances it (lb).
- SNAT to the gateway IP for ports without a floating IP is centralized on one gateway host
  per router (OVN's gateway chassis, Neutron's SNAT node): Topology.gateway_host.  Other
  hosts send such packets, not yet routed, to the gateway host over the source network
  (tunnel or VLAN); the gateway host routes and SNATs them and answers ARP for the gateway
  IP.  One host owning the gateway IP and its MAC keeps one conntrack table per SNAT address
  (no port clashes) and no MAC moving between hosts on the external segment.
- Next hops on the external network must be known to the model: a port on that network
  (e.g. the upstream router's, created by the admin with its MAC and IP).  Unknown next hops
  are dropped: with no controller there is nothing to send an ARP request.
- The router answers ping: a local port's echo request to any of the router's addresses is
  answered on the sender's host (l3_gateway), as a Linux router would.
- IPv6 static routes resolve their next hop's MAC at compile time (no register carries
  128 bits to l3_neighbour).
- IPv6 reaches the external network routed, never NATed (as Neutron): its default route is
  the external IPv6 subnet's gateway, through the gateway host like SNAT traffic, which
  answers the outside's neighbour solicitations for the gateway address.
- Limits: a floating IP reached from inside goes out through the external network, so it fails
  when its VM is on the very host that sends it there (no hairpin on the physical port).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sbnet.compiler import registers as R
from sbnet.compiler.classify import VLAN_CFI
from sbnet.compiler.l2 import (
    ADVERT,
    BACK_TO_SENDER,
    TLL_FROM_ETH_SRC,
    arp_reply,
    nd_advert,
    remote_out,
    solicitation,
)
from sbnet.compiler.topology import (
    LB_VIP_OWNER,
    ROUTER_OWNERS,
    TUNNEL_OFPORTS,
    TUNNEL_TYPES,
    ip_value,
    is_vif,
    mac_int,
)
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.fields import ETH_ARP, ETH_IP, ETH_IPV6

ETH = {4: ETH_IP, 6: ETH_IPV6}


@dataclass(frozen=True)
class Iface:
    """One address of a router on one network (an interface or the gateway)."""

    port: dict
    net_id: str
    mac: int
    ip: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    external: bool


@dataclass(frozen=True)
class Route:
    """A prefix, the interface it leaves by, and the next hop (None: the destination)."""

    prefix: ipaddress.IPv4Network | ipaddress.IPv6Network
    iface: Iface
    nexthop: str | None

    @property
    def priority(self) -> int:
        # Longest prefix first; a connected subnet beats a static route of the same length.
        return 1000 + 4 * self.prefix.prefixlen + (2 if self.nexthop is None else 0)

    def match(self) -> dict:
        p = self.prefix
        fld = "ip_dst" if p.version == 4 else "ipv6_dst"
        return {"eth_type": ETH[p.version], fld: (int(p.network_address), int(p.netmask))}


def build(ctx) -> None:
    topo = ctx.topo
    nets: set[str] = set()
    for rid in sorted(topo.routers):
        with ctx.resource("router", rid):
            ifaces = router_ifaces(topo, rid)
            here = [i for i in ifaces if ctx.host in topo.hosts_of(i.net_id)]
            if not here or ctx.chassis is None:
                continue
            nets |= {i.net_id for i in ifaces}
            build_l3_gateway(ctx, rid, ifaces)
            build_l3_route(ctx, rid, ifaces)
            build_l3_nat(ctx, rid, ifaces)
    for net_id in sorted(nets):
        with ctx.resource("network", net_id):
            build_l3_neighbour(ctx, net_id)


def router_ifaces(topo, rid: str) -> list[Iface]:
    out = []
    gw = topo.gateway_ports.get(rid)
    for port in [*topo.router_ports.get(rid, ()), *([gw] if gw else [])]:
        for f in port.get("fixed_ips") or ():
            sub = topo.subnets.get(f["subnet_id"])
            cidr = ipaddress.ip_network(sub["cidr"]) if sub else None
            if cidr is None:
                continue
            out.append(Iface(port, port["network_id"], mac_int(port["mac_address"]),
                             f["ip_address"], cidr, port is gw))
    return out


def router_routes(topo, rid: str, ifaces: list[Iface]) -> list[Route]:
    """Connected subnets, the gateway subnet's default route, and the static routes."""
    routes = [Route(i.cidr, i, None) for i in ifaces]

    def via(hop: str) -> Iface | None:
        addr = ipaddress.ip_address(hop)
        return next((i for i in ifaces if i.cidr.version == addr.version and addr in i.cidr),
                    None)
    for i in ifaces:
        sub = topo.subnets.get(next(f["subnet_id"] for f in i.port["fixed_ips"]
                                    if f["ip_address"] == i.ip))
        if i.external and sub and sub.get("gateway_ip"):
            default = "0.0.0.0/0" if i.cidr.version == 4 else "::/0"
            routes.append(Route(ipaddress.ip_network(default), i, sub["gateway_ip"]))
    for r in topo.routers[rid].get("routes") or ():
        prefix = ipaddress.ip_network(r["destination"], strict=False)
        out = via(r["nexthop"])
        if out is not None and out.cidr.version == prefix.version:
            routes.append(Route(prefix, out, r["nexthop"]))
    return routes


def floating_ips(topo, rid: str) -> list[tuple[dict, dict, dict]]:
    """(floating IP, its own port on the external network, the VM port) of a router."""
    out = []
    fports = {p["device_id"]: p for p in topo.ports.values()
              if p.get("device_owner") == "network:floatingip"
              and topo.l3_owned(p, topo.floating_ips)}
    for fip in topo.floating_ips.values():
        if fip.get("router_id") != rid or not fip.get("port_id"):
            continue
        vm, own = topo.ports.get(fip["port_id"]), fports.get(fip["id"])
        if vm is not None and own is not None:
            out.append((fip, own, vm))
    return sorted(out, key=lambda x: x[0]["id"])


def fip_host(topo, rid: str, port: dict) -> str:
    """The host where a floating IP of `port` is NATed: its port's host; for a load
    balancer's VIP, bound nowhere, the router's gateway host (sbnet.compiler.lb balances
    what that DNAT sends to the VIP there, as OVN centralises NAT to an unbound port)."""
    if port.get("device_owner") == LB_VIP_OWNER:
        return topo.gateway_host(rid)
    return topo.host_of(port)


def _snat_central(topo, rid: str) -> bool:
    info = topo.routers[rid].get("external_gateway_info") or {}
    return bool(info) and info.get("enable_snat", True)


def _enter(ctx, rid: str) -> list:
    topo = ctx.topo
    return [R.ROUTER.load(topo.router_key[rid]), R.NAT_ZONE.load(topo.router_zone[rid])]


def build_l3_gateway(ctx, rid: str, ifaces: list[Iface]) -> None:
    """Packets to a router port's MAC enter routing.  Internal networks: from local ports
    (and, on the gateway host, what other hosts redirect for SNAT); the external network:
    the gateway MAC on the gateway host, a floating IP's MAC on its VM's host."""
    topo = ctx.topo
    gw_host = topo.gateway_host(rid)
    on_gw = gw_host == ctx.host
    cookie = ctx.cookie("router", rid)
    enter = [*_enter(ctx, rid), ctx.goto("l3_dnat")]
    seen = set()
    for i in ifaces:
        if (i.net_id, i.mac, i.cidr.version) in seen:
            continue
        seen.add((i.net_id, i.mac, i.cidr.version))
        m = {"metadata": R.NETWORK.match(topo.net_key[i.net_id]), "eth_dst": i.mac,
             "eth_type": ETH[i.cidr.version]}
        if i.external:
            if on_gw:
                ctx.flow("l3_gateway", 100, enter, m, cookie)
            continue
        # A connection its group accepted is committed in the zone of the network it
        # leaves, or its reply would be +new there (see secgroups).
        ctx.flow("l3_gateway", 110, [A.Ct(commit=True, zone=R.ZONE.sub),
                                     R.clear_flags(R.COMMIT), *enter],
                 {**m, R.FLAGS_FIELD: R.flags_match(on=(R.COMMIT,), off=(R.FROM_REMOTE,))}, cookie)
        ctx.flow("l3_gateway", 100, enter,
                 m if on_gw else {**m, R.FLAGS_FIELD: R.flags_match(off=(R.FROM_REMOTE,))}, cookie)
        net = topo.networks[i.net_id]
        kind = topo.network_type(net)
        if on_gw and kind in TUNNEL_TYPES:
            # Redirected SNAT traffic comes by tunnel; tunnels enter at l2_lookup otherwise.
            ctx.flow("classify", 110,
                     [R.NETWORK.load(topo.net_key[i.net_id]), R.ZONE.load(topo.zone[i.net_id]),
                      R.set_flags(R.FROM_REMOTE), ctx.goto("l3_gateway")],
                     {"in_port": TUNNEL_OFPORTS[kind],
                      "tun_id": int(net.get("provider:segmentation_id") or 0),
                      "eth_dst": i.mac}, cookie)
    build_echo_responder(ctx, ifaces, cookie)
    ext = _external(ifaces, 4)
    if ext is None:
        return
    for fip, own, vm in floating_ips(topo, rid):
        if fip_host(topo, rid, vm) == ctx.host:
            ctx.flow("l3_gateway", 100, enter,
                     {"metadata": R.NETWORK.match(topo.net_key[ext.net_id]),
                      "eth_dst": mac_int(own["mac_address"]), "eth_type": ETH_IP},
                     ctx.cookie("floatingip", fip["id"]))


ECHO = {4: ("ip_src", "ip_dst", "icmp_type", F.IP_ICMP, 8, 0),
        6: ("ipv6_src", "ipv6_dst", "icmpv6_type", F.IP_ICMPV6, 128, 129)}


def build_echo_responder(ctx, ifaces: list[Iface], cookie: int) -> None:
    """A local port's echo request to any of the router's addresses, sent to the router
    port on its network, is answered on its host (as a Linux router or OVN's router would):
    addresses and MACs swapped, the reply type, a fresh hop limit, back out of the port."""
    topo = ctx.topo
    targets = {v: sorted({t.ip for t in ifaces if t.cidr.version == v}) for v in ECHO}
    for i in ifaces:
        if i.external:
            continue
        v = i.cidr.version
        src, dst, icmp_type, proto, request, reply = ECHO[v]
        for target in targets[v]:
            ctx.flow("l3_gateway", 120, [
                A.Move(A.Subfield.whole("eth_src"), A.Subfield.whole("eth_dst")),
                A.SetField("eth_src", i.mac),
                A.Move(A.Subfield.whole(src), A.Subfield.whole(dst)),
                A.SetField(src, ip_value(target)),
                A.SetField("ip_ttl", 255),
                A.SetField(icmp_type, reply),
                *BACK_TO_SENDER, A.Resubmit(table=ctx.table("deliver"))],
                {"metadata": R.NETWORK.match(topo.net_key[i.net_id]), "eth_dst": i.mac,
                 "eth_type": ETH[v], R.FLAGS_FIELD: R.flags_match(off=(R.FROM_REMOTE,)),
                 dst: ip_value(target), "ip_proto": proto, icmp_type: request}, cookie)


def _route_actions(ctx, route: Route) -> list | None:
    """None: the route's IPv6 next hop is no known port (nothing could resolve it)."""
    topo = ctx.topo
    i = route.iface
    nxt = [ctx.goto("l3_snat")]
    if route.prefix.version == 6 and route.nexthop is None:
        hop = []                # connected: l3_neighbour reads ipv6_dst itself
    elif route.prefix.version == 6:
        # No 128-bit register carries an IPv6 next hop to l3_neighbour: its MAC is looked
        # up here, from the model (there is no SNAT for IPv6 to pass through).
        port = _port_with_ip(topo, i.net_id, route.nexthop)
        if port is None:
            return None
        hop, nxt = [], neighbour_actions(ctx, i.net_id, port)
    elif route.nexthop is None:
        hop = [A.Move(A.Subfield.whole("ip_dst"), R.NEXTHOP.sub)]
    else:
        hop = [R.NEXTHOP.load(int(ipaddress.IPv4Address(route.nexthop)))]
    return [A.DecTtl(), A.SetField("eth_src", i.mac),
            R.NETWORK.load(topo.net_key[i.net_id]), R.ZONE.load(topo.zone[i.net_id]),
            # Routed: the router is the sender now, so split horizon no longer applies.
            R.set_flags(R.ROUTED), R.clear_flags(R.FROM_REMOTE), *hop, *nxt]


def _port_with_ip(topo, net_id: str, ip: str) -> dict | None:
    return next((p for p in topo.ports_of[net_id] if p.get("device_owner") not in ROUTER_OWNERS
                 and ip in topo.ips(p)), None)


def build_l3_route(ctx, rid: str, ifaces: list[Iface]) -> None:
    """Longest-prefix match.  Away from the gateway host, traffic leaving by the gateway
    from a port without a local floating IP goes, unrouted, to the gateway host."""
    topo = ctx.topo
    rkey = R.ROUTER.match(topo.router_key[rid])
    cookie = ctx.cookie("router", rid)
    gw_host = topo.gateway_host(rid)
    # IPv4 leaves from the gateway host for SNAT; IPv6 (never NATed) too, so that the
    # gateway's MAC is on one host of the external segment only (as Neutron's SNAT node).
    redirect = {4: _snat_central(topo, rid) and gw_host != ctx.host, 6: gw_host != ctx.host}
    local_fixed = [vm_ip for fip, _, vm in floating_ips(topo, rid)
                   if fip_host(topo, rid, vm) == ctx.host
                   for vm_ip in [fip["fixed_ip_address"]] if vm_ip]
    for route in router_routes(topo, rid, ifaces):
        m = {R.ROUTER.field: rkey, **route.match()}
        acts = _route_actions(ctx, route)
        if acts is None:
            continue            # an unknown next hop: the miss drops what it would route
        v = route.prefix.version
        if not (route.iface.external and redirect[v]):
            ctx.flow("l3_route", route.priority, acts, m, cookie)
            continue
        for ip in local_fixed if v == 4 else ():
            ctx.flow("l3_route", route.priority + 1, acts,
                     {**m, "ip_src": int(ipaddress.IPv4Address(ip))}, cookie)
        if not gw_host:
            continue            # no host can do SNAT: the miss drops it
        for i in ifaces:
            if i.external or i.cidr.version != v:
                continue
            ctx.flow("l3_route", route.priority,
                     [*remote_out(ctx, topo.networks[i.net_id], gw_host), ctx.goto("deliver")],
                     {**m, "metadata": R.NETWORK.match(topo.net_key[i.net_id])}, cookie)


def build_l3_nat(ctx, rid: str, ifaces: list[Iface]) -> None:
    """Floating IPs on their VM's host (ARP, DNAT in, SNAT out); the gateway IP's SNAT,
    un-SNAT and ARP on the gateway host."""
    topo = ctx.topo
    ext6 = _external(ifaces, 6)
    if ext6 is not None and topo.gateway_host(rid) == ctx.host:
        _nd_from_outside(ctx, ext6, ctx.cookie("router", rid))
    ext = _external(ifaces, 4)
    if ext is None:
        return
    meta = R.NETWORK.match(topo.net_key[ext.net_id])
    rkey = R.ROUTER.match(topo.router_key[rid])
    zone = R.NAT_ZONE.sub
    for fip, own, vm in floating_ips(topo, rid):
        if fip_host(topo, rid, vm) != ctx.host or not fip.get("fixed_ip_address"):
            continue
        cookie = ctx.cookie("floatingip", fip["id"])
        fmac, fixed = mac_int(own["mac_address"]), fip["fixed_ip_address"]
        fip_ip = fip["floating_ip_address"]
        _arp_from_outside(ctx, ext, fip_ip, fmac, cookie)
        ctx.flow("l3_dnat", 200, [A.Ct(commit=True, zone=zone, table=ctx.table("l3_route"),
                                       nat=A.Nat("dst", fixed))],
                 {"metadata": meta, R.ROUTER.field: rkey, "eth_type": ETH_IP,
                  "ip_dst": int(ipaddress.IPv4Address(fip_ip))}, cookie)
        ctx.flow("l3_snat", 200, [A.SetField("eth_src", fmac),
                                  A.Ct(commit=True, zone=zone, table=ctx.table("l3_neighbour"),
                                       nat=A.Nat("src", fip_ip))],
                 {"metadata": meta, R.ROUTER.field: rkey, "eth_type": ETH_IP,
                  "ip_src": int(ipaddress.IPv4Address(fixed))}, cookie)
    if topo.gateway_host(rid) != ctx.host:
        return
    cookie = ctx.cookie("router", rid)
    _arp_from_outside(ctx, ext, ext.ip, ext.mac, cookie)
    if not _snat_central(topo, rid):
        return
    gw_ip = int(ipaddress.IPv4Address(ext.ip))
    ctx.flow("l3_dnat", 100, [A.Ct(zone=zone, table=ctx.table("l3_route"), nat=A.Nat())],
             {"metadata": meta, R.ROUTER.field: rkey, "eth_type": ETH_IP, "ip_dst": gw_ip}, cookie)
    ctx.flow("l3_snat", 100, [A.Ct(commit=True, zone=zone, table=ctx.table("l3_neighbour"),
                                   nat=A.Nat("src", ext.ip))],
             {"metadata": meta, R.ROUTER.field: rkey, "eth_type": ETH_IP}, cookie)


def _external(ifaces: list[Iface], v: int) -> Iface | None:
    return next((i for i in ifaces if i.external and i.cidr.version == v), None)


def _back_out(ctx, ext: Iface) -> list:
    """Back out of the physical port a frame came in on, with the network's VLAN."""
    net = ctx.topo.networks[ext.net_id]
    out = [A.Output(F.OFPP_IN_PORT)]
    if ctx.topo.network_type(net) == "vlan":
        vid = VLAN_CFI | int(net["provider:segmentation_id"])
        out = [A.PushVlan(), A.SetField("vlan_vid", vid), *out]
    return out


def _nd_from_outside(ctx, ext: Iface, cookie: int) -> None:
    """Answer the external network's neighbour solicitations for the gateway's IPv6
    address (router flag set), on the gateway host; nd_advert adds the link-layer address
    and sends it back out."""
    meta = R.NETWORK.match(ctx.topo.net_key[ext.net_id])
    outside = R.flags_match(on=(R.FROM_REMOTE,))
    ctx.flow("arp_responder", 105, [*nd_advert(ext.mac, ext.ip, router=True),
                                    A.Resubmit(table=ctx.table("nd_advert"))],
             {"metadata": meta, R.FLAGS_FIELD: outside, **solicitation(ext.ip)}, cookie)
    ctx.flow("nd_advert", 110, [TLL_FROM_ETH_SRC, *_back_out(ctx, ext)],
             {"metadata": meta, R.FLAGS_FIELD: outside, **ADVERT}, cookie)


def _arp_from_outside(ctx, ext: Iface, ip: str, mac: int, cookie: int) -> None:
    """Answer the external network's ARP requests for `ip` from this host, back out of the
    physical port they came in on (with the network's VLAN)."""
    topo = ctx.topo
    out = _back_out(ctx, ext)
    match = {"metadata": R.NETWORK.match(topo.net_key[ext.net_id]),
             R.FLAGS_FIELD: R.flags_match(on=(R.FROM_REMOTE,)), "eth_type": ETH_ARP, "arp_op": 1,
             "arp_tpa": int(ipaddress.IPv4Address(ip))}
    ctx.flow("arp_responder", 110, [*arp_reply(mac, ip), *out], match, cookie)
    # A gratuitous ARP for it (another host announcing it: a migrated VM's floating IP) is
    # no question: a reply from here, from its MAC, turned the outside's switches back.
    ctx.flow("arp_responder", 111, [], {**match, "arp_spa": int(ipaddress.IPv4Address(ip))},
             cookie)


def neighbour_actions(ctx, net_id: str, port: dict) -> list:
    """Send a routed packet to `port` on its network: its MAC, then L2 (or, on a physical
    network, straight out of the physical port when no host has the port bound)."""
    topo = ctx.topo
    acts = [A.SetField("eth_dst", mac_int(port["mac_address"]))]
    physical = topo.network_type(topo.networks[net_id]) not in TUNNEL_TYPES
    if physical and not (is_vif(port) and topo.host_of(port) in topo.chassis):
        return acts + [R.OUTPORT.load(0), R.set_flags(R.REMOTE_OUT), ctx.goto("deliver")]
    return acts + [ctx.goto("lb_unnat")]


def build_l3_neighbour(ctx, net_id: str) -> None:
    """Next hop IP to MAC for every known address of the network but routers' interfaces
    (gateway addresses and floating IPs included: the outside world reaches them).  On a
    physical network an address no host has bound (the outside world, other routers'
    gateways and floating IPs) is reached through the physical port."""
    topo = ctx.topo
    meta = R.NETWORK.match(topo.net_key[net_id])
    seen = set()
    for port in topo.ports_of[net_id]:
        if port.get("device_owner") in ROUTER_OWNERS:
            continue
        for ip in topo.ips(port):
            if ip in seen:
                continue
            seen.add(ip)
            v6 = ":" in ip
            acts = neighbour_actions(ctx, net_id, port)
            hop = ({"eth_type": ETH_IPV6, "ipv6_dst": ip_value(ip)} if v6
                   else {"eth_type": ETH_IP, R.NEXTHOP.field: R.NEXTHOP.match(ip_value(ip))})
            ctx.flow("l3_neighbour", 100, acts, {"metadata": meta, **hop},
                     ctx.cookie("port", port["id"]))
