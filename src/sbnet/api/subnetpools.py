"""Subnet pools: prefixes that subnets are allocated from, with length bounds and a quota."""

from __future__ import annotations

import ipaddress

from sbnet.api.address_scopes import check_pool_scope, refresh_pool_networks
from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch
from sbnet.model import ipam
from sbnet.model.errors import BadRequest, Conflict, Forbidden
from sbnet.model.resources import SUBNETPOOL
from sbnet.store import Tx

BOUNDS = ("min_prefixlen", "default_prefixlen", "max_prefixlen")


def bad_pool(msg: str) -> BadRequest:
    return BadRequest(f"Invalid input for operation: {msg}.", type_name="InvalidInput")


def _compact(prefixes: list[str]) -> tuple[list[str], int]:
    """Neutron keeps a pool's prefixes merged (10.0.0.0/25 + 10.0.0.128/25 = 10.0.0.0/24)."""
    nets = [ipaddress.ip_network(p) for p in prefixes]
    versions = {n.version for n in nets}
    if not nets:
        raise bad_pool("a subnet pool needs at least one prefix")
    if len(versions) > 1:
        raise bad_pool("Cannot mix IPv4 and IPv6 prefixes in a subnet pool")
    return [str(n) for n in ipaddress.collapse_addresses(nets)], versions.pop()


def _check_bounds(pool: dict) -> None:
    top = 32 if pool["ip_version"] == 4 else 128
    lo, default, hi = (pool[b] for b in BOUNDS)
    if not 0 <= lo <= default <= hi <= top:
        raise bad_pool(f"Illegal prefix bounds: min_prefixlen {lo}, default_prefixlen {default}, "
                       f"max_prefixlen {hi} (0 <= min <= default <= max <= {top})")


def pool_subnets(tx: Tx, pool_id: str) -> list[dict]:
    return [s for s in tx.list("subnet") if s.get("subnetpool_id") == pool_id]


def _size(cidr: str) -> int:
    """Quota units as Neutron counts them: addresses for IPv4, /64s for IPv6."""
    net = ipaddress.ip_network(cidr)
    return net.num_addresses if net.version == 4 else 1 << max(0, 64 - net.prefixlen)


class SubnetPoolHooks(Hooks):
    spec = SUBNETPOOL

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        for name in ("shared", "is_default"):
            if body.get(name) and not ctx.is_admin:
                raise Forbidden(f"(rule:create_subnetpool and rule:create_subnetpool:{name}) is "
                                "disallowed by policy")
        body["prefixes"], body["ip_version"] = _compact(body["prefixes"])
        # Neutron's defaults: /8 (IPv4) or /64 (IPv6) up to a host route; default = min.
        if body["min_prefixlen"] is None:
            body["min_prefixlen"] = 8 if body["ip_version"] == 4 else 64
        if body["max_prefixlen"] is None:
            body["max_prefixlen"] = 32 if body["ip_version"] == 4 else 128
        if body["default_prefixlen"] is None:
            body["default_prefixlen"] = body["min_prefixlen"]
        _check_bounds(body)
        if body["is_default"]:
            self._one_default(tx, body)
        check_pool_scope(tx, ctx, body)
        return super().create(tx, ctx, body)

    @staticmethod
    def _one_default(tx: Tx, body: dict) -> None:
        for other in tx.list("subnetpool"):
            if other["id"] != body["id"] and other["is_default"] and \
                    other["ip_version"] == body["ip_version"]:
                raise Conflict(f"Invalid input for operation: A default subnetpool for this IP "
                               f"family has already been set. Only one default may exist per IP "
                               f"family.", type_name="InvalidInput")

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if "is_default" in changes and changes["is_default"] != old["is_default"] and not ctx.is_admin:
            raise Forbidden("rule:update_subnetpool:is_default is disallowed by policy")
        merged = {**old, **changes}
        if "prefixes" in changes:
            merged["prefixes"], version = _compact(changes["prefixes"])
            if version != old["ip_version"]:
                raise bad_pool("Cannot mix IPv4 and IPv6 prefixes in a subnet pool")
            new = [ipaddress.ip_network(p) for p in merged["prefixes"]]
            for p in old["prefixes"]:
                if not any(ipaddress.ip_network(p).subnet_of(n) for n in new):
                    raise bad_pool(f"Illegal update to prefixes: {p} would be removed; a subnet "
                                   "pool's prefixes can only grow")
        for name in BOUNDS:
            if merged[name] is None:
                raise bad_pool(f"{name} cannot be null")
        _check_bounds(merged)
        if merged["is_default"]:
            self._one_default(tx, merged)
        if "address_scope_id" in changes or "prefixes" in changes:
            check_pool_scope(tx, ctx, merged, old)
        rescoped = merged.get("address_scope_id") != old.get("address_scope_id")
        changes = {k: merged[k] for k in changes}
        out = super().update(tx, ctx, old, changes)
        if rescoped:
            refresh_pool_networks(tx, out["id"])
        return out

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        if pool_subnets(tx, obj["id"]):
            raise Conflict(f"Unable to complete operation on subnet pool {obj['id']}. Subnet pool "
                           "has existing allocations.", type_name="SubnetPoolInUse")
        super().delete(tx, ctx, obj)


