"""Stages lb_*: Octavia load balancers as distributed flows (ct DNAT to a member a weighted select group picks).

Design (what each host builds, and why):
- Distributed, as OVN's load balancers: every host with a local port on a network that
  reaches a VIP (the VIP's network, and the networks of routers on it) balances its own
  ports' connections to that VIP.  No LB host, no extra hop.
- A packet to a listener (VIP, protocol, port) enters the load balancer's own conntrack zone
  with `nat` (lb_vip): a known connection gets its recorded DNAT back and stays on its
  member whatever happens to the pool since; a new one goes to the listener's select group,
  whose buckets carry the members' weights and each commit the connection with
  nat(dst=member:port).  The group hashes what the algorithm names: SOURCE_IP (and SOURCE_IP
  persistence) the source address, SOURCE_IP_PORT and ROUND_ROBIN the 5-tuple (a weighted,
  per-connection spread); a member has as many equal buckets as its weight.  Members that are disabled, weighted 0 or reported ERROR by their
  health monitor leave the buckets; backups are used only when no other member is left.
- The security groups' conntrack sees the VIP: a connection the client's egress group
  accepted is committed in the network's zone before DNAT, so the reply, un-NATed back to
  the VIP on the client's host (lb_unnat, where the LB zone knows it), is +est there.
- A frame sent to the VIP's MAC (client on the VIP's network) is readdressed to the member's
  MAC, or to the router interface towards a member on another network (lb_post); a routed
  client's frame already goes to the router, which routes the DNATed address.
- Hairpin: a member on the VIP's network balanced to itself is SNATed to the VIP in a
  zone of its own (build_lb_hairpin); balanced to another member it needs nothing more.
- A floating IP on the VIP is DNATed to the VIP on the router's gateway host, which then
  balances it (build_lb_floating).
- Limits: members must be of the VIP's family.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass

from sbnet.compiler import registers as R
from sbnet.compiler.l3 import fip_host
from sbnet.compiler.topology import Topology, ip_value, mac_int
from sbnet.flows import actions as A
from sbnet.flows import fields as F

GROUP_BASE = 0x1B00_0000
CS = F.CT_STATE_BITS
TRK, NEW = CS["trk"], CS["new"]
L4 = {"TCP": (F.IP_TCP, "tcp"), "UDP": (F.IP_UDP, "udp"), "SCTP": (F.IP_SCTP, "sctp")}
ETH = {4: F.ETH_IP, 6: F.ETH_IPV6}
DST = {4: "ip_dst", 6: "ipv6_dst"}
SRC = {4: "ip_src", 6: "ipv6_src"}


def hash_fields(algorithm: str, persistence: dict | None, l4: str) -> tuple[str, ...]:
    """The select group's hash fields for an Octavia algorithm (and SOURCE_IP persistence)."""
    if algorithm == "SOURCE_IP" or (persistence or {}).get("type") == "SOURCE_IP":
        return ("ip_src", "ipv6_src")
    return ("ip_src", "ip_dst", "ipv6_src", "ipv6_dst", "ip_proto", f"{l4}_src", f"{l4}_dst")


@dataclass(frozen=True)
class Backend:
    """A member as the datapath sees it: where DNAT sends, and the MAC a VIP frame gets."""

    member_id: str
    address: str
    port: int
    weight: int
    live: bool            # in the buckets (enabled, weight > 0, not failed, not a spare backup)


@dataclass(frozen=True)
class Plan:
    """One listener compiled: every input its flows read, so equal plans mean equal flows."""

    lb_id: str
    listener_id: str
    vip: str
    vip_mac: int
    vip_net: str
    family: int
    proto: str
    port: int
    group_id: int
    listener_key: int                  # R.LB_LISTENER's value for this listener
    fields: tuple[str, ...]
    backends: tuple[Backend, ...]
    networks: tuple[str, ...]          # networks whose ports reach the VIP
    allowed_cidrs: tuple[str, ...]
    neighbours: tuple[tuple[str, int], ...]   # (address, MAC) of every port on the VIP's network
    gateway_mac: int | None            # a router interface on the VIP's network, if any
    fip_hosts: tuple[str, ...]         # where floating IPs of the VIP are DNATed to it

    @property
    def live(self) -> tuple[Backend, ...]:
        return tuple(b for b in self.backends if b.live)


def reach(topo: Topology, net_id: str) -> tuple[str, ...]:
    """The VIP's network and every network a router on it connects."""
    nets = {net_id}
    for rid in topo.routers_on.get(net_id, ()):
        nets |= topo.router_networks(rid)
    return tuple(sorted(n for n in nets if n in topo.networks))


