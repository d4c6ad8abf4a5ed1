"""Human-readable megaflows: a key and mask printed with the field names OVS uses."""

from __future__ import annotations

from sbnet.flows import fields as F

S = F.SLOT_INDEX


def _l4_names(et: int, proto: int) -> tuple[str, str] | None:
    if et == F.ETH_IP and proto == F.IP_ICMP:
        return "icmp_type", "icmp_code"
    if et == F.ETH_IPV6 and proto == F.IP_ICMPV6:
        return "icmpv6_type", "icmpv6_code"
    l4 = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}.get(proto)
    return (f"{l4}_src", f"{l4}_dst") if l4 else None


def megaflow_fields(key, wc) -> list[tuple[str, int, int]]:
    """(field, value, mask) for every field the mask touches, named for the packet's protocol."""
    et = int(key[S["eth_type"]])
    proto = int(key[S["nw_proto"]])
    names = ["recirc_id", "ct_state", "ct_zone", "ct_mark", "ct_label", "in_port",
             "eth_src", "eth_dst", "eth_type", "vlan_tci"]
    if et == F.ETH_IP:
        names += ["ip_src", "ip_dst", "ip_proto", "nw_tos", "ip_ttl", "ip_frag"]
    elif et == F.ETH_IPV6:
        names += ["ipv6_src", "ipv6_dst", "ipv6_label", "ip_proto", "nw_tos", "ip_ttl", "ip_frag"]
    elif et in (F.ETH_ARP, F.ETH_RARP):
        names += ["arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"]
    elif et in (F.ETH_MPLS, F.ETH_MPLS_MC):
        names += ["mpls_label", "mpls_tc", "mpls_bos", "mpls_ttl"]
    if et in (F.ETH_IP, F.ETH_IPV6):
        l4 = _l4_names(et, proto)
        if l4:
            names += list(l4)
        if proto == F.IP_TCP:
            names.append("tcp_flags")
        if et == F.ETH_IPV6 and proto == F.IP_ICMPV6:
            names += ["nd_target", "nd_sll", "nd_tll", "nd_reserved", "nd_options_type"]
    names += ["pkt_mark", "dp_hash"]
    out = []
    for name in names:
        fld = F.lookup(name)
        mask = fld.read(wc)      # the field's bits of the mask, as read from a key
        if mask:
            out.append((name, fld.read(key) & mask, mask))
    return out


def megaflow_text(key, wc) -> str:
    parts = []
    for name, value, mask in megaflow_fields(key, wc):
        fld = F.lookup(name)
        parts.append(f"{name}={F.format_value(fld, value, None if mask == fld.max else mask)}")
    return ",".join(parts)
