"""Stages egress_ct/egress_sg, ingress_ct/ingress_sg and commit: security groups.

Each rule is a conjunction of clauses evaluated in one classifier pass, as OVN and
Neutron's OVS firewall do it: (the port is a member of the group) x (the rule's protocol,
ports and prefix) [x (the peer is a member of the remote group)].  A port costs one flow,
a rule one flow per port-range prefix, a remote-group member one flow, so n members and
m rules cost about n + m flows, not n x m.

Stateful groups send IP through ct() in the network's zone.  Accepting a new connection
only sets the COMMIT flag: the commit happens once both ends' groups have accepted it (the
commit stage) or when it leaves the network (tunnel, physical port, router), so that a
packet the receiver refuses is never committed and its retries stay +new.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict

from sbnet.compiler import registers as R
from sbnet.compiler.topology import allocate_keys, ip_value, port_secured
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.model.secgroups import PORT_PROTOCOLS, protocol_number

ETH = {"IPv4": 0x0800, "IPv6": 0x86DD}
ICMP = {"IPv4": 1, "IPv6": 58}
CS = F.CT_STATE_BITS
TRK, NEW, EST, REL, INV = CS["trk"], CS["new"], CS["est"], CS["rel"], CS["inv"]
_L4_FIELD = {6: "tcp", 17: "udp", 132: "sctp"}
RULE_PRIORITY = 100
# Per direction: the conntrack table, the rule table, where accepted packets go, the
# register naming the protected port, and which address a remote peer is.
DIRECTIONS = {
    "egress": ("egress_ct", "egress_sg", "chain_classify", R.INPORT, "dst"),
    "ingress": ("ingress_ct", "ingress_sg", "commit", R.OUTPORT, "src"),
}


def build(ctx) -> None:
    ports = [p for lp in ctx.topo.local_ports(ctx.host) for p in _with_subports(ctx, lp)]
    for direction in DIRECTIONS:
        build_sg_fixed(ctx, direction)
        build_sg_rules(ctx, direction, ports)
    build_commit(ctx)


def _with_subports(ctx, port: dict) -> list[dict]:
    topo = ctx.topo
    out = [port]
    for t in topo.trunks.values():
        if t["port_id"] == port["id"]:
            out += [topo.ports[sp["port_id"]] for sp in t.get("sub_ports") or ()
                    if sp["port_id"] in topo.ports]
    return out


def stateful(topo, port: dict) -> bool:
    """Whether the port's groups are stateful (Neutron forbids mixing; any stateless group
    makes the port stateless here)."""
    groups = [topo.security_groups.get(g) for g in port.get("security_groups") or ()]
    return bool(groups) and all(g is not None and g.get("stateful", True) for g in groups)


def build_sg_fixed(ctx, direction: str) -> None:
    """What every port gets: conntrack verdicts, ARP and neighbour discovery, DHCP."""
    ct_table, sg_table, nxt, _, _ = DIRECTIONS[direction]
    go = [ctx.goto(nxt)]
    if direction == "ingress":
        # Bound for another host: that host's groups decide.
        ctx.flow(sg_table, 300, go, {"reg10": R.flags_match(on=(R.REMOTE_OUT,))})
    ctx.flow(sg_table, 210, [], {"ct_state": (INV | TRK, INV | TRK)})
    ctx.flow(sg_table, 200, go, {"ct_state": (EST | TRK, EST | INV | TRK)})
    ctx.flow(sg_table, 200, go, {"ct_state": (REL | TRK, REL | INV | TRK)})
    ctx.flow(sg_table, 150, go, {"eth_type": 0x0806})
    for t in (133, 134, 135, 136):  # RS, RA, NS, NA (port security already vetted them)
        nd = {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": t}
        ctx.flow(sg_table, 150, go, nd)
        # Conntrack does not track neighbour discovery (it would come back +inv).
        ctx.flow(ct_table, 110, [ctx.goto(sg_table)], nd)
    if direction == "egress":
        ctx.flow(sg_table, 150, go, {"eth_type": 0x0800, "ip_proto": 17, "udp_src": 68,
                                     "udp_dst": 67})
    else:
        ctx.flow(sg_table, 150, go, {"eth_type": 0x0800, "ip_proto": 17, "udp_src": 67,
                                     "udp_dst": 68})


def port_ranges(lo: int, hi: int) -> list[tuple[int, int]]:
    """The (value, mask) prefixes that cover [lo, hi] of a 16-bit port exactly."""
    out = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size >>= 1
        out.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return out


def rule_matches(rule: dict, direction: str) -> list[dict]:
    """The clause matches of one rule (without the port and ct_state), one per port prefix."""
    eth = rule.get("ethertype") or "IPv4"
    base: dict = {"eth_type": ETH[eth]}
    proto = protocol_number(rule.get("protocol"))
    if proto is not None:
        if proto in (1, 58):
            proto = ICMP[eth]
        base["ip_proto"] = proto
    prefix = rule.get("remote_ip_prefix")
    if prefix:
        net = ipaddress.ip_network(prefix, strict=False)
        if net.prefixlen:
            peer = "dst" if direction == "egress" else "src"
            fld = f"ip_{peer}" if net.version == 4 else f"ipv6_{peer}"
            base[fld] = (int(net.network_address), int(net.netmask))
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    if proto in PORT_PROTOCOLS and proto in _L4_FIELD and lo is not None:
        fld = f"{_L4_FIELD[proto]}_dst"
        return [{**base, fld: vm} for vm in port_ranges(lo, hi if hi is not None else lo)]
    if proto in (1, 58) and lo is not None:
        base["icmp_type" if proto == 1 else "icmpv6_type"] = lo
        if hi is not None:
            base["icmp_code" if proto == 1 else "icmpv6_code"] = hi
    return [base]


def build_sg_rules(ctx, direction: str, ports: list[dict]) -> None:
    topo = ctx.topo
    ct_table, sg_table, nxt, reg, peer = DIRECTIONS[direction]
    conj_ids = ctx.__dict__.setdefault("_conj_ids", allocate_keys(
        [r for rules in topo.sg_rules.values() for r in rules], 31, "conj"))
    clauses: dict[tuple, list] = defaultdict(list)   # (match items) -> conjunction actions
    groups: dict[str, list[dict]] = defaultdict(list)
    for port in ports:
        key = reg.match(topo.port_key[port["id"]])
        cookie = ctx.cookie("port", port["id"])
        if not port_secured(port, topo.networks.get(port["network_id"])):
            ctx.flow(sg_table, 50, [ctx.goto(nxt)], {reg.field: key}, cookie)
            continue
        if stateful(topo, port):
            for eth in ETH.values():
                ctx.flow(ct_table, 100, [A.Ct(zone=R.ZONE.sub, table=ctx.table(sg_table))],
                         {reg.field: key, "eth_type": eth}, cookie)
        for g in port.get("security_groups") or ():
            groups[g].append(port)
    for gid, members in groups.items():
        group = topo.security_groups.get(gid)
        if group is None:
            continue
        is_stateful = group.get("stateful", True)
        for rule in topo.sg_rules[gid]:
            if rule["direction"] != direction:
                continue
            cid = conj_ids[rule["id"]]
            remote = rule.get("remote_group_id")
            n = 3 if remote else 2
            for port in members:
                clauses[((reg.field, reg.match(topo.port_key[port["id"]])),)].append(
                    A.Conjunction(cid, 1, n))
            ct = {"ct_state": (NEW | TRK, NEW | TRK | EST | REL | INV)} if is_stateful else {}
            for m in rule_matches(rule, direction):
                clauses[tuple({**m, **ct}.items())].append(A.Conjunction(cid, 2, n))
            if remote:
                eth = rule.get("ethertype") or "IPv4"
                version = 4 if eth == "IPv4" else 6
                fld = f"ip_{peer}" if version == 4 else f"ipv6_{peer}"
                for member in topo.members.get(remote, ()):
                    for ip in topo.ips(member, version):
                        v = ip_value(ip)
                        clauses[(("eth_type", ETH[eth]), (fld, v))].append(
                            A.Conjunction(cid, 3, n))
            accept = ([R.set_flags(R.COMMIT)] if is_stateful else []) + [ctx.goto(nxt)]
            ctx.flow(sg_table, RULE_PRIORITY, accept, {"conj_id": cid},
                     ctx.cookie("security_group_rule", rule["id"]))
    for items, conjs in clauses.items():
        # A match shared by several rules is one flow with all their conjunctions.
        ctx.flow(sg_table, RULE_PRIORITY, sorted(set(conjs), key=lambda c: (c.conj_id, c.clause)),
                 dict(items))


def build_commit(ctx) -> None:
    """Commit what a security group accepted, in the zone of the network it is in now."""
    on = R.flags_match(on=(R.COMMIT,))
    for eth in ETH.values():
        ctx.flow("commit", 100, [A.Ct(commit=True, zone=R.ZONE.sub), R.clear_flags(R.COMMIT),
                                 ctx.goto("qos_ingress")], {"reg10": on, "eth_type": eth})
