"""Host agents' endpoints: hosts register their tunnel endpoint and datapath, beat, report port status; agents' liveness (GET /v2.0/agents) and what a port bound to a host is told."""

from __future__ import annotations

import threading
import time
import uuid
import weakref
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request

from sbnet.api.context import Context
from sbnet.api.crud import paged, read_json
from sbnet.model.attrs import Invalid, to_ip
from sbnet.model.errors import BadRequest, Forbidden, NotFound

HOST_TYPE = "host"              # the store's resource type: it rides the change feed
STATUSES = ("ACTIVE", "DOWN", "BUILD", "ERROR")
DATAPATHS = ("ovs", "reference", "ebpf")
AGENT_DOWN_TIME = 75.0          # Neutron's agent_down_time default (s without a heartbeat)
AGENT_TYPES = {"ovs": "Open vSwitch agent", "reference": "sbnet reference switch agent",
               "ebpf": "sbnet eBPF agent"}
_AGENT_NS = uuid.UUID("5b6e6574-0000-4000-8000-000000000017")   # agent ids from host names


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class Beat:
    """A host's agent as last heard from: when (monotonic, and wall-clock for people), and
    the datapath it serves ports with."""

    seen: float
    started_at: str
    heartbeat_at: str
    config: dict = field(default_factory=dict)


class Heartbeats:
    """When each host's agent was last heard from.  Kept in memory beside the store: a
    heartbeat is no change to the model (no revision, no change-feed churn).  One per Store
    object, so every Api over the same store agrees.  On PostgreSQL, where several server
    processes (`sbnet serve --workers`) share the database and an agent's beats reach any
    of them, each beat is also written to the store's heartbeat table, and a host not heard
    from here is looked up there.  With an in-memory table, after an API restart agents are
    down until their next beat (every few seconds)."""

    _of: "weakref.WeakKeyDictionary[Any, Heartbeats]" = weakref.WeakKeyDictionary()
    _lock = threading.Lock()

    def __init__(self, down_after: float = AGENT_DOWN_TIME, clock=time.monotonic,
                 store: Any = None) -> None:
        self.down_after, self.clock = down_after, clock
        self.beats: dict[str, Beat] = {}
        self.store = store          # shared through this store's table, when not None

    @classmethod
    def of(cls, store) -> "Heartbeats":
        with cls._lock:
            out = cls._of.get(store)
            if out is None:
                out = cls._of[store] = Heartbeats(
                    store=None if getattr(store, "is_sqlite", True) else store)
            return out

    def beat(self, host: str, config: dict) -> bool:
        """Record a beat; True when the host was not alive before it (new or back)."""
        back = not self.alive(host)
        old = self.beats.get(host)
        now = _utc()
        beat = self.beats[host] = Beat(self.clock(), now if back or old is None
                                       else old.started_at, now, dict(config))
        if self.store is not None:
            self.store.put_heartbeat(host, time.time(), beat.started_at, now, beat.config)
        return back

    def alive(self, host: str) -> bool:
        b = self.beats.get(host)
        if (b is None or self.clock() - b.seen > self.down_after) and self.store is not None:
            b = self._load(self.store.heartbeats(host)).get(host)
        return b is not None and self.clock() - b.seen <= self.down_after

    def all(self) -> dict[str, Beat]:
        """Every host's last beat (those other server processes heard too)."""
        if self.store is not None:
            self._load(self.store.heartbeats())
        return dict(self.beats)

    def _load(self, rows: list[dict]) -> dict[str, Beat]:
        """Take the table's beats that are newer than ours (their wall-clock age put on
        our clock)."""
        now, wall = self.clock(), time.time()
        for r in rows:
            seen = now - max(0.0, wall - r["seen"])
            mine = self.beats.get(r["host"])
            if mine is None or mine.seen < seen:
                self.beats[r["host"]] = Beat(seen, r["started_at"], r["heartbeat_at"],
                                             dict(r["config"]))
        return self.beats


