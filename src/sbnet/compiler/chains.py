"""Stages chain_classify and chain_forward: port chains (networking-sfc) steered with NSH."""

# Design, in short (the tests in tests/compiler/test_chains.py show it on packets):
# - A chain's service path id (SPI) is its chain_id; the service index (SI) starts at 255
#   and every service function decrements it, so (SPI, SI) names the next group everywhere.
# - Correlation: between hosts and hops a chain always travels as NSH, which has room for
#   the context (network, source port, bucket) the chain needs to end on another host.
#   What a service function sees follows networking-sfc: a pair without correlation is
#   NSH-unaware and gets the plain frame; an aware one gets its chain's correlation, NSH
#   (asked for, or none given) or MPLS (networking-sfc's default, which the API fills in):
#   the original frame plus a label SPI << 8 | SI whose TC bits carry the flow's bucket.
# - The classifier runs on the source port's host after its egress security groups.  It
#   picks one of BUCKETS flow-hash buckets once per flow (a select group hashing the
#   5-tuple) and NSH carries it in nsh_c4; every group maps buckets to its port pairs, so a
#   flow takes the same pair at each group, on every host, without rehashing NSH frames
#   (whose outer headers are the same for every flow of the chain).
# - The other context headers remember where the packet came from, for the end of the
#   chain: nsh_c1 the network key, nsh_c2 the logical source port, nsh_c3 the ct zone.
#   What an unaware or MPLS SF returns is encapsulated again as coming from its egress
#   port (that port's network; the same 5-tuple hashes to the same bucket).
# - Hops between hosts travel in the SF ingress port's network (its tunnel or VLAN) as
#   Ethernet + NSH frames addressed to the SF's MAC; they enter chain_forward directly,
#   so neither anti-spoofing nor the SF ports' security groups see the NSH frames.
# - Symmetric chains add a way back (Plan.reverse): replies classified at the destination
#   port go through the groups in reverse, entering each SF by its egress port.
# - Two chains classifying the very same traffic from one port: the lower chain_id wins.

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from sbnet.compiler import registers as R
from sbnet.compiler.classify import VLAN_CFI, port_entry
from sbnet.compiler.compile import CompileError
from sbnet.compiler.l2 import remote_out
from sbnet.compiler.secgroups import ETH, port_ranges
from sbnet.compiler.topology import TUNNEL_OFPORTS, TUNNEL_TYPES, mac_int
from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.model.secgroups import protocol_number

SI_FIRST = 255
BUCKETS = 16
MPLS_BUCKETS = 8           # an MPLS label carries the bucket in its 3 TC bits
# A chain's select group is GROUP_BASE + SPI: above the small keys other stages allocate.
GROUP_BASE = 0x5C00_0000
HASH_FIELDS = ("ip_src", "ip_dst", "ipv6_src", "ipv6_dst", "ip_proto", "tcp_src", "tcp_dst",
               "udp_src", "udp_dst", "sctp_src", "sctp_dst")
_L4_FIELD = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}


@dataclass(frozen=True)
class Pair:
    ingress: dict
    egress: dict
    weight: int
    aware: bool            # the SF speaks its chain's correlation (its pair has one)


@dataclass(frozen=True)
class Plan:
    """A chain resolved against the model: its SPI and its groups' pairs, in order."""

    chain: dict
    spi: int
    groups: tuple[tuple[Pair, ...], ...]
    mpls: bool             # aware SFs see an MPLS label, not NSH
    ethertype: int         # what an MPLS label pops back to
    classifiers: tuple[dict, ...]

    @property
    def buckets(self) -> int:
        if self.mpls:
            return MPLS_BUCKETS
        # A single bucket when no group has a choice to make: nothing to hash.
        return BUCKETS if any(len(g) > 1 for g in self.groups) else 1

    def ports(self) -> list[dict]:
        return [p for g in self.groups for pair in g for p in (pair.ingress, pair.egress)]

    def reverse(self) -> Plan:
        """A symmetric chain's way back: its own path id (the top bit of the SPI's range),
        the groups in reverse order, each SF entered by its egress port, and classifiers
        that match replies: from the destination port to the source, ends swapped.  A
        reply's bucket is its own 5-tuple's hash (select groups hash fields in order, not
        symmetrically), so in a group of several pairs it may take another pair."""
        top = 1 << (11 if self.mpls else 23)
        groups = tuple(tuple(Pair(p.egress, p.ingress, p.weight, p.aware) for p in g)
                       for g in reversed(self.groups))
        fcs = tuple(_swapped(fc) for fc in self.classifiers if fc.get("logical_destination_port"))
        return Plan(self.chain, self.spi | top, groups, self.mpls, self.ethertype, fcs)