def _neighbours(topo: Topology, vip_port: dict, family: int) -> tuple:
    """Where a frame sent to the VIP's MAC goes once DNATed: any port on the VIP's network
    (members removed since still hold connections), else the router."""
    out = []
    for p in topo.ports_of[vip_port["network_id"]]:
        if p["id"] != vip_port["id"]:
            out += [(ip, mac_int(p["mac_address"])) for ip in topo.ips(p, family)]
    return tuple(sorted(set(out)))


def _gateway_mac(topo: Topology, net_id: str) -> int | None:
    for rid in sorted(topo.routers_on.get(net_id, ())):
        for p in topo.router_ports.get(rid, ()):
            if p["network_id"] == net_id:
                return mac_int(p["mac_address"])
    return None


def _backends(topo: Topology, pool: dict) -> tuple:
    hm = topo.lb_monitors.get(pool["id"])
    monitored = hm is not None and hm.get("admin_state_up", True)
    rows = []
    # Buckets in address order: the same members give the same group whatever their ids.
    members = sorted(topo.lb_members.get(pool["id"], ()), key=lambda m: (
        ipaddress.ip_address(m["address"]).packed, int(m["protocol_port"]), m["id"]))
    for m in members:
        usable = m.get("admin_state_up", True) and m.get("weight", 1) > 0 and \
            not (monitored and m.get("health") == "ERROR")
        rows.append((m, usable))
    primaries = [r for r in rows if r[1] and not r[0].get("backup")]
    out = []
    for m, usable in rows:
        live = usable and (not m.get("backup") or not primaries)
        out.append(Backend(m["id"], str(ipaddress.ip_address(m["address"])),
                           int(m["protocol_port"]), int(m.get("weight", 1)), live))
    return tuple(out)


def plans(topo: Topology) -> list[Plan]:
    """Every enabled listener with an enabled default pool, compiled to a Plan."""
    out = []
    for li in sorted(topo.lb_listeners.values(), key=lambda x: x["id"]):
        lb = topo.loadbalancers.get(li.get("loadbalancer_id"))
        pool = topo.lb_pools.get(li.get("default_pool_id") or "")
        vip_port = topo.ports.get((lb or {}).get("vip_port_id") or "")
        if lb is None or pool is None or vip_port is None or li.get("protocol") not in L4 \
                or not (lb.get("admin_state_up", True) and li.get("admin_state_up", True)
                        and pool.get("admin_state_up", True)):
            continue
        family = ipaddress.ip_address(lb["vip_address"]).version
        out.append(Plan(
            lb["id"], li["id"], lb["vip_address"], mac_int(vip_port["mac_address"]),
            vip_port["network_id"], family, li["protocol"], int(li["protocol_port"]),
            GROUP_BASE | topo.lb_group[li["id"]], topo.lb_group[li["id"]],
            hash_fields(pool.get("lb_algorithm"), pool.get("session_persistence"),
                        L4[li["protocol"]][1]),
            _backends(topo, pool), reach(topo, vip_port["network_id"]),
            tuple(li.get("allowed_cidrs") or ()), _neighbours(topo, vip_port, family),
            _gateway_mac(topo, vip_port["network_id"]), _fip_hosts(topo, vip_port)))
    return out


def _fip_hosts(topo: Topology, vip_port: dict) -> tuple[str, ...]:
    hosts = {fip_host(topo, f["router_id"], vip_port) for f in topo.floating_ips.values()
             if f.get("port_id") == vip_port["id"] and f.get("router_id")}
    return tuple(sorted(h for h in hosts if h))


def _local_networks(ctx, plan: Plan) -> tuple[str, ...]:
    """Networks whose clients this host balances: those of its ports, and the VIP's own
    where it DNATs a floating IP to the VIP."""
    locals_ = {p["network_id"] for p in ctx.topo.local_ports(ctx.host)}
    if ctx.host in plan.fip_hosts:
        locals_.add(plan.vip_net)
    return tuple(n for n in plan.networks if n in locals_)


def build(ctx) -> None:
    topo = ctx.topo
    unnat: dict[tuple[str, int, str], set[int]] = {}
    for plan in plans(topo):
        nets = _local_networks(ctx, plan)
        if not nets:
            continue
        keys = tuple((n, topo.net_key[n], topo.lb_zone[n], topo.lb_hairpin_zone[n])
                     for n in nets)
        ctx.unit(("loadbalancer", plan.lb_id, plan.listener_id), (plan, keys),
                 build_lb_listener, ctx, plan, nets)
        for n in nets:
            unnat.setdefault((n, plan.family, plan.proto), set()).update(
                b.port for b in plan.backends)
    for (net_id, family, proto), ports in sorted(unnat.items()):
        build_lb_network(ctx, net_id, family, proto, tuple(sorted(ports)))


