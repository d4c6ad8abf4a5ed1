"""Octavia's v2 load-balancing resources declared once: attributes, choices, quotas and statuses."""

from __future__ import annotations

from sbnet.model import attrs as a
from sbnet.model.attrs import REQUIRED, Attr
from sbnet.model.resources import ResourceSpec

PROVIDER = "sbnet"  # the one provider this API serves: flows compiled into every host's datapath
LISTENER_PROTOCOLS = ("TCP", "UDP", "SCTP", "HTTP", "HTTPS", "TERMINATED_HTTPS", "PROMETHEUS")
POOL_PROTOCOLS = ("TCP", "UDP", "SCTP", "HTTP", "HTTPS", "PROXY", "PROXYV2")
ALGORITHMS = ("ROUND_ROBIN", "LEAST_CONNECTIONS", "SOURCE_IP", "SOURCE_IP_PORT")
PERSISTENCE = ("SOURCE_IP", "HTTP_COOKIE", "APP_COOKIE")
MONITOR_TYPES = ("HTTP", "HTTPS", "PING", "TCP", "TLS-HELLO", "UDP-CONNECT", "SCTP")
HTTP_METHODS = ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE")

# What the sbnet provider compiles into flows; the rest is Octavia's but not ours (501).
SUPPORTED = {
    "listener protocol": ("TCP", "UDP", "SCTP"),
    "pool protocol": ("TCP", "UDP", "SCTP"),
    "lb_algorithm": ("ROUND_ROBIN", "SOURCE_IP", "SOURCE_IP_PORT"),
    "session_persistence type": ("SOURCE_IP",),
    "health monitor type": ("HTTP", "PING", "TCP", "UDP-CONNECT"),
}
# A listener's protocol -> the pool protocols it may forward to (Octavia's compatibility map).
POOL_FOR_LISTENER = {"TCP": ("TCP", "HTTP", "HTTPS", "PROXY", "PROXYV2"), "UDP": ("UDP",),
                     "SCTP": ("SCTP",)}
# Health monitor types a pool protocol allows (Octavia's, within what we support).
MONITORS_FOR_POOL = {"TCP": ("HTTP", "PING", "TCP"), "UDP": ("UDP-CONNECT", "PING", "HTTP", "TCP"),
                     "SCTP": ("PING", "TCP", "HTTP")}

QUOTA_NAMES = ("load_balancer", "listener", "pool", "health_monitor", "member", "l7policy", "l7rule")
QUOTA_OF = {"lb_loadbalancer": "load_balancer", "lb_listener": "listener", "lb_pool": "pool",
            "lb_healthmonitor": "health_monitor", "lb_member": "member"}


def _common(*attrs: Attr, name: bool = True) -> dict[str, Attr]:
    std = [
        Attr("id", post=False, put=False),
        Attr("project_id", a.to_str(255), put=False),
        Attr("tenant_id", a.to_str(255), put=False),
        Attr("admin_state_up", a.to_bool, default=True),
        Attr("tags", a.to_tags, default=list),
        Attr("provisioning_status", post=False, put=False),
        Attr("operating_status", post=False, put=False),
        Attr("created_at", post=False, put=False),
        Attr("updated_at", post=False, put=False),
    ]
    if name:
        std += [Attr("name", a.to_str_or_none(255), default=""),
                Attr("description", a.to_str_or_none(255), default="")]
    return {x.name: x for x in [*std, *attrs]}


_RO = {"post": False, "put": False}
_PORT = a.to_int(1, 65535)
_TIMEOUT = a.to_int(0, 31536000, nullable=True)

LOADBALANCER = ResourceSpec("loadbalancer", "loadbalancers", "loadbalancers", "Load Balancer",
                            _common(
    Attr("vip_address", a.to_ip_or_none, put=False),
    Attr("vip_port_id", a.to_uuid_or_none, put=False),
    Attr("vip_subnet_id", a.to_uuid_or_none, put=False),
    Attr("vip_network_id", a.to_uuid_or_none, put=False),
    Attr("vip_qos_policy_id", a.to_uuid_or_none),
    Attr("provider", a.to_str_or_none(64), default=None, put=False),
    Attr("flavor_id", a.to_uuid_or_none, put=False),
    Attr("availability_zone", a.to_str_or_none(255), put=False),
    Attr("listeners", **_RO),
    Attr("pools", **_RO),
    Attr("additional_vips", **_RO),
    Attr("vip_vnic_type", **_RO),
), not_found="LoadBalancer")