def allocate_from_pool(tx: Tx, ctx: Context, body: dict) -> None:
    """Give a new subnet its cidr from its subnet pool (or check the one asked for); fills cidr,
    ip_version and subnetpool_id.  POST-only attributes prefixlen and use_default_subnetpool go."""
    prefixlen = body.pop("prefixlen", None)
    use_default = body.pop("use_default_subnetpool", False)
    pool_id = body.get("subnetpool_id")
    if pool_id is None and use_default:
        pool = next((p for p in tx.list("subnetpool")
                     if p["is_default"] and p["ip_version"] == body["ip_version"]), None)
        if pool is None:
            raise BadRequest(f"Bad subnets request: No default subnetpool found for IPv"
                             f"{body['ip_version']}.", type_name="BadRequest")
    elif pool_id is None:
        if body["cidr"] is None:
            raise BadRequest("Bad subnets request: a subnetpool must be specified in the absence "
                             "of a cidr.", type_name="BadRequest")
        if prefixlen is not None:
            raise BadRequest("Bad subnets request: prefixlen needs a subnet pool.",
                             type_name="BadRequest")
        return
    else:
        pool = fetch(tx, ctx, SUBNETPOOL, pool_id)
    if pool["ip_version"] != body["ip_version"]:
        raise BadRequest(f"Bad subnets request: ip_version {body['ip_version']} does not match "
                         f"subnet pool {pool['id']} (IPv{pool['ip_version']}).", type_name="BadRequest")
    used = [s["cidr"] for s in pool_subnets(tx, pool["id"])]
    if body["cidr"] is not None:
        if prefixlen is not None:
            raise BadRequest("Bad subnets request: cidr and prefixlen must not be supplied "
                             "together.", type_name="BadRequest")
        net = ipaddress.ip_network(body["cidr"])
        if not any(net.version == ipaddress.ip_network(p).version and
                   net.subnet_of(ipaddress.ip_network(p)) for p in pool["prefixes"]):
            raise BadRequest(f"Cidr {body['cidr']} is not within subnet pool {pool['id']}'s "
                             "prefixes.", type_name="BadRequest")
        if ipam.overlapping(body["cidr"], used):
            raise Conflict(f"Unable to allocate subnet with prefix {body['cidr']}: it overlaps "
                           "an allocation of the subnet pool.", type_name="SubnetAllocationError")
        prefixlen = net.prefixlen
    elif prefixlen is None:
        prefixlen = pool["default_prefixlen"]
    if not pool["min_prefixlen"] <= prefixlen <= pool["max_prefixlen"]:
        raise BadRequest(f"Unable to allocate subnet with prefix length {prefixlen}, allowed are "
                         f"{pool['min_prefixlen']} to {pool['max_prefixlen']}.",
                         type_name="IllegalSubnetPrefixLength")
    cidr = body["cidr"] or ipam.allocate_prefix(pool["prefixes"], prefixlen, used)
    if cidr is None:
        raise Conflict(f"Insufficient prefix space to allocate subnet size /{prefixlen}.",
                       type_name="SubnetAllocationError")
    if pool["default_quota"] is not None:
        mine = sum(_size(s["cidr"]) for s in pool_subnets(tx, pool["id"])
                   if s["project_id"] == body["project_id"])
        if mine + _size(cidr) > pool["default_quota"]:
            raise Conflict(f"Per-project quota of {pool['default_quota']} on subnet pool "
                           f"{pool['id']} exceeded.", type_name="SubnetPoolQuotaExceeded")
    body.update(cidr=cidr, subnetpool_id=pool["id"])


HOOKS = (SubnetPoolHooks,)