def build(ctx) -> None:
    topo = ctx.topo
    for chain in sorted(topo.port_chains.values(), key=lambda c: c["chain_id"]):
        with ctx.resource("port_chain", chain["id"]):
            build_chain(ctx, chain)


def build_chain(ctx, chain: dict) -> None:
    plan = chain_plan(ctx.topo, chain)
    if plan is None:
        return
    paths = [plan]
    if (chain.get("chain_parameters") or {}).get("symmetric") and not _one_armed(plan):
        paths.append(plan.reverse())
    for path in paths:
        if _involved(ctx, path):
            build_chain_classify(ctx, path)
            build_chain_forward_hops(ctx, path)
            build_chain_forward_end(ctx, path)
            build_classify_chain_entry(ctx, path)


def _one_armed(plan: Plan) -> bool:
    """An SF on one port that gets plain frames or MPLS returns them with nothing to say
    which way they go: such a chain is steered one way only."""
    return any(p.ingress["id"] == p.egress["id"] and (plan.mpls or not p.aware)
               for g in plan.groups for p in g)


def chain_plan(topo, chain: dict) -> Plan | None:
    """The chain's groups as pairs of ports; None while any piece is missing or unbound
    (a chain that cannot reach all its groups steers nothing)."""
    groups = []
    for gid in chain.get("port_pair_groups") or ():
        ppg = topo.port_pair_groups.get(gid)
        if ppg is None:
            return None
        pairs = []
        for pid in ppg.get("port_pairs") or ():
            pp = topo.port_pairs.get(pid)
            if pp is None:
                continue
            ing, eg = topo.ports.get(pp["ingress"]), topo.ports.get(pp["egress"])
            if ing is None or eg is None or not topo.host_of(ing) or not topo.host_of(eg):
                continue
            params = pp.get("service_function_parameters") or {}
            weight = int(params.get("weight", 1) or 0)
            if weight > 0:
                pairs.append(Pair(ing, eg, weight, params.get("correlation") is not None))
        if not pairs:
            return None
        groups.append(tuple(sorted(pairs, key=lambda p: p.ingress["id"])))
    spi = int(chain["chain_id"])
    mpls = (chain.get("chain_parameters") or {}).get("correlation") == "mpls"
    # An MPLS label is SPI (12 bits) and SI (8 bits); the top SPI bit is a way back's.
    if not groups or len(groups) >= SI_FIRST or spi >= 1 << (11 if mpls else 23):
        return None
    fcs = tuple(_classifiers(topo, chain))
    v6 = [fc for fc in fcs if fc.get("ethertype") == "IPv6"]
    return Plan(chain, spi, tuple(groups), mpls, ETH["IPv6" if v6 else "IPv4"], fcs)


def _swapped(fc: dict) -> dict:
    out = {**fc, "logical_source_port": fc["logical_destination_port"],
           "logical_destination_port": fc["logical_source_port"]}
    for a, b in (("source_ip_prefix", "destination_ip_prefix"),
                 ("source_port_range_min", "destination_port_range_min"),
                 ("source_port_range_max", "destination_port_range_max")):
        out[a], out[b] = fc.get(b), fc.get(a)
    return out


def _involved(ctx, plan: Plan) -> bool:
    """Hosts with a classifier's source port or a service function port take part."""
    topo = ctx.topo
    if ctx.chassis is None:
        return False
    sources = [fc["logical_source_port"] for fc in plan.classifiers]
    ports = plan.ports() + [topo.ports[s] for s in sources if s in topo.ports]
    return any(topo.host_of(p) == ctx.host for p in ports)


def _classifiers(topo, chain: dict) -> list[dict]:
    out = []
    for fid in chain.get("flow_classifiers") or ():
        fc = topo.flow_classifiers.get(fid)
        if fc is not None and fc.get("logical_source_port"):
            out.append(fc)
    return out