def build_lb_network(ctx, net_id: str, family: int, proto: str, ports: tuple[int, ...]) -> None:
    """Per network with VIP clients here: packets of connections its LB zone knows go on
    with the DNAT it recorded (a committed connection is +new until its first reply: what
    tells it from a new one is that its destination is no longer the VIP); and what is
    delivered into the network from a member's port (of the listeners' protocols) passes
    that zone with `nat`, which un-NATs members' replies (also of members removed since,
    while their port is still some member's) and leaves the rest.  Only those: a ct with
    NAT keeps a packet off the switches' express lanes, and the network's other traffic
    has no business in the LB zone."""
    topo = ctx.topo
    meta = R.NETWORK.match(topo.net_key[net_id])
    cookie = ctx.cookie("network", net_id)
    ctx.flow("lb_dnat", 100, [ctx.goto("lb_post")], {"metadata": meta, "ct_state": (TRK, TRK)},
             cookie)
    number, l4 = L4[proto]
    for port in ports:
        ctx.flow("lb_unnat", 100, [A.Ct(zone=topo.lb_zone[net_id],
                                        table=ctx.table("l2_lookup"), nat=A.Nat())],
                 {"metadata": meta, "eth_type": ETH[family], "ip_proto": number,
                  f"{l4}_src": port}, cookie)


