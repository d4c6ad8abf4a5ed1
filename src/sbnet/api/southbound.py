"""The southbound sync endpoints: a real neutron-server's sbnet driver writes Neutron's resources here.

With neutron-server in front, Neutron's database is the truth and sbnet's store is the copy the
host agents follow.  Each resource arrives whole, as Neutron returns it, with Neutron's revision
number; a write older than the copy is refused (409), the same revision again changes nothing.
A port's status belongs to the agents (they report it here, the driver carries it back to
Neutron), so Neutron's own idea of it never overwrites theirs, unless the port moved host.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import select

from sbnet.api.context import Context
from sbnet.api.hosts import HOST_TYPE
from sbnet.model.errors import BadRequest, Conflict, Forbidden
from sbnet.offload.binding import DIRECT_VNICS, bind_direct, host_profile, port_features
from sbnet.store import Tx
from sbnet.store import schema

# sbnet's store types a neutron-server may write, and the attribute naming each one's parent.
TYPES = {
    "network": None, "subnet": "network_id", "port": "network_id",
    "security_group": None, "security_group_rule": "security_group_id",
    "router": None, "floatingip": None, "policy": None, "trunk": None,
    "port_pair": None, "port_pair_group": None, "flow_classifier": None, "port_chain": None,
}
REVISION = "neutron_revision"     # Neutron's revision_number of the copy, kept apart from ours
SEGMENT_TYPES = ("vxlan", "gre", "geneve", "vlan", "flat")
UNBOUND = ("unbound", "binding_failed")
# What a VIF is on each datapath: os-vif plugs an OVS port on the userspace (netdev) br-int,
# or a plain tap the reference and eBPF datapaths pick up by name.
VIFS = {
    "ovs": ("ovs", {"port_filter": True, "connectivity": "l2", "datapath_type": "netdev",
                    "bridge_name": "br-int"}),
    "reference": ("tap", {"port_filter": True, "connectivity": "l2"}),
    "ebpf": ("tap", {"port_filter": True, "connectivity": "l2"}),
}


def _admin(ctx: Context) -> None:
    if not ctx.is_admin:
        raise Forbidden("rule:southbound_sync is disallowed by policy")


def _type(typ: str) -> str:
    if typ not in TYPES:
        raise BadRequest(f"Unknown southbound resource type {typ!r}; one of "
                         f"{', '.join(sorted(TYPES))}")
    return typ


def check_resource(typ: str, ident: str, payload: Any) -> dict:
    """The body a neutron-server sent: {"resource": {...}} with our id and an integer revision."""
    body = payload.get("resource") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        raise BadRequest('Request body must be {"resource": {...}}')
    if body.get("id", ident) != ident or not 0 < len(ident) <= 36:
        raise BadRequest(f"Resource id {body.get('id')!r} does not match the path {ident!r}")
    rev = body.get("revision_number")
    if not isinstance(rev, int) or isinstance(rev, bool) or rev < 0:
        raise BadRequest(f"Invalid revision_number {rev!r}: Neutron's revision, an integer >= 0")
    parent = TYPES[typ]
    if parent and not isinstance(body.get(parent), str):
        raise BadRequest(f"A {typ} needs its {parent}")
    out = dict(body, id=ident)
    out[REVISION] = out.pop("revision_number")
    out["revision_number"] = out[REVISION]
    if typ == "port" and out.get("binding:vif_type") in UNBOUND:
        # Neutron names the host before it binds there (and keeps it when binding fails):
        # for sbnet's agents a port is on a host once it is bound there.
        out["binding:host_id"] = ""
    return out


def put(tx: Tx, typ: str, body: dict) -> tuple[dict, str]:
    """Write one resource's copy; returns (the stored body, "created"|"updated"|"unchanged")."""
    old = tx.get(typ, body["id"])
    project = str(body.get("project_id") or body.get("tenant_id") or "")
    if old is None:
        parent = body.get(TYPES[typ]) if TYPES[typ] else None
        return tx.insert(typ, body, project, parent, standard=False), "created"
    have = old.get(REVISION)
    if isinstance(have, int) and body[REVISION] < have:
        raise Conflict(f"Stale {typ} {body['id']}: revision {body[REVISION]} is older than "
                       f"the copy's {have}", type_name="StaleRevision")
    if typ == "port" and "status" in old \
            and old.get("binding:host_id") == body.get("binding:host_id"):
        body["status"] = old["status"]
    if old == body:
        return old, "unchanged"
    return tx.update(typ, body, standard=False), "updated"


def delete(tx: Tx, typ: str, ident: str) -> bool:
    old = tx.get(typ, ident)
    if old is None:
        return False
    tx.delete(typ, old)
    return True


