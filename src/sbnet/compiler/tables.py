"""The logical pipeline every host runs, declared once: stage names, purposes, fields, next stages."""

from __future__ import annotations

from sbnet.compiler import registers as R
from sbnet.flows.pipeline import Pipeline, TableSpec

# Registers by meaning (sbnet.compiler.registers allocates them).
_INPORT, _OUTPORT, _FLAGS = R.INPORT.field, R.OUTPORT.field, R.FLAGS_FIELD
_ROUTER, _NEXTHOP, _CHAIN = R.ROUTER.field, R.NEXTHOP.field, R.CHAIN.field
_L3 = {"eth_type", "ip_proto", "ip_src", "ip_dst", "ipv6_src", "ipv6_dst", "ip_ttl"}
_L4 = {"tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst",
       "icmp_type", "icmp_code", "icmpv6_type", "icmpv6_code"}
_SG = _L3 | _L4 | {"ct_state", "conj_id", _FLAGS, _INPORT, _OUTPORT, "metadata"}
_ND = {"arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "nd_target", "nd_sll", "nd_tll",
       "icmpv6_type", "icmpv6_code"}


def _t(name: str, purpose: str, fields: set[str], next_tables: tuple[str, ...] = (),
       miss: str = "drop") -> TableSpec:
    return TableSpec(name, purpose, frozenset(fields), next_tables, miss)


