"""Stage classify: which logical port or network a packet enters on."""

from __future__ import annotations

import ipaddress

from sbnet.compiler import registers as R
from sbnet.compiler.dhcp import port_tag
from sbnet.compiler.l2 import ND_NA
from sbnet.compiler.topology import TUNNEL_OFPORTS, TUNNEL_TYPES, ip_value, mac_int, version
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.model.resources import ACTIVATION_STRATEGIES

VLAN_CFI = 0x1000


def build(ctx) -> None:
    topo = ctx.topo
    for port in topo.local_ports(ctx.host):
        ctx.unit(("port", port["id"]), (topo.port_deps(port), topo.trunk_deps(port)),
                 build_classify_vif, ctx, port)
        strategy = topo.activation.get((port["id"], ctx.host))
        if strategy and ctx.host in topo.moving_to.get(port["id"], ()) and \
                ctx.chassis.service_ofport is not None:
            ctx.unit(("port", port["id"], "announce"), (topo.port_deps(port), strategy),
                     build_classify_announce, ctx, port, strategy)
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


def build_classify_announce(ctx, port: dict, strategy: str) -> None:
    """A port migrating here whose binding names an activation strategy: the VM's own
    announcement on its VIF here (a RARP; or a gratuitous ARP or unsolicited NA for one of
    its addresses) goes to the host agent, tagged with the port (sbnet.agent.dhcp), which
    reports the VM arrived: every host then treats the port as this one's."""
    topo, ch = ctx.topo, ctx.chassis
    tag = [A.SetField("eth_dst", port_tag(topo.port_key[port["id"]])),
           A.Output(ch.service_ofport)]
    base = {"in_port": ch.ofports[port["id"]], "eth_src": mac_int(port["mac_address"])}
    cookie = ctx.cookie("port", port["id"])
    kinds = ACTIVATION_STRATEGIES[strategy]
    if "rarp" in kinds:
        ctx.flow("classify", 110, tag, {**base, "eth_type": F.ETH_RARP}, cookie)
    for f in port.get("fixed_ips") or () if "garp" in kinds else ():
        ip = ipaddress.ip_address(f["ip_address"])
        if ip.version == 4:
            ctx.flow("classify", 110, tag, {**base, "eth_type": F.ETH_ARP, "arp_spa": int(ip),
                                            "arp_tpa": int(ip)}, cookie)
        else:
            ctx.flow("classify", 110, tag, {**base, "eth_type": F.ETH_IPV6,
                                            "ip_proto": F.IP_ICMPV6, "icmpv6_type": ND_NA,
                                            "nd_target": ip_value(str(ip))}, cookie)


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