def inventory(tx: Tx) -> dict[str, dict[str, dict]]:
    """Every copy's Neutron revision (None where sbnet made it itself) and, for ports, status."""
    out: dict[str, dict[str, dict]] = {}
    for typ in TYPES:
        items = {}
        for body in tx.list(typ):
            item = {"revision_number": body.get(REVISION)}
            if typ == "port":
                item["status"] = body.get("status")
            items[body["id"]] = item
        out[typ] = items
    return out


def datapath_of(host: dict) -> str:
    """The datapath a host's agent runs: its registration's `datapath`, else the suffix of its
    agent_type (sbnet-ovs, sbnet-reference, sbnet-ebpf); OVS when it says neither."""
    kind = host.get("datapath") or str(host.get("agent_type") or "").rpartition("-")[2]
    return kind if kind in VIFS else "ovs"


def bind(tx: Tx, name: str, port: dict, network: dict, segment: dict) -> dict:
    """How host `name` binds `port` on `segment`: {"vif_type", "vif_details"}, or
    {"refused": why} when no live agent there can carry it."""
    host = tx.get(HOST_TYPE, name) if isinstance(name, str) and name else None
    if host is None:
        return {"refused": f"no sbnet agent has registered host {name!r}"}
    if host.get("alive") is False:
        return {"refused": f"the sbnet agent of host {name} is not alive"}
    kind, physnet = segment.get("network_type"), segment.get("physical_network")
    if kind not in SEGMENT_TYPES:
        return {"refused": f"sbnet does not carry {kind!r} segments"}
    if kind in ("vlan", "flat") and physnet not in (host.get("physnets") or {}):
        return {"refused": f"host {name} has no port on physical network {physnet!r}"}
    if port.get("binding:vnic_type", "normal") in DIRECT_VNICS:
        profile = host_profile(tx, None, name)
        if profile is None:
            return {"refused": f"host {name} registered no NIC profile for vnic_type direct"}
        net = dict(network, **{"provider:network_type": kind})
        pid = port.get("qos_policy_id") or net.get("qos_policy_id")
        policies = {pid: tx.get("policy", pid)} if pid else {}
        vif_type, details = bind_direct(profile, port_features(
            port, net, policies, tx.list("trunk"), tx.list("port_pair")))
        if vif_type == "binding_failed":
            return {"refused": details["reason"]}
        return {"vif_type": vif_type, "vif_details": details}
    vif_type, details = VIFS[datapath_of(host)]
    return {"vif_type": vif_type, "vif_details": dict(details)}


def extra_routes(router: APIRouter, api) -> None:
    def do_put(ctx: Context, request: Request, typ: str, ident: str, payload: Any) -> dict:
        _admin(ctx)
        body = check_resource(_type(typ), ident, payload)
        with api.store.write() as tx:
            stored, outcome = put(tx, typ, body)
        return {"resource": stored, "outcome": outcome}

    def do_delete(ctx: Context, request: Request, typ: str, ident: str) -> dict:
        _admin(ctx)
        with api.store.write() as tx:
            return {"deleted": delete(tx, _type(typ), ident)}

    def do_inventory(ctx: Context, request: Request) -> dict:
        _admin(ctx)
        with api.store.read() as tx:
            return {"revision": tx.conn.execute(select(schema.revision.c.value)).scalar_one(),
                    "resources": inventory(tx)}

    def do_bind(ctx: Context, request: Request, payload: Any) -> dict:
        _admin(ctx)
        if not isinstance(payload, dict) or not all(
                isinstance(payload.get(k), dict) for k in ("port", "network", "segment")):
            raise BadRequest('Request body must be {"host": NAME, "port": {...}, '
                             '"network": {...}, "segment": {...}}')
        with api.store.read() as tx:
            return bind(tx, payload.get("host"), payload["port"], payload["network"],
                        payload["segment"])

    @router.post("/v2.0/sbnet/southbound/bind")
    async def bind_port(request: Request) -> dict:
        return await api.call(request, do_bind, await _json(request))

    @router.get("/v2.0/sbnet/southbound")
    async def get_inventory(request: Request) -> dict:
        return await api.call(request, do_inventory)

    @router.put("/v2.0/sbnet/southbound/{typ}/{ident}")
    async def put_resource(request: Request, typ: str, ident: str) -> dict:
        return await api.call(request, do_put, typ, ident, await _json(request))

    @router.delete("/v2.0/sbnet/southbound/{typ}/{ident}")
    async def delete_resource(request: Request, typ: str, ident: str) -> dict:
        return await api.call(request, do_delete, typ, ident)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadRequest("Malformed JSON in request body") from None