# Order is packet order; table numbers are positions.  Every stage module builds flows for
# its own tables only, through Pipeline.flow, which checks them against this declaration.
PIPELINE = Pipeline((
    _t("classify", "the logical port (local VIF, trunk sub-port) or network (tunnel VNI, "
       "physical VLAN) a packet enters on; a migrating VM's announcement at its destination "
       "(RARP, gratuitous ARP or NA from its MAC) to the host agent",
       {"in_port", "vlan_tci", "vlan_vid", "tun_id", "eth_src", "eth_dst", "eth_type"}
       | _ND | _L3,
       ("port_security", "dhcp", "arp_responder", "l3_gateway", "lb_unnat", "l2_lookup",
        "chain_forward")),
    _t("port_security", "anti-spoofing: the source MAC and IPs a port may use (fixed IPs, "
       "allowed address pairs, DHCP, IPv6 link-local, ARP and ND)",
       {_INPORT, "eth_src", "ip_src", "ipv6_src", "udp_src", "udp_dst", "ip_dst",
        "ipv6_dst"} | _ND | _L3, ("dhcp",)),
    _t("dhcp", "native DHCP: a port's DHCPv4, DHCPv6, router solicitations and metadata "
       "requests go to the host agent (the slow path), tagged with the port; the agent's "
       "answers come back to that port alone",
       {_INPORT, "in_port", "eth_dst", "eth_type", "ip_proto", "udp_src", "udp_dst",
        "icmpv6_type", "ip_src", "ip_dst", "tcp_src", "tcp_dst", "arp_op", "arp_tpa"},
       ("qos_egress", "deliver"), miss="next"),
    _t("qos_egress", "bandwidth limit (meter) and DSCP marking of what a port sends",
       {_INPORT, "eth_type"}, ("egress_ct",), miss="next"),
    _t("egress_ct", "IP from ports with stateful security groups enters conntrack in the "
       "network's zone", {_INPORT, "eth_type"}, ("egress_sg",), miss="next"),
    _t("egress_sg", "egress security group rules (conjunctive: ports x rules x remote members)",
       _SG | _ND, ("chain_classify",)),
    _t("chain_classify", "port chain flow classifiers: matching traffic enters its chain",
       _SG | {_INPORT}, ("chain_forward", "arp_responder", "lb_vip"), miss="lb_vip"),
    _t("chain_forward", "steer chained traffic through the port pair groups in order",
       {_INPORT, _OUTPORT, _FLAGS, _CHAIN, "in_port", "eth_type", "nsh_spi", "nsh_si",
        "nsh_c4", "mpls_label", "mpls_tc", "metadata", "eth_dst", "dp_hash"} | _L3 | _L4,
       # chain_forward again: a packet it encapsulates looks up its first hop there.
       ("chain_forward", "l2_lookup", "deliver", "arp_responder")),
    _t("lb_vip", "load balancers (sbnet.compiler.lb): a connection to a VIP's listener "
       "enters the load balancer's conntrack zone, NAT applied to what it already knows",
       {"metadata", _FLAGS} | _L3 | _L4, ("lb_dnat", "arp_responder"), miss="arp_responder"),
    _t("lb_dnat", "established VIP connections keep their backend; a new one is committed "
       "with DNAT to the member the listener's select group picks by weight",
       {"metadata", "ct_state"} | _L3 | _L4, ("lb_post",)),
    _t("lb_post", "a DNATed frame addressed to the VIP's MAC is readdressed to the member "
       "(or to the router towards it); a member that reached itself through its VIP is "
       "SNATed to the VIP", {"metadata", "eth_dst", R.LB_LISTENER.field} | _L3,
       ("arp_responder", "l2_lookup"), miss="next"),
    _t("arp_responder", "answer ARP requests and IPv6 neighbour solicitations for known "
       "addresses on the spot", {"metadata", "eth_dst", _FLAGS} | _ND | _L3,
       ("nd_advert", "l3_gateway", "deliver"), miss="l3_gateway"),
    _t("nd_advert", "a solicitation the responder turned into an advertisement gets its "
       "target link-layer address (OpenFlow checks nd_tll against a match on an "
       "advertisement, hence a table of its own)",
       {"eth_type", "ip_proto", "icmpv6_type", "metadata", _FLAGS}, ("deliver",)),
    _t("l3_gateway", "traffic addressed to a router port's MAC enters routing; echo requests "
       "to the router's own addresses are answered",
       {"metadata", "eth_dst", _FLAGS, _INPORT} | _L3 | _L4 | _ND,
       ("l3_dnat", "l3_route", "lb_unnat", "l2_lookup", "deliver"), miss="lb_unnat"),
    _t("l3_dnat", "floating IP destination NAT", {"metadata", _ROUTER, _FLAGS, "ct_state"} | _L3,
       ("l3_route",), miss="next"),
    _t("l3_route", "longest-prefix routing between a router's subnets, static routes and its "
       "external gateway; TTL decrement; SNAT-bound traffic redirected to the gateway host",
       {_ROUTER, "metadata"} | _L3, ("l3_snat", "lb_unnat", "l2_lookup", "deliver")),
    _t("l3_snat", "SNAT to a floating IP or the router's gateway address",
       {_ROUTER, "metadata", _FLAGS, _INPORT, "ct_state"} | _L3, ("l3_neighbour",), miss="next"),
    _t("l3_neighbour", "next hop IP to MAC for routed packets (the outside world: out of the "
       "physical port)", {"metadata", _ROUTER, _NEXTHOP} | _L3,
       ("lb_unnat", "l2_lookup", "deliver")),
    _t("lb_unnat", "replies from a load balancer's members get the VIP back as their source "
       "(conntrack reverses the DNAT on the host that did it; a member's reply to itself through "
       "its VIP is un-SNATed first); on the router's gateway host, what a floating IP's DNAT "
       "routed to a VIP enters the load balancer here",
       {"metadata", "eth_dst", _FLAGS} | _L3 | _L4, ("lb_unnat", "lb_dnat", "l2_lookup"),
       miss="next"),
    _t("l2_lookup", "destination MAC to logical port; broadcast and multicast to the network's "
       "ports and hosts", {"metadata", "eth_dst", _FLAGS, "eth_type"},
       ("ingress_ct", "deliver")),
    _t("ingress_ct", "IP to ports with stateful security groups enters conntrack",
       {_OUTPORT, _FLAGS, "eth_type"}, ("ingress_sg",), miss="next"),
    _t("ingress_sg", "ingress security group rules", _SG | _ND, ("commit",)),
    _t("commit", "commit connections a security group accepted", {_FLAGS, "eth_type", _OUTPORT},
       ("qos_ingress",), miss="next"),
    _t("qos_ingress", "bandwidth limit (meter) of what a port receives", {_OUTPORT, "eth_type"},
       ("deliver",), miss="next"),
    _t("deliver", "output: local VIF, trunk sub-port VLAN, tunnel to the port's host, or the "
       "physical network", {_OUTPORT, _FLAGS, "metadata", "eth_type", "in_port"}),
))


def number(name: str) -> int:
    return PIPELINE.number(name)


def markdown() -> str:
    """The declaration as a table (docs/compiler.md is made from this, not copied by hand)."""
    rows = ["| # | stage | purpose | on miss |", "|---|---|---|---|"]
    for t in PIPELINE.tables:
        miss = {"next": "next table", "drop": "drop"}.get(t.miss, f"go to {t.miss}")
        rows.append(f"| {PIPELINE.number(t.name)} | `{t.name}` | {t.purpose} | {miss} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown())