def classifier_matches(topo, fc: dict) -> list[dict]:
    """The matches of one flow classifier (without the source port): one per combination
    of source and destination port prefix and destination address."""
    eth = fc.get("ethertype") or "IPv4"
    v = 4 if eth == "IPv4" else 6
    base: dict = {"eth_type": ETH[eth]}
    proto = protocol_number(fc.get("protocol"))
    if proto is not None:
        base["ip_proto"] = {F.IP_ICMP: F.IP_ICMPV6}.get(proto, proto) if v == 6 else proto
    for end, peer in (("source", "src"), ("destination", "dst")):
        prefix = fc.get(f"{end}_ip_prefix")
        if prefix:
            net = ipaddress.ip_network(prefix, strict=False)
            if net.prefixlen:
                fld = f"ip_{peer}" if v == 4 else f"ipv6_{peer}"
                base[fld] = (int(net.network_address), int(net.netmask))
    out = [base]
    for end, side in (("source", "src"), ("destination", "dst")):
        lo, hi = fc.get(f"{end}_port_range_min"), fc.get(f"{end}_port_range_max")
        if proto in _L4_FIELD and (lo is not None or hi is not None):
            lo, hi = lo if lo is not None else 0, hi if hi is not None else 0xFFFF
            fld = f"{_L4_FIELD[proto]}_{side}"
            out = [{**m, fld: vm} for m in out for vm in port_ranges(lo, hi)]
    dest = topo.ports.get(fc.get("logical_destination_port") or "")
    if dest is not None:
        # Traffic to that port: its addresses, within the destination prefix if any.
        fld = "ip_dst" if v == 4 else "ipv6_dst"
        ips = [int(ipaddress.ip_address(ip)) for ip in topo.ips(dest, v)]
        out = [{**m, fld: ip} for m in out for ip in ips
               if fld not in m or ip & m[fld][1] == m[fld][0]]
    return out


def build_chain_classify(ctx, plan: Plan) -> None:
    """Matching traffic from a local source port: committed if its security group accepted
    a new connection (it leaves the network here), then into the chain's select group."""
    topo = ctx.topo
    for fc in plan.classifiers:
        src = topo.ports.get(fc["logical_source_port"])
        if src is None or topo.host_of(src) != ctx.host or src["id"] not in ctx.chassis.ofports:
            continue
        ctx.group(_entry_group(ctx, plan))
        build_chain_forward_encap(ctx, src, SI_FIRST)
        cookie = ctx.cookie("flow_classifier", fc["id"])
        inport = R.INPORT.match(topo.port_key[src["id"]])
        commit = R.flags_match(on=(R.COMMIT,))
        for m in classifier_matches(topo, fc):
            try:
                ctx.flow("chain_classify", 110,
                         [A.Ct(commit=True, zone=R.ZONE.sub), R.clear_flags(R.COMMIT),
                          R.set_flags(R.CHAINED), A.Group(GROUP_BASE | plan.spi)],
                         {**m, R.INPORT.field: inport, R.FLAGS_FIELD: commit}, cookie)
                ctx.flow("chain_classify", 100, [R.set_flags(R.CHAINED),
                                                  A.Group(GROUP_BASE | plan.spi)],
                         {**m, R.INPORT.field: inport}, cookie)
            except CompileError:
                continue    # the same traffic is already in an older chain: first chain wins


def _entry_group(ctx, plan: Plan) -> A.GroupMod:
    """One bucket per flow-hash bucket, naming the chain and the bucket in CHAIN.  The
    buckets only load and resubmit: OVS runs a bucket on the packet type the group was
    entered with and refuses encap() there."""
    fwd = A.Resubmit(table=ctx.table("chain_forward"))
    buckets = tuple(A.Bucket((R.CHAIN.load(plan.spi << 8 | k), fwd)) for k in range(plan.buckets))
    return A.GroupMod(GROUP_BASE | plan.spi, "select", buckets, selection_method="hash",
                      fields=HASH_FIELDS)


def build_chain_forward_encap(ctx, src: dict, si: int) -> None:
    """What a local source port's classifier took (or an NSH-unaware SF's egress port
    returned): encapsulated with the SPI and bucket its group chose, the SI of the next
    group and the context to restore at the end, then looked up again."""
    topo = ctx.topo
    net = src["network_id"]
    acts = [A.EncapNsh(1), A.Move(A.Subfield(R.CHAIN.field, 8, 24), A.Subfield.whole("nsh_spi")),
            A.SetField("nsh_si", si), A.SetField("nsh_c1", topo.net_key[net]),
            A.SetField("nsh_c2", topo.port_key[src["id"]]), A.SetField("nsh_c3", topo.zone[net]),
            A.Move(A.Subfield(R.CHAIN.field, 0, 8), A.Subfield("nsh_c4", 0, 8)),
            A.Encap("ethernet"), A.SetField("eth_src", mac_int(src["mac_address"])),
            A.Resubmit(table=ctx.table("chain_forward"))]
    for eth in ETH.values():
        ctx.flow("chain_forward", 100, acts,
                 {R.INPORT.field: R.INPORT.match(topo.port_key[src["id"]]), "eth_type": eth,
                  R.FLAGS_FIELD: R.flags_match(on=(R.CHAINED,))}, ctx.cookie("port", src["id"]))


