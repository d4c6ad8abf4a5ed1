"""Quotas per project (/v2.0/quotas, details, defaults), enforced on create with Neutron's 409 OverQuota."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from sbnet.api.context import Context
from sbnet.api.crud import paged, read_json
from sbnet.model.errors import BadRequest, Conflict, Forbidden, NotFound
from sbnet.store import Tx

QUOTA_TYPE = "quota"       # the store's resource type: one row per project with its own limits
UNLIMITED = -1
MOST = 2**31 - 1
# Neutron's defaults (neutron/conf/quota.py); -1 is unlimited.
DEFAULTS = {"network": 100, "subnet": 100, "port": 500, "router": 10, "floatingip": 50,
            "security_group": 10, "security_group_rule": 100, "rbac_policy": 10,
            "subnetpool": UNLIMITED, "trunk": UNLIMITED}


def parse_defaults(items: list[str] | None) -> dict[str, int]:
    """RESOURCE=N options (as neutron.conf's [quotas] quota_RESOURCE) over Neutron's defaults."""
    out = dict(DEFAULTS)
    for item in items or ():
        name, _, value = item.partition("=")
        if name not in DEFAULTS:
            raise ValueError(f"--quota {item}: no resource {name!r} (one of {', '.join(DEFAULTS)})")
        try:
            out[name] = int(value)
        except ValueError:
            raise ValueError(f"--quota {item}: the limit must be an integer") from None
        if not UNLIMITED <= out[name] <= MOST:
            raise ValueError(f"--quota {item}: the limit must be -1 (unlimited) to {MOST}")
    return out


def over_quota(names: list[str]) -> Conflict:
    return Conflict(f"Quota exceeded for resources: {sorted(names)}.", type_name="OverQuota")


class Quotas:
    """The limits in force: the server's defaults, overridden per project by the admin."""

    def __init__(self, defaults: dict[str, int] | None = None) -> None:
        self.defaults = dict(defaults or DEFAULTS)

    def limits(self, tx: Tx, project: str) -> dict[str, int]:
        own = tx.get(QUOTA_TYPE, project) or {}
        return {k: own.get(k, v) for k, v in self.defaults.items()}

    def check(self, tx: Tx, project: str, resource: str, adding: int) -> None:
        """Refuse (409 OverQuota) `adding` more of `resource` beyond the project's limit."""
        if resource not in self.defaults:
            return
        limit = self.limits(tx, project)[resource]
        if limit == UNLIMITED:
            return
        # Writes scoped to something smaller than the store (ports: their network) may run
        # side by side: the project's count must not change between this check and commit.
        tx.lock(self.key(resource, project))
        if tx.count(resource, project) + adding > limit:
            raise over_quota([resource])

    def counted(self, resource: str, projects: set[str]) -> list[tuple[str, str]]:
        """The counts (type, project) that check() will take for these projects (for
        Tx.prefetch; a project's own limits are read with them only where asked for)."""
        return [(resource, p) for p in sorted(projects)] if resource in self.defaults else []

    @staticmethod
    def key(resource: str, project: str) -> str:
        """The write key that check() holds while it counts (a scoped create takes it up
        front, with its other keys: one statement less)."""
        return f"quota:{resource}:{project}"

    def details(self, tx: Tx, project: str) -> dict[str, dict]:
        return {k: {"limit": v, "used": tx.count(k, project), "reserved": 0}
                for k, v in self.limits(tx, project).items()}


def _own_or_admin(ctx: Context, project: str) -> None:
    if project != ctx.project_id and not ctx.is_admin:
        raise Forbidden("rule:get_quota is disallowed by policy")


def _admin(ctx: Context, action: str) -> None:
    if not ctx.is_admin:
        raise Forbidden(f"rule:{action}_quota is disallowed by policy")


def _changes(payload: Any) -> tuple[dict[str, int], bool]:
    if not isinstance(payload, dict) or not isinstance(payload.get("quota"), dict):
        raise BadRequest("Unable to find 'quota' in request body")
    body = dict(payload["quota"])
    force = body.pop("force", False) is True
    body.pop("check_limit", None)
    unknown = sorted(set(body) - set(DEFAULTS))
    if unknown:
        raise BadRequest(f"Unrecognized attribute(s) '{', '.join(unknown)}'")
    out = {}
    for name, value in body.items():
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        if type(value) is not int or not UNLIMITED <= value <= MOST:
            raise BadRequest(f"Invalid input for {name}. Reason: '{value}' is not in range "
                             f"{UNLIMITED} through {MOST}.")
        out[name] = value
    return out, force


def extra_routes(router: APIRouter, api: Any) -> None:
    quotas: Quotas = api.quotas

    def do_index(ctx: Context, request: Request) -> dict:
        _admin(ctx, "get")
        with api.store.read() as tx:
            rows = tx.list(QUOTA_TYPE)
            rows = [{**quotas.limits(tx, r["id"]), "id": r["id"], "project_id": r["id"],
                     "tenant_id": r["id"]} for r in rows]
        out = paged("quotas", rows, request)
        for row in out["quotas"]:
            row.pop("id", None)    # Neutron's rows carry the project, no id of their own
        return out

    def do_show(ctx: Context, request: Request, project: str) -> dict:
        _own_or_admin(ctx, project)
        with api.store.read() as tx:
            return {"quota": quotas.limits(tx, project)}

    def do_details(ctx: Context, request: Request, project: str) -> dict:
        _own_or_admin(ctx, project)
        with api.store.read() as tx:
            return {"quota": quotas.details(tx, project)}

    def do_update(ctx: Context, request: Request, project: str, payload: Any) -> dict:
        _admin(ctx, "update")
        changes, force = _changes(payload)
        if not project or len(project) > 255:
            raise BadRequest("A project id of 1 to 255 characters is required")
        with api.store.write() as tx:
            for name, limit in changes.items():
                used = tx.count(name, project)
                if not force and limit != UNLIMITED and used > limit:
                    raise BadRequest(f"Quota limit {limit} for {name} must be greater than or "
                                     f"equal to already used {used}")
            old = tx.get(QUOTA_TYPE, project)
            if old is None:
                tx.insert(QUOTA_TYPE, {"id": project, **changes}, project, standard=False)
            elif any(old.get(k) != v for k, v in changes.items()):
                tx.update(QUOTA_TYPE, {**old, **changes}, standard=False)
            return {"quota": quotas.limits(tx, project)}

    def do_delete(ctx: Context, request: Request, project: str) -> None:
        _admin(ctx, "delete")
        with api.store.write() as tx:
            old = tx.get(QUOTA_TYPE, project)
            if old is None:
                raise NotFound(f"Quota for tenant {project} could not be found.",
                               type_name="TenantQuotaNotFound")
            tx.delete(QUOTA_TYPE, old)

    @router.get("/v2.0/quotas")
    async def index(request: Request) -> dict:
        return await api.call(request, do_index)

    @router.get("/v2.0/quotas/project")
    async def project_of(request: Request) -> dict:
        ctx = api.context(request)
        return {"project": {"project_id": ctx.project_id}}

    @router.get("/v2.0/quotas/tenant")
    async def tenant_of(request: Request) -> dict:
        ctx = api.context(request)
        return {"tenant": {"tenant_id": ctx.project_id}}

    @router.get("/v2.0/quotas/{project}")
    async def show(request: Request, project: str) -> dict:
        return await api.call(request, do_show, project)

    @router.get("/v2.0/quotas/{project}/default")
    async def default(request: Request, project: str) -> dict:
        api.context(request)
        return {"quota": dict(quotas.defaults)}

    @router.get("/v2.0/quotas/{project}/details")
    async def details(request: Request, project: str) -> dict:
        return await api.call(request, do_details, project)

    @router.put("/v2.0/quotas/{project}")
    async def update(request: Request, project: str) -> dict:
        payload = await read_json(request)
        return await api.call(request, do_update, project, payload)

    @router.delete("/v2.0/quotas/{project}", status_code=204, response_class=Response)
    async def delete(request: Request, project: str) -> Response:
        await api.call(request, do_delete, project)
        return Response(status_code=204)
