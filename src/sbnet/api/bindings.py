"""Multiple port bindings (Neutron's binding-extended, as Nova migrates): inactive bindings per host, activation, and the migration's southbound reports."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from sbnet.api import policy
from sbnet.api.context import Context
from sbnet.api.crud import read_json
from sbnet.model.attrs import LIMITS, Invalid, to_dict_or_none
from sbnet.model.errors import BadRequest, Conflict, Forbidden, NeutronError, NotFound
from sbnet.model.resources import ACTIVATION_STRATEGIES, VNIC_TYPES, activation_strategy

BINDING_TYPE = "port_binding"       # the store's type of an inactive binding (rides the feed)
HANDOVER_TYPE = "ct_handover"       # a port's exported connections, for its destination host
PUBLIC = ("host", "vif_type", "vif_details", "vnic_type", "profile", "status", "project_id")
MAX_PART = 400                      # connections per handover part (the body limit)
ANNOUNCEMENTS = ("rarp", "garp", "na")    # what a VM may announce itself with
_NS = uuid.UUID("5b6e6574-0000-4000-8000-000000000019")
# Device owners whose ports may have several bindings (Neutron: compute and shared filesystems).
MULTI_BINDING_OWNERS = ("compute:", "manila:")


class PortBindingError(NeutronError):
    """Neutron's PortBindingError: no mechanism could bind the port there (HTTP 500, as Neutron)."""

    status = 500
    type_name = "PortBindingError"


def binding_id(port_id: str, host: str) -> str:
    return str(uuid.uuid5(_NS, f"{port_id}/{host}"))


def active_binding(port: dict) -> dict:
    """The port's active binding, as its binding:* attributes say it."""
    return {"host": port.get("binding:host_id") or "",
            "vif_type": port.get("binding:vif_type") or "unbound",
            "vif_details": port.get("binding:vif_details") or {},
            "vnic_type": port.get("binding:vnic_type") or "normal",
            "profile": port.get("binding:profile") or {}, "status": "ACTIVE",
            "project_id": port.get("project_id") or ""}


def public(binding: dict) -> dict:
    return {k: binding[k] for k in PUBLIC if k in binding}


def inactive_bindings(tx, port_id: str) -> list[dict]:
    return tx.list(BINDING_TYPE, parent_id=port_id)


def _not_found(port_id: str, host: str) -> NotFound:
    return NotFound(f"Binding for port {port_id} for host {host} could not be found.",
                    type_name="PortBindingNotFound")


def _host(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise BadRequest(f"Invalid input for host. Reason: '{value}' is not a valid host name.")
    return value


def check_body(payload: Any, create: bool) -> dict:
    """{"binding": {"host", "vnic_type", "profile", "project_id"}} as Neutron validates it."""
    body = payload.get("binding") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        raise BadRequest("Unable to find 'binding' in request body")
    allowed = {"host", "vnic_type", "profile"} | ({"project_id"} if create else set())
    extra = set(body) - allowed
    if extra:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(extra))}'")
    out: dict = {}
    if create:
        if "host" not in body:
            raise BadRequest("Failed to parse request. Required attribute 'host' not specified")
        out["host"] = _host(body["host"])
    elif "host" in body:
        out["host"] = _host(body["host"])
    if "vnic_type" in body:
        if body["vnic_type"] not in VNIC_TYPES:
            raise BadRequest(f"Invalid input for vnic_type. Reason: {body['vnic_type']!r} is "
                             f"not in {list(VNIC_TYPES)}.")
        out["vnic_type"] = body["vnic_type"]
    if "profile" in body:
        try:
            out["profile"] = to_dict_or_none(body["profile"]) or {}
        except Invalid as exc:
            raise BadRequest(f"Invalid input for profile. Reason: {exc}.") from None
    return out