def pair_of_bucket(group: tuple[Pair, ...], buckets: int) -> list[Pair]:
    """Buckets shared among a group's pairs in proportion to their weights."""
    total = sum(p.weight for p in group)
    out, acc = [], 0
    for p in group:
        acc += p.weight
        out += [p] * (round(acc * buckets / total) - len(out))
    return out or [group[0]] * buckets


def build_chain_forward_hops(ctx, plan: Plan) -> None:
    """(SPI, SI) to the next group: the pair its bucket maps to, here or on its host."""
    for i, group in enumerate(plan.groups):
        nsh = {"eth_type": F.ETH_NSH, "nsh_spi": plan.spi, "nsh_si": SI_FIRST - i}
        if len(group) == 1 and not plan.mpls:
            _to_pair(ctx, plan, group[0], nsh, SI_FIRST - i, 0)
            continue
        for k, pair in enumerate(pair_of_bucket(group, plan.buckets)):
            _to_pair(ctx, plan, pair, {**nsh, "nsh_c4": k}, SI_FIRST - i, k)


def _to_pair(ctx, plan: Plan, pair: Pair, match: dict, si: int, bucket: int) -> None:
    topo = ctx.topo
    port = pair.ingress
    host = topo.host_of(port)
    cookie = ctx.cookie("port_chain", plan.chain["id"])
    if host == ctx.host:
        if port["id"] in ctx.chassis.ofports:
            ctx.flow("chain_forward", 100, _to_local_sf(ctx, plan, pair, si, bucket, cookie),
                     match, cookie)
        return
    if host not in topo.chassis:
        return
    net = topo.networks[port["network_id"]]
    # Only what this host classified or an SF here returned goes out again: a host never
    # relays between two other hosts.
    ctx.flow("chain_forward", 100,
             [A.SetField("eth_dst", mac_int(port["mac_address"])),
              R.OUTPORT.load(topo.port_key[port["id"]]), R.NETWORK.load(topo.net_key[net["id"]]),
              *remote_out(ctx, net, host), ctx.goto("deliver")],
             {**match, R.FLAGS_FIELD: R.flags_match(off=(R.FROM_REMOTE,))}, cookie)


def _to_local_sf(ctx, plan: Plan, pair: Pair, si: int, bucket: int, cookie: int) -> list:
    """Out of a local SF's ingress port, in the encapsulation the SF understands."""
    key = ctx.topo.port_key[pair.ingress["id"]]
    out, deliver = R.OUTPORT.load(key), A.Resubmit(table=ctx.table("deliver"))
    if pair.aware and not plan.mpls:
        return [A.SetField("eth_dst", mac_int(pair.ingress["mac_address"])), out, deliver]
    if not pair.aware:
        return [out, A.Decap(), A.Decap(), deliver]     # the frame as the source sent it
    # MPLS: the label (SPI, SI) with the bucket as its traffic class, pushed once decap()
    # has recirculated (before that OVS knows no packet type to push it onto).
    label = [A.PushMpls(), A.SetMplsLabel(plan.spi << 8 | si), A.SetMplsTc(bucket), deliver]
    for eth in ETH.values():
        # Above the encapsulation of what its classifier or egress port took (reg14 and
        # CHAINED still say so): this packet has been in the chain already.
        ctx.flow("chain_forward", 110, label,
                 {R.OUTPORT.field: R.OUTPORT.match(key), "eth_type": eth,
                  R.CHAIN.field: R.CHAIN.match(plan.spi << 8 | bucket)}, cookie)
    return [out, R.CHAIN.load(plan.spi << 8 | bucket), A.Decap(), A.Decap(),
            A.Resubmit(table=ctx.table("chain_forward"))]


def build_chain_forward_end(ctx, plan: Plan) -> None:
    """After the last group: back into the network and port the packet came from (its
    NSH context), decapsulated, on to the ordinary forwarding as if it had just left."""
    match = {"eth_type": F.ETH_NSH, "nsh_spi": plan.spi, "nsh_si": SI_FIRST - len(plan.groups)}
    ctx.flow("chain_forward", 100, [
        R.NETWORK.load(0),
        A.Move(A.Subfield("nsh_c1", 0, 24), A.Subfield(R.NETWORK.field, 0, 24)),
        A.Move(A.Subfield("nsh_c2", 0, 31), A.Subfield(R.INPORT.field, 0, 31)),
        A.Move(A.Subfield("nsh_c3", 0, 16), R.ZONE.sub),
        R.clear_flags(R.FROM_REMOTE, R.REMOTE_OUT), R.set_flags(R.CHAINED),
        A.Decap(), A.Decap(), A.Resubmit(table=ctx.table("arp_responder"))],
        match, ctx.cookie("port_chain", plan.chain["id"]))


