"""Stages arp_responder, nd_advert and l2_lookup: ARP and ND answered on the spot, MAC to port, flooding."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.compiler.topology import (
    ROUTER_OWNERS,
    TUNNEL_TYPES,
    ip_value,
    is_vif,
    mac_int,
    version,
)
from sbnet.flows import actions as A
from sbnet.flows.fields import ETH_ARP, ETH_IPV6, IP_ICMPV6

ND_NS, ND_NA = 135, 136
# Neighbour advertisement flags (RFC 4861 4.4), in nd_reserved's top bits.
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 1 << 31, 1 << 30, 1 << 29
MULTICAST = (1 << 40, 1 << 40)       # the group bit of eth_dst
# What nd_advert matches: an advertisement the responder made (only it resubmits there).
ADVERT = {"eth_type": ETH_IPV6, "ip_proto": IP_ICMPV6, "icmpv6_type": ND_NA}
# nd_advert's rewrite: the target link-layer option carries the MAC the NA is sent from.
TLL_FROM_ETH_SRC = A.Move(A.Subfield.whole("eth_src"), A.Subfield.whole("nd_tll"))
# A responder's answer goes back out of the asking port (with its VLAN on a sub-port).
BACK_TO_SENDER = (A.Move(R.INPORT.sub, R.OUTPORT.sub), R.set_flags(R.HAIRPIN))


def build(ctx) -> None:
    topo = ctx.topo
    build_nd_common(ctx)
    for net_id in sorted(topo.networks):
        hosts = topo.hosts_of(net_id)
        if ctx.host not in hosts:
            continue
        for port in topo.ports_of[net_id]:
            # Whether it is plugged here is an input too (its VIF ofport is in port_deps).
            ctx.unit(("port", port["id"]), topo.port_deps(port), build_l2_port, ctx, port)
        local = tuple(topo.port_key[p["id"]] for p in topo.ports_of[net_id]
                      if is_vif(p) and ctx.host in topo.hosts_for(p) and _plugged(ctx, p))
        remote = tuple((h, topo.chassis[h].tunnel_ip) for h in sorted(hosts - {ctx.host}))
        net = topo.networks[net_id]
        ctx.unit(("flood", net_id), (version(net), topo.net_key[net_id], local, remote),
                 build_l2_flood, ctx, net_id)


def build_l2_port(ctx, port: dict) -> None:
    build_arp_responder(ctx, port)
    build_l2_unicast(ctx, port)


def build_arp_responder(ctx, port: dict) -> None:
    """Requests from local ports for any address of a port on the network (router ports
    included: that is the gateway's ARP) are answered here; requests from other hosts
    are left to their own responders."""
    topo = ctx.topo
    net = R.NETWORK.match(topo.net_key[port["network_id"]])
    local = R.flags_match(off=(R.FROM_REMOTE,))
    mac = mac_int(port["mac_address"])
    for ip in topo.ips(port, 4):
        reply = [*arp_reply(mac, ip), *BACK_TO_SENDER, A.Resubmit(table=ctx.table("deliver"))]
        ctx.flow("arp_responder", 100, reply,
                 {"metadata": net, R.FLAGS_FIELD: local, "eth_type": ETH_ARP, "arp_op": 1,
                  "arp_tpa": ip_value(ip)},
                 ctx.cookie("port", port["id"]))
    router = port.get("device_owner") in ROUTER_OWNERS
    for ip in topo.ips(port, 6):
        advert = [*nd_advert(mac, ip, router), *BACK_TO_SENDER,
                  A.Resubmit(table=ctx.table("nd_advert"))]
        ctx.flow("arp_responder", 100, advert,
                 {"metadata": net, R.FLAGS_FIELD: local, **solicitation(ip)},
                 ctx.cookie("port", port["id"]))


def solicitation(ip: str) -> dict:
    """The match of a valid neighbour solicitation for `ip` (RFC 4861 7.1.1: hop limit 255,
    code 0): the only ones a responder answers."""
    return {"eth_type": ETH_IPV6, "ip_proto": IP_ICMPV6, "icmpv6_type": ND_NS,
            "icmpv6_code": 0, "ip_ttl": 255, "nd_target": ip_value(ip)}


def nd_advert(mac: int, ip: str, router: bool) -> list:
    """Turn a neighbour solicitation for `ip` into the solicited advertisement "`ip` is at
    `mac`", addressed back to the solicitor (its link-layer address is set in nd_advert)."""
    flags = NA_SOLICITED | NA_OVERRIDE | (NA_ROUTER if router else 0)
    return [
        A.Move(A.Subfield.whole("eth_src"), A.Subfield.whole("eth_dst")),
        A.SetField("eth_src", mac),
        A.Move(A.Subfield.whole("ipv6_src"), A.Subfield.whole("ipv6_dst")),
        A.SetField("ipv6_src", ip_value(ip)),
        A.SetField("icmpv6_type", ND_NA),
        A.SetField("nd_reserved", flags),
        # The solicitation's source link-layer option becomes the target link-layer option.
        A.SetField("nd_options_type", 2),
    ]


def build_nd_common(ctx) -> None:
    """Flows every host has: duplicate address detection is never answered (a solicitation
    from :: asks whether anyone else has the address: the owner must not say yes), and
    advertisements made by the responder take their target link-layer address from the
    Ethernet source it was given."""
    ctx.flow("arp_responder", 110, [ctx.goto("l3_gateway")],
             {"eth_type": ETH_IPV6, "ip_proto": IP_ICMPV6, "icmpv6_type": ND_NS, "ipv6_src": 0})
    ctx.flow("nd_advert", 100, [TLL_FROM_ETH_SRC, A.Resubmit(table=ctx.table("deliver"))], ADVERT)


def arp_reply(mac: int, ip: str) -> list:
    """Turn an ARP request for `ip` into the reply "`ip` is at `mac`" (to be sent back)."""
    return [
        A.Move(A.Subfield.whole("eth_src"), A.Subfield.whole("eth_dst")),
        A.SetField("eth_src", mac),
        A.SetField("arp_op", 2),
        A.Move(A.Subfield.whole("arp_sha"), A.Subfield.whole("arp_tha")),
        A.Move(A.Subfield.whole("arp_spa"), A.Subfield.whole("arp_tpa")),
        A.SetField("arp_sha", mac),
        A.SetField("arp_spa", ip_value(ip)),
    ]


def remote_out(ctx, net: dict, host: str) -> list:
    """Actions that aim a packet at `host` for network `net` (tunnel endpoint and key);
    the deliver stage outputs it on the tunnel or physical port."""
    kind = ctx.topo.network_type(net)
    acts = [R.set_flags(R.REMOTE_OUT)]
    if kind in TUNNEL_TYPES:
        ch = ctx.topo.chassis[host]
        acts += [A.SetField("tun_dst", ip_value(ch.tunnel_ip)),
                 A.SetField("tun_id", int(net.get("provider:segmentation_id") or 0))]
    return acts


def build_l2_unicast(ctx, port: dict) -> None:
    """To the port's VIF here, else to its host.  While it migrates its traffic goes to
    every host it may be on (the VM is on one of them; the others drop their copy)."""
    topo = ctx.topo
    net = topo.networks[port["network_id"]]
    meta = R.NETWORK.match(topo.net_key[port["network_id"]])
    hosts = [h for h in topo.hosts_for(port) if h in topo.chassis]
    if not is_vif(port) or not hosts:
        return
    match = {"metadata": meta, "eth_dst": mac_int(port["mac_address"])}
    # Remote ports are reached only from local senders: a host never relays
    # between two remote ends (split horizon).
    from_local = {**match, R.FLAGS_FIELD: R.flags_match(off=(R.FROM_REMOTE,))}
    out = R.OUTPORT.load(topo.port_key[port["id"]])
    cookie = ctx.cookie("port", port["id"])
    local = ctx.host in hosts and _plugged(ctx, port)
    remote = [h for h in hosts if h != ctx.host]
    if local:
        ctx.flow("l2_lookup", 100, [out, ctx.goto("ingress_ct")], match, cookie)
    if local and remote:
        # The local copy first: it resumes after conntrack with the registers it had.
        receive = A.Resubmit(table=ctx.table("ingress_ct"))
        copies = [out, receive]
        for h in remote:
            copies += [out, *remote_out(ctx, net, h), receive]
        ctx.flow("l2_lookup", 110, copies, from_local, cookie)
    elif len(remote) == 1:
        ctx.flow("l2_lookup", 100, [out, *remote_out(ctx, net, remote[0]),
                                    ctx.goto("ingress_ct")], from_local, cookie)
    elif remote:
        receive = A.Resubmit(table=ctx.table("ingress_ct"))
        copies = []
        for h in remote:
            copies += [out, *remote_out(ctx, net, h), receive]
        ctx.flow("l2_lookup", 100, copies, from_local, cookie)


def _plugged(ctx, port: dict) -> bool:
    sub = ctx.topo.subport_of.get(port["id"])
    pid = sub[0]["port_id"] if sub else port["id"]
    return pid in ctx.chassis.ofports


def build_l2_flood(ctx, net_id: str) -> None:
    """Broadcast and multicast: a copy to each local port through the receiving side of
    the pipeline (its ingress security groups and QoS, then deliver, so sub-ports get their
    VLAN) and, for local senders, one to each other host of the network (head-end
    replication; that host's copies meet their ports' groups there) or once onto the
    physical network.  Local copies come first: a copy that enters conntrack resumes
    after it with the registers it had then (OVS freezes them), before any copy set the
    remote-output flag or tunnel fields."""
    topo = ctx.topo
    net = topo.networks[net_id]
    meta = R.NETWORK.match(topo.net_key[net_id])
    deliver = A.Resubmit(table=ctx.table("deliver"))
    receive = A.Resubmit(table=ctx.table("ingress_ct"))
    local = []
    for port in topo.ports_of[net_id]:
        if is_vif(port) and ctx.host in topo.hosts_for(port) and _plugged(ctx, port):
            local += [R.OUTPORT.load(topo.port_key[port["id"]]), receive]
    remote = []
    if topo.network_type(net) in TUNNEL_TYPES:
        for host in sorted(topo.hosts_of(net_id) - {ctx.host}):
            remote += [*remote_out(ctx, net, host), R.OUTPORT.load(0), deliver]
    else:
        remote = [*remote_out(ctx, net, ctx.host), R.OUTPORT.load(0), deliver]
    cookie = ctx.cookie("network", net_id)
    ctx.flow("l2_lookup", 50, local, {"metadata": meta, "eth_dst": MULTICAST,
                                      R.FLAGS_FIELD: R.flags_match(on=(R.FROM_REMOTE,))}, cookie)
    ctx.flow("l2_lookup", 50, local + remote,
             {"metadata": meta, "eth_dst": MULTICAST,
              R.FLAGS_FIELD: R.flags_match(off=(R.FROM_REMOTE,))}, cookie)