def _bound(api, tx, port: dict, host: str, vnic_type: str, profile: dict) -> tuple[str, dict]:
    """vif_type and vif_details of `port` bound on `host`, as the port's own binding decides it."""
    from sbnet.api.ports import _vif
    trial = dict(port, **{"binding:host_id": host, "binding:vnic_type": vnic_type,
                          "binding:profile": profile})
    _vif(trial, tx, api.host_profiles, api.heartbeats)
    return trial["binding:vif_type"], trial["binding:vif_details"]


def extra_routes(router: APIRouter, api) -> None:
    base = "/v2.0/ports/{port_id}/bindings"

    def port_of(tx, ctx: Context, port_id: str) -> dict:
        port = tx.get("port", port_id)
        if port is None:
            raise NotFound(f"Port {port_id} could not be found.", type_name="PortNotFound")
        if not str(port.get("device_owner") or "").startswith(MULTI_BINDING_OWNERS):
            raise BadRequest(f"Invalid port {port_id}. Operation only valid on compute and "
                             "shared filesystem ports")
        return port

    def enforce(ctx: Context, action: str, port: dict | None = None) -> None:
        policy.enforce(ctx, "port_binding", action,
                       policy.Target(port.get("project_id") if port else None))

    def all_of(tx, port: dict) -> list[dict]:
        return [active_binding(port), *(dict(b, status="INACTIVE")
                                        for b in inactive_bindings(tx, port["id"]))]

    def find(tx, port: dict, host: str) -> dict | None:
        return next((b for b in all_of(tx, port) if b["host"] == host), None)

    def do_list(ctx: Context, request: Request, port_id: str) -> dict:
        enforce(ctx, "get")
        with api.store.read() as tx:
            items = all_of(tx, port_of(tx, ctx, port_id))
        for key in ("host", "status", "vif_type", "vnic_type"):
            wanted = request.query_params.getlist(key)
            if wanted:
                items = [b for b in items if str(b.get(key)) in wanted]
        fields = request.query_params.getlist("fields")
        return {"bindings": [{k: v for k, v in public(b).items() if not fields or k in fields}
                             for b in items]}

    def do_show(ctx: Context, request: Request, port_id: str, host: str) -> dict:
        enforce(ctx, "get")
        with api.store.read() as tx:
            b = find(tx, port_of(tx, ctx, port_id), host)
        if b is None:
            raise _not_found(port_id, host)
        return {"binding": public(b)}

    def do_create(ctx: Context, request: Request, port_id: str, payload: Any) -> dict:
        enforce(ctx, "create")
        body = check_body(payload, create=True)
        with api.store.write() as tx:
            port = port_of(tx, ctx, port_id)
            host = body["host"]
            if find(tx, port, host) is not None:
                raise Conflict(f"Binding for port {port_id} on host {host} already exists.",
                               type_name="PortBindingAlreadyExists")
            vnic = body.get("vnic_type", "normal")
            profile = body.get("profile", {})
            vif_type, details = _bound(api, tx, port, host, vnic, profile)
            if vif_type == "binding_failed":
                raise PortBindingError(f"Binding for port {port_id} on host {host} could not "
                                       "be created or updated.")
            b = {"id": binding_id(port_id, host), "port_id": port_id, "host": host,
                 "vif_type": vif_type, "vif_details": details, "vnic_type": vnic,
                 "profile": profile, "status": "INACTIVE",
                 "project_id": port.get("project_id") or "", "ready": None}
            tx.insert(BINDING_TYPE, b, b["project_id"], port_id, standard=False)
        return {"binding": public(b)}

    def do_update(ctx: Context, request: Request, port_id: str, host: str, payload: Any) -> dict:
        enforce(ctx, "update")
        body = check_body(payload, create=False)
        with api.store.write() as tx:
            port = port_of(tx, ctx, port_id)
            b = find(tx, port, host)
            if b is None:
                raise _not_found(port_id, host)
            vnic = body.get("vnic_type", b["vnic_type"])
            profile = body.get("profile", b["profile"])
            vif_type, details = _bound(api, tx, port, host, vnic, profile)
            if vif_type == "binding_failed":
                raise PortBindingError(f"Binding for port {port_id} on host {host} could not "
                                       "be created or updated.")
            if b["status"] == "ACTIVE":
                port.update({"binding:vnic_type": vnic, "binding:profile": profile,
                             "binding:vif_type": vif_type, "binding:vif_details": details})
                tx.update("port", port)
                return {"binding": public(active_binding(port))}
            stored = tx.get(BINDING_TYPE, binding_id(port_id, host))
            stored.update(vnic_type=vnic, profile=profile, vif_type=vif_type, vif_details=details)
            tx.update(BINDING_TYPE, stored, standard=False)
        return {"binding": public(dict(stored, status="INACTIVE"))}

    def do_activate(ctx: Context, request: Request, port_id: str, host: str) -> dict:
        enforce(ctx, "activate")
        with api.store.write() as tx:
            port = port_of(tx, ctx, port_id)
            old = active_binding(port)
            if old["host"] == host:
                raise Conflict(f"Binding for port {port_id} on host {host} is already active.",
                               type_name="PortBindingAlreadyActive")
            new = tx.get(BINDING_TYPE, binding_id(port_id, host))
            if new is None:
                raise _not_found(port_id, host)
            tx.delete(BINDING_TYPE, new)
            if old["host"]:
                # The binding that was active stays, inactive (Nova deletes it afterwards).
                # `former`: left by an activation, not a host the port is moving to.
                keep = dict(old, id=binding_id(port_id, old["host"]), port_id=port_id,
                            status="INACTIVE", ready=None, former=True)
                keep["profile"] = {k: v for k, v in keep["profile"].items()
                                   if k != "migrating_to"}
                tx.insert(BINDING_TYPE, keep, keep["project_id"], port_id, standard=False)
            port.update({"binding:host_id": host, "binding:vif_type": new["vif_type"],
                         "binding:vif_details": new["vif_details"],
                         "binding:vnic_type": new["vnic_type"],
                         "binding:profile": new["profile"], "status": "DOWN"})
            tx.update("port", port)
            return public(active_binding(port))

    def do_delete(ctx: Context, request: Request, port_id: str, host: str) -> None:
        enforce(ctx, "delete")
        with api.store.write() as tx:
            port = port_of(tx, ctx, port_id)
            b = find(tx, port, host)
            if b is None:
                raise _not_found(port_id, host)
            if b["status"] == "ACTIVE":
                # Neutron deletes the active binding's row: the port is unbound.
                port.update({"binding:host_id": "", "binding:vif_type": "unbound",
                             "binding:vif_details": {}, "status": "DOWN"})
                tx.update("port", port)
            else:
                tx.delete(BINDING_TYPE, tx.get(BINDING_TYPE, binding_id(port_id, host)))
            handover = tx.get(HANDOVER_TYPE, port_id)
            if handover is not None and host in (handover.get("source"), handover.get("target")):
                tx.delete(HANDOVER_TYPE, handover)

    @router.get(base)
    async def list_bindings(request: Request, port_id: str) -> dict:
        return await api.call(request, do_list, port_id)

    @router.post(base, status_code=201)
    async def create_binding(request: Request, port_id: str) -> dict:
        return await api.call(request, do_create, port_id, await read_json(request))

    @router.get(base + "/{host}")
    async def show_binding(request: Request, port_id: str, host: str) -> dict:
        return await api.call(request, do_show, port_id, host)

    @router.put(base + "/{host}")
    async def update_binding(request: Request, port_id: str, host: str) -> dict:
        return await api.call(request, do_update, port_id, host, await read_json(request))

    @router.put(base + "/{host}/activate")
    async def activate(request: Request, port_id: str, host: str) -> Any:
        return JSONResponse(await api.call(request, do_activate, port_id, host))

    @router.delete(base + "/{host}", status_code=204, response_class=Response)
    async def delete_binding(request: Request, port_id: str, host: str) -> Response:
        await api.call(request, do_delete, port_id, host)
        return Response(status_code=204)

    southbound_routes(router, api)


