"""Address scopes: subnet pools whose prefixes may not overlap, and the scope each network's subnets are in."""

from __future__ import annotations

import ipaddress

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch
from sbnet.model.errors import BadRequest, Conflict
from sbnet.model.resources import ADDRESS_SCOPE
from sbnet.store import Tx


class AddressScopeHooks(Hooks):
    spec = ADDRESS_SCOPE

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if old["shared"] and changes.get("shared") is False:
            raise BadRequest(f"Unable to update address scope {old['id']} : Shared address "
                             "scope can't be unshared.", type_name="AddressScopeUpdateError")
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        if any(p.get("address_scope_id") == obj["id"] for p in tx.list("subnetpool")):
            raise Conflict(f"Unable to complete operation on address scope {obj['id']}. There "
                           "are one or more subnet pools in use on the address scope.",
                           type_name="AddressScopeInUse")
        super().delete(tx, ctx, obj)


def check_pool_scope(tx: Tx, ctx: Context, pool: dict, old: dict | None = None) -> None:
    """Neutron's rules for a subnet pool in an address scope: the scope is the caller's or
    shared, of the pool's IP version, its pools' prefixes do not overlap, and moving a pool
    leaves no network with subnets of one family in two scopes."""
    if old is not None and old.get("address_scope_id"):
        was = tx.get("address_scope", old["address_scope_id"])
        if was is not None and was["project_id"] != ctx.project_id and not ctx.is_admin:
            raise BadRequest(f"Illegal subnetpool update : subnetpool {pool['id']} cannot be "
                             "updated when associated with shared address scope "
                             f"{was['id']}.", type_name="IllegalSubnetPoolUpdate")
    scope_id = pool.get("address_scope_id")
    if scope_id is None:
        return
    scope = fetch(tx, ctx, ADDRESS_SCOPE, scope_id)
    if not (ctx.is_admin or scope["shared"] or scope["project_id"] == ctx.project_id):
        raise BadRequest(f"Illegal subnetpool association: subnetpool {pool['id']} cannot be "
                         f"associated with address scope {scope_id}.",
                         type_name="IllegalSubnetPoolAssociationToAddressScope")
    if scope["ip_version"] != pool["ip_version"]:
        raise BadRequest(f"Illegal subnetpool association: subnetpool {pool['id']} cannot use "
                         f"address scope {scope_id} with ip_version {scope['ip_version']}.",
                         type_name="IllegalSubnetPoolIpVersionAssociationToAddressScope")
    mine = [ipaddress.ip_network(p) for p in pool["prefixes"]]
    for other in tx.list("subnetpool"):
        if other["id"] != pool["id"] and other.get("address_scope_id") == scope_id and any(
                a.overlaps(ipaddress.ip_network(b)) for a in mine for b in other["prefixes"]):
            raise Conflict("Failed to associate address scope: subnetpools within an address "
                           "scope must have unique prefixes.", type_name="AddressScopePrefixConflict")
    if old is not None and old.get("address_scope_id") != scope_id:
        moved = [s for s in tx.list("subnet") if s.get("subnetpool_id") == pool["id"]]
        ids = {s["id"] for s in moved}
        for net_id in {s["network_id"] for s in moved}:
            if any(s["id"] not in ids and s["ip_version"] == pool["ip_version"]
                   for s in tx.list("subnet", parent_id=net_id)):
                raise BadRequest("Subnets of the same address family hosted on the same network "
                                 "must all participate in the same address scope.",
                                 type_name="NetworkAddressScopeAffinityError")


def refresh_network_scopes(tx: Tx, network_id: str) -> None:
    """A network's ipv4/ipv6_address_scope: the scope its subnets of that family are in
    (through their pools), when they all are in one."""
    net = tx.get("network", network_id)
    if net is None:
        return
    pools: dict[str, str | None] = {}
    changed = False
    for version in (4, 6):
        scopes = set()
        for s in tx.list("subnet", parent_id=network_id):
            if s["ip_version"] != version:
                continue
            pid = s.get("subnetpool_id")
            if pid and pid not in pools:
                pool = tx.get("subnetpool", pid)
                pools[pid] = pool.get("address_scope_id") if pool else None
            scopes.add(pools.get(pid) if pid else None)
        scope = scopes.pop() if len(scopes) == 1 else None
        key = f"ipv{version}_address_scope"
        if net.get(key) != scope:
            net[key], changed = scope, True
    if changed:
        tx.update("network", net)


def refresh_pool_networks(tx: Tx, pool_id: str) -> None:
    for net_id in {s["network_id"] for s in tx.list("subnet") if s.get("subnetpool_id") == pool_id}:
        refresh_network_scopes(tx, net_id)


HOOKS = (AddressScopeHooks,)
