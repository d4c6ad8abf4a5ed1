"""Every Neutron resource sbnet serves, declared once: collection, path, attributes, error names."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.model import attrs as a
from sbnet.model.attrs import REQUIRED, Attr
from sbnet.model.dhcp_opts import to_extra_dhcp_opts

NETWORK_TYPES = ("flat", "vlan", "vxlan", "gre", "geneve")
VNIC_TYPES = ("normal", "direct", "virtio-forwarder", "macvtap", "baremetal",
              "direct-physical", "smart-nic", "vdpa", "remote-managed")
IPV6_MODES = ("slaac", "dhcpv6-stateful", "dhcpv6-stateless")
# A binding profile's "activation-strategy" (OVN's option): what the VM's announcement at the
# destination must be for that host to take the port over before Nova activates the binding.
ACTIVATION_STRATEGIES = {"rarp": ("rarp",), "garp": ("garp", "na")}


def activation_strategy(binding: dict) -> str | None:
    """The binding's activation strategy, if its profile names a known one."""
    s = (binding.get("profile") or {}).get("activation-strategy")
    return s if isinstance(s, str) and s in ACTIVATION_STRATEGIES else None
DSCP_MARKS = (0, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40, 46, 48, 56)


@dataclass(frozen=True)
class ResourceSpec:
    """One resource type: its names, URL, declared attributes and Neutron's NotFound type."""

    name: str  # member name in bodies ("network"), also the store's type key
    collection: str  # collection key in bodies ("networks")
    path: str  # URL path under /v2.0, "{parent_id}" for sub-resources
    label: str  # for messages: "Network"
    attrs: dict[str, Attr]
    tags: bool = True
    shared_attr: str | None = None  # attribute that makes a resource visible to all projects
    parent: str | None = None  # sub-resources (QoS rules) live under a parent resource
    not_found: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def not_found_type(self) -> str:
        return self.not_found or f"{self.label.replace(' ', '')}NotFound"


def _std(*attrs: Attr, desc: bool = True) -> dict[str, Attr]:
    """Neutron's standard attributes plus the resource's own, keyed by name."""
    std = [
        Attr("id", post=False, put=False),
        Attr("project_id", a.to_str(255), put=False),
        Attr("tenant_id", a.to_str(255), put=False),
        Attr("name", a.to_str(255), default=""),
        Attr("tags", a.to_tags, default=list, put=False),
        Attr("created_at", post=False, put=False),
        Attr("updated_at", post=False, put=False),
        Attr("revision_number", post=False, put=False),
    ]
    if desc:
        std.append(Attr("description", a.to_str(255), default=""))
    return {x.name: x for x in [*std, *attrs]}


def _rule(*attrs: Attr) -> dict[str, Attr]:
    """QoS rules carry only an id and their own attributes."""
    return {x.name: x for x in [Attr("id", post=False, put=False), *attrs]}


_RO = {"post": False, "put": False}

NETWORK = ResourceSpec("network", "networks", "networks", "Network", _std(
    Attr("admin_state_up", a.to_bool, default=True),
    Attr("shared", a.to_bool, default=False),
    Attr("status", **_RO),
    Attr("subnets", **_RO),
    Attr("router:external", a.to_bool, default=False),
    Attr("mtu", a.to_int(68, 9216), default=None),
    Attr("port_security_enabled", a.to_bool, default=True),
    Attr("provider:network_type", a.to_choice(*NETWORK_TYPES, nullable=True), put=False),
    Attr("provider:physical_network", a.to_str_or_none(64), put=False),
    Attr("provider:segmentation_id", a.to_int(0, 2**32 - 1, nullable=True), put=False),
    Attr("qos_policy_id", a.to_uuid_or_none),
    Attr("availability_zone_hints", a.list_of(a.to_str(255)), default=list, put=False),
    Attr("availability_zones", **_RO),
    Attr("ipv4_address_scope", **_RO),
    Attr("ipv6_address_scope", **_RO),
    Attr("l2_adjacency", **_RO),
    Attr("is_default", a.to_bool, default=False),
), shared_attr="shared")