def vif_binding(config: dict) -> tuple[str, dict]:
    """What a normal port bound to a host is told (binding:vif_type, binding:vif_details), as
    Neutron's mechanism drivers say it: OVS names its bridge and datapath type (os-vif plugs
    into that, a netdev bridge included); the reference switch takes a tap device named
    tap + the port id's first 11 characters, as Nova names them."""
    if config.get("datapath") in ("reference", "ebpf"):
        return "tap", {"port_filter": True, "connectivity": "l2"}
    return "ovs", {"port_filter": True, "connectivity": "l2", "ovs_hybrid_plug": False,
                   "datapath_type": config.get("datapath_type") or "system",
                   "bridge_name": config.get("bridge") or "br-int"}


def bind_normal(heartbeats: Heartbeats | None, host: str,
                declared: bool = False) -> tuple[str, dict]:
    """A normal port on `host`: per the datapath its live agent registered, binding_failed
    when no live agent serves the host (as Neutron).  `declared`: the operator configured
    the host in the API itself (--host-profile: embedded or NIC-side hosts that no agent
    registers); it binds to OVS's defaults without an agent."""
    if heartbeats is not None and heartbeats.alive(host):
        return vif_binding(heartbeats.beats[host].config)
    return vif_binding({}) if declared else ("binding_failed", {})


def rebind(tx, heartbeats: Heartbeats, host: str) -> None:
    """A host whose agent is (back) up: its normal (and SmartNIC-backed: the NIC's agent
    binds them) ports that failed to bind bind now."""
    for p in tx.list("port"):
        if (p.get("binding:host_id") == host
                and p.get("binding:vnic_type") in ("normal", "smart-nic", "baremetal")
                and p.get("binding:vif_type") == "binding_failed"):
            p["binding:vif_type"], p["binding:vif_details"] = bind_normal(heartbeats, host)
            tx.update("port", p)


def agent_body(host: str, beat: Beat | None, row: dict | None, alive: bool) -> dict:
    """A host's agent in Neutron's agents format (`openstack network agent list`)."""
    config = dict(beat.config if beat else {})
    if row:
        config.update({k: row[k] for k in ("tunnel_ip", "physnets", "profile") if k in row})
    datapath = config.get("datapath") or "ovs"
    return {"id": str(uuid.uuid5(_AGENT_NS, host)), "agent_type": AGENT_TYPES.get(datapath,
                                                                                   datapath),
            "binary": "sbnet-agent", "host": host, "topic": "N/A", "alive": alive,
            "admin_state_up": True, "availability_zone": None, "description": None,
            "configurations": config, "created_at": beat.started_at if beat else None,
            "started_at": beat.started_at if beat else None,
            "heartbeat_timestamp": beat.heartbeat_at if beat else None,
            "resources_synced": None, "ha_state": None}


def _admin(ctx: Context, what: str) -> None:
    """Agents' endpoints: the operator, or an agent with Neutron's service role."""
    if not (ctx.is_admin or ctx.is_service):
        raise Forbidden(f"rule:{what} is disallowed by policy")


def check_host(name: str, body: Any) -> dict:
    """A host's registration: {"tunnel_ip": IP, "physnets": {name: ofport}, "profile": name}."""
    if not isinstance(body, dict) or not isinstance(body.get("host"), dict):
        raise BadRequest("Request body must be {\"host\": {...}}")
    h = body["host"]
    unknown = set(h) - {"tunnel_ip", "physnets", "profile", "agent_type", "datapath", "bridge",
                        "datapath_type"}
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(sorted(unknown))}'")
    if not name or len(name) > 36 or not name.isprintable() or "/" in name:
        raise BadRequest(f"Invalid host name {name!r}: 1 to 36 printable characters")
    try:
        ip = to_ip(h.get("tunnel_ip"))
    except Invalid:
        raise BadRequest(f"Invalid input for tunnel_ip: {h.get('tunnel_ip')!r} is not an "
                         "IP address") from None
    physnets = h.get("physnets") or {}
    if not isinstance(physnets, dict) or len(physnets) > 64 or not all(
            isinstance(k, str) and 0 < len(k) <= 64 and type(v) is int and 0 < v < 0xFFFFFF00
            for k, v in physnets.items()):
        raise BadRequest("Invalid input for physnets: a map of physical network name to ofport")
    profile = h.get("profile") or "software"
    if not isinstance(profile, str) or len(profile) > 64:
        raise BadRequest("Invalid input for profile: a NIC profile name")
    # Without `datapath`, the suffix of agent_type (sbnet-ovs, sbnet-reference) says it.
    datapath = h.get("datapath") or str(h.get("agent_type") or "").rpartition("-")[2]
    datapath = datapath if datapath in DATAPATHS or h.get("datapath") else "ovs"
    if datapath not in DATAPATHS:
        raise BadRequest(f"Invalid input for datapath: {datapath!r} is not one of "
                         f"{', '.join(DATAPATHS)}")
    extra = {}
    for key in ("bridge", "datapath_type"):
        v = h.get(key)
        if v is not None and (not isinstance(v, str) or not v.isprintable() or len(v) > 64):
            raise BadRequest(f"Invalid input for {key}: a name of at most 64 characters")
        extra[key] = v
    if not isinstance(h.get("agent_type") or "", str) or len(h.get("agent_type") or "") > 64:
        raise BadRequest("Invalid input for agent_type: a name of at most 64 characters")
    return {"id": name, "name": name, "tunnel_ip": ip, "physnets": physnets,
            "profile": profile, "agent_type": h.get("agent_type") or "sbnet",
            "datapath": datapath, **extra}


