"""Trunks: a parent port plus VLAN sub-ports, with add/remove/get_subports actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch, read_json, view
from sbnet.model import attrs as a
from sbnet.model.errors import BadRequest, Conflict, NotFound, not_found
from sbnet.model.resources import PORT, TRUNK
from sbnet.store import Tx


def _trunk_of(tx: Tx, port_id: str, skip: str | None = None) -> dict | None:
    for trunk in tx.list("trunk"):
        if trunk["id"] != skip and (trunk["port_id"] == port_id or
                                    any(s["port_id"] == port_id for s in trunk["sub_ports"])):
            return trunk
    return None


def _network_mtu(tx: Tx, port: dict | None) -> int | None:
    net = tx.get("network", port["network_id"]) if port else None
    return net.get("mtu") if net else None


def _check_mtu(tx: Tx, trunk: dict, sub: dict) -> None:
    """As Neutron's trunk rules: a subport's network MTU may not exceed the parent's (its
    frames would not fit the parent's link once tagged)."""
    parent_mtu = _network_mtu(tx, tx.get("port", trunk["port_id"]))
    sub_mtu = _network_mtu(tx, sub)
    if parent_mtu and sub_mtu and sub_mtu > parent_mtu:
        raise Conflict(f"MTU {sub_mtu} of subport {sub['id']} cannot be greater than MTU "
                       f"{parent_mtu} of trunk {trunk['port_id']}.",
                       type_name="SubPortMtuGreaterThanTrunkPortMtu")


def _check_subports(tx: Tx, ctx: Context, trunk: dict, new: Any) -> list[dict]:
    if not isinstance(new, list):
        raise a.fail("sub_ports", f"'{new}' is not a list")
    out = []
    taken = {s["segmentation_id"] for s in trunk["sub_ports"]}
    for sub in new:
        if not isinstance(sub, dict) or set(sub) - {"port_id", "segmentation_type", "segmentation_id"}:
            raise a.fail("sub_ports", f"'{sub}' must have port_id, segmentation_type, segmentation_id")
        try:
            port_id = a.to_uuid(sub.get("port_id"))
            seg_type = a.to_choice("vlan")(sub.get("segmentation_type", "vlan"))
            seg_id = a.to_int(1, 4094)(sub.get("segmentation_id"))
        except a.Invalid as exc:
            raise a.fail("sub_ports", str(exc)) from None
        port = fetch(tx, ctx, PORT, port_id, write=True)
        _check_mtu(tx, trunk, port)
        if port_id == trunk["port_id"] or _trunk_of(tx, port_id) or \
                any(o["port_id"] == port_id for o in out):
            raise Conflict(f"Port {port_id} is currently in use and is not eligible for use as a "
                           "subport.", type_name="PortInUse")
        if seg_id in taken:
            raise Conflict(f"segmentation_type {seg_type} and segmentation_id {seg_id} already in "
                           f"use on trunk {trunk['id']}.", type_name="DuplicateSubPort")
        taken.add(seg_id)
        out.append({"port_id": port_id, "segmentation_type": seg_type, "segmentation_id": seg_id})
    return out


def _sync_ports(tx: Tx, trunk: dict, before: list[dict], deleted: bool = False) -> None:
    """Mirror the trunk on its ports, as Neutron does: the parent's trunk_details, and each
    sub-port owned by the trunk (device_owner trunk:subport)."""
    now = [] if deleted else trunk["sub_ports"]
    for sub in before:
        if sub not in now:
            port = tx.get("port", sub["port_id"])
            if port and port["device_owner"] == "trunk:subport":
                port.update(device_owner="", device_id="")
                tx.update("port", port)
    details = []
    for sub in now:
        port = tx.get("port", sub["port_id"])
        if sub not in before and port["device_owner"] != "trunk:subport":
            port.update(device_owner="trunk:subport", device_id=trunk["id"])
            tx.update("port", port)
        details.append({**sub, "mac_address": port["mac_address"]})
    parent = tx.get("port", trunk["port_id"])
    if parent is not None:
        parent["trunk_details"] = None if deleted else {"trunk_id": trunk["id"], "sub_ports": details}
        tx.update("port", parent)


class TrunkHooks(Hooks):
    spec = TRUNK

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        fetch(tx, ctx, PORT, body["port_id"], write=True)
        if _trunk_of(tx, body["port_id"]):
            raise Conflict(f"Port {body['port_id']} is currently in use and is not eligible for use "
                           "as a parent port.", type_name="ParentPortInUse")
        requested = body["sub_ports"]
        body["sub_ports"] = []
        body["sub_ports"] = _check_subports(tx, ctx, body, requested)
        body["status"] = "DOWN"
        created = super().create(tx, ctx, body)
        _sync_ports(tx, created, [])
        return created

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        parent = tx.get("port", obj["port_id"])
        if parent and parent["binding:host_id"]:
            raise Conflict(f"Trunk {obj['id']} is currently in use.", type_name="TrunkInUse")
        tx.delete("trunk", obj)
        _sync_ports(tx, obj, obj["sub_ports"], deleted=True)


HOOKS = (TrunkHooks,)


def extra_routes(router: APIRouter, api: Any) -> None:
    body = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "sub_ports": {"type": "array", "items": {"type": "object"}}}, "required": ["sub_ports"]}}}}
    idp = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]

    def change(action: str) -> Any:
        def work(ctx: Context, request: Request, payload: Any) -> dict:
            if not isinstance(payload, dict) or "sub_ports" not in payload:
                raise BadRequest("Expected {\"sub_ports\": [...]}")
            with api.store.write() as tx:
                trunk = fetch(tx, ctx, TRUNK, request.path_params["id"], write=True)
                before = list(trunk["sub_ports"])
                if action == "add":
                    trunk["sub_ports"] = trunk["sub_ports"] + _check_subports(
                        tx, ctx, trunk, payload["sub_ports"])
                else:
                    if not isinstance(payload["sub_ports"], list):
                        raise a.fail("sub_ports", "not a list")
                    for sub in payload["sub_ports"]:
                        pid = sub.get("port_id") if isinstance(sub, dict) else None
                        if not any(s["port_id"] == pid for s in trunk["sub_ports"]):
                            raise NotFound(f"SubPort {pid} could not be found in trunk "
                                           f"{trunk['id']}.", type_name="SubPortNotFound")
                        trunk["sub_ports"] = [s for s in trunk["sub_ports"] if s["port_id"] != pid]
                updated = tx.update("trunk", trunk)
                _sync_ports(tx, updated, before)
                return view(ctx, TRUNK, updated)

        async def endpoint(request: Request) -> Any:
            return await api.call(request, work, await read_json(request))
        return endpoint

    def get_work(ctx: Context, request: Request) -> dict:
        with api.store.read() as tx:
            return {"sub_ports": fetch(tx, ctx, TRUNK, request.path_params["id"])["sub_ports"]}

    async def get_subports(request: Request) -> Any:
        return await api.call(request, get_work)

    for action in ("add", "remove"):
        router.add_api_route(f"/v2.0/trunks/{{id}}/{action}_subports", change(action),
                             methods=["PUT"], response_model=None,
                             openapi_extra={"parameters": idp, "requestBody": body},
                             name=f"{action}_subports")
    router.add_api_route("/v2.0/trunks/{id}/get_subports", get_subports, methods=["GET"],
                         response_model=None, openapi_extra={"parameters": idp}, name="get_subports")


__all__ = ["HOOKS", "extra_routes", "not_found"]