def build_lb_listener(ctx, plan: Plan, nets: tuple[str, ...]) -> None:
    topo = ctx.topo
    cookie = ctx.cookie("loadbalancer", plan.lb_id)
    proto, l4 = L4[plan.proto]
    eth, v = ETH[plan.family], plan.family
    zone = R.LB_ZONE.sub
    nat = A.Ct(zone=zone, table=ctx.table("lb_dnat"), nat=A.Nat())
    commit_sg = [A.Ct(commit=True, zone=R.ZONE.sub), R.clear_flags(R.COMMIT)]
    # A member of weight w gets w equal buckets (weights divided by their gcd): OVS picks a
    # hash-selected bucket by highest random weight, which favours heavy buckets more than
    # their weight; equal buckets make the spread proportional in both datapaths.
    unit = math.gcd(*(b.weight for b in plan.live)) if plan.live else 1
    buckets = tuple(A.Bucket((A.Ct(commit=True, zone=zone, table=ctx.table("lb_post"),
                                   nat=A.Nat("dst", b.address, b.address, b.port, b.port)),))
                    for b in plan.live for _ in range(b.weight // unit))
    ctx.group(A.GroupMod(plan.group_id, "select", buckets, selection_method="hash",
                         fields=plan.fields))
    sources: list[tuple | None] = [None]
    if plan.allowed_cidrs:
        sources = [_prefix(c) for c in plan.allowed_cidrs]
    for net_id in nets:
        meta = R.NETWORK.match(topo.net_key[net_id])
        enter = [R.LB_ZONE.load(topo.lb_zone[net_id]), R.LB_LISTENER.load(plan.listener_key),
                 nat]
        to_vip = {"metadata": meta, "eth_type": eth, "ip_proto": proto, DST[v]: ip_value(plan.vip),
                  f"{l4}_dst": plan.port}
        if plan.allowed_cidrs:
            ctx.flow("lb_vip", 90, [], to_vip, cookie)   # from anywhere else: dropped
        for src in sources:
            match = dict(to_vip, **({SRC[v]: src} if src else {}))
            ctx.flow("lb_vip", 110, [*commit_sg, *enter],
                     dict(match, **{R.FLAGS_FIELD: R.flags_match(on=(R.COMMIT,))}), cookie)
            ctx.flow("lb_vip", 100, enter, match, cookie)
        ctx.flow("lb_dnat", 110, [A.Group(plan.group_id)],
                 {**to_vip, "ct_state": (NEW | TRK, NEW | TRK)}, cookie)
        if net_id != plan.vip_net:
            continue
        vip_mac = {"metadata": meta, "eth_dst": plan.vip_mac, "eth_type": eth}
        build_lb_hairpin(ctx, plan, net_id, cookie)
        if ctx.host in plan.fip_hosts:
            build_lb_floating(ctx, plan, net_id, cookie)
        for address, mac in plan.neighbours:
            ctx.flow("lb_post", 100, [A.SetField("eth_dst", mac), ctx.goto("arp_responder")],
                     {**vip_mac, DST[v]: ip_value(address)}, cookie)
        if plan.gateway_mac is not None:
            ctx.flow("lb_post", 90, [A.SetField("eth_dst", plan.gateway_mac),
                                     ctx.goto("arp_responder")], vip_mac, cookie)


def build_lb_hairpin(ctx, plan: Plan, net_id: str, cookie: int) -> None:
    """A member on the VIP's network calling its own VIP and balanced to itself (OVN's
    hairpin): after DNAT its source and destination are both its own address, so the
    connection is also SNATed to the VIP in the network's hairpin zone (else the member's
    stack would answer itself inside the VM).  Its replies, sent to the VIP, are un-SNATed
    there, then un-DNATed in the LB zone and readdressed to the member's MAC (lb_unnat);
    both directions leave by the port they came in on.
    The member's security groups see the VIP as the source, as members of an Octavia
    amphora see the amphora's address."""
    topo, v, eth = ctx.topo, plan.family, ETH[plan.family]
    proto = L4[plan.proto][0]
    meta = R.NETWORK.match(topo.net_key[net_id])
    hz, lbz = topo.lb_hairpin_zone[net_id], topo.lb_zone[net_id]
    macs = dict(plan.neighbours)
    back = R.set_flags(R.HAIRPIN)        # out of the port it came in on (OpenFlow asks it)
    # Straight on to l2_lookup: the reference switch allows six conntrack passes a packet
    # (OVS's userspace datapath five to eight, by version), and this one takes five
    # (egress, LB, bucket, hairpin, ingress).
    snat = A.Ct(commit=True, zone=hz, table=ctx.table("l2_lookup"),
                nat=A.Nat("src", plan.vip, plan.vip))
    for address in sorted({b.address for b in plan.backends if b.address in macs}):
        ctx.flow("lb_post", 120, [A.SetField("eth_src", plan.vip_mac),
                                  A.SetField("eth_dst", macs[address]), back, snat],
                 {"metadata": meta, "eth_type": eth, R.LB_LISTENER.field:
                  R.LB_LISTENER.match(plan.listener_key), SRC[v]: ip_value(address),
                  DST[v]: ip_value(address)}, cookie)
        ctx.flow("lb_unnat", 105, [A.SetField("eth_src", plan.vip_mac), back,
                                   A.SetField("eth_dst", macs[address]),
                                   A.Ct(zone=lbz, table=ctx.table("l2_lookup"), nat=A.Nat())],
                 {"metadata": meta, "eth_type": eth, "ip_proto": proto, "eth_dst": plan.vip_mac,
                  DST[v]: ip_value(address), R.FLAGS_FIELD: R.flags_match(on=(R.LB_UNSNAT,))},
                 cookie)
    ctx.flow("lb_unnat", 110, [R.set_flags(R.LB_UNSNAT),
                               A.Ct(zone=hz, table=ctx.table("lb_unnat"), nat=A.Nat())],
             {"metadata": meta, "eth_type": eth, "ip_proto": proto, DST[v]: ip_value(plan.vip),
              R.FLAGS_FIELD: R.flags_match(off=(R.LB_UNSNAT,))}, cookie)


def build_lb_floating(ctx, plan: Plan, net_id: str, cookie: int) -> None:
    """A floating IP on the VIP, on the host that DNATs it (the router's gateway host): what
    the router delivers to the VIP's listener (lb_unnat, after routing) enters the LB zone
    and the select group as a client's connection would; members' replies on their way out
    are un-DNATed in the LB zone before the router (l3_dnat) so that its floating-IP SNAT
    finds the connection it DNATed, from the VIP.  Members on the VIP's network only."""
    topo, v, eth = ctx.topo, plan.family, ETH[plan.family]
    proto, l4 = L4[plan.proto]
    meta = R.NETWORK.match(topo.net_key[net_id])
    lbz = topo.lb_zone[net_id]
    ctx.flow("lb_unnat", 120, [R.LB_ZONE.load(lbz), R.LB_LISTENER.load(plan.listener_key),
                               A.Ct(zone=lbz, table=ctx.table("lb_dnat"), nat=A.Nat())],
             {"metadata": meta, "eth_type": eth, "ip_proto": proto, DST[v]: ip_value(plan.vip),
              f"{l4}_dst": plan.port}, cookie)
    on_net = dict(plan.neighbours)
    for address in sorted({b.address for b in plan.backends if b.address in on_net}):
        ctx.flow("l3_dnat", 150, [A.Ct(zone=lbz, table=ctx.table("l3_route"), nat=A.Nat())],
                 {"metadata": meta, "eth_type": eth, "ip_proto": proto,
                  SRC[v]: ip_value(address)}, cookie)


def _prefix(cidr: str) -> tuple[int, int]:
    net = ipaddress.ip_network(cidr)
    return int(net.network_address), int(net.netmask)
