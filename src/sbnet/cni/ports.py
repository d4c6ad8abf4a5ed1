"""A container interface's Neutron port: found, made and deleted by (container, interface), and what the interface gets from it."""

from __future__ import annotations

import ipaddress
import re

from sbnet.cni.client import JsonClient, NotFound
from sbnet.cni.spec import API_REFUSED, INVALID_CONFIG, CniError

DEVICE_OWNER = "compute:container"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def port_name(container_id: str, ifname: str) -> str:
    """The port's name: container and interface (what makes ADD idempotent)."""
    return f"{container_id}/{ifname}"[:255]


def vif_name(port_id: str) -> str:
    """The tap name Nova/os-vif give a port's VIF (tap + the id, 14 bytes; Linux names are at
    most 15), which the agent looks for and the plugin gives a container's host end."""
    return ("tap" + port_id)[:14]


def find_port(api: JsonClient, container_id: str, ifname: str, host: str) -> dict | None:
    """The port of this container's interface on `host` (container ids are unique per host
    only: another host's container of the same id has a port of its own)."""
    ports = api.get("/v2.0/ports", device_id=container_id,
                    name=port_name(container_id, ifname))["ports"]
    return next((p for p in ports if p.get("binding:host_id") == host), None)


def network(api: JsonClient, ref: str) -> dict:
    """The network named or numbered `ref` (an id first, then a unique name)."""
    if not isinstance(ref, str) or not ref:
        raise CniError(INVALID_CONFIG, "network configuration needs network (a name or an id)")
    if _UUID.fullmatch(ref):
        try:
            return api.get(f"/v2.0/networks/{ref}")["network"]
        except NotFound:
            pass
    nets = api.get("/v2.0/networks", name=ref)["networks"]
    if len(nets) != 1:
        raise CniError(INVALID_CONFIG, f"network {ref!r}: " + ("no such network" if not nets
                                                             else f"{len(nets)} networks have that name"))
    return nets[0]


def security_groups(api: JsonClient, refs, project_id: str | None) -> list[str] | None:
    """Ids of the groups named or numbered in `refs` (None: the project's default)."""
    if refs is None:
        return None
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise CniError(INVALID_CONFIG, "security_groups must be a list of names or ids")
    out = []
    for ref in refs:
        if _UUID.fullmatch(ref):
            out.append(ref)
            continue
        params = {"name": ref, **({"project_id": project_id} if project_id else {})}
        groups = api.get("/v2.0/security-groups", **params)["security_groups"]
        if len(groups) != 1:
            raise CniError(INVALID_CONFIG, f"security group {ref!r}: "
                           + ("no such group" if not groups else "several have that name"))
        out.append(groups[0]["id"])
    return out


def port_body(net: dict, container_id: str, ifname: str, host: str, project_id: str | None,
              groups: list[str] | None, qos_policy_id: str | None = None,
              binding: dict | None = None) -> dict:
    """What POST /v2.0/ports is given for a container's interface (`binding`: extra
    binding attributes, e.g. a SmartNIC's vnic_type and profile)."""
    body = {"network_id": net["id"], "name": port_name(container_id, ifname),
            "device_id": container_id, "device_owner": DEVICE_OWNER,
            "binding:host_id": host, **(binding or {})}
    if project_id:
        body["project_id"] = project_id
    if groups is not None:
        body["security_groups"] = groups
    if qos_policy_id:
        body["qos_policy_id"] = qos_policy_id
    return body


def delete_port(api: JsonClient, port_id: str) -> None:
    try:
        api.delete(f"/v2.0/ports/{port_id}")
    except NotFound:
        pass


def interface_plan(port: dict, net: dict, subnets: dict[str, dict]) -> dict:
    """The interface a port describes: MAC, MTU, addresses with their subnet's prefix and
    gateway, routes (a default route per address family with a gateway, then the subnets'
    host routes) and DNS servers, in the shapes the CNI result uses."""
    ips, routes, dns, defaults = [], [], [], set()
    for fixed in port.get("fixed_ips") or ():
        sub = subnets.get(fixed["subnet_id"])
        if sub is None:
            raise CniError(API_REFUSED, f"port {port['id']}: subnet {fixed['subnet_id']} "
                                        "is not visible")
        prefix = sub["cidr"].split("/")[1]
        gw = sub.get("gateway_ip")
        ips.append({"address": f"{fixed['ip_address']}/{prefix}", **({"gateway": gw} if gw else {})})
        version = ipaddress.ip_address(fixed["ip_address"]).version
        if gw and version not in defaults:
            defaults.add(version)
            routes.append({"dst": "0.0.0.0/0" if version == 4 else "::/0", "gw": gw})
        for hr in sub.get("host_routes") or ():
            r = {"dst": str(ipaddress.ip_network(hr["destination"], strict=False)),
                 "gw": hr["nexthop"]}
            if r not in routes:
                routes.append(r)
        dns += [d for d in sub.get("dns_nameservers") or () if d not in dns]
    return {"mac": port["mac_address"], "mtu": int(net.get("mtu") or 1500), "ips": ips,
            "routes": routes, "dns": {"nameservers": dns} if dns else {}}


def subnets_of(api: JsonClient, net: dict) -> dict[str, dict]:
    return {s["id"]: s for s in api.get("/v2.0/subnets", network_id=net["id"])["subnets"]}
