"""Host agents' endpoints: hosts register their tunnel endpoint, and report port status."""

from __future__ import annotations

import ipaddress
from typing import Any

from fastapi import APIRouter, Request

from sbnet.api.context import Context
from sbnet.model.errors import BadRequest, Forbidden, NotFound

HOST_TYPE = "host"              # the store's resource type: it rides the change feed
STATUSES = ("ACTIVE", "DOWN", "BUILD", "ERROR")


def _admin(ctx: Context, what: str) -> None:
    if not ctx.is_admin:
        raise Forbidden(f"rule:{what} is disallowed by policy")


def check_host(name: str, body: Any) -> dict:
    """A host's registration: {"tunnel_ip": IP, "physnets": {name: ofport}, "profile": name}."""
    if not isinstance(body, dict) or not isinstance(body.get("host"), dict):
        raise BadRequest("Request body must be {\"host\": {...}}")
    h = body["host"]
    unknown = set(h) - {"tunnel_ip", "physnets", "profile", "agent_type"}
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(unknown))}'")
    if not name or len(name) > 36 or not name.isprintable() or "/" in name:
        raise BadRequest(f"Invalid host name {name!r}: 1 to 36 printable characters")
    try:
        ip = str(ipaddress.ip_address(h.get("tunnel_ip")))
    except (TypeError, ValueError):
        raise BadRequest(f"Invalid input for tunnel_ip: {h.get('tunnel_ip')!r} is not an "
                         "IP address") from None
    physnets = h.get("physnets") or {}
    if not isinstance(physnets, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and 0 < v < 0xFFFFFF00
            for k, v in physnets.items()):
        raise BadRequest("Invalid input for physnets: a map of physical network name to ofport")
    profile = h.get("profile") or "software"
    if not isinstance(profile, str):
        raise BadRequest("Invalid input for profile: a NIC profile name")
    return {"id": name, "name": name, "tunnel_ip": ip, "physnets": physnets,
            "profile": profile, "agent_type": h.get("agent_type") or "sbnet"}


def extra_routes(router: APIRouter, api) -> None:
    def do_register(ctx: Context, request: Request, name: str, body: Any) -> dict:
        _admin(ctx, "register_host")
        host = check_host(name, body)
        with api.store.write() as tx:
            old = tx.get(HOST_TYPE, name)
            if old is None:
                return tx.insert(HOST_TYPE, host, ctx.project_id)
            if all(old.get(k) == v for k, v in host.items()):
                return old                       # a heartbeat: no new revision
            old.update(host)
            return tx.update(HOST_TYPE, old)

    def do_list(ctx: Context, request: Request) -> list[dict]:
        _admin(ctx, "get_hosts")
        with api.store.read() as tx:
            return tx.list(HOST_TYPE)

    def do_delete(ctx: Context, request: Request, name: str) -> None:
        _admin(ctx, "delete_host")
        with api.store.write() as tx:
            old = tx.get(HOST_TYPE, name)
            if old is None:
                raise NotFound(f"Host {name} could not be found.", type_name="HostNotFound")
            tx.delete(HOST_TYPE, old)

    def do_status(ctx: Context, request: Request, port_id: str, body: Any) -> dict:
        """An agent reports a port up or down (Neutron's agents do it over RPC)."""
        _admin(ctx, "update_port_status")
        status = (body or {}).get("status") if isinstance(body, dict) else None
        if status not in STATUSES:
            raise BadRequest(f"Invalid input for status: must be one of {', '.join(STATUSES)}")
        with api.store.write() as tx:
            port = tx.get("port", port_id)
            if port is None:
                raise NotFound(f"Port {port_id} could not be found.", type_name="PortNotFound")
            if port.get("status") == status:
                return port
            port["status"] = status
            return tx.update("port", port)

    # Counters change every second: they live in this process, not in the store (no
    # revision, no change-feed churn), and go when it restarts; agents report them again.
    stats: dict[str, dict] = {}

    def do_report(ctx: Context, request: Request, name: str, body: Any) -> dict:
        _admin(ctx, "report_stats")
        ports = body.get("ports") if isinstance(body, dict) else None
        if not isinstance(ports, dict) or not all(
                isinstance(v, dict) and all(isinstance(n, int) and n >= 0 for n in v.values())
                for v in ports.values()):
            raise BadRequest("Request body must be {\"ports\": {port_id: {counter: int}}}")
        for pid, counters in ports.items():
            stats[pid] = {"host": name, **counters}
        return {"ports": len(ports)}

    def do_port_stats(ctx: Context, request: Request, port_id: str) -> dict:
        _admin(ctx, "get_port_stats")
        if port_id not in stats:
            raise NotFound(f"No counters reported for port {port_id}.",
                           type_name="PortStatsNotFound")
        return stats[port_id]

    @router.put("/v2.0/sbnet/hosts/{name}/stats")
    async def report(request: Request, name: str) -> dict:
        body = await _json(request)
        return await api.call(request, do_report, name, body)

    @router.get("/v2.0/sbnet/ports/{port_id}/stats")
    async def port_stats(request: Request, port_id: str) -> dict:
        return {"stats": await api.call(request, do_port_stats, port_id)}

    @router.put("/v2.0/sbnet/hosts/{name}")
    async def register(request: Request, name: str) -> dict:
        body = await _json(request)
        return {"host": await api.call(request, do_register, name, body)}

    @router.get("/v2.0/sbnet/hosts")
    async def hosts(request: Request) -> dict:
        return {"hosts": await api.call(request, do_list)}

    @router.delete("/v2.0/sbnet/hosts/{name}", status_code=204)
    async def delete(request: Request, name: str) -> None:
        await api.call(request, do_delete, name)

    @router.put("/v2.0/sbnet/ports/{port_id}/status")
    async def status(request: Request, port_id: str) -> dict:
        body = await _json(request)
        return {"port": await api.call(request, do_status, port_id, body)}


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadRequest("Malformed JSON in request body") from None