def extra_routes(router: APIRouter, api) -> None:
    def do_register(ctx: Context, request: Request, name: str, body: Any) -> dict:
        """A registration, or its repetition: the agent's heartbeat."""
        _admin(ctx, "register_host")
        host = check_host(name, body)
        with api.store.write() as tx:
            if api.heartbeats.beat(name, host):
                rebind(tx, api.heartbeats, name)
            old = tx.get(HOST_TYPE, name)
            if old is None:
                return tx.insert(HOST_TYPE, host, ctx.project_id)
            if all(old.get(k) == v for k, v in host.items()):
                return old                       # a heartbeat: no new revision
            old.update(host)
            return tx.update(HOST_TYPE, old)

    def do_agents(ctx: Context, request: Request) -> list[dict]:
        # As Neutron's policy: only the operator (or an agent) sees agents; for anyone else
        # the list is empty and each agent is not found, never an error.
        if not (ctx.is_admin or ctx.is_service):
            return []
        with api.store.read() as tx:
            rows = {h["id"]: h for h in tx.list(HOST_TYPE)}
        beats = api.heartbeats.all()
        return [agent_body(h, beats.get(h), rows.get(h), api.heartbeats.alive(h))
                for h in sorted(set(rows) | set(beats))]

    def do_agent(ctx: Context, request: Request, agent_id: str) -> dict:
        for a in do_agents(ctx, request):
            if a["id"] == agent_id:
                return a
        raise NotFound(f"Agent {agent_id} could not be found.", type_name="AgentNotFound")

    def do_list_agents(ctx: Context, request: Request) -> dict:
        return paged("agents", do_agents(ctx, request), request)

    @router.get("/v2.0/agents")
    async def agents(request: Request) -> dict:
        return await api.call(request, do_list_agents)

    @router.get("/v2.0/agents/{agent_id}")
    async def agent(request: Request, agent_id: str) -> dict:
        return {"agent": await api.call(request, do_agent, agent_id)}

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
                isinstance(v, dict) and all(isinstance(n, int) and 0 <= n < 2**64 for n in v.values())
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
        body = await read_json(request)
        return await api.call(request, do_report, name, body)

    @router.get("/v2.0/sbnet/ports/{port_id}/stats")
    async def port_stats(request: Request, port_id: str) -> dict:
        return {"stats": await api.call(request, do_port_stats, port_id)}

    @router.put("/v2.0/sbnet/hosts/{name}")
    async def register(request: Request, name: str) -> dict:
        body = await read_json(request)
        return {"host": await api.call(request, do_register, name, body)}

    @router.get("/v2.0/sbnet/hosts")
    async def hosts(request: Request) -> dict:
        return {"hosts": await api.call(request, do_list)}

    @router.delete("/v2.0/sbnet/hosts/{name}", status_code=204)
    async def delete(request: Request, name: str) -> None:
        await api.call(request, do_delete, name)

    @router.put("/v2.0/sbnet/ports/{port_id}/status")
    async def status(request: Request, port_id: str) -> dict:
        body = await read_json(request)
        return {"port": await api.call(request, do_status, port_id, body)}

