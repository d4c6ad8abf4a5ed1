"""Generic collection and member endpoints driven by the declarations, with per-family hooks."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from sbnet.api import lane, policy
from sbnet.api.sharing import Sight
from sbnet.model import attrs as a
from sbnet.model.errors import BadRequest, Forbidden, NotFound, PreconditionFailed, not_found
from sbnet.model.resources import BY_NAME, ResourceSpec
from sbnet.store import Tx

if TYPE_CHECKING:
    from sbnet.api.app import Api
    from sbnet.api.context import Context

RESERVED = {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse", "tags",
            "tags-any", "not-tags", "not-tags-any"}


class Hooks:
    """What a resource does beyond storing its body; family modules subclass it."""

    spec: ResourceSpec

    def __init__(self, api: "Api") -> None:
        self.api = api

    def parent_of(self, body: dict) -> str | None:
        return None

    def create(self, tx: Tx, ctx: "Context", body: dict) -> dict:
        parent = body.pop("_parent", None) or self.parent_of(body)
        return tx.insert(self.spec.name, body, body.get("project_id", ""), parent)

    def update(self, tx: Tx, ctx: "Context", old: dict, changes: dict) -> dict:
        old.update(changes)
        return tx.update(self.spec.name, old)

    def delete(self, tx: Tx, ctx: "Context", obj: dict) -> None:
        tx.delete(self.spec.name, obj)

    def write_keys(self, bodies: list[dict] | None = None, ident: str | None = None) -> list[str] | None:
        """What a create of `bodies`, or an update or delete of `ident`, must hold exclusively
        (Store.write's keys); None, the default: the whole store."""
        return None

    def reads(self, bodies: list[dict]) -> tuple[list, list]:
        """What a scoped create of `bodies` will read: documents (type, id) and lists (type,
        parent_id, project_id), for Tx.prefetch."""
        return [], []

    def before_list(self, ctx: "Context") -> None:
        """Runs before a list (the default security group is created lazily here)."""


# --- visibility, the one place that decides what a project may see and change ---

def visible(ctx: "Context", spec: ResourceSpec, body: dict, tx: Tx) -> bool:
    return Sight(tx, ctx).sees(spec, body)


def owned(ctx: "Context", body: dict) -> bool:
    return ctx.is_admin or body.get("project_id") == ctx.project_id


def fetch(tx: Tx, ctx: "Context", spec: ResourceSpec, ident: Any, write: bool = False) -> dict:
    """A resource the caller may see (and, for writes, change); invisible ones are NotFound."""
    body = tx.get(spec.name, ident) if isinstance(ident, str) else None
    if body is None or not visible(ctx, spec, body, tx):
        raise not_found(spec.not_found_type, spec.label, str(ident))
    if write and not (owned(ctx, body) and ctx.is_member):
        raise Forbidden(f"rule:update_{spec.name} is disallowed by policy")
    return body


def target(tx: Tx, ctx: "Context", spec: ResourceSpec, body: dict) -> policy.Target:
    """What the policy needs about a resource: its project, its network's owner, and whether
    that network is shared with the caller (by `shared` or an RBAC entry)."""
    net = tx.get("network", body["network_id"]) \
        if isinstance(body.get("network_id"), str) and spec.name != "network" else None
    if net is None:
        return policy.Target(body.get("project_id"))
    # Whether it is shared is asked only by rules the caller's other roles do not settle
    # (it may load the RBAC entries).
    sight = Sight(tx, ctx)
    return policy.Target(body.get("project_id"), net.get("project_id"),
                         lambda: sight.shared("network", net))


def view(ctx: "Context", spec: ResourceSpec, body: dict, fields: list[str] | None = None) -> dict:
    hide = policy.hidden(ctx, spec.name, policy.Target(body.get("project_id")))
    out = {k: v for k, v in body.items() if k not in hide}
    if fields:
        out = {k: v for k, v in out.items() if k in fields}
    return out


def set_project(ctx: "Context", spec: ResourceSpec, body: dict) -> None:
    if "project_id" not in spec.attrs:
        return
    given = {body.get("project_id"), body.get("tenant_id")} - {None}
    if len(given) > 1:
        raise BadRequest("project_id and tenant_id do not match")
    project = given.pop() if given else ctx.project_id
    if project != ctx.project_id and not ctx.is_admin:
        raise BadRequest("Specifying 'project_id' or 'tenant_id' other than the authenticated "
                         "project in request requires admin privileges")
    body["project_id"] = body["tenant_id"] = project


def check_if_match(request_headers: Any, body: dict) -> None:
    header = request_headers.get("if-match")
    if not header:
        return
    for part in header.split(","):
        part = part.strip().strip('"')
        if not part.startswith("revision_number="):
            raise BadRequest(f"If-Match header must be revision_number=N, not '{header}'")
        try:
            wanted = int(part.split("=", 1)[1])
        except ValueError:
            raise BadRequest(f"If-Match header must be revision_number=N, not '{header}'") from None
        if wanted != body.get("revision_number"):
            raise PreconditionFailed(filter_rev=wanted, current_rev=body.get("revision_number"))


# --- list queries: filters, tags, sorting, pagination ---

def _norm(v: Any) -> list[str]:
    if isinstance(v, bool):
        return [str(v).lower()]
    if v is None:
        return ["", "none", "null"]
    return [str(v).lower()]


def _matches(item: dict, key: str, values: list[str]) -> bool:
    v = item.get(key)
    wanted = {x.lower() for x in values}
    if key == "fixed_ips":  # fixed_ips=ip_address=X, subnet_id=Y or ip_address_substr=Z
        conds = [w.partition("=") for w in values]
        return any(val in str(ip.get("ip_address")) if k == "ip_address_substr"
                   else str(ip.get(k)) == val for k, _, val in conds for ip in v or [])
    if isinstance(v, list):
        return any(str(x).lower() in wanted for x in v)
    if isinstance(v, dict):
        return False
    return any(x in wanted for x in _norm(v))


def _split(values: list[str]) -> set[str]:
    return {t for v in values for t in v.split(",") if t}


def _sort_value(v: Any) -> tuple:
    if v is None:
        return (2, "")
    if isinstance(v, (int, float)):
        return (0, v)
    return (1, v if isinstance(v, str) else json.dumps(v, sort_keys=True))


def query(spec: ResourceSpec, items: list[dict], params: list[tuple[str, str]],
          url: str, hidden: frozenset[str] = frozenset()) -> tuple[list[dict], list[dict]]:
    """Apply filters, tags, sort and limit/marker; returns (page, links).  Attributes in
    `hidden` (the caller may not see them) are neither filtered nor sorted on."""
    multi: dict[str, list[str]] = {}
    for k, v in params:
        multi.setdefault(k, []).append(v)
    for key, values in multi.items():
        if key in RESERVED or key not in spec.attrs or key in hidden:
            continue  # unknown filters are ignored, as Neutron does without filter-validation
        items = [i for i in items if _matches(i, key, values)]
    for key, test in (("tags", lambda have, want: want <= have),
                      ("tags-any", lambda have, want: bool(want & have)),
                      ("not-tags", lambda have, want: not want <= have),
                      ("not-tags-any", lambda have, want: not want & have)):
        if key in multi:
            want = _split(multi[key])
            items = [i for i in items if test(set(i.get("tags", [])), want)]
    keys, dirs = multi.get("sort_key", []), multi.get("sort_dir", [])
    if dirs and len(dirs) != len(keys):
        raise BadRequest("The number of sort_keys and sort_dirs must be same")
    for k in keys:
        if k not in spec.attrs or k in hidden:
            raise BadRequest(f"{k} is invalid attribute for sort_key")
    for d in dirs:
        if d not in ("asc", "desc"):
            raise BadRequest(f"{d} is invalid value for sort_dir, valid values are 'asc' and 'desc'")
    for k, d in reversed(list(zip(keys, dirs or ["asc"] * len(keys)))):
        items = sorted(items, key=lambda i: _sort_value(i.get(k)), reverse=d == "desc")
    limit = 0
    if "limit" in multi:
        raw = multi["limit"][-1]
        if not raw.isdigit():
            raise BadRequest(f"Limit must be an integer 0 or greater and not '{raw}'")
        limit = int(raw)
    marker = multi.get("marker", [None])[-1]
    reverse = multi.get("page_reverse", ["false"])[-1].lower() == "true"
    if marker is not None:
        idx = next((n for n, i in enumerate(items) if i["id"] == marker), None)
        if idx is None:
            raise NotFound(f"Marker {marker} could not be found.", type_name="NotFound")
        items = items[:idx] if reverse else items[idx + 1:]
    links = []
    if limit:
        page = items[-limit:] if reverse else items[:limit]
        base = [(k, v) for k, v in params if k not in ("marker", "page_reverse")]
        if len(page) == limit and page:
            nxt = page[0] if reverse else page[-1]
            q = base + [("marker", nxt["id"])] + ([("page_reverse", "True")] if reverse else [])
            links.append({"rel": "previous" if reverse else "next", "href": f"{url}?{urlencode(q)}"})
        if marker is not None and page:
            prv = page[-1] if reverse else page[0]
            q = base + [("marker", prv["id"])] + ([] if reverse else [("page_reverse", "True")])
            links.append({"rel": "next" if reverse else "previous", "href": f"{url}?{urlencode(q)}"})
        items = page
    return items, links


def paged(collection: str, items: list[dict], request: Request) -> dict:
    """A list of what is no stored resource (agents, quotas), each item with an "id", with
    Neutron's filters, sorting, fields and page links as every stored collection has."""
    names = {k for i in items for k in i} | {"id"}
    spec = ResourceSpec(collection, collection, collection, collection,
                        {k: a.Attr(k, post=False, put=False) for k in names}, tags=False)
    page, links = query(spec, items, list(request.query_params.multi_items()),
                        str(request.url).split("?")[0])
    fields = request.query_params.getlist("fields")
    out: dict = {collection: [{k: v for k, v in i.items() if not fields or k in fields}
                              for i in page]}
    if links:
        out[f"{collection}_links"] = links
    return out


# --- request bodies ---

async def read_json(request: Request) -> Any:
    """The request's JSON body, read only once the caller is authenticated (an anonymous
    request costs no parsing), at most LIMITS.depth deep (sbnet.api.app caps its size)."""
    request.app.state.api.context(request)
    raw = await request.body()
    if not raw:
        raise BadRequest("Resource body required")
    try:
        payload = lane.loads(raw)
    except (ValueError, UnicodeError, RecursionError):
        raise BadRequest("Malformed request body") from None
    if _depth(payload) > a.LIMITS.depth:
        raise BadRequest(f"Malformed request body: nested deeper than {a.LIMITS.depth} levels")
    return payload


def _depth(value: Any) -> int:
    """How deeply lists and objects nest in a JSON value (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def unwrap(spec: ResourceSpec, payload: Any, allow_bulk: bool) -> list[dict] | dict:
    if isinstance(payload, dict) and allow_bulk and spec.collection in payload \
            and spec.name not in payload:
        bulk = payload[spec.collection]
        if not isinstance(bulk, list) or not bulk:
            raise BadRequest(f"Resources required: expected a non-empty list '{spec.collection}'")
        if len(bulk) > a.LIMITS.bulk:
            raise BadRequest(f"Bulk request of {len(bulk)} {spec.collection} exceeds the "
                             f"maximum of {a.LIMITS.bulk}")
        return bulk
    if not isinstance(payload, dict) or spec.name not in payload:
        raise BadRequest(f"Unable to find '{spec.name}' in request body")
    return payload[spec.name]


def _schema(spec: ResourceSpec, create: bool) -> dict:
    props = {}
    for name, at in spec.attrs.items():
        if not (at.post if create else at.put):
            continue
        props[name] = at.schema or a.schema_of(at.convert)
    inner = {"type": "object", "properties": props}
    if create:
        inner["required"] = [n for n, at in spec.attrs.items() if at.default is a.REQUIRED]
    return {"content": {"application/json": {"schema": {
        "type": "object", "properties": {spec.name: inner}, "required": [spec.name]}}}}


def _param(name: str, where: str = "path", required: bool = True, array: bool = False) -> dict:
    schema: dict = {"type": "string"}
    if array:
        schema = {"type": "array", "items": {"type": "string"}}
    return {"name": name, "in": where, "required": required, "schema": schema}


LIST_PARAMS = [_param(n, "query", False, arr) for n, arr in (
    ("fields", True), ("sort_key", True), ("sort_dir", True), ("limit", False),
    ("marker", False), ("page_reverse", False), ("tags", False), ("name", False))]


def openapi(params: list[dict], body: dict | None = None) -> dict:
    extra: dict = {"parameters": params}
    if body:
        extra["requestBody"] = body
    return extra


# --- the endpoints of one resource ---

def register(router: APIRouter, api: "Api", hooks: Hooks) -> None:
    spec = hooks.spec
    base = f"/v2.0/{spec.path}"
    member = base + "/{id}"
    pparams = [_param("parent_id")] if spec.parent else []

    def parent_guard(tx: Tx, ctx: "Context", request: Request, write: bool) -> str | None:
        if not spec.parent:
            return None
        parent = fetch(tx, ctx, BY_NAME[spec.parent], request.path_params["parent_id"], write)
        return parent["id"]

    def do_list(ctx: "Context", request: Request) -> dict:
        hooks.before_list(ctx)
        with api.store.read() as tx:
            parent_id = parent_guard(tx, ctx, request, False)
            items = tx.list(spec.name, parent_id=parent_id)
            sight = Sight(tx, ctx)
            items = [sight.shown(spec.name, i) for i in items if spec.parent or sight.sees(spec, i)]
        params = list(request.query_params.multi_items())
        page, links = query(spec, items, params, str(request.url).split("?")[0],
                            policy.hidden(ctx, spec.name, policy.Target(None)))
        fields = request.query_params.getlist("fields")
        out: dict = {spec.collection: [view(ctx, spec, i, fields) for i in page]}
        if links:
            out[f"{spec.collection}_links"] = links
        return out

    def do_show(ctx: "Context", request: Request) -> dict:
        with api.store.read() as tx:
            parent_id = parent_guard(tx, ctx, request, False)
            body = Sight(tx, ctx).shown(spec.name, _member(tx, ctx, request, parent_id, False))
        return {spec.name: view(ctx, spec, body, request.query_params.getlist("fields"))}

    def _member(tx: Tx, ctx: "Context", request: Request, parent_id: str | None, write: bool) -> dict:
        ident = request.path_params["id"]
        if spec.parent:
            body = tx.get(spec.name, ident)
            if body is None or tx_parent(tx, spec, ident) != parent_id:
                raise not_found(spec.not_found_type, spec.label, ident)
            return body
        return fetch(tx, ctx, spec, ident, write)

    def do_create(ctx: "Context", request: Request, payload: Any) -> tuple[int, dict]:
        items = unwrap(spec, payload, allow_bulk=not spec.parent)
        bulk = isinstance(items, list)
        raw = items if bulk else [items]
        bodies = [a.validate_body(spec.attrs, i, create=True, resource=spec.name) for i in raw]
        for body in bodies:
            set_project(ctx, spec, body)
        keys = hooks.write_keys(bodies)
        if keys is not None:
            keys += [api.quotas.key(spec.name, b.get("project_id", "")) for b in bodies]
        with api.store.write(keys) as tx:
            if keys is not None:   # a scoped write: what it reads, read in one round trip
                tx.prefetch(*hooks.reads(bodies), counts=api.quotas.counted(
                    spec.name, {b.get("project_id", "") for b in bodies}))
            parent_id = parent_guard(tx, ctx, request, True)
            created = []
            for item, body in zip(raw, bodies):
                tgt = target(tx, ctx, spec, body)
                if parent_id:
                    tgt = policy.Target(tx.get(spec.parent, parent_id)["project_id"])
                # As Neutron: an attribute given with its default value is not "set".
                given = {k: body[k] for k in item
                         if spec.attrs[k].default is a.REQUIRED or body[k] != spec.attrs[k].default_value()}
                policy.enforce(ctx, spec.name, "create", tgt, given)
                api.quotas.check(tx, body.get("project_id", ""), spec.name, 1)
                body["id"] = str(uuid.uuid4())
                if parent_id:
                    body["_parent"] = parent_id
                created.append(hooks.create(tx, ctx, body))
        if bulk:
            return 201, {spec.collection: [view(ctx, spec, c) for c in created]}
        return 201, {spec.name: view(ctx, spec, created[0])}

    def do_update(ctx: "Context", request: Request, payload: Any) -> dict:
        changes = a.validate_body(spec.attrs, unwrap(spec, payload, False), create=False,
                                  resource=spec.name)
        with api.store.write(hooks.write_keys(ident=request.path_params["id"])) as tx:
            parent_id = parent_guard(tx, ctx, request, True)
            old = _member(tx, ctx, request, parent_id, True)
            tgt = policy.Target(tx.get(spec.parent, parent_id)["project_id"]) if parent_id \
                else target(tx, ctx, spec, old)
            policy.enforce(ctx, spec.name, "update", tgt, changes)
            check_if_match(request.headers, old)
            body = hooks.update(tx, ctx, old, changes)
        return {spec.name: view(ctx, spec, body)}

    def do_delete(ctx: "Context", request: Request) -> None:
        with api.store.write(hooks.write_keys(ident=request.path_params["id"])) as tx:
            parent_id = parent_guard(tx, ctx, request, True)
            old = _member(tx, ctx, request, parent_id, True)
            tgt = policy.Target(tx.get(spec.parent, parent_id)["project_id"]) if parent_id \
                else target(tx, ctx, spec, old)
            policy.enforce(ctx, spec.name, "delete", tgt)
            check_if_match(request.headers, old)
            hooks.delete(tx, ctx, old)

    @lane.direct
    async def list_ep(request: Request) -> Any:
        return await api.call(request, do_list)

    @lane.direct
    async def show_ep(request: Request) -> Any:
        return await api.call(request, do_show)

    @lane.direct
    async def create_ep(request: Request) -> Any:
        payload = await read_json(request)
        status, out = await api.call(request, do_create, payload)
        return lane.FastJSON(out, status_code=status)

    @lane.direct
    async def update_ep(request: Request) -> Any:
        payload = await read_json(request)
        return await api.call(request, do_update, payload)

    @lane.direct
    async def delete_ep(request: Request) -> Any:
        await api.call(request, do_delete)
        return Response(status_code=204)

    idp = [*pparams, _param("id")]
    router.add_api_route(base, list_ep, response_model=None, methods=["GET"], openapi_extra=openapi(pparams + LIST_PARAMS),
                         name=f"list_{spec.collection}")
    router.add_api_route(base, create_ep, response_model=None, methods=["POST"], status_code=201,
                         openapi_extra=openapi(pparams, _schema(spec, True)), name=f"create_{spec.name}")
    router.add_api_route(member, show_ep, response_model=None, methods=["GET"],
                         openapi_extra=openapi(idp + LIST_PARAMS[:1]), name=f"show_{spec.name}")
    router.add_api_route(member, update_ep, response_model=None, methods=["PUT"],
                         openapi_extra=openapi(idp, _schema(spec, False)), name=f"update_{spec.name}")
    router.add_api_route(member, delete_ep, response_model=None, methods=["DELETE"], status_code=204, response_class=Response,
                         openapi_extra=openapi(idp), name=f"delete_{spec.name}")
    if spec.tags:
        register_tags(router, api, spec)


def tx_parent(tx: Tx, spec: ResourceSpec, ident: str) -> str | None:
    return tx.parent_of(spec.name, ident)


def register_tags(router: APIRouter, api: "Api", spec: ResourceSpec) -> None:
    """Neutron's tag API: /{collection}/{id}/tags[/{tag}]."""
    base = f"/v2.0/{spec.path}/{{id}}/tags"

    def mutate(ctx: "Context", request: Request, fn: Callable[[list[str]], list[str]]) -> list[str]:
        with api.store.write() as tx:
            body = fetch(tx, ctx, spec, request.path_params["id"], write=True)
            check_if_match(request.headers, body)
            tags = fn(list(body.get("tags", [])))
            if tags != body.get("tags"):
                body["tags"] = tags
                tx.update(spec.name, body)
            return tags

    def tag_arg(request: Request) -> str:
        try:
            return a.to_tag(request.path_params["tag"])
        except a.Invalid as exc:
            raise BadRequest(str(exc)) from None

    def do_get_all(ctx: "Context", request: Request) -> dict:
        with api.store.read() as tx:
            return {"tags": fetch(tx, ctx, spec, request.path_params["id"]).get("tags", [])}

    def do_get_one(ctx: "Context", request: Request) -> None:
        tag = tag_arg(request)
        with api.store.read() as tx:
            if tag not in fetch(tx, ctx, spec, request.path_params["id"]).get("tags", []):
                raise NotFound(f"Tag {tag} could not be found.", type_name="TagNotFound")

    def do_replace(ctx: "Context", request: Request, payload: Any) -> dict:
        if not isinstance(payload, dict) or "tags" not in payload:
            raise BadRequest("Invalid input for tags. Reason: expected {\"tags\": [...]}.")
        try:
            tags = a.to_tags(payload["tags"])
        except a.Invalid as exc:
            raise a.fail("tags", str(exc)) from None
        return {"tags": mutate(ctx, request, lambda _old: tags)}

    def do_add(ctx: "Context", request: Request) -> None:
        tag = tag_arg(request)
        mutate(ctx, request, lambda old: sorted(set(old) | {tag}))

    def do_remove(ctx: "Context", request: Request) -> None:
        tag = tag_arg(request)

        def drop(old: list[str]) -> list[str]:
            if tag not in old:
                raise NotFound(f"Tag {tag} could not be found.", type_name="TagNotFound")
            return [t for t in old if t != tag]
        mutate(ctx, request, drop)

    def do_clear(ctx: "Context", request: Request) -> None:
        mutate(ctx, request, lambda _old: [])

    @lane.direct
    async def get_all(request: Request) -> Any:
        return await api.call(request, do_get_all)

    @lane.direct
    async def get_one(request: Request) -> Any:
        await api.call(request, do_get_one)
        return Response(status_code=204)

    @lane.direct
    async def replace(request: Request) -> Any:
        payload = await read_json(request)
        return await api.call(request, do_replace, payload)

    @lane.direct
    async def add(request: Request) -> Any:
        await api.call(request, do_add)
        return Response(status_code=201)

    @lane.direct
    async def remove(request: Request) -> Any:
        await api.call(request, do_remove)
        return Response(status_code=204)

    @lane.direct
    async def clear(request: Request) -> Any:
        await api.call(request, do_clear)
        return Response(status_code=204)

    idp, tagp = [_param("id")], [_param("id"), _param("tag")]
    tag_body = {"content": {"application/json": {"schema": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["tags"]}}}}
    n = spec.name
    router.add_api_route(base, get_all, response_model=None, methods=["GET"], openapi_extra=openapi(idp), name=f"tags_{n}")
    router.add_api_route(base, replace, response_model=None, methods=["PUT"], openapi_extra=openapi(idp, tag_body),
                         name=f"replace_tags_{n}")
    router.add_api_route(base, clear, response_model=None, methods=["DELETE"], status_code=204, response_class=Response,
                         openapi_extra=openapi(idp), name=f"clear_tags_{n}")
    router.add_api_route(base + "/{tag}", get_one, response_model=None, methods=["GET"], status_code=204, response_class=Response,
                         openapi_extra=openapi(tagp), name=f"tag_{n}")
    router.add_api_route(base + "/{tag}", add, response_model=None, methods=["PUT"], status_code=201, response_class=Response,
                         openapi_extra=openapi(tagp), name=f"add_tag_{n}")
    router.add_api_route(base + "/{tag}", remove, response_model=None, methods=["DELETE"], status_code=204, response_class=Response,
                         openapi_extra=openapi(tagp), name=f"remove_tag_{n}")
