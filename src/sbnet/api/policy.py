"""Neutron's default policy, declared once as a table and enforced on create, update, fields and filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

from sbnet.api.context import Context
from sbnet.model.errors import Forbidden

# Who may (Neutron's check strings, by name):
ADMIN = "admin"            # role:admin
SERVICE = "service"        # role:service (agents, advsvc)
MEMBER = "member"          # a member of the resource's project (PROJECT_MEMBER)
READER = "reader"          # any role in the resource's project (PROJECT_READER)
NET_OWNER = "net_owner"    # a member of the project owning the port's network (RULE_NET_OWNER)
SHARED = "shared"          # the network is shared (rule:shared)
ANY = "any"

PRINCIPALS = (ADMIN, SERVICE, MEMBER, READER, NET_OWNER, SHARED, ANY)
# Resources with rules here but no declared ResourceSpec (their module validates them).
SUB_RESOURCES = ("port_binding",)


def _always(_value: Any) -> bool:
    return True


def _network_owner(value: Any) -> bool:
    """Neutron's rule:network_device, field:port:device_owner=~^network:"""
    return isinstance(value, str) and value.startswith("network:")


def _any_entry_has(key: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and any(isinstance(e, dict) and e.get(key) is not None
                                                 for e in v)


def _wildcard(value: Any) -> bool:
    return value == "*"


def _has_key(key: str) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, dict) and key in v


@dataclass(frozen=True)
class Rule:
    """One line of the policy: `resource`'s `action` (create, update, delete, get) on
    `attr` (None: the action itself) is allowed to any of `allow`, for values where
    `applies` holds (Neutron's 'not rule:network_device or ...' is a rule that applies
    to network:* owners only)."""

    resource: str
    action: str
    attr: str | None
    allow: tuple[str, ...]
    applies: Callable[[Any], bool] = _always

    @property
    def name(self) -> str:
        return f"{self.action}_{self.resource}" + (f":{self.attr}" if self.attr else "")


def _r(resource: str, action: str, attr: str | None, *allow: str, applies=_always) -> Rule:
    return Rule(resource, action, attr, allow, applies)


_A, _S, _M, _R, _N = ADMIN, SERVICE, MEMBER, READER, NET_OWNER

