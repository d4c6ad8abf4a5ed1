"""Stage classify: which logical port or network a packet enters on."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.compiler.topology import TUNNEL_OFPORTS, TUNNEL_TYPES, version
from sbnet.flows import actions as A

VLAN_CFI = 0x1000


def build(ctx) -> None:
    topo = ctx.topo
    for port in topo.local_ports(ctx.host):
        ctx.unit(("port", port["id"]), (topo.port_deps(port), topo.trunk_deps(port)),
                 build_classify_vif, ctx, port)
    if ctx.chassis is None:
        return
    if ctx.chassis.service_ofport is not None:
        # The agent's answers (native DHCP) enter at the stage that sent it the questions.
        ctx.flow("classify", 100, [ctx.goto("dhcp")], {"in_port": ctx.chassis.service_ofport},
                 ctx.cookie("service", "slow-path"))
    for net_id, net in topo.networks.items():
        if ctx.host not in topo.hosts_of(net_id) and not _external_here(ctx, net):
            continue
        phys = ctx.chassis.physnets.get(net.get("provider:physical_network") or "")
        ctx.unit(("network", net_id), (version(net), topo.net_key[net_id], topo.zone[net_id],
                                       phys), build_classify_remote, ctx, net_id, net)


def port_entry(ctx, port: dict) -> list:
    """The register loads that put a packet into `port`'s network as coming from it."""
    topo = ctx.topo
    net = port["network_id"]
    return [R.NETWORK.load(topo.net_key[net]), R.ZONE.load(topo.zone[net]),
            R.INPORT.load(topo.port_key[port["id"]])]


def build_classify_vif(ctx, port: dict) -> None:
    """A local VIF by in_port; a trunk's sub-ports by in_port and VLAN (the tag is popped)."""
    topo, ch = ctx.topo, ctx.chassis
    ofport = ch.ofports[port["id"]]
    cookie = ctx.cookie("port", port["id"])
    trunk = topo.trunk_of(port)
    match = {"in_port": ofport}
    if trunk is not None:
        match["vlan_tci"] = (0, VLAN_CFI)   # untagged frames belong to the parent
        for sp in trunk.get("sub_ports") or ():
            sub = topo.ports.get(sp["port_id"])
            if sub is None:
                continue
            ctx.flow("classify", 100, [A.PopVlan(), *port_entry(ctx, sub),
                                       ctx.goto("port_security")],
                     {"in_port": ofport, "vlan_vid": VLAN_CFI | int(sp["segmentation_id"])},
                     ctx.cookie("port", sub["id"]))
    ctx.flow("classify", 100, [*port_entry(ctx, port), ctx.goto("port_security")],
             match, cookie)


def build_classify_remote(ctx, net_id: str, net: dict) -> None:
    """A network with ports here: its tunnel VNI/key, or its VLAN on the physical network."""
    topo, ch = ctx.topo, ctx.chassis
    kind = topo.network_type(net)
    seg = net.get("provider:segmentation_id")
    entry = [R.NETWORK.load(topo.net_key[net_id]), R.ZONE.load(topo.zone[net_id]),
             R.set_flags(R.FROM_REMOTE)]
    cookie = ctx.cookie("network", net_id)
    if kind in TUNNEL_TYPES:
        ctx.flow("classify", 100, [*entry, ctx.goto("lb_unnat")],
                 {"in_port": TUNNEL_OFPORTS[kind], "tun_id": int(seg or 0)}, cookie)
        return
    phys = ch.physnets.get(net.get("provider:physical_network") or "")
    if phys is None:
        return
    if kind == "vlan":
        ctx.flow("classify", 100, [A.PopVlan(), *entry, ctx.goto("arp_responder")],
                 {"in_port": phys, "vlan_vid": VLAN_CFI | int(seg)}, cookie)
    else:  # flat
        ctx.flow("classify", 100, [*entry, ctx.goto("arp_responder")],
                 {"in_port": phys, "vlan_tci": (0, VLAN_CFI)}, cookie)


def _external_here(ctx, net: dict) -> bool:
    """External networks reach every host that routes for a router gatewayed onto them
    (distributed floating IPs and SNAT)."""
    if not net.get("router:external"):
        return False
    return any(gw["network_id"] == net["id"] for gw in ctx.topo.gateway_ports.values())