def build_classify_chain_return(ctx, plan: Plan, pair: Pair, si: int) -> None:
    """What an SF sends from its egress port continues its chain: NSH as it is; from an
    NSH-unaware SF, IP is classified again as coming from the egress port (its group
    picks the same bucket for the same 5-tuple) and encapsulated with the next SI."""
    port = pair.egress
    key = R.INPORT.match(ctx.topo.port_key[port["id"]])
    cookie = ctx.cookie("port", port["id"])
    entry = [*port_entry(ctx, port), ctx.goto("chain_forward")]
    in_port = ctx.chassis.ofports[port["id"]]
    if pair.aware and not plan.mpls:
        ctx.flow("classify", 110, entry, {"in_port": in_port, "eth_type": F.ETH_NSH}, cookie)
        return
    build_chain_forward_encap(ctx, port, si)
    if pair.aware:
        # The label's SI says the SF did its part; its TC is the flow's bucket.
        ctx.flow("classify", 110, entry, {"in_port": in_port, "eth_type": F.ETH_MPLS}, cookie)
        for k in range(plan.buckets):
            ctx.flow("chain_forward", 100,
                     [A.PopMpls(plan.ethertype), R.CHAIN.load(plan.spi << 8 | k),
                      R.set_flags(R.CHAINED), A.Resubmit(table=ctx.table("chain_forward"))],
                     {R.INPORT.field: key, "eth_type": F.ETH_MPLS, "mpls_label": plan.spi << 8 | si,
                      "mpls_tc": k}, ctx.cookie("port_chain", plan.chain["id"]))
        return
    ctx.group(_entry_group(ctx, plan))
    for eth in ETH.values():
        ctx.flow("classify", 110, entry, {"in_port": in_port, "eth_type": eth}, cookie)
        ctx.flow("chain_forward", 100, [R.set_flags(R.CHAINED), A.Group(GROUP_BASE | plan.spi)],
                 {R.INPORT.field: key, "eth_type": eth,
                  R.FLAGS_FIELD: R.flags_match(off=(R.CHAINED,))},
                 ctx.cookie("port_chain", plan.chain["id"]))


def build_classify_chain_entry(ctx, plan: Plan) -> None:
    """NSH frames enter chain_forward straight from the classify stage: from a local SF's
    egress port (in its network, as coming from it), or from the tunnel or VLAN of a
    local SF ingress port's network."""
    topo, ch = ctx.topo, ctx.chassis
    nets = set()
    for i, group in enumerate(plan.groups):
        for pair in group:
            if topo.host_of(pair.egress) == ctx.host and pair.egress["id"] in ch.ofports:
                build_classify_chain_return(ctx, plan, pair, SI_FIRST - i - 1)
            if topo.host_of(pair.ingress) == ctx.host:
                nets.add(pair.ingress["network_id"])
    for net_id in sorted(nets):
        net = topo.networks[net_id]
        kind, seg = topo.network_type(net), int(net.get("provider:segmentation_id") or 0)
        entry = [R.NETWORK.load(topo.net_key[net_id]), R.ZONE.load(topo.zone[net_id]),
                 R.set_flags(R.FROM_REMOTE), ctx.goto("chain_forward")]
        cookie = ctx.cookie("network", net_id)
        if kind in TUNNEL_TYPES:
            ctx.flow("classify", 110, entry,
                     {"in_port": TUNNEL_OFPORTS[kind], "tun_id": seg, "eth_type": F.ETH_NSH},
                     cookie)
            continue
        phys = ch.physnets.get(net.get("provider:physical_network") or "")
        if phys is None:
            continue
        if kind == "vlan":
            ctx.flow("classify", 110, [A.PopVlan(), *entry],
                     {"in_port": phys, "vlan_vid": VLAN_CFI | seg, "eth_type": F.ETH_NSH}, cookie)
        else:
            ctx.flow("classify", 110, entry,
                     {"in_port": phys, "vlan_tci": (0, VLAN_CFI), "eth_type": F.ETH_NSH}, cookie)
