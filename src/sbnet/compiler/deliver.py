"""Stage deliver: out of a local VIF (with a sub-port's VLAN), a tunnel, or the physical network."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.compiler.classify import VLAN_CFI
from sbnet.compiler.topology import TUNNEL_OFPORTS, TUNNEL_TYPES
from sbnet.flows import actions as A
from sbnet.flows import fields as F


def build(ctx) -> None:
    build_deliver_local(ctx)
    build_deliver_remote(ctx)


def _vif_outputs(ofport: int, vlan: int | None) -> list:
    if vlan is None:
        return [A.Output(ofport)]
    return [A.PushVlan(), A.SetField("vlan_vid", VLAN_CFI | vlan), A.Output(ofport), A.PopVlan()]


def build_deliver_local(ctx) -> None:
    topo, ch = ctx.topo, ctx.chassis
    hairpin = R.flags_match(on=(R.HAIRPIN,))
    for port in topo.local_ports(ctx.host):
        ofport = ch.ofports[port["id"]]
        targets = [(port, None)]
        for t in topo.trunks.values():
            if t["port_id"] == port["id"]:
                targets += [(topo.ports[sp["port_id"]], int(sp["segmentation_id"]))
                            for sp in t.get("sub_ports") or () if sp["port_id"] in topo.ports]
        for p, vlan in targets:
            out = R.OUTPORT.match(topo.port_key[p["id"]])
            cookie = ctx.cookie("port", p["id"])
            ctx.flow("deliver", 100, _vif_outputs(ofport, vlan), {"reg15": out}, cookie)
            # OpenFlow drops output to the in_port unless asked: responders' replies ask.
            ctx.flow("deliver", 110, _vif_outputs(F.OFPP_IN_PORT, vlan),
                     {"reg15": out, "reg10": hairpin}, cookie)


def build_deliver_remote(ctx) -> None:
    topo, ch = ctx.topo, ctx.chassis
    if ch is None:
        return
    remote = R.flags_match(on=(R.REMOTE_OUT,))
    for net_id, net in topo.networks.items():
        if ctx.host not in topo.hosts_of(net_id):
            continue
        kind = topo.network_type(net)
        if kind in TUNNEL_TYPES:
            acts = [A.Output(TUNNEL_OFPORTS[kind])]
        else:
            phys = ch.physnets.get(net.get("provider:physical_network") or "")
            if phys is None:
                continue
            seg = net.get("provider:segmentation_id")
            acts = _vif_outputs(phys, int(seg) if kind == "vlan" else None)
        # The flag is cleared so that a flood's later local copies are not sent remote.
        ctx.flow("deliver", 100, [*acts, R.clear_flags(R.REMOTE_OUT)],
                 {"reg10": remote, "metadata": R.NETWORK.match(topo.net_key[net_id])},
                 ctx.cookie("network", net_id))
