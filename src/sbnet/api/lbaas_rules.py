"""What Octavia checks and does beyond storing a body: VIP ports, protocol rules, cascades, quotas."""

from __future__ import annotations

import ipaddress
import uuid

from sbnet.api.context import Context
from sbnet.api.crud import fetch
from sbnet.model import attrs as a
from sbnet.model import lbaas as m
from sbnet.model.errors import BadRequest, Conflict, Forbidden, NeutronError, NotFound
from sbnet.model.resources import NETWORK, PORT, SUBNET
from sbnet.store import Tx

T = m.STORE_TYPE


class Unsupported(NeutronError):
    """Octavia's ProviderUnsupportedOptionError: a valid request this provider cannot do."""

    status = 501


def unsupported(what: str, value: object) -> Unsupported:
    return Unsupported(f"Provider '{m.PROVIDER}' does not support a requested option: "
                       f"{what} {value} is not supported (supported: "
                       f"{', '.join(m.SUPPORTED[what])}).")


def _supported(what: str, value: object) -> None:
    if value not in m.SUPPORTED[what]:
        raise unsupported(what, value)


def not_found(spec_label: str, ident: str) -> NotFound:
    return NotFound(f"{spec_label} {ident} not found.")


def get(tx: Tx, ctx: Context, typ: str, ident: str | None, label: str) -> dict:
    """A load-balancing resource by id: 404 when absent, 403 when another project's."""
    body = tx.get(T[typ], ident) if isinstance(ident, str) else None
    if body is None:
        raise not_found(label, str(ident))
    if not (ctx.is_admin or body["project_id"] == ctx.project_id):
        raise Forbidden("Policy does not allow this request to be performed.")
    return body


def check_quota(tx: Tx, typ: str, project_id: str) -> None:
    """Octavia's quota: 403 once the project holds its limit (-1 is unlimited)."""
    name = m.QUOTA_OF[typ]
    quota = tx.get("lb_quota", project_id) or {}
    limit = quota.get(name, -1)
    if limit is not None and limit >= 0 and len(tx.list(typ, project_id=project_id)) >= limit:
        label = name.replace("_", " ").title()
        raise Forbidden(f"Quota has been met for resources: {label}")


# --- load balancers and their VIP port ---

def _vip_port(tx: Tx, ctx: Context, api, lb: dict) -> dict:
    """The VIP: an existing port, or a new one in Neutron's model on the VIP subnet/network."""
    if lb.get("vip_port_id"):
        port = fetch(tx, ctx, PORT, lb["vip_port_id"])
        if any(x.get("vip_port_id") == port["id"] for x in tx.list(T["loadbalancer"])):
            raise Conflict(f"Port {port['id']} is already the VIP of a load balancer.")
        lb["_owns_vip_port"] = False
        return port
    if lb.get("vip_subnet_id"):
        subnet = _subnet(tx, ctx, lb["vip_subnet_id"])
        if lb.get("vip_network_id") and lb["vip_network_id"] != subnet["network_id"]:
            raise BadRequest(f"Subnet {subnet['id']} is not on network {lb['vip_network_id']}.")
        net_id, fixed = subnet["network_id"], [{"subnet_id": subnet["id"]}]
        if lb.get("vip_address"):
            fixed[0]["ip_address"] = lb["vip_address"]
    elif lb.get("vip_network_id"):
        try:
            net_id = fetch(tx, ctx, NETWORK, lb["vip_network_id"])["id"]
        except NeutronError:
            raise BadRequest(f"Network {lb['vip_network_id']} not found.") from None
        subnets = tx.list("subnet", parent_id=net_id)
        if not subnets:
            raise BadRequest(f"Network {net_id} has no subnet for a VIP.")
        fixed = [{"ip_address": lb["vip_address"]}] if lb.get("vip_address") \
            else [{"subnet_id": sorted(subnets, key=lambda s: s["ip_version"])[0]["id"]}]
    else:
        raise BadRequest("Validation failure: VIP must contain one of: vip_port_id, "
                         "vip_network_id, vip_subnet_id.")
    body = a.validate_body(PORT.attrs, {
        "network_id": net_id, "fixed_ips": fixed, "name": f"octavia-lb-{lb['id']}",
        "device_owner": "Octavia", "device_id": f"lb-{lb['id']}",
        "port_security_enabled": False, "security_groups": []}, create=True, resource="port")
    body.update(id=str(uuid.uuid4()), project_id=lb["project_id"], tenant_id=lb["project_id"])
    lb["_owns_vip_port"] = True
    return api.hooks["port"].create(tx, ctx, body)


def _subnet(tx: Tx, ctx: Context, ident: str) -> dict:
    try:
        return fetch(tx, ctx, SUBNET, ident)
    except NeutronError:
        raise BadRequest(f"Subnet {ident} not found.") from None


