"""The Octavia v2 API on /v2/lbaas (and /v2.0/lbaas, where octaviaclient looks): CRUD, status, quotas."""

from __future__ import annotations

import uuid
from typing import Any, Callable

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.routing import Route

from sbnet.api import crud
from sbnet.api import lbaas_rules as r
from sbnet.api.context import Context
from sbnet.model import attrs as a
from sbnet.model import lbaas as m
from sbnet.model.errors import BadRequest, Conflict, Forbidden, NeutronError
from sbnet.model.resources import ResourceSpec
from sbnet.store import Tx

T = m.STORE_TYPE
PREFIXES = ("/v2/lbaas", "/v2.0/lbaas")
DENIED = "Policy does not allow this request to be performed."


def fault(status: int, message: str) -> JSONResponse:
    """Octavia's error body (wsme's): faultcode Client for 4xx, Server for 5xx."""
    return JSONResponse({"faultcode": "Client" if status < 500 else "Server",
                         "faultstring": message, "debuginfo": None}, status_code=status)


# --- Octavia's default policy: project readers read, members write, admins see all ---

def _may_read(ctx: Context) -> bool:
    return ctx.is_reader or "load-balancer_observer" in ctx.roles \
        or "load-balancer_member" in ctx.roles


def _may_write(ctx: Context) -> bool:
    return ctx.is_member or "load-balancer_member" in ctx.roles


def _authorize(ctx: Context, write: bool) -> None:
    if not (_may_write(ctx) if write else _may_read(ctx)):
        raise Forbidden(DENIED)


# --- views: the stored body plus what Octavia derives (relations, operating status) ---

class Graph:
    """Every load-balancing resource of one transaction, indexed by relation."""

    def __init__(self, tx: Tx) -> None:
        self.lbs = {x["id"]: x for x in tx.list(T["loadbalancer"])}
        self.listeners = {x["id"]: x for x in tx.list(T["listener"])}
        self.pools = {x["id"]: x for x in tx.list(T["pool"])}
        self.members = {x["id"]: x for x in tx.list(T["member"])}
        self.hms = {x["id"]: x for x in tx.list(T["healthmonitor"])}
        self.hm_of = {x["pool_id"]: x for x in self.hms.values()}

    def pool_members(self, pool_id: str) -> list[dict]:
        return [x for x in self.members.values() if x["pool_id"] == pool_id]

    def member_status(self, member: dict) -> str:
        hm = self.hm_of.get(member["pool_id"])
        return m.member_status(member, hm is not None and hm["admin_state_up"])

    def pool_status(self, pool: dict) -> str:
        return m.pool_status(pool, [self.member_status(x) for x in self.pool_members(pool["id"])])

    def listener_status(self, listener: dict) -> str:
        pool = self.pools.get(listener.get("default_pool_id") or "")
        return m.worst(listener["admin_state_up"], [self.pool_status(pool)] if pool else [])

    def lb_status(self, lb: dict) -> str:
        return m.worst(lb["admin_state_up"], [self.listener_status(x) for x in
                                              self.listeners.values()
                                              if x["loadbalancer_id"] == lb["id"]])

    def view(self, spec: ResourceSpec, body: dict) -> dict:
        out = {k: body.get(k) for k in spec.attrs if k != "listener_id"}
        ident = body["id"]
        if spec is m.LOADBALANCER:
            out["listeners"] = [{"id": x["id"]} for x in self.listeners.values()
                                if x["loadbalancer_id"] == ident]
            out["pools"] = [{"id": x["id"]} for x in self.pools.values()
                            if x["loadbalancer_id"] == ident]
            out.update(additional_vips=[], vip_vnic_type="normal",
                       operating_status=self.lb_status(body))
        elif spec is m.LISTENER:
            out.update(loadbalancers=[{"id": body["loadbalancer_id"]}], l7policies=[],
                       operating_status=self.listener_status(body))
        elif spec is m.POOL:
            hm = self.hm_of.get(ident)
            out.update(loadbalancers=[{"id": body["loadbalancer_id"]}],
                       listeners=[{"id": x["id"]} for x in self.listeners.values()
                                  if x.get("default_pool_id") == ident],
                       members=[{"id": x["id"]} for x in self.pool_members(ident)],
                       healthmonitor_id=hm["id"] if hm else None,
                       operating_status=self.pool_status(body))
        elif spec is m.MEMBER:
            out["operating_status"] = self.member_status(body)
        elif spec is m.HEALTHMONITOR:
            out.update(pools=[{"id": body["pool_id"]}],
                       operating_status="ONLINE" if body["admin_state_up"] else "OFFLINE")
        return out

    def status_tree(self, lb: dict) -> dict:
        """GET .../loadbalancers/{id}/status: the statuses Octavia's drivers report."""
        def brief(body: dict, status: str, **kw: Any) -> dict:
            return {"id": body["id"], "name": body.get("name"), "provisioning_status":
                    body["provisioning_status"], "operating_status": status, **kw}

        def pool_tree(pool: dict) -> dict:
            extra: dict = {"members": [brief(x, self.member_status(x), address=x["address"],
                                             protocol_port=x["protocol_port"])
                                       for x in self.pool_members(pool["id"])]}
            hm = self.hm_of.get(pool["id"])
            if hm:
                extra["health_monitor"] = brief(hm, self.view(m.HEALTHMONITOR, hm)
                                                ["operating_status"], type=hm["type"])
            return brief(pool, self.pool_status(pool), **extra)
        listeners = []
        for x in self.listeners.values():
            if x["loadbalancer_id"] == lb["id"]:
                pool = self.pools.get(x.get("default_pool_id") or "")
                listeners.append(brief(x, self.listener_status(x),
                                       pools=[pool_tree(pool)] if pool else []))
        return {"statuses": {"loadbalancer": brief(lb, self.lb_status(lb), listeners=listeners)}}


