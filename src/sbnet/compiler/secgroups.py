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
from sbnet.compiler.port_security import subports
from sbnet.compiler.topology import allocate_keys, ip_value, port_secured, version
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.model.secgroups import PORT_PROTOCOLS, protocol_number

ETH = {"IPv4": F.ETH_IP, "IPv6": F.ETH_IPV6}
ICMP = {"IPv4": F.IP_ICMP, "IPv6": F.IP_ICMPV6}
CS = F.CT_STATE_BITS
TRK, NEW, EST, REL, INV = CS["trk"], CS["new"], CS["est"], CS["rel"], CS["inv"]
_L4_FIELD = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}
RULE_PRIORITY = 100
# Per direction: the conntrack table, the rule table, where accepted packets go, the
# register naming the protected port, and which address a remote peer is.
DIRECTIONS = {
    "egress": ("egress_ct", "egress_sg", "chain_classify", R.INPORT, "dst"),
    "ingress": ("ingress_ct", "ingress_sg", "commit", R.OUTPORT, "src"),
}


def build(ctx) -> None:
    topo = ctx.topo
    for direction in DIRECTIONS:
        build_sg_fixed(ctx, direction)
    build_commit(ctx)
    local_groups: set[str] = set()
    for lp in topo.local_ports(ctx.host):
        for port in subports(topo, lp, parent=True):
            gids = tuple(port.get("security_groups") or ())
            ctx.unit(("port", port["id"]),
                     (topo.port_deps(port), tuple(group_deps(topo, g) for g in gids)),
                     build_sg_port, ctx, port)
            if port_secured(port, topo.networks.get(port["network_id"])):
                local_groups.update(gids)
    refs: dict[tuple, list[int]] = defaultdict(list)
    for gid in sorted(local_groups):
        if gid not in topo.security_groups:
            continue
        ctx.unit(("group", gid), group_deps(topo, gid), build_sg_group, ctx, gid)
        for rule in topo.sg_rules[gid]:
            if rule.get("remote_group_id"):
                key = (rule["remote_group_id"], rule["direction"], rule.get("ethertype") or "IPv4")
                refs[key].append(conj_ids(topo)[rule["id"]])
    for (remote, direction, eth), cids in sorted(refs.items()):
        members = member_ips(topo, remote, 4 if eth == "IPv4" else 6)
        ctx.unit(("members", remote, direction, eth), (tuple(sorted(cids)), members),
                 build_sg_members, ctx, direction, eth, sorted(cids), members)


def conj_ids(topo) -> dict[str, int]:
    """A conjunction id per rule, stable while the rule exists (one allocation per model)."""
    try:
        return topo.__dict__["_conj_ids"]
    except KeyError:
        ids = allocate_keys([r for rules in topo.sg_rules.values() for r in rules], 31, "conj")
        topo.__dict__["_conj_ids"] = ids
        return ids


def group_deps(topo, gid: str) -> tuple:
    """A group's version and its rules' (one computation per model, shared by hosts)."""
    memo = topo.__dict__.setdefault("_group_deps", {})
    out = memo.get(gid)
    if out is None:
        g = topo.security_groups.get(gid)
        ids = conj_ids(topo)
        out = (gid, None) if g is None else (
            version(g), tuple((version(r), ids[r["id"]]) for r in topo.sg_rules[gid]))
        memo[gid] = out
    return out


def member_ips(topo, gid: str, v: int) -> tuple:
    """(port id, addresses) of a group's members (one computation per model)."""
    memo = topo.__dict__.setdefault("_member_ips", {})
    out = memo.get((gid, v))
    if out is None:
        out = tuple((p["id"], tuple(topo.ips(p, v))) for p in topo.members.get(gid, ()))
        memo[(gid, v)] = out
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
        ctx.flow(sg_table, 300, go, {R.FLAGS_FIELD: R.flags_match(on=(R.REMOTE_OUT,))})
    ctx.flow(sg_table, 210, [], {"ct_state": (INV | TRK, INV | TRK)})
    ctx.flow(sg_table, 200, go, {"ct_state": (EST | TRK, EST | INV | TRK)})
    ctx.flow(sg_table, 200, go, {"ct_state": (REL | TRK, REL | INV | TRK)})
    ctx.flow(sg_table, 150, go, {"eth_type": F.ETH_ARP})
    for t in (133, 134, 135, 136):  # RS, RA, NS, NA (port security already vetted them)
        nd = {"eth_type": F.ETH_IPV6, "ip_proto": F.IP_ICMPV6, "icmpv6_type": t}
        ctx.flow(sg_table, 150, go, nd)
        # Conntrack does not track neighbour discovery (it would come back +inv).
        ctx.flow(ct_table, 110, [ctx.goto(sg_table)], nd)
    if direction == "egress":
        ctx.flow(sg_table, 150, go, {"eth_type": F.ETH_IP, "ip_proto": F.IP_UDP,
                                     "udp_src": 68, "udp_dst": 67})
    else:
        ctx.flow(sg_table, 150, go, {"eth_type": F.ETH_IP, "ip_proto": F.IP_UDP,
                                     "udp_src": 67, "udp_dst": 68})


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
        if proto in ICMP.values():
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
    if proto in ICMP.values() and lo is not None:
        base["icmp_type" if proto == F.IP_ICMP else "icmpv6_type"] = lo
        if hi is not None:
            base["icmp_code" if proto == F.IP_ICMP else "icmpv6_code"] = hi
    return [base]


