"""Stage deliver: out of a local VIF (with a sub-port's VLAN), a tunnel, or the physical network."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.compiler.classify import VLAN_CFI
from sbnet.compiler.topology import TUNNEL_OFPORTS, TUNNEL_TYPES, version
from sbnet.flows import actions as A
from sbnet.flows import fields as F


def build(ctx) -> None:
    topo = ctx.topo
    for port in topo.local_ports(ctx.host):
        ctx.unit(("port", port["id"]), (topo.port_deps(port), topo.trunk_deps(port)),
                 build_deliver_local, ctx, port)
    if ctx.chassis is None:
        return
    for net_id, net in topo.networks.items():
        if ctx.host not in topo.hosts_of(net_id):
            continue
        phys = ctx.chassis.physnets.get(net.get("provider:physical_network") or "")
        ctx.unit(("network", net_id), (version(net), topo.net_key[net_id], phys),
                 build_deliver_remote, ctx, net_id, net)


def _vif_outputs(ofport: int, vlan: int | None) -> list:
    if vlan is None:
        return [A.Output(ofport)]
    return [A.PushVlan(), A.SetField("vlan_vid", VLAN_CFI | vlan), A.Output(ofport), A.PopVlan()]


def build_deliver_local(ctx, port: dict) -> None:
    """Out of the VIF; a sub-port's frames with its VLAN pushed onto the parent's VIF."""
    topo, ch = ctx.topo, ctx.chassis
    hairpin = R.flags_match(on=(R.HAIRPIN,))
    ofport = ch.ofports[port["id"]]
    t = topo.trunk_of(port)
    targets = [(port, None)]
    if t is not None:
        targets += [(topo.ports[sp["port_id"]], int(sp["segmentation_id"]))
                    for sp in t.get("sub_ports") or () if sp["port_id"] in topo.ports]
    for p, vlan in targets:
        out = R.OUTPORT.match(topo.port_key[p["id"]])
        cookie = ctx.cookie("port", p["id"])
        ctx.flow("deliver", 100, _vif_outputs(ofport, vlan), {R.OUTPORT.field: out}, cookie)
        # OpenFlow drops output to the in_port unless asked: responders' replies ask.
        ctx.flow("deliver", 110, _vif_outputs(F.OFPP_IN_PORT, vlan),
                 {R.OUTPORT.field: out, R.FLAGS_FIELD: hairpin}, cookie)


def build_deliver_remote(ctx, net_id: str, net: dict) -> None:
    """What l2_lookup aimed at another host leaves on the tunnel or the physical network."""
    topo, ch = ctx.topo, ctx.chassis
    remote = R.flags_match(on=(R.REMOTE_OUT,))
    kind = topo.network_type(net)
    if kind in TUNNEL_TYPES:
        acts = [A.Output(TUNNEL_OFPORTS[kind])]
    else:
        phys = ch.physnets.get(net.get("provider:physical_network") or "")
        if phys is None:
            return
        seg = net.get("provider:segmentation_id")
        vlan = int(seg) if kind == "vlan" else None
        acts = _vif_outputs(phys, vlan)
        # Routed on a gateway host, a packet may leave by the physical port it came in on
        # (another VLAN, the external network); OpenFlow drops that unless asked.
        ctx.flow("deliver", 110, [*_vif_outputs(F.OFPP_IN_PORT, vlan),
                                  R.clear_flags(R.REMOTE_OUT)],
                 {R.FLAGS_FIELD: remote, "metadata": R.NETWORK.match(topo.net_key[net_id]),
                  "in_port": phys}, ctx.cookie("network", net_id))
    # The flag is cleared so that a flood's later local copies are not sent remote.  Above
    # the local VIFs' flows: a migrating port's copy for its other host leaves here even
    # where its VIF is plugged too (both matched at one priority, the VIF took that copy).
    ctx.flow("deliver", 105, [*acts, R.clear_flags(R.REMOTE_OUT)],
             {R.FLAGS_FIELD: remote, "metadata": R.NETWORK.match(topo.net_key[net_id])},
             ctx.cookie("network", net_id))