SUBNET = ResourceSpec("subnet", "subnets", "subnets", "Subnet", _std(
    Attr("network_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("ip_version", a.to_choice(4, 6), default=4, put=False),
    Attr("cidr", a.to_cidr, default=None, put=False),  # None: allocated from the subnet pool
    Attr("gateway_ip", a.to_ip_or_none, default=""),  # "" = choose the first host
    Attr("allocation_pools", a.list_of(a.to_dict), default=None),
    Attr("enable_dhcp", a.to_bool, default=True),
    Attr("dns_nameservers", a.list_of(a.to_ip, cap="dns_nameservers"), default=list),
    Attr("host_routes", a.list_of(a.to_route, cap="host_routes"), default=list),
    Attr("ipv6_address_mode", a.to_choice(*IPV6_MODES, nullable=True), put=False),
    Attr("ipv6_ra_mode", a.to_choice(*IPV6_MODES, nullable=True), put=False),
    Attr("subnetpool_id", a.to_uuid_or_none, put=False),
    Attr("prefixlen", a.to_int(0, 128, nullable=True), put=False),  # POST only, never stored
    Attr("use_default_subnetpool", a.to_bool, default=False, put=False),  # POST only
    Attr("service_types", a.list_of(a.to_str(255)), default=list),
    Attr("segment_id", a.to_choice(None, nullable=True), put=False),
))

SUBNETPOOL = ResourceSpec("subnetpool", "subnetpools", "subnetpools", "Subnet pool", _std(
    Attr("prefixes", a.list_of(a.to_cidr), default=REQUIRED),
    Attr("ip_version", **_RO),
    Attr("default_prefixlen", a.to_int(0, 128, nullable=True)),
    Attr("min_prefixlen", a.to_int(0, 128, nullable=True)),
    Attr("max_prefixlen", a.to_int(0, 128, nullable=True)),
    Attr("default_quota", a.to_int(0, 2**31 - 1, nullable=True)),
    Attr("shared", a.to_bool, default=False, put=False),
    Attr("is_default", a.to_bool, default=False),
    Attr("address_scope_id", a.to_uuid_or_none),
), shared_attr="shared", not_found="SubnetPoolNotFound")

ADDRESS_SCOPE = ResourceSpec("address_scope", "address_scopes", "address-scopes", "Address scope", {
    x.name: x for x in (
        Attr("id", post=False, put=False),
        Attr("project_id", a.to_str(255), put=False),
        Attr("tenant_id", a.to_str(255), put=False),
        Attr("name", a.to_str(255), default=""),
        Attr("shared", a.to_bool, default=False),
        Attr("ip_version", a.to_choice(4, 6), default=REQUIRED, put=False),
    )}, tags=False, shared_attr="shared", not_found="AddressScopeNotFound")

PORT = ResourceSpec("port", "ports", "ports", "Port", _std(
    Attr("network_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("admin_state_up", a.to_bool, default=True),
    Attr("mac_address", a.to_mac, default=None),
    Attr("fixed_ips", a.list_of(a.to_dict, cap="fixed_ips"), default=None),
    Attr("device_id", a.to_str(255), default=""),
    Attr("device_owner", a.to_str(255), default=""),
    Attr("binding:host_id", a.to_str(255), default=""),
    Attr("binding:vnic_type", a.to_choice(*VNIC_TYPES), default="normal"),
    Attr("binding:vif_type", post=False, put=False),
    Attr("binding:vif_details", post=False, put=False),
    Attr("binding:profile", a.to_dict_or_none, default=dict),
    Attr("status", **_RO),
    Attr("port_security_enabled", a.to_bool, default=None),
    Attr("allowed_address_pairs", a.list_of(a.to_dict, cap="address_pairs"), default=list),
    Attr("security_groups", a.to_uuid_list, default=None),
    Attr("qos_policy_id", a.to_uuid_or_none),
    Attr("ip_allocation", **_RO),
    Attr("extra_dhcp_opts", to_extra_dhcp_opts, default=list,
         schema={"type": "array", "items": {"type": "object"}}),
    Attr("trunk_details", **_RO),
))

SECURITY_GROUP = ResourceSpec("security_group", "security_groups", "security-groups",
                              "Security group", _std(
    Attr("stateful", a.to_bool, default=True),
    Attr("security_group_rules", **_RO),
    Attr("shared", **_RO),
), not_found="SecurityGroupNotFound")

SECURITY_GROUP_RULE = ResourceSpec("security_group_rule", "security_group_rules",
                                   "security-group-rules", "Security group rule", _std(
    Attr("security_group_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("direction", a.to_choice("ingress", "egress"), default=REQUIRED, put=False),
    Attr("ethertype", a.to_choice("IPv4", "IPv6"), default="IPv4", put=False),
    Attr("protocol", a.to_protocol_or_none, put=False),
    Attr("port_range_min", a.to_port_or_none, put=False),
    Attr("port_range_max", a.to_port_or_none, put=False),
    Attr("remote_ip_prefix", a.to_prefix_or_none, put=False),
    # Any string: an unknown group (even a malformed id) is SecurityGroupNotFound, as in Neutron.
    Attr("remote_group_id", a.to_str_or_none(255), put=False),
    Attr("remote_address_group_id", a.to_choice(None, nullable=True), put=False),
    Attr("normalized_cidr", **_RO),
    Attr("belongs_to_default_sg", **_RO),
), tags=False, not_found="SecurityGroupRuleNotFound")

ROUTER = ResourceSpec("router", "routers", "routers", "Router", _std(
    Attr("admin_state_up", a.to_bool, default=True),
    Attr("status", **_RO),
    Attr("external_gateway_info", a.to_dict_or_none),
    Attr("routes", a.to_list_or_null(a.to_route, cap="routes"), default=list, post=False),
    Attr("distributed", a.to_bool, default=False),
    Attr("ha", a.to_bool, default=False),
    Attr("availability_zone_hints", a.list_of(a.to_str(255)), default=list, put=False),
    Attr("availability_zones", **_RO),
    Attr("flavor_id", a.to_choice(None, nullable=True), put=False),
))

FLOATING_IP = ResourceSpec("floatingip", "floatingips", "floatingips", "Floating IP", _std(
    Attr("floating_network_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("floating_ip_address", a.to_ip_or_none, put=False),
    Attr("subnet_id", a.to_uuid_or_none, put=False),
    Attr("port_id", a.to_uuid_or_none),
    Attr("fixed_ip_address", a.to_ip_or_none),
    Attr("router_id", **_RO),
    Attr("status", **_RO),
    Attr("qos_policy_id", a.to_uuid_or_none),
    Attr("port_details", **_RO),
    Attr("port_forwardings", **_RO),
), not_found="FloatingIPNotFound")
# Rules carry neither name nor tags; floating IPs carry no name.
SECURITY_GROUP_RULE.attrs.pop("name")
SECURITY_GROUP_RULE.attrs.pop("tags")
FLOATING_IP.attrs.pop("name")

QOS_POLICY = ResourceSpec("policy", "policies", "qos/policies", "QoS policy", _std(
    Attr("shared", a.to_bool, default=False),
    Attr("is_default", a.to_bool, default=False),
    Attr("rules", **_RO),
), shared_attr="shared", not_found="QosPolicyNotFound")

_DIRECTION = a.to_choice("egress", "ingress")
QOS_BANDWIDTH_LIMIT_RULE = ResourceSpec(
    "bandwidth_limit_rule", "bandwidth_limit_rules",
    "qos/policies/{parent_id}/bandwidth_limit_rules", "QoS rule", _rule(
        Attr("max_kbps", a.to_int(0, 2**31 - 1), default=REQUIRED),
        Attr("max_burst_kbps", a.to_int(0, 2**31 - 1), default=0),
        Attr("direction", _DIRECTION, default="egress"),
    ), tags=False, parent="policy", not_found="QosRuleNotFound")
QOS_DSCP_MARKING_RULE = ResourceSpec(
    "dscp_marking_rule", "dscp_marking_rules",
    "qos/policies/{parent_id}/dscp_marking_rules", "QoS rule", _rule(
        Attr("dscp_mark", a.to_choice(*DSCP_MARKS), default=REQUIRED),
    ), tags=False, parent="policy", not_found="QosRuleNotFound")
QOS_MINIMUM_BANDWIDTH_RULE = ResourceSpec(
    "minimum_bandwidth_rule", "minimum_bandwidth_rules",
    "qos/policies/{parent_id}/minimum_bandwidth_rules", "QoS rule", _rule(
        Attr("min_kbps", a.to_int(0, 2**31 - 1), default=REQUIRED),
        Attr("direction", _DIRECTION, default="egress"),
    ), tags=False, parent="policy", not_found="QosRuleNotFound")

TRUNK = ResourceSpec("trunk", "trunks", "trunks", "Trunk", _std(
    Attr("port_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("admin_state_up", a.to_bool, default=True),
    Attr("status", **_RO),
    Attr("sub_ports", a.list_of(a.to_dict), default=list, put=False),
))

_SFC_STD = {"tags": False}
PORT_PAIR = ResourceSpec("port_pair", "port_pairs", "sfc/port_pairs", "Port Pair", _std(
    Attr("ingress", a.to_uuid, default=REQUIRED, put=False),
    Attr("egress", a.to_uuid, default=REQUIRED, put=False),
    Attr("service_function_parameters", a.to_dict, default=dict, put=False),
), **_SFC_STD)
PORT_PAIR_GROUP = ResourceSpec("port_pair_group", "port_pair_groups", "sfc/port_pair_groups",
                               "Port Pair Group", _std(
    Attr("port_pairs", a.to_uuid_list, default=list),
    Attr("port_pair_group_parameters", a.to_dict, default=dict, put=False),
    Attr("tap_enabled", a.to_bool, default=False, put=False),
    Attr("group_id", **_RO),
), **_SFC_STD)
FLOW_CLASSIFIER = ResourceSpec("flow_classifier", "flow_classifiers", "sfc/flow_classifiers",
                               "Flow Classifier", _std(
    Attr("ethertype", a.to_choice("IPv4", "IPv6"), default="IPv4", put=False),
    Attr("protocol", a.to_str_or_none(40), put=False),
    Attr("source_port_range_min", a.to_int(0, 65535, nullable=True), put=False),
    Attr("source_port_range_max", a.to_int(0, 65535, nullable=True), put=False),
    Attr("destination_port_range_min", a.to_int(0, 65535, nullable=True), put=False),
    Attr("destination_port_range_max", a.to_int(0, 65535, nullable=True), put=False),
    Attr("source_ip_prefix", a.to_prefix_or_none, put=False),
    Attr("destination_ip_prefix", a.to_prefix_or_none, put=False),
    Attr("logical_source_port", a.to_uuid_or_none, put=False),
    Attr("logical_destination_port", a.to_uuid_or_none, put=False),
    Attr("l7_parameters", a.to_dict, default=dict, put=False),
), **_SFC_STD)
PORT_CHAIN = ResourceSpec("port_chain", "port_chains", "sfc/port_chains", "Port Chain", _std(
    Attr("port_pair_groups", a.to_uuid_list, default=REQUIRED),
    Attr("flow_classifiers", a.to_uuid_list, default=list),
    Attr("chain_parameters", a.to_dict, default=dict, put=False),
    Attr("chain_id", a.to_int(0, 2**24 - 1), default=0, put=False),
), **_SFC_STD)

RBAC_POLICY = ResourceSpec("rbac_policy", "rbac_policies", "rbac-policies", "RBAC policy", {
    x.name: x for x in (
        Attr("id", post=False, put=False),
        Attr("project_id", a.to_str(255), put=False),
        Attr("tenant_id", a.to_str(255), put=False),
        Attr("object_type", a.to_choice("network", "qos_policy"), default=REQUIRED, put=False),
        Attr("object_id", a.to_uuid, default=REQUIRED, put=False),
        Attr("action", a.to_choice("access_as_shared", "access_as_external"), default=REQUIRED,
             put=False),
        Attr("target_tenant", a.to_str(255), default=REQUIRED),
    )}, tags=False, not_found="RbacPolicyNotFound")

ALL = (NETWORK, SUBNET, SUBNETPOOL, ADDRESS_SCOPE, PORT, SECURITY_GROUP, SECURITY_GROUP_RULE, ROUTER, FLOATING_IP,
       QOS_POLICY, QOS_BANDWIDTH_LIMIT_RULE, QOS_DSCP_MARKING_RULE, QOS_MINIMUM_BANDWIDTH_RULE,
       TRUNK, PORT_PAIR, PORT_PAIR_GROUP, FLOW_CLASSIFIER, PORT_CHAIN, RBAC_POLICY)
BY_NAME = {s.name: s for s in ALL}
QOS_RULES = (QOS_BANDWIDTH_LIMIT_RULE, QOS_DSCP_MARKING_RULE, QOS_MINIMUM_BANDWIDTH_RULE)