LISTENER = ResourceSpec("listener", "listeners", "listeners", "Listener", _common(
    Attr("loadbalancer_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("protocol", a.to_choice(*LISTENER_PROTOCOLS), default=REQUIRED, put=False),
    Attr("protocol_port", _PORT, default=REQUIRED, put=False),
    Attr("default_pool_id", a.to_uuid_or_none),
    Attr("connection_limit", a.to_int(-1, 2**31 - 1), default=-1),
    Attr("timeout_client_data", _TIMEOUT, default=50000),
    Attr("timeout_member_connect", _TIMEOUT, default=5000),
    Attr("timeout_member_data", _TIMEOUT, default=50000),
    Attr("timeout_tcp_inspect", _TIMEOUT, default=0),
    Attr("allowed_cidrs", a.to_list_or_null(a.to_prefix_or_none), default=list),
    Attr("insert_headers", a.to_dict_or_none, default=dict),
    Attr("loadbalancers", **_RO),
    Attr("l7policies", **_RO),
))

POOL = ResourceSpec("pool", "pools", "pools", "Pool", _common(
    Attr("loadbalancer_id", a.to_uuid_or_none, put=False),
    Attr("listener_id", a.to_uuid_or_none, put=False),
    Attr("protocol", a.to_choice(*POOL_PROTOCOLS), default=REQUIRED, put=False),
    Attr("lb_algorithm", a.to_choice(*ALGORITHMS), default=REQUIRED),
    Attr("session_persistence", a.to_dict_or_none, default=None),
    Attr("tls_enabled", a.to_bool, default=False),
    Attr("loadbalancers", **_RO),
    Attr("listeners", **_RO),
    Attr("members", **_RO),
    Attr("healthmonitor_id", **_RO),
))

MEMBER = ResourceSpec("member", "members", "pools/{parent_id}/members", "Member", _common(
    Attr("address", a.to_ip, default=REQUIRED, put=False),
    Attr("protocol_port", _PORT, default=REQUIRED, put=False),
    Attr("weight", a.to_int(0, 256), default=1),
    Attr("backup", a.to_bool, default=False),
    Attr("subnet_id", a.to_uuid_or_none, put=False),
    Attr("monitor_address", a.to_ip_or_none),
    Attr("monitor_port", a.to_int(1, 65535, nullable=True)),
), parent="pool")

HEALTHMONITOR = ResourceSpec("healthmonitor", "healthmonitors", "healthmonitors", "Health Monitor",
                             _common(
    Attr("pool_id", a.to_uuid, default=REQUIRED, put=False),
    Attr("type", a.to_choice(*MONITOR_TYPES), default=REQUIRED, put=False),
    Attr("delay", a.to_int(0, 2**31 - 1), default=REQUIRED),
    Attr("timeout", a.to_int(0, 2**31 - 1), default=REQUIRED),
    Attr("max_retries", a.to_int(1, 10), default=REQUIRED),
    Attr("max_retries_down", a.to_int(1, 10), default=3),
    Attr("http_method", a.to_choice(*HTTP_METHODS, nullable=True)),
    Attr("url_path", a.to_str_or_none(2048)),
    Attr("expected_codes", a.to_str_or_none(64)),
    Attr("http_version", a.to_choice(1.0, 1.1, nullable=True)),
    Attr("domain_name", a.to_str_or_none(255)),
    Attr("pools", **_RO),
))

# The model's type key of each (bodies use spec.name; the store keeps them apart from Neutron's).
STORE_TYPE = {"loadbalancer": "lb_loadbalancer", "listener": "lb_listener", "pool": "lb_pool",
              "member": "lb_member", "healthmonitor": "lb_healthmonitor"}
ALL = (LOADBALANCER, LISTENER, POOL, MEMBER, HEALTHMONITOR)


def expected_codes(text: str) -> frozenset[int]:
    """Octavia's expected_codes: "200", "200,202" or "200-204"; ValueError when malformed."""
    codes: set[int] = set()
    for part in text.split(","):
        lo, sep, hi = part.strip().partition("-")
        first, last = int(lo), int(hi) if sep else int(lo)
        if not 100 <= first <= last <= 599:
            raise ValueError(f"'{text}' is not a code, list or range of codes 100-599")
        codes.update(range(first, last + 1))
    return frozenset(codes)


# --- operating status, rolled up as Octavia reports it ---

def member_status(member: dict, monitored: bool) -> str:
    """OFFLINE when disabled, NO_MONITOR without a health monitor, else the agents' verdict
    (NO_MONITOR until the first one arrives)."""
    if not member["admin_state_up"]:
        return "OFFLINE"
    if not monitored:
        return "NO_MONITOR"
    return member.get("health") or "NO_MONITOR"


def pool_status(pool: dict, members: list[str]) -> str:
    """ERROR when every enabled member failed, DEGRADED when some did, else ONLINE."""
    if not pool["admin_state_up"]:
        return "OFFLINE"
    live = [s for s in members if s != "OFFLINE"]
    failed = [s for s in live if s == "ERROR"]
    if live and len(failed) == len(live):
        return "ERROR"
    return "DEGRADED" if failed else "ONLINE"


def worst(own_admin_up: bool, below: list[str]) -> str:
    """A listener's or load balancer's status from what it forwards to."""
    if not own_admin_up:
        return "OFFLINE"
    if "ERROR" in below:
        return "ERROR" if all(s == "ERROR" for s in below) else "DEGRADED"
    return "DEGRADED" if "DEGRADED" in below else "ONLINE"