# --- what the hosts' agents report during a migration (sbnet's southbound, not Neutron's) ---

def _agent(ctx: Context, what: str) -> None:
    if not (ctx.is_admin or ctx.is_service):
        raise Forbidden(f"rule:{what} is disallowed by policy")


def check_entries(payload: Any) -> dict:
    """{"handover": {"source", "target", "part", "parts", "entries": [[remaining_s, w0..w31],
    ...]}}: each entry a connection row of the source's conntrack (sbnet.datapath.ctmove),
    sent in parts that each fit the API's body limit."""
    body = payload.get("handover") if isinstance(payload, dict) else None
    keys = {"source", "target", "part", "parts", "entries"}
    if not isinstance(body, dict) or set(body) != keys:
        raise BadRequest('Request body must be {"handover": {"source", "target", "part", '
                         '"parts", "entries"}}')
    part, parts = body["part"], body["parts"]
    if type(part) is not int or type(parts) is not int or not 0 <= part < parts <= 1000:
        raise BadRequest("part and parts: integers, 0 <= part < parts <= 1000")
    entries = body["entries"]
    if not isinstance(entries, list) or len(entries) > MAX_PART:
        raise BadRequest(f"entries: a list of at most {MAX_PART} connections per part")
    for e in entries:
        if not (isinstance(e, list) and len(e) == 33 and type(e[0]) in (int, float)
                and all(type(w) is int and 0 <= w < 2**64 for w in e[1:])):
            raise BadRequest("entries: each one [remaining seconds, 32 row words (uint64)]")
    return {"source": _host(body["source"]), "target": _host(body["target"]), "part": part,
            "parts": parts, "entries": entries}