def _clauses(rule: dict) -> int:
    return 3 if rule.get("remote_group_id") else 2


def build_sg_port(ctx, port: dict) -> None:
    """The port's side of its groups' conjunctions (one flow per direction listing every
    rule), its conntrack entry, or a pass when port security is off."""
    topo = ctx.topo
    cookie = ctx.cookie("port", port["id"])
    secured = port_secured(port, topo.networks.get(port["network_id"]))
    ids = conj_ids(topo)
    for direction, (ct_table, sg_table, nxt, reg, _) in DIRECTIONS.items():
        key = reg.match(topo.port_key[port["id"]])
        if not secured:
            # Above the verdicts every port shares (210 and below), so the megaflows of an
            # unsecured port match neither ct_state nor the DHCP/ND fields: nothing a
            # NIC without conntrack could not carry (same outcome: it never meets ct).
            ctx.flow(sg_table, 250, [ctx.goto(nxt)], {reg.field: key}, cookie)
            continue
        if stateful(topo, port):
            for eth in ETH.values():
                ctx.flow(ct_table, 100, [A.Ct(zone=R.ZONE.sub, table=ctx.table(sg_table))],
                         {reg.field: key, "eth_type": eth}, cookie)
        conjs = {A.Conjunction(ids[r["id"]], 1, _clauses(r))
                 for g in port.get("security_groups") or () for r in topo.sg_rules.get(g, ())
                 if r["direction"] == direction}
        if conjs:
            ctx.flow(sg_table, RULE_PRIORITY, sorted(conjs, key=lambda c: c.conj_id),
                     {reg.field: key})


def build_sg_group(ctx, gid: str) -> None:
    """A group's rules: each rule's own clause (protocol, ports, prefix; +new when stateful)
    and what its conjunction does when all clauses hold."""
    topo = ctx.topo
    group = topo.security_groups[gid]
    is_stateful = group.get("stateful", True)
    ids = conj_ids(topo)
    for rule in topo.sg_rules[gid]:
        direction = rule["direction"]
        _, sg_table, nxt, _, _ = DIRECTIONS[direction]
        cid, n = ids[rule["id"]], _clauses(rule)
        ct = {"ct_state": (NEW | TRK, NEW | TRK | EST | REL | INV)} if is_stateful else {}
        for m in rule_matches(rule, direction):
            ctx.flow(sg_table, RULE_PRIORITY, [A.Conjunction(cid, 2, n)], {**m, **ct})
        accept = ([R.set_flags(R.COMMIT)] if is_stateful else []) + [ctx.goto(nxt)]
        ctx.flow(sg_table, RULE_PRIORITY, accept, {"conj_id": cid},
                 ctx.cookie("security_group_rule", rule["id"]))


def build_sg_members(ctx, direction: str, eth: str, cids: list[int], members: tuple) -> None:
    """The remote group's side: each member address completes the conjunctions of every
    local rule that names the group."""
    _, sg_table, _, _, peer = DIRECTIONS[direction]
    fld = f"ip_{peer}" if eth == "IPv4" else f"ipv6_{peer}"
    acts = [A.Conjunction(c, 3, 3) for c in cids]
    for _, ips in members:
        for ip in ips:
            ctx.flow(sg_table, RULE_PRIORITY, acts, {"eth_type": ETH[eth], fld: ip_value(ip)})


def build_commit(ctx) -> None:
    """Commit what a security group accepted, in the zone of the network it is in now."""
    on = R.flags_match(on=(R.COMMIT,))
    for eth in ETH.values():
        ctx.flow("commit", 100, [A.Ct(commit=True, zone=R.ZONE.sub), R.clear_flags(R.COMMIT),
                                 ctx.goto("qos_ingress")], {R.FLAGS_FIELD: on, "eth_type": eth})