def create_loadbalancer(tx: Tx, ctx: Context, api, lb: dict) -> None:
    provider = lb.get("provider") or m.PROVIDER
    if provider != m.PROVIDER:
        raise BadRequest(f"Provider '{provider}' is not enabled.")
    if lb.get("flavor_id"):
        raise BadRequest(f"Flavor {lb['flavor_id']} not found.")
    if lb.get("availability_zone"):
        raise BadRequest(f"Availability zone {lb['availability_zone']} not found.")
    port = _vip_port(tx, ctx, api, lb)
    fixed = port["fixed_ips"]
    ip = next((f for f in fixed if f["ip_address"] == lb.get("vip_address")), None) \
        or next((f for f in fixed if f["subnet_id"] == lb.get("vip_subnet_id")), None) \
        or (fixed[0] if fixed else None)
    if ip is None:
        raise BadRequest(f"Port {port['id']} has no fixed IP to serve as a VIP.")
    lb.update(provider=provider, vip_port_id=port["id"], vip_network_id=port["network_id"],
              vip_subnet_id=ip["subnet_id"], vip_address=ip["ip_address"])


def delete_loadbalancer(tx: Tx, ctx: Context, api, lb: dict, cascade: bool) -> None:
    listeners = [x for x in tx.list(T["listener"]) if x["loadbalancer_id"] == lb["id"]]
    pools = [x for x in tx.list(T["pool"]) if x["loadbalancer_id"] == lb["id"]]
    if (listeners or pools) and not cascade:
        raise BadRequest(f"Validation failure: Cannot delete Load Balancer {lb['id']} - "
                         "it has children")
    for pool in pools:
        delete_pool(tx, pool)
    for listener in listeners:
        tx.delete(T["listener"], listener)
    port = tx.get("port", lb["vip_port_id"])
    if port is not None and lb.get("_owns_vip_port"):
        api.hooks["port"].delete(tx, ctx, port)
    tx.delete(T["loadbalancer"], lb)


# --- listeners ---

def _default_pool(tx: Tx, ctx: Context, listener: dict) -> None:
    pid = listener.get("default_pool_id")
    if not pid:
        return
    pool = get(tx, ctx, "pool", pid, "Pool")
    if pool["loadbalancer_id"] != listener["loadbalancer_id"]:
        raise BadRequest(f"Pool {pid} is on another load balancer.")
    if pool["protocol"] not in m.POOL_FOR_LISTENER.get(listener["protocol"], ()):
        raise BadRequest(f"The pool protocol '{pool['protocol']}' is invalid while the "
                         f"listener protocol is '{listener['protocol']}'.")


def create_listener(tx: Tx, ctx: Context, listener: dict) -> None:
    lb = get(tx, ctx, "loadbalancer", listener["loadbalancer_id"], "Load Balancer")
    _supported("listener protocol", listener["protocol"])
    listener["project_id"] = listener["tenant_id"] = lb["project_id"]
    for other in tx.list(T["listener"]):
        if other["loadbalancer_id"] == lb["id"] and other["protocol_port"] == \
                listener["protocol_port"] and (other["protocol"] == "UDP") == \
                (listener["protocol"] == "UDP"):
            raise Conflict(f"Another Listener on this Load Balancer is already using "
                           f"protocol {other['protocol']} and protocol_port "
                           f"{listener['protocol_port']}")
    family = ipaddress.ip_address(lb["vip_address"]).version
    for cidr in listener["allowed_cidrs"] or []:
        if ipaddress.ip_network(cidr).version != family:
            raise BadRequest(f"Validation failure: CIDR {cidr} IP version incompatible with "
                             "all VIPs IP version.")
    _default_pool(tx, ctx, listener)


def update_listener(tx: Tx, ctx: Context, listener: dict) -> None:
    _default_pool(tx, ctx, listener)


# --- pools, members, health monitors ---

def _persistence(sp: dict | None) -> dict | None:
    if not sp:
        return None
    if set(sp) - {"type", "cookie_name", "persistence_timeout", "persistence_granularity"}:
        raise BadRequest(f"Invalid input for session_persistence: unknown keys in {sp}.")
    if sp.get("type") not in m.PERSISTENCE:
        raise BadRequest(f"Invalid input for session_persistence type: {sp.get('type')}.")
    _supported("session_persistence type", sp["type"])
    if sp.get("cookie_name"):
        raise BadRequest("Cookie names are not supported for SOURCE_IP persistence.")
    return {"type": sp["type"], "cookie_name": None,
            "persistence_timeout": sp.get("persistence_timeout"),
            "persistence_granularity": sp.get("persistence_granularity")}