# --- one resource's endpoints ---

def _octavia_params(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Octavia's sort=name:asc,id:desc becomes sort_key/sort_dir pairs for crud.query."""
    out = []
    for k, v in params:
        if k != "sort":
            out.append((k, v))
            continue
        for part in v.split(","):
            key, _, direction = part.partition(":")
            out += [("sort_key", key.strip()), ("sort_dir", (direction or "asc").strip())]
    return out


class Resource:
    """The list/show/create/update/delete of one Octavia resource over the store."""

    def __init__(self, api, spec: ResourceSpec) -> None:
        self.api, self.spec, self.typ = api, spec, T[spec.name]

    def get(self, tx: Tx, ctx: Context, request: Request) -> dict:
        ident = request.path_params["id"]
        body = r.get(tx, ctx, self.spec.name, ident, self.spec.label)
        if self.spec.parent and body["pool_id"] != request.path_params["pool_id"]:
            raise r.not_found(self.spec.label, ident)
        return body

    def parent(self, tx: Tx, ctx: Context, request: Request) -> dict | None:
        if not self.spec.parent:
            return None
        return r.get(tx, ctx, "pool", request.path_params["pool_id"], "Pool")

    def list(self, ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        with self.api.store.read() as tx:
            pool = self.parent(tx, ctx, request)
            graph = Graph(tx)
            items = tx.list(self.typ, parent_id=pool["id"] if pool else None)
        items = [graph.view(self.spec, x) for x in items
                 if ctx.is_admin or x["project_id"] == ctx.project_id]
        params = _octavia_params(list(request.query_params.multi_items()))
        page, links = crud.query(self.spec, items, params, str(request.url).split("?")[0])
        fields = request.query_params.getlist("fields")
        out: dict = {self.spec.collection: [_fields(x, fields) for x in page]}
        out[f"{self.spec.collection}_links"] = links
        return out

    def show(self, ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        with self.api.store.read() as tx:
            self.parent(tx, ctx, request)
            body = self.get(tx, ctx, request)
            view = Graph(tx).view(self.spec, body)
        return {self.spec.name: _fields(view, request.query_params.getlist("fields"))}

    def create(self, ctx: Context, request: Request, payload: Any) -> dict:
        _authorize(ctx, True)
        given = dict(_unwrap(self.spec, payload))
        ident = _given_id(ctx, given.pop("id", None))
        body = a.validate_body(self.spec.attrs, given, create=True, resource=self.spec.name)
        crud.set_project(ctx, self.spec, body)
        body.update(id=ident or str(uuid.uuid4()), provisioning_status="ACTIVE")
        with self.api.store.write() as tx:
            if ident and tx.get(self.typ, ident) is not None:
                raise Conflict(f"{self.spec.label} {ident} already exists.")
            parent = self.parent(tx, ctx, request)
            self._create(tx, ctx, body, parent)
            r.check_quota(tx, self.typ, body["project_id"])
            body["operating_status"] = None  # derived on every read
            tx.insert(self.typ, body, body["project_id"], parent["id"] if parent else None)
            view = Graph(tx).view(self.spec, body)
        return {self.spec.name: view}

    def _create(self, tx: Tx, ctx: Context, body: dict, parent: dict | None) -> None:
        name = self.spec.name
        if name == "loadbalancer":
            r.create_loadbalancer(tx, ctx, self.api, body)
        elif name == "listener":
            r.create_listener(tx, ctx, body)
        elif name == "pool":
            r.create_pool(tx, ctx, body)
        elif name == "member":
            r.create_member(tx, ctx, parent, body)
        elif name == "healthmonitor":
            r.create_healthmonitor(tx, ctx, body)

    def update(self, ctx: Context, request: Request, payload: Any) -> dict:
        _authorize(ctx, True)
        changes = a.validate_body(self.spec.attrs, _unwrap(self.spec, payload), create=False,
                                  resource=self.spec.name)
        with self.api.store.write() as tx:
            self.parent(tx, ctx, request)
            body = self.get(tx, ctx, request)
            if self.spec is m.POOL:
                r.update_pool(body, changes)
            merged = {**body, **changes}
            if self.spec is m.LISTENER:
                r.update_listener(tx, ctx, merged)
            if self.spec is m.HEALTHMONITOR:
                r.check_monitor(merged)
            body.update(merged)
            tx.update(self.typ, body)
            view = Graph(tx).view(self.spec, body)
        return {self.spec.name: view}

    def delete(self, ctx: Context, request: Request) -> None:
        _authorize(ctx, True)
        cascade = request.query_params.get("cascade", "false").lower() == "true"
        with self.api.store.write() as tx:
            self.parent(tx, ctx, request)
            body = self.get(tx, ctx, request)
            if self.spec is m.LOADBALANCER:
                r.delete_loadbalancer(tx, ctx, self.api, body, cascade)
            elif self.spec is m.POOL:
                r.delete_pool(tx, body)
            else:
                tx.delete(self.typ, body)


def _given_id(ctx: Context, ident: Any) -> str | None:
    """The id a caller gives: only an admin or a service may (a provider driver of a real
    Octavia does, so that sbnet's objects keep Octavia's ids); Octavia's own API takes none."""
    if ident is None:
        return None
    if not (ctx.is_admin or ctx.is_service):
        raise BadRequest("Invalid input: 'id' may be given only by an admin or a service.")
    try:
        return a.to_uuid(ident)
    except a.Invalid as exc:
        raise BadRequest(f"Invalid input for field/attribute id. {exc}") from None


def _unwrap(spec: ResourceSpec, payload: Any) -> dict:
    if not isinstance(payload, dict) or not isinstance(payload.get(spec.name), dict):
        raise BadRequest(f"Invalid input: expected an object '{spec.name}' in the request body.")
    return payload[spec.name]


def _fields(view: dict, fields: list[str]) -> dict:
    return {k: v for k, v in view.items() if k in fields} if fields else view


# --- quotas ---

def _quota_view(tx: Tx, project_id: str) -> dict:
    stored = tx.get("lb_quota", project_id) or {}
    out = {k: stored.get(k, -1) for k in m.QUOTA_NAMES}
    out.update(loadbalancer=out["load_balancer"], healthmonitor=out["health_monitor"])
    return out


def _quota_body(payload: Any) -> dict:
    if not isinstance(payload, dict) or not isinstance(payload.get("quota"), dict):
        raise BadRequest("Invalid input: expected an object 'quota' in the request body.")
    aliases = {"loadbalancer": "load_balancer", "healthmonitor": "health_monitor"}
    out = {}
    for k, v in payload["quota"].items():
        key = aliases.get(k, k)
        if key not in m.QUOTA_NAMES:
            raise BadRequest(f"Invalid input: unknown quota '{k}'.")
        try:
            out[key] = a.to_int(-1, 2**31 - 1, nullable=True)(v)
        except a.Invalid as exc:
            raise BadRequest(f"Invalid input for field/attribute {k}. {exc}") from None
        out[key] = -1 if out[key] is None else out[key]
    return out


def add(router: APIRouter, path: str, endpoint: Callable, method: str) -> None:
    """A plain Starlette route: FastAPI's own would cost create_app (made for every embedded
    cloud and test) a third more; these routes stay out of the OpenAPI document."""
    router.routes.append(Route(path, endpoint, methods=[method]))


def _quota_routes(router: APIRouter, api, call: Callable) -> None:
    def list_all(ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        with api.store.read() as tx:
            projects = [q["id"] for q in tx.list("lb_quota")
                        if ctx.is_admin or q["id"] == ctx.project_id]
            return {"quotas": [{"project_id": p, **_quota_view(tx, p)} for p in projects],
                    "quotas_links": []}

    def defaults(ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        return {"quota": {**{k: -1 for k in m.QUOTA_NAMES}, "loadbalancer": -1,
                          "healthmonitor": -1}}

    def show(ctx: Context, request: Request) -> dict:
        project = request.path_params["project_id"]
        if not ctx.is_admin and not (project == ctx.project_id and _may_read(ctx)):
            raise Forbidden(DENIED)
        with api.store.read() as tx:
            return {"quota": _quota_view(tx, project)}

    def update(ctx: Context, request: Request, payload: Any) -> dict:
        if not ctx.is_admin:
            raise Forbidden(DENIED)
        project = request.path_params["project_id"]
        changes = _quota_body(payload)
        with api.store.write() as tx:
            old = tx.get("lb_quota", project)
            if old is None:
                tx.insert("lb_quota", {"id": project, **changes}, project, standard=False)
            else:
                old.update(changes)
                tx.update("lb_quota", old, standard=False)
            return {"quota": _quota_view(tx, project)}

    def reset(ctx: Context, request: Request) -> None:
        if not ctx.is_admin:
            raise Forbidden(DENIED)
        with api.store.write() as tx:
            old = tx.get("lb_quota", request.path_params["project_id"])
            if old is None:
                raise r.not_found("Quota", request.path_params["project_id"])
            tx.delete("lb_quota", old)

    for prefix in PREFIXES:
        add(router, f"{prefix}/quotas", call(list_all), "GET")
        add(router, f"{prefix}/quotas/defaults", call(defaults), "GET")
        one = f"{prefix}/quotas/{{project_id}}"
        add(router, one, call(show), "GET")
        add(router, one, call(update, body=True), "PUT")
        add(router, one, call(reset, status=204), "DELETE")


# --- the routes ---

def extra_routes(router: APIRouter, api) -> None:
    def call(fn: Callable, body: bool = False, status: int = 200) -> Callable:
        """An endpoint: authenticate, run fn in the thread pool, render errors as Octavia's."""
        async def endpoint(request: Request) -> Any:
            try:
                args = [await crud.read_json(request)] if body else []
                out = await api.call(request, fn, *args)
            except NeutronError as exc:
                return fault(exc.status, exc.message)
            if status == 204:
                return Response(status_code=204)
            return JSONResponse(out, status_code=status)
        return endpoint

    for spec in m.ALL:
        res = Resource(api, spec)
        for prefix in PREFIXES:
            base = f"{prefix}/pools/{{pool_id}}/members" if spec.parent \
                else f"{prefix}/{spec.path}"
            add(router, base, call(res.list), "GET")
            add(router, base, call(res.create, body=True, status=201), "POST")
            add(router, base + "/{id}", call(res.show), "GET")
            add(router, base + "/{id}", call(res.update, body=True), "PUT")
            add(router, base + "/{id}", call(res.delete, status=204), "DELETE")

    def status(ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        with api.store.read() as tx:
            lb = r.get(tx, ctx, "loadbalancer", request.path_params["id"], "Load Balancer")
            return Graph(tx).status_tree(lb)

    def providers(ctx: Context, request: Request) -> dict:
        _authorize(ctx, False)
        return {"providers": [{"name": m.PROVIDER, "description": "sbnet: distributed L4 "
                               "load balancing compiled into every host's datapath"}]}

    for prefix in PREFIXES:
        add(router, f"{prefix}/loadbalancers/{{id}}/status", call(status), "GET")
        add(router, f"{prefix}/providers", call(providers), "GET")
    _quota_routes(router, api, call)

    def report_health(ctx: Context, request: Request, payload: Any) -> dict:
        """PUT /v2.0/sbnet/lbaas/health {"members": {id: "ONLINE"|"ERROR"}}: the agents'
        health-check verdicts (admin or service role).  A change is a model change: the
        compiler takes a failed member out of its listener's buckets on every host."""
        if not (ctx.is_admin or ctx.is_service):
            raise Forbidden(DENIED)
        verdicts = payload.get("members") if isinstance(payload, dict) else None
        if not isinstance(verdicts, dict) or not all(
                v in ("ONLINE", "ERROR") for v in verdicts.values()):
            raise BadRequest('Expected {"members": {member_id: "ONLINE" or "ERROR"}}.')
        changed = []
        with api.store.write() as tx:
            for ident, verdict in verdicts.items():
                member = tx.get(T["member"], ident) if isinstance(ident, str) else None
                if member is not None and member.get("health") != verdict:
                    member["health"] = verdict
                    tx.update(T["member"], member, standard=False)
                    changed.append(ident)
        return {"changed": changed}

    add(router, "/v2.0/sbnet/lbaas/health", call(report_health, body=True), "PUT")