# From neutron/conf/policies/*.py (2023.2 and later defaults). `attr` may name a part of a
# value ("fixed_ips:ip_address"), checked when the request's value has that part.
RULES: tuple[Rule, ...] = (
    # networks (network.py)
    *(_r("network", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("network", "get", None, _A, _R, SHARED),
    *(_r("network", act, attr, _A) for act in ("create", "update")
      for attr in ("shared", "router:external", "is_default", "provider:network_type",
                   "provider:physical_network", "provider:segmentation_id")),
    *(_r("network", "get", attr, _A) for attr in (
        "provider:network_type", "provider:physical_network", "provider:segmentation_id")),
    # subnets (subnet.py): members of the network's project, on their network
    *(_r("subnet", act, None, _A, _M, _N) for act in ("create", "update", "delete")),
    _r("subnet", "get", None, _A, _R, SHARED),
    *(_r("subnet", act, attr, _A) for act in ("create", "update")
      for attr in ("segment_id", "service_types")),
    # subnet pools (subnetpool.py)
    *(_r("subnetpool", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("subnetpool", "get", None, _A, _R, SHARED),
    *(_r("subnetpool", act, "is_default", _A) for act in ("create", "update")),
    _r("subnetpool", "create", "shared", _A),
    # address scopes (address_scope.py)
    *(_r("address_scope", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("address_scope", "get", None, _A, _R, SHARED),
    *(_r("address_scope", act, "shared", _A) for act in ("create", "update")),
    # ports (port.py)
    _r("port", "create", None, _A, _M),
    _r("port", "create", "device_owner", _A, _S, _N, applies=_network_owner),
    _r("port", "create", "mac_address", _A, _S, _N),
    _r("port", "create", "fixed_ips", _A, _S, _N, SHARED),
    _r("port", "create", "fixed_ips:ip_address", _A, _S, _N, applies=_any_entry_has("ip_address")),
    _r("port", "create", "fixed_ips:subnet_id", _A, _S, _N, SHARED,
       applies=_any_entry_has("subnet_id")),
    _r("port", "create", "port_security_enabled", _A, _S, _N),
    _r("port", "create", "binding:host_id", _A),
    _r("port", "create", "binding:profile", _A),
    _r("port", "create", "binding:vnic_type", _A, _M),
    _r("port", "create", "allowed_address_pairs", _A, _N),
    _r("port", "get", None, _A, _S, _R),
    *(_r("port", "get", attr, _A) for attr in (
        "binding:vif_type", "binding:vif_details", "binding:host_id", "binding:profile")),
    _r("port", "update", None, _A, _M, _S),
    _r("port", "update", "device_owner", _A, _S, _N, applies=_network_owner),
    _r("port", "update", "mac_address", _A, _S),
    _r("port", "update", "fixed_ips", _A, _S, _N),
    _r("port", "update", "fixed_ips:ip_address", _A, _S, _N, applies=_any_entry_has("ip_address")),
    _r("port", "update", "fixed_ips:subnet_id", _A, _S, _N, SHARED,
       applies=_any_entry_has("subnet_id")),
    _r("port", "update", "port_security_enabled", _A, _S, _N),
    _r("port", "update", "binding:host_id", _A),
    _r("port", "update", "binding:profile", _A),
    _r("port", "update", "binding:vnic_type", _A, _M, _S),
    _r("port", "update", "allowed_address_pairs", _A, _N),
    _r("port", "delete", None, _A, _S, _M, _N),
    # port bindings (port_bindings.py): reading is the operator's or a service's; creating,
    # updating, activating and deleting are Nova's (the service role) alone
    _r("port_binding", "get", None, _A, _S),
    *(_r("port_binding", act, None, _S) for act in ("create", "update", "activate", "delete")),
    # security groups (security_group.py)
    *(_r("security_group", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("security_group", "get", None, _A, _R),
    *(_r("security_group_rule", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("security_group_rule", "get", None, _A, _R),
    # routers (router.py)
    *(_r("router", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("router", "get", None, _A, _R),
    *(_r("router", act, attr, _A) for act in ("create", "update") for attr in ("distributed", "ha")),
    *(_r("router", act, "external_gateway_info", _A, _M) for act in ("create", "update")),
    *(_r("router", act, "external_gateway_info:network_id", _A, _M,
         applies=_has_key("network_id")) for act in ("create", "update")),
    *(_r("router", act, "external_gateway_info:enable_snat", _A,
         applies=_has_key("enable_snat")) for act in ("create", "update")),
    *(_r("router", act, "external_gateway_info:external_fixed_ips", _A,
         applies=_has_key("external_fixed_ips")) for act in ("create", "update")),
    *(_r("router", "get", attr, _A) for attr in ("distributed", "ha")),
    # floating IPs (floatingip.py)
    *(_r("floatingip", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("floatingip", "create", "floating_ip_address", _A),
    _r("floatingip", "get", None, _A, _R),
    # QoS (qos.py): policies and their rules are the operator's; projects use shared ones
    *(_r(res, act, None, _A) for act in ("create", "update", "delete")
      for res in ("policy", "bandwidth_limit_rule", "dscp_marking_rule", "minimum_bandwidth_rule")),
    _r("policy", "get", None, _A, _R, SHARED),
    # trunks (trunk.py)
    *(_r("trunk", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("trunk", "get", None, _A, _R),
    # RBAC policies (rbac.py): the owner of an object shares it; sharing with everyone ("*")
    # is the operator's (rule:restrict_wildcard)
    *(_r("rbac_policy", act, None, _A, _M) for act in ("create", "update", "delete")),
    _r("rbac_policy", "get", None, _A, _R),
    *(_r("rbac_policy", act, "target_tenant", _A, applies=_wildcard) for act in ("create", "update")),
    # service function chains (networking-sfc: admin or owner)
    *(_r(res, act, None, _A, _M) for act in ("create", "update", "delete")
      for res in ("port_pair", "port_pair_group", "flow_classifier", "port_chain")),
)

_BY_KEY: dict[tuple[str, str, str | None], list[Rule]] = {}
for _rule in RULES:
    _BY_KEY.setdefault((_rule.resource, _rule.action, _rule.attr), []).append(_rule)


def rules_for(resource: str, action: str) -> list[Rule]:
    """Every rule of one resource and action (the action's own rule first)."""
    return [r for r in RULES if r.resource == resource and r.action == action]


@dataclass(frozen=True)
class Target:
    """What a check needs about the resource: its project, its network's owner, and whether
    that network is shared with the caller (or a function that finds out, asked only when a
    rule needs it)."""

    project_id: str | None
    net_project: str | None = None
    net_shared: bool | Callable[[], bool] = False

    def shared(self) -> bool:
        return self.net_shared() if callable(self.net_shared) else self.net_shared


def holds(ctx: Context, principal: str, target: Target) -> bool:
    """Whether `ctx` is `principal` for `target` (roles as Keystone implies them:
    admin > member > reader)."""
    if principal == ANY:
        return True
    if principal == ADMIN:
        return ctx.is_admin
    if principal == SERVICE:
        return ctx.is_service
    if principal == MEMBER:
        return ctx.is_member and ctx.project_id == target.project_id
    if principal == READER:
        return ctx.is_reader and ctx.project_id == target.project_id
    if principal == NET_OWNER:
        return ctx.is_member and target.net_project is not None \
            and ctx.project_id == target.net_project
    if principal == SHARED:
        return target.shared()
    raise ValueError(f"unknown principal {principal}")


def allowed(ctx: Context, rule: Rule, target: Target) -> bool:
    return any(holds(ctx, p, target) for p in rule.allow)


def _deny(resource: str, action: str, rule: Rule | None) -> Forbidden:
    base = f"rule:{action}_{resource}"
    text = f"({base} and rule:{rule.name})" if rule is not None and rule.attr else f"({base})"
    return Forbidden(f"{text} is disallowed by policy", type_name="PolicyNotAuthorized")


def _value(body: dict, attr: str) -> tuple[bool, Any]:
    head = attr.split(":", 1)[0] if attr not in body else attr
    if head not in body:
        return False, None
    return True, body[head]


def enforce(ctx: Context, resource: str, action: str, target: Target,
            given: dict | None = None) -> None:
    """Refuse (403) unless the action is allowed and so is every attribute in `given`
    (the attributes the request set explicitly, with their values)."""
    own = _BY_KEY.get((resource, action, None), ())
    if own and not all(allowed(ctx, r, target) for r in own):
        raise _deny(resource, action, own[0])
    if not given:
        return
    for rule in _ATTR_RULES.get((resource, action), ()):
        present, value = _value(given, rule.attr)
        if present and rule.applies(value) and not allowed(ctx, rule, target):
            raise _deny(resource, action, rule)


def hidden(ctx: Context, resource: str, target: Target) -> frozenset[str]:
    """Attributes of a resource the caller may not see (nor filter or sort on)."""
    return frozenset(r.attr for r in _GET_ATTRS.get(resource, ())
                     if not allowed(ctx, r, target))


_GET_ATTRS: dict[str, list[Rule]] = {}
_ATTR_RULES: dict[tuple[str, str], list[Rule]] = {}   # (resource, action) -> attribute rules
for _rule in RULES:
    if _rule.action == "get" and _rule.attr is not None:
        _GET_ATTRS.setdefault(_rule.resource, []).append(_rule)
    if _rule.attr is not None:
        _ATTR_RULES.setdefault((_rule.resource, _rule.action), []).append(_rule)


def table() -> Iterable[tuple[str, str, str, str]]:
    """The table as rows (rule name, who may, applies-to note), for docs and tests."""
    for r in RULES:
        note = "" if r.applies is _always else "when the value matches"
        yield r.name, " or ".join(r.allow), note, r.resource