def create_pool(tx: Tx, ctx: Context, pool: dict) -> None:
    _supported("pool protocol", pool["protocol"])
    _supported("lb_algorithm", pool["lb_algorithm"])
    pool["session_persistence"] = _persistence(pool["session_persistence"])
    if pool["tls_enabled"]:
        raise unsupported("pool protocol", "TLS re-encryption")
    listener = None
    if pool.get("listener_id"):
        listener = get(tx, ctx, "listener", pool["listener_id"], "Listener")
        if pool.get("loadbalancer_id") and pool["loadbalancer_id"] != listener["loadbalancer_id"]:
            raise BadRequest("The listener is on another load balancer.")
        if listener.get("default_pool_id"):
            raise Conflict(f"Listener {listener['id']} already has a default pool.")
        pool["loadbalancer_id"] = listener["loadbalancer_id"]
    elif not pool.get("loadbalancer_id"):
        raise BadRequest("Validation failure: Either loadbalancer_id or listener_id must be "
                         "specified.")
    lb = get(tx, ctx, "loadbalancer", pool["loadbalancer_id"], "Load Balancer")
    pool["project_id"] = pool["tenant_id"] = lb["project_id"]
    if listener is not None:
        if pool["protocol"] not in m.POOL_FOR_LISTENER[listener["protocol"]]:
            raise BadRequest(f"The pool protocol '{pool['protocol']}' is invalid while the "
                             f"listener protocol is '{listener['protocol']}'.")
        listener["default_pool_id"] = pool["id"]
        tx.update(T["listener"], listener)


def update_pool(pool: dict, changes: dict) -> None:
    if "lb_algorithm" in changes:
        _supported("lb_algorithm", changes["lb_algorithm"])
    if "session_persistence" in changes:
        changes["session_persistence"] = _persistence(changes["session_persistence"])
    if changes.get("tls_enabled"):
        raise unsupported("pool protocol", "TLS re-encryption")


def delete_pool(tx: Tx, pool: dict) -> None:
    for member in tx.list(T["member"], parent_id=pool["id"]):
        tx.delete(T["member"], member)
    for hm in tx.list(T["healthmonitor"]):
        if hm["pool_id"] == pool["id"]:
            tx.delete(T["healthmonitor"], hm)
    for listener in tx.list(T["listener"]):
        if listener.get("default_pool_id") == pool["id"]:
            listener["default_pool_id"] = None
            tx.update(T["listener"], listener)
    tx.delete(T["pool"], pool)


def create_member(tx: Tx, ctx: Context, pool: dict, member: dict) -> None:
    lb = tx.get(T["loadbalancer"], pool["loadbalancer_id"])
    member["project_id"] = member["tenant_id"] = pool["project_id"]
    member["pool_id"] = pool["id"]
    if ipaddress.ip_address(member["address"]).version != \
            ipaddress.ip_address(lb["vip_address"]).version:
        raise BadRequest(f"Provider '{m.PROVIDER}' does not support members of another IP "
                         f"family than the VIP {lb['vip_address']} (ct NAT keeps the family).")
    if member.get("subnet_id"):
        subnet = _subnet(tx, ctx, member["subnet_id"])
        if ipaddress.ip_address(member["address"]) not in ipaddress.ip_network(subnet["cidr"]):
            raise BadRequest(f"Member address {member['address']} is not on subnet "
                             f"{subnet['id']}.")
    for other in tx.list(T["member"], parent_id=pool["id"]):
        if other["address"] == member["address"] and \
                other["protocol_port"] == member["protocol_port"]:
            raise Conflict(f"Another member on this pool is already using ip "
                           f"{member['address']} on protocol_port {member['protocol_port']}")


def create_healthmonitor(tx: Tx, ctx: Context, hm: dict) -> None:
    pool = get(tx, ctx, "pool", hm["pool_id"], "Pool")
    _supported("health monitor type", hm["type"])
    if hm["type"] not in m.MONITORS_FOR_POOL[pool["protocol"]]:
        raise BadRequest(f"The associated pool protocol is {pool['protocol']}, so only a "
                         f"{', '.join(m.MONITORS_FOR_POOL[pool['protocol']])} type health "
                         "monitor is supported.")
    if any(x["pool_id"] == pool["id"] for x in tx.list(T["healthmonitor"])):
        raise Conflict(f"Pool {pool['id']} already has a health monitor")
    hm["project_id"] = hm["tenant_id"] = pool["project_id"]
    http = hm["type"] == "HTTP"
    for key, default in (("http_method", "GET"), ("url_path", "/"), ("expected_codes", "200")):
        if not http and hm.get(key) is not None:
            raise BadRequest(f"{key} is not a valid option for health monitors of type "
                             f"{hm['type']}")
        hm[key] = (hm.get(key) or default) if http else None
    check_monitor(hm)


def check_monitor(hm: dict) -> None:
    if hm.get("expected_codes") is not None:
        try:
            m.expected_codes(hm["expected_codes"])
        except ValueError:
            raise BadRequest(f"Invalid input for field/attribute expected_codes. Value: "
                             f"'{hm['expected_codes']}'.") from None
    if hm.get("url_path") is not None and not hm["url_path"].startswith("/"):
        raise BadRequest(f"Invalid input for field/attribute url_path. Value: "
                         f"'{hm['url_path']}'. Value should start with '/'.")
    if hm["type"] == "UDP-CONNECT" and hm["timeout"] >= hm["delay"]:
        raise BadRequest(f"Validation failure: The request delay value {hm['delay']} should be "
                         f"larger than the request timeout value {hm['timeout']}.")
