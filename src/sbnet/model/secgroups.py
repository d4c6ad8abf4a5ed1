"""Security group rules: protocol names, port range rules, duplicates and the default rule sets."""

from __future__ import annotations

import ipaddress

from sbnet.model.errors import BadRequest, Conflict

# Neutron's IP_PROTOCOL_MAP (neutron_lib.constants).
PROTOCOLS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "hopopt": 0, "icmp": 1, "igmp": 2,
    "ip": 0, "ipip": 4, "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "icmpv6": 58,
    "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43, "ospf": 89, "pgm": 113, "rsvp": 46,
    "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
PORT_PROTOCOLS = {6, 17, 33, 132, 136}  # protocols whose rules may carry port ranges
ICMP_PROTOCOLS = {1, 58}


def protocol_number(protocol: str | None) -> int | None:
    """The IP protocol number of a rule's protocol (name or number); None means any."""
    if protocol is None or protocol == "any":
        return None
    p = protocol.lower()
    if p in PROTOCOLS:
        return PROTOCOLS[p]
    if p.isdigit() and 0 <= int(p) <= 255:
        return int(p)
    raise BadRequest(f"Security group rule protocol {protocol} not supported. Only protocol values "
                     f"{sorted(PROTOCOLS) + [None]} and integer representations [0 to 255] are "
                     "supported.", type_name="SecurityGroupRuleInvalidProtocol")


IPV6_ICMP_LEGACY = ("icmp", "icmpv6")  # names Neutron rewrites to ipv6-icmp on IPv6 rules
IPV6_ICMP_NAMES = ("ipv6-icmp", "icmpv6")


def check_rule(rule: dict) -> dict:
    """Validate a new rule; returns it with protocol and prefix normalised as Neutron stores them."""
    if isinstance(rule.get("protocol"), int):
        rule["protocol"] = str(rule["protocol"])
    if rule.get("protocol") == "any":
        rule["protocol"] = None
    if rule["ethertype"] == "IPv6" and rule.get("protocol") in IPV6_ICMP_LEGACY:
        rule["protocol"] = "ipv6-icmp"
    proto = protocol_number(rule.get("protocol"))
    lo, hi = rule.get("port_range_min"), rule.get("port_range_max")
    if rule.get("remote_ip_prefix") and rule.get("remote_group_id"):
        raise BadRequest("Only remote_ip_prefix or remote_group_id may be provided.",
                         type_name="SecurityGroupRemoteGroupAndRemoteIpPrefix")
    prefix = rule.get("remote_ip_prefix")
    if prefix:
        version = ipaddress.ip_network(prefix).version
        if f"IPv{version}" != rule["ethertype"]:
            raise BadRequest(f"Conflicting value ethertype {rule['ethertype']} for CIDR {prefix}",
                             type_name="SecurityGroupRuleParameterConflict")
    if rule["ethertype"] == "IPv4" and rule.get("protocol") in IPV6_ICMP_NAMES:
        raise BadRequest(f"Ethertype IPv4 is not supported by protocol {rule['protocol']}.",
                         type_name="SecurityGroupEthertypeConflictWithProtocol")
    if lo is None and hi is None:
        return rule
    if proto is None:
        raise BadRequest("Must also specify protocol if port range is given.",
                         type_name="SecurityGroupProtocolRequiredWithPorts")
    if proto in PORT_PROTOCOLS:
        if lo == 0 or hi == 0:
            raise BadRequest("Invalid value for port 0", type_name="SecurityGroupInvalidPortValue")
        if lo is None or hi is None or lo > hi:
            raise BadRequest("For TCP/UDP protocols, port_range_min must be <= port_range_max",
                             type_name="SecurityGroupInvalidPortRange")
    elif proto in ICMP_PROTOCOLS:
        for field, attr, value in (("type", "port_range_min", lo), ("code", "port_range_max", hi)):
            if value is not None and not 0 <= value <= 255:
                raise BadRequest(f"Invalid value for ICMP {field} ({attr}) {value}. It must be 0 "
                                 "to 255.", type_name="SecurityGroupInvalidIcmpValue")
        if lo is None:
            raise BadRequest(f"ICMP code (port-range-max) {hi} is provided but ICMP type "
                             "(port-range-min) is missing.", type_name="SecurityGroupMissingIcmpType")
    else:
        raise BadRequest(f"Invalid protocol {rule['protocol']} for port range, only supported for "
                         "TCP, UDP, UDPLITE, SCTP and DCCP",
                         type_name="SecurityGroupInvalidProtocolForPortRange")
    return rule


def _key(rule: dict) -> tuple:
    return (rule["direction"], rule["ethertype"], protocol_number(rule.get("protocol")),
            rule.get("port_range_min"), rule.get("port_range_max"), rule.get("remote_ip_prefix"),
            rule.get("remote_group_id"))


def check_duplicate(rule: dict, existing: list[dict]) -> None:
    for other in existing:
        if _key(other) == _key(rule):
            raise Conflict(f"Security group rule already exists. Rule id is {other['id']}.",
                           type_name="SecurityGroupRuleExists")


def default_rules(group_id: str, is_default: bool) -> list[dict]:
    """Neutron's rules for a new group: all egress; the default group also admits its members."""
    rules = []
    for ethertype in ("IPv4", "IPv6"):
        rules.append({"direction": "egress", "ethertype": ethertype, "remote_group_id": None})
        if is_default:
            rules.append({"direction": "ingress", "ethertype": ethertype, "remote_group_id": group_id})
    for r in rules:
        r.update(protocol=None, port_range_min=None, port_range_max=None, remote_ip_prefix=None,
                 remote_address_group_id=None, description="", security_group_id=group_id)
    return rules