def southbound_routes(router: APIRouter, api) -> None:
    def do_handover(ctx: Context, request: Request, port_id: str, payload: Any) -> dict:
        _agent(ctx, "handover_conntrack")
        body = check_entries(payload)
        with api.store.write() as tx:
            port = tx.get("port", port_id)
            if port is None:
                raise NotFound(f"Port {port_id} could not be found.", type_name="PortNotFound")
            src, dst = body["source"], body["target"]
            active = port.get("binding:host_id") or ""
            inactive = {b["host"]: b for b in inactive_bindings(tx, port_id)}
            # The pre-copy goes to a host the port is moving to; the final copy, once that
            # host is active, while the source still has the binding activation left it.
            if not ((active == src and dst in inactive and not inactive[dst].get("former"))
                    or (active == dst and inactive.get(src, {}).get("former"))):
                raise Conflict(f"Port {port_id} is not migrating from {src} to {dst}.",
                               type_name="NoSuchMigration")
            old = tx.get(HANDOVER_TYPE, port_id)
            if body["part"] == 0:
                row = {"id": port_id, "port_id": port_id, "source": src, "target": dst,
                       "parts": body["parts"], "received": 0, "entries": [],
                       "round": (old or {}).get("round", 0) + 1, "serial": uuid.uuid4().hex}
            elif old is None or old["received"] != body["part"] or \
                    (old["source"], old["target"], old["parts"]) != \
                    (body["source"], body["target"], body["parts"]):
                raise Conflict(f"Handover of port {port_id}: part {body['part']} does not "
                               "follow the parts received", type_name="HandoverOutOfOrder")
            else:
                row = old
            row["entries"] = row["entries"] + body["entries"]
            row["received"] += 1
            row.update(complete=row["received"] == row["parts"], exported_at=time.time())
            if old is None:
                tx.insert(HANDOVER_TYPE, row, port.get("project_id") or "", port_id,
                          standard=False)
            else:
                tx.update(HANDOVER_TYPE, row, standard=False)
        return {"handover": {k: row[k] for k in ("source", "target", "round", "complete")} |
                {"entries": len(row["entries"])}}

    def do_ready(ctx: Context, request: Request, port_id: str, host: str, payload: Any) -> dict:
        """The destination reports its pipeline for the port installed and, per handover
        round, how many connections it imported."""
        _agent(ctx, "report_binding_ready")
        ready = payload.get("ready") if isinstance(payload, dict) else None
        if not isinstance(ready, dict) or not all(
                type(ready.get(k)) is int and 0 <= ready[k] < 2**31
                for k in ("conntrack", "round")):
            raise BadRequest('Request body must be {"ready": {"conntrack": N, "round": N}}')
        with api.store.write() as tx:
            b = tx.get(BINDING_TYPE, binding_id(port_id, host))
            if b is None:
                raise _not_found(port_id, host)
            b["ready"] = {"conntrack": ready["conntrack"], "round": ready["round"],
                          "at": time.time()}
            tx.update(BINDING_TYPE, b, standard=False)
        return {"ready": b["ready"]}

    def do_announced(ctx: Context, request: Request, port_id: str, host: str,
                     payload: Any) -> dict:
        """The destination saw the VM announce itself on its VIF (a RARP, gratuitous ARP or
        unsolicited NA) and the binding's activation strategy takes that as the switch-over:
        the hosts run the port there (OVN's activation-strategy) until Nova activates."""
        _agent(ctx, "report_binding_announced")
        kind = payload.get("announced") if isinstance(payload, dict) else None
        if kind not in ANNOUNCEMENTS:
            raise BadRequest('Request body must be {"announced": "rarp", "garp" or "na"}')
        with api.store.write() as tx:
            b = tx.get(BINDING_TYPE, binding_id(port_id, host))
            if b is None or b.get("former"):
                raise _not_found(port_id, host)
            strategy = activation_strategy(b)
            if strategy is None or kind not in ACTIVATION_STRATEGIES[strategy]:
                raise Conflict(f"Binding for port {port_id} on host {host} is not activated "
                               f"by a {kind} announcement (activation-strategy: {strategy}).",
                               type_name="PortBindingActivationStrategy")
            if not b.get("announced"):
                b["announced"] = {"kind": kind, "at": time.time()}
                tx.update(BINDING_TYPE, b, standard=False)
        return {"announced": b["announced"]}

    def do_migration(ctx: Context, request: Request, port_id: str) -> dict:
        _agent(ctx, "get_migration")
        with api.store.read() as tx:
            port = tx.get("port", port_id)
            if port is None:
                raise NotFound(f"Port {port_id} could not be found.", type_name="PortNotFound")
            handover = tx.get(HANDOVER_TYPE, port_id)
            return {"port": port_id, "host": port.get("binding:host_id") or "",
                    "status": port.get("status"),
                    "bindings": [{"host": b["host"], "ready": b.get("ready"),
                                  "announced": b.get("announced")}
                                 for b in inactive_bindings(tx, port_id)],
                    "handover": None if handover is None else {
                        "source": handover["source"], "target": handover["target"],
                        "round": handover["round"], "complete": handover["complete"],
                        "entries": len(handover["entries"])}}

    @router.put("/v2.0/sbnet/ports/{port_id}/handover")
    async def handover(request: Request, port_id: str) -> dict:
        return await api.call(request, do_handover, port_id, await read_json(request))

    @router.put("/v2.0/sbnet/ports/{port_id}/bindings/{host}/ready")
    async def ready(request: Request, port_id: str, host: str) -> dict:
        return await api.call(request, do_ready, port_id, host, await read_json(request))

    @router.put("/v2.0/sbnet/ports/{port_id}/bindings/{host}/announced")
    async def announced(request: Request, port_id: str, host: str) -> dict:
        return await api.call(request, do_announced, port_id, host, await read_json(request))

    @router.get("/v2.0/sbnet/ports/{port_id}/migration")
    async def migration(request: Request, port_id: str) -> dict:
        return {"migration": await api.call(request, do_migration, port_id)}
