"""Routers (gateways with SNAT, interfaces, extra routes) and floating IPs with their associations."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

from fastapi import APIRouter, Request

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch, owned, read_json, view
from sbnet.api.sharing import Sight
from sbnet.model import attrs as a
from sbnet.model import ipam
from sbnet.model.errors import BadRequest, Conflict, NotFound, not_found
from sbnet.model.resources import FLOATING_IP, NETWORK, PORT, QOS_POLICY, ROUTER, SUBNET
from sbnet.store import Tx

ADMIN = Context("admin", ("admin",))
# The router is distributed: its interfaces and gateway are in every host's pipeline as soon as
# they are committed, with no agent to bind them, so their ports are ACTIVE from the start.
ROUTER_OWNERS = ("network:router_interface", "network:router_gateway")


def bad_router(msg: str) -> BadRequest:
    return BadRequest(f"Bad router request: {msg}.", type_name="BadRequest")


def bad_fip(msg: str) -> BadRequest:
    return BadRequest(f"Bad floatingip request: {msg}.", type_name="BadRequest")


def internal_port(api: Any, tx: Tx, network_id: str, project_id: str, owner: str, device_id: str,
                  fixed_ips: list[dict] | None) -> dict:
    """A port the L3 service owns (gateway, interface, floating IP), made like any other port."""
    req = {"network_id": network_id, "device_owner": owner, "device_id": device_id}
    if fixed_ips is not None:
        req["fixed_ips"] = fixed_ips
    body = a.validate_body(PORT.attrs, req, create=True, resource="port")
    body.update(id=str(uuid.uuid4()), project_id=project_id, tenant_id=project_id,
                security_groups=[])
    if owner in ROUTER_OWNERS:
        body["status"] = "ACTIVE"
    return api.hooks["port"].create(tx, ADMIN, body)


def _ext_network(tx: Tx, ctx: Context, net_id: Any, bad: Any) -> dict:
    try:
        net_id = a.to_uuid(net_id)
    except a.Invalid as exc:
        raise bad(str(exc)) from None
    net = fetch(tx, ctx, NETWORK, net_id)
    if not Sight(tx, ctx).external(net):
        raise bad(f"Network {net_id} is not a valid external network")
    return net


def router_ports(tx: Tx, router_id: str, owner: str = "network:router_interface") -> list[dict]:
    return [p for p in tx.list("port") if p["device_id"] == router_id and p["device_owner"] == owner]


class RouterHooks(Hooks):
    spec = ROUTER

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        info = body.pop("external_gateway_info", None)
        body.update(status="ACTIVE", routes=[], availability_zones=[], external_gateway_info=None)
        created = super().create(tx, ctx, body)
        if info:
            self._gateway(tx, ctx, created, info)
            tx.update("router", created)
        return created

    def _gateway(self, tx: Tx, ctx: Context, router: dict, info: dict | None) -> None:
        old = router.get("external_gateway_info")
        if info and set(info) - {"network_id", "enable_snat", "external_fixed_ips", "qos_policy_id"}:
            raise a.fail("external_gateway_info", f"Unrecognized attribute(s) in '{info}'")
        if info and "network_id" not in info:
            raise a.fail("external_gateway_info", "network_id is required")
        same_net = bool(info and old and info["network_id"] == old["network_id"])
        if old and not same_net:
            fips = [f for f in tx.list("floatingip") if f["router_id"] == router["id"]]
            if fips:
                raise Conflict(f"Gateway cannot be updated for router {router['id']}, since a "
                               f"gateway to external network {old['network_id']} is required by "
                               "one or more floating IPs.",
                               type_name="RouterExternalGatewayInUseByFloatingIp")
            for port in router_ports(tx, router["id"], "network:router_gateway"):
                self.api.hooks["port"].delete(tx, ADMIN, port, l3=True)
            router["external_gateway_info"] = None
        if not info:
            return
        net = _ext_network(tx, ctx, info["network_id"], bad_router)
        try:
            snat = a.to_bool(info.get("enable_snat", True))
            fixed = a.list_of(a.to_dict)(info["external_fixed_ips"]) \
                if info.get("external_fixed_ips") is not None else None
        except a.Invalid as exc:
            raise a.fail("external_gateway_info", str(exc)) from None
        if same_net and fixed is None:
            gw_ips = old["external_fixed_ips"]
        else:
            for port in router_ports(tx, router["id"], "network:router_gateway"):
                self.api.hooks["port"].delete(tx, ADMIN, port, l3=True)
            port = internal_port(self.api, tx, net["id"], "", "network:router_gateway",
                                 router["id"], fixed)
            gw_ips = port["fixed_ips"]
        router["external_gateway_info"] = {"network_id": net["id"], "enable_snat": snat,
                                           "external_fixed_ips": gw_ips}

    def _check_routes(self, tx: Tx, router: dict, routes: list[dict]) -> None:
        cidrs = []
        for port in router_ports(tx, router["id"]) + router_ports(tx, router["id"],
                                                                   "network:router_gateway"):
            for f in port["fixed_ips"]:
                sub = tx.get("subnet", f["subnet_id"])
                if sub:
                    cidrs.append((sub["cidr"], f["ip_address"]))
        for route in routes:
            hop = route["nexthop"]
            if not any(ipam.contains(c, hop) for c, _ in cidrs):
                raise BadRequest(f"Invalid format for routes: {routes}, the nexthop is not "
                                 "connected with router", type_name="InvalidRoutes")
            if any(ip == hop for _, ip in cidrs):
                raise BadRequest(f"Invalid format for routes: {routes}, the nexthop is used by "
                                 "router", type_name="InvalidRoutes")

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if "external_gateway_info" in changes:
            self._gateway(tx, ctx, old, changes.pop("external_gateway_info"))
        if "routes" in changes:
            self._check_routes(tx, old, changes["routes"])
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        if router_ports(tx, obj["id"]):
            raise Conflict(f"Router {obj['id']} still has ports", type_name="RouterInUse")
        if any(f["router_id"] == obj["id"] for f in tx.list("floatingip")):
            raise Conflict(f"Router {obj['id']} still has floating IPs", type_name="RouterInUse")
        self._gateway(tx, ctx, obj, None)
        tx.delete("router", obj)

    # --- interfaces ---

    def add_interface(self, tx: Tx, ctx: Context, router: dict, req: dict) -> dict:
        subnet_id, port_id = self._interface_args(req)
        if subnet_id:
            subnet = fetch(tx, ctx, SUBNET, subnet_id)
            if not subnet["gateway_ip"]:
                raise bad_router("Subnet for router interface must have a gateway IP")
            self._check_overlap(tx, router, [subnet])
            port = internal_port(self.api, tx, subnet["network_id"], router["project_id"],
                                 "network:router_interface", router["id"],
                                 [{"subnet_id": subnet["id"], "ip_address": subnet["gateway_ip"]}])
        else:
            port = fetch(tx, ctx, PORT, port_id, write=True)
            if port["device_id"]:
                raise Conflict(f"Unable to complete operation on port {port['id']} for network "
                               f"{port['network_id']}. Port already has an attached device "
                               f"{port['device_id']}.", type_name="PortInUse")
            if not port["fixed_ips"]:
                raise bad_router("Router port must have at least one fixed IP")
            self._check_overlap(tx, router, [tx.get("subnet", f["subnet_id"]) for f in port["fixed_ips"]])
            port.update(device_id=router["id"], device_owner="network:router_interface",
                        status="ACTIVE")
            tx.update("port", port)
        tx.update("router", router)
        return self._info(router, port)

    def remove_interface(self, tx: Tx, ctx: Context, router: dict, req: dict) -> dict:
        subnet_id, port_id = self._interface_args(req)
        ports = router_ports(tx, router["id"])
        if port_id:
            port = next((p for p in ports if p["id"] == port_id), None)
            if port is None:
                raise NotFound(f"Router {router['id']} does not have an interface with id {port_id}",
                               type_name="RouterInterfaceNotFound")
        else:
            port = next((p for p in ports if any(f["subnet_id"] == subnet_id
                                                 for f in p["fixed_ips"])), None)
            if port is None:
                raise NotFound(f"Router {router['id']} has no interface on subnet {subnet_id}",
                               type_name="RouterInterfaceNotFoundForSubnet")
        for f in port["fixed_ips"]:
            sub = tx.get("subnet", f["subnet_id"])
            for fip in tx.list("floatingip"):
                if fip["router_id"] == router["id"] and fip["fixed_ip_address"] and sub and \
                        ipam.contains(sub["cidr"], fip["fixed_ip_address"]):
                    raise Conflict(f"Router interface for subnet {sub['id']} on router "
                                   f"{router['id']} cannot be deleted, as it is required by one "
                                   "or more floating IPs.",
                                   type_name="RouterInterfaceInUseByFloatingIP")
        info = self._info(router, port)
        self.api.hooks["port"].delete(tx, ADMIN, port, l3=True)
        tx.update("router", router)
        return info

    @staticmethod
    def _interface_args(req: Any) -> tuple[str | None, str | None]:
        if not isinstance(req, dict):
            raise bad_router("Must specify either subnet_id or port_id")
        subnet_id, port_id = req.get("subnet_id"), req.get("port_id")
        if subnet_id and port_id:
            raise bad_router("Cannot specify both subnet-id and port-id")
        if not subnet_id and not port_id:
            raise bad_router("Must specify either subnet_id or port_id")
        try:
            return (a.to_uuid(subnet_id) if subnet_id else None,
                    a.to_uuid(port_id) if port_id else None)
        except a.Invalid as exc:
            raise bad_router(str(exc)) from None

    @staticmethod
    def _check_overlap(tx: Tx, router: dict, new: list[dict]) -> None:
        for port in router_ports(tx, router["id"]):
            for f in port["fixed_ips"]:
                have = tx.get("subnet", f["subnet_id"])
                for sub in new:
                    if have and sub and ipam.overlapping(sub["cidr"], [have["cidr"]]):
                        raise bad_router(f"Cidr {sub['cidr']} of subnet {sub['id']} overlaps "
                                         f"with cidr {have['cidr']} of subnet {have['id']}")

    @staticmethod
    def _info(router: dict, port: dict) -> dict:
        subnets = [f["subnet_id"] for f in port["fixed_ips"]]
        return {"id": router["id"], "tenant_id": router["project_id"],
                "project_id": router["project_id"], "port_id": port["id"],
                "network_id": port["network_id"], "subnet_id": subnets[0] if subnets else None,
                "subnet_ids": subnets}


class FloatingIPHooks(Hooks):
    spec = FLOATING_IP

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        net = _ext_network(tx, ctx, body["floating_network_id"], bad_fip)
        subnets = [s for s in tx.list("subnet", parent_id=net["id"]) if s["ip_version"] == 4]
        if body.get("subnet_id") and body["subnet_id"] not in {s["id"] for s in subnets}:
            raise bad_fip(f"Subnet {body['subnet_id']} is not an IPv4 subnet of network {net['id']}")
        if body.get("floating_ip_address"):
            want = [{"ip_address": body["floating_ip_address"]}]
            if body.get("subnet_id"):
                want[0]["subnet_id"] = body["subnet_id"]
        else:
            candidates = [s for s in subnets if not body.get("subnet_id") or s["id"] == body["subnet_id"]]
            free = next((s for s in candidates if ipam.pick_ip(
                s["allocation_pools"], lambda ip, s=s: tx.ip_owner(s["id"], ip) is not None,
                lambda s=s: tx.used_ips(s["id"]))), None)
            if free is None:
                raise BadRequest(f"Unable to find any IP address on external network {net['id']}.",
                                 type_name="ExternalIpAddressExhausted")
            want = [{"subnet_id": free["id"]}]
        port = internal_port(self.api, tx, net["id"], "", "network:floatingip", body["id"], want)
        body.update(floating_ip_address=port["fixed_ips"][0]["ip_address"], router_id=None,
                    status="DOWN", port_details=None, port_forwardings=[])
        if body.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, body["qos_policy_id"])
        if body.get("port_id"):
            self._associate(tx, ctx, body, body["port_id"], body.get("fixed_ip_address"))
        else:
            body["fixed_ip_address"] = None
        return super().create(tx, ctx, body)

    def _associate(self, tx: Tx, ctx: Context, fip: dict, port_id: str, fixed_ip: str | None) -> None:
        port = tx.get("port", port_id)
        if port is None or not owned(ctx, port) or port["project_id"] != fip["project_id"] \
                and not ctx.is_admin:
            raise not_found("PortNotFound", "Port", port_id)
        v4 = [f for f in port["fixed_ips"] if ipaddress.ip_address(f["ip_address"]).version == 4]
        if fixed_ip is not None:
            match = [f for f in v4 if f["ip_address"] == fixed_ip]
            if not match:
                raise bad_fip(f"Port {port_id} does not have fixed ip {fixed_ip}")
        elif len(v4) == 1:
            match = v4
        elif not v4:
            raise bad_fip(f"No IPv4 address found on port {port_id}")
        else:
            raise bad_fip(f"Port {port_id} has multiple fixed IPv4 addresses.  Must provide a "
                          "specific IPv4 address when assigning a floating IP")
        chosen = match[0]
        for other in tx.list("floatingip"):
            if other["id"] != fip["id"] and other["port_id"] == port_id and \
                    other["fixed_ip_address"] == chosen["ip_address"]:
                raise Conflict(f"Cannot associate floating IP {fip['floating_ip_address']} "
                               f"({fip['id']}) with port {port_id} using fixed IP "
                               f"{chosen['ip_address']}, as that fixed IP already has a floating IP "
                               f"on external network {other['floating_network_id']}.",
                               type_name="FloatingIPPortAlreadyAssociated")
        router_id = self._router_for(tx, fip["floating_network_id"], chosen["subnet_id"])
        if router_id is None:
            raise NotFound(f"External network {fip['floating_network_id']} is not reachable from "
                           f"subnet {chosen['subnet_id']}.  Therefore, cannot associate Port "
                           f"{port_id} with a Floating IP.",
                           type_name="ExternalGatewayForFloatingIPNotFound")
        fip.update(port_id=port_id, fixed_ip_address=chosen["ip_address"], router_id=router_id,
                   status="ACTIVE")

    @staticmethod
    def _router_for(tx: Tx, ext_net: str, subnet_id: str) -> str | None:
        for router in tx.list("router"):
            gw = router.get("external_gateway_info")
            if not gw or gw["network_id"] != ext_net:
                continue
            if any(f["subnet_id"] == subnet_id for p in router_ports(tx, router["id"])
                   for f in p["fixed_ips"]):
                return router["id"]
        return None

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if changes.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, changes["qos_policy_id"])
        if "port_id" in changes or "fixed_ip_address" in changes:
            port_id = changes.get("port_id", old["port_id"])
            if port_id is None:
                old.update(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
            else:
                self._associate(tx, ctx, old, port_id, changes.get("fixed_ip_address"))
            changes = {k: v for k, v in changes.items() if k not in ("port_id", "fixed_ip_address")}
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        for port in tx.list("port", parent_id=obj["floating_network_id"]):
            if port["device_id"] == obj["id"] and port["device_owner"] == "network:floatingip":
                self.api.hooks["port"].delete(tx, ADMIN, port, l3=True)
        tx.delete("floatingip", obj)


HOOKS = (RouterHooks, FloatingIPHooks)


def extra_routes(router: APIRouter, api: Any) -> None:
    """PUT /routers/{id}/add_router_interface, remove_router_interface, add/remove_extraroutes."""
    iface_body = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "subnet_id": {"type": "string"}, "port_id": {"type": "string"}}}}}}
    params = {"parameters": [{"name": "id", "in": "path", "required": True,
                              "schema": {"type": "string"}}], "requestBody": iface_body}

    def interface(action: str) -> Any:
        def work(ctx: Context, request: Request, payload: Any) -> dict:
            hooks: RouterHooks = api.hooks["router"]
            with api.store.write() as tx:
                r = fetch(tx, ctx, ROUTER, request.path_params["id"], write=True)
                fn = hooks.add_interface if action == "add" else hooks.remove_interface
                return fn(tx, ctx, r, payload)

        async def endpoint(request: Request) -> Any:
            return await api.call(request, work, await read_json(request))
        return endpoint

    def extraroutes(action: str) -> Any:
        def work(ctx: Context, request: Request, payload: Any) -> dict:
            if not isinstance(payload, dict) or not isinstance(payload.get("router"), dict) \
                    or "routes" not in payload["router"]:
                raise BadRequest("Expected {\"router\": {\"routes\": [...]}}")
            try:
                routes = a.list_of(a.to_route)(payload["router"]["routes"])
            except a.Invalid as exc:
                raise a.fail("routes", str(exc)) from None
            hooks: RouterHooks = api.hooks["router"]
            with api.store.write() as tx:
                r = fetch(tx, ctx, ROUTER, request.path_params["id"], write=True)
                if action == "add":
                    new = r["routes"] + [x for x in routes if x not in r["routes"]]
                    if len(new) > a.LIMITS.routes:
                        raise a.fail("routes", f"{len(new)} routes exceed the maximum of "
                                               f"{a.LIMITS.routes}")
                    hooks._check_routes(tx, r, new)
                else:
                    new = [x for x in r["routes"] if x not in routes]
                r["routes"] = new
                return {"router": view(ctx, ROUTER, tx.update("router", r))}

        async def endpoint(request: Request) -> Any:
            return await api.call(request, work, await read_json(request))
        return endpoint

    for action in ("add", "remove"):
        router.add_api_route(f"/v2.0/routers/{{id}}/{action}_router_interface", interface(action),
                             methods=["PUT"], response_model=None, openapi_extra=params,
                             name=f"{action}_router_interface")
        router.add_api_route(f"/v2.0/routers/{{id}}/{action}_extraroutes", extraroutes(action),
                             methods=["PUT"], response_model=None,
                             openapi_extra={"parameters": params["parameters"]},
                             name=f"{action}_extraroutes")
