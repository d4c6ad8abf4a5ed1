"""RBAC policies: networks and QoS policies shared with chosen projects (access_as_shared, access_as_external)."""

from __future__ import annotations

import uuid

from sbnet.api.context import Context
from sbnet.api.crud import Hooks
from sbnet.api.sharing import BY_STORE, FLAG, OBJECTS, SHARED, WILDCARD, Sight
from sbnet.model.errors import Conflict, InvalidInput, NotFound
from sbnet.model.resources import RBAC_POLICY
from sbnet.store import Tx


# --- keeping the wildcard entries and the objects' flags in step ---

def entry(tx: Tx, otype: str, obj: dict, action: str, target: str = WILDCARD) -> dict:
    body = {"id": str(uuid.uuid4()), "project_id": obj["project_id"],
            "tenant_id": obj["project_id"], "object_type": otype, "object_id": obj["id"],
            "action": action, "target_tenant": target}
    return tx.insert(RBAC_POLICY.name, body, obj["project_id"], obj["id"], standard=False)


def on_create(tx: Tx, store_type: str, obj: dict) -> None:
    """A network or QoS policy created shared (or external) gets its wildcard entry."""
    otype = BY_STORE[store_type]
    for action in OBJECTS[otype][1]:
        if obj.get(FLAG[action]):
            entry(tx, otype, obj, action)


def on_update(tx: Tx, store_type: str, old: dict, changes: dict) -> None:
    """`shared` (or `router:external`) changed on the object: add or drop its wildcard entry,
    refusing (409) to unshare what other projects are using."""
    otype = BY_STORE[store_type]
    for action in OBJECTS[otype][1]:
        flag = FLAG[action]
        if flag not in changes or bool(changes[flag]) == bool(old.get(flag)):
            continue
        wild = [r for r in tx.list(RBAC_POLICY.name, parent_id=old["id"])
                if r["action"] == action and r["target_tenant"] == WILDCARD]
        if changes[flag] and not wild:
            entry(tx, otype, old, action)
        for r in [] if changes[flag] else wild:
            ensure_unused(tx, r)
            tx.delete(RBAC_POLICY.name, r)


def on_delete(tx: Tx, object_id: str) -> None:
    for r in tx.list(RBAC_POLICY.name, parent_id=object_id):
        tx.delete(RBAC_POLICY.name, r)


def _users(tx: Tx, rule: dict) -> list[tuple[str, str]]:
    """(project, what) of everything that depends on the access `rule` gives."""
    oid = rule["object_id"]
    if rule["object_type"] == "qos_policy":
        return [(u["project_id"], f"{typ} {u['id']}") for typ in ("network", "port", "floatingip")
                for u in tx.list(typ) if u.get("qos_policy_id") == oid]
    if rule["action"] == SHARED:
        return [(p["project_id"], f"port {p['id']}") for p in tx.list("port", parent_id=oid)
                if p["project_id"] and not p["device_owner"].startswith("network:")]
    out = [(f["project_id"], f"floating IP {f['id']}") for f in tx.list("floatingip")
           if f["floating_network_id"] == oid]
    out += [(r["project_id"], f"router {r['id']}") for r in tx.list("router")
            if (r.get("external_gateway_info") or {}).get("network_id") == oid]
    return out


def ensure_unused(tx: Tx, rule: dict, new_target: str | None = None) -> None:
    """Refuse (409) to take away access a project is using, unless another entry (or the
    object's ownership) still gives it (Neutron's RbacPolicyInUse / InvalidSharedSetting)."""
    if new_target == rule["target_tenant"]:
        return
    owner_type, _ = OBJECTS[rule["object_type"]]
    obj = tx.get(owner_type, rule["object_id"])
    if obj is None:
        return
    others = [r for r in tx.list(RBAC_POLICY.name, parent_id=obj["id"])
              if r["id"] != rule["id"] and r["action"] == rule["action"]]
    if new_target is not None:
        others.append({**rule, "target_tenant": new_target})
    if any(r["target_tenant"] == WILDCARD for r in others):
        return
    kept = {obj["project_id"]} | {r["target_tenant"] for r in others}
    lost = rule["target_tenant"]
    for project, what in _users(tx, rule):
        if project not in kept and (lost == WILDCARD or project == lost):
            if rule["object_type"] == "network" and rule["action"] == SHARED \
                    and rule["target_tenant"] == WILDCARD and "router" not in what:
                raise Conflict(f"Unable to reconfigure sharing settings for network {obj['id']}. "
                               "Multiple tenants are using it.", type_name="InvalidSharedSetting")
            raise Conflict(f"RBAC policy on object {obj['id']} cannot be removed because other "
                           f"objects depend on it.\nDetails: {what} of project {project} uses it.",
                           type_name="RbacPolicyInUse")


# --- the /v2.0/rbac-policies resource ---

def _is_uuid_like(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class RbacHooks(Hooks):
    spec = RBAC_POLICY

    def parent_of(self, body: dict) -> str | None:
        return body["object_id"]

    def _object(self, tx: Tx, ctx: Context, body: dict) -> dict:
        otype = body["object_type"]
        if otype not in OBJECTS:
            raise InvalidInput(error_message=f"'{otype}' is not a valid RBAC object type")
        store_type, actions = OBJECTS[otype]
        if body["action"] not in actions:
            raise InvalidInput(error_message=f"Action '{body['action']}' is not supported for "
                                             f"RBAC object type '{otype}'")
        obj = tx.get(store_type, body["object_id"])
        if obj is None or not (ctx.is_admin or Sight(tx, ctx).sees(
                self.api.hooks[store_type].spec, obj)):
            raise NotFound(f"{otype} {body['object_id']} could not be found.",
                           type_name="NetworkNotFound" if otype == "network" else "QosPolicyNotFound")
        if not ctx.is_admin and obj["project_id"] != ctx.project_id:
            raise InvalidInput(error_message=f"Only admins can manipulate policies on {otype}s "
                                             "they do not own")
        return obj

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        _check_target(body["target_tenant"])
        obj = self._object(tx, ctx, body)
        for r in tx.list(self.spec.name, parent_id=obj["id"]):
            if (r["action"], r["target_tenant"]) == (body["action"], body["target_tenant"]):
                raise Conflict("An RBAC policy already exists with those values.",
                               type_name="DuplicateRbacPolicy")
        created = super().create(tx, ctx, body)
        flag = FLAG[body["action"]]
        if body["target_tenant"] == WILDCARD and not obj.get(flag):
            obj[flag] = True
            tx.update(OBJECTS[body["object_type"]][0], obj)
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        target = changes.get("target_tenant", old["target_tenant"])
        _check_target(target)
        if target != old["target_tenant"]:
            for r in tx.list(self.spec.name, parent_id=old["object_id"]):
                if r["id"] != old["id"] and (r["action"], r["target_tenant"]) == (old["action"], target):
                    raise Conflict("An RBAC policy already exists with those values.",
                                   type_name="DuplicateRbacPolicy")
            ensure_unused(tx, old, target)
        old.update(changes)
        return tx.update(self.spec.name, old, standard=False)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        ensure_unused(tx, obj)
        tx.delete(self.spec.name, obj)
        if obj["target_tenant"] == WILDCARD:
            store_type = OBJECTS[obj["object_type"]][0]
            target = tx.get(store_type, obj["object_id"])
            flag = FLAG[obj["action"]]
            if target is not None and target.get(flag):
                target[flag] = False
                tx.update(store_type, target)


def _check_target(target: str) -> None:
    if target != WILDCARD and not _is_uuid_like(target):
        raise InvalidInput(error_message=f"'{target}' is not a valid target project ID; "
                                         "expected a UUID or '*'")


HOOKS = (RbacHooks,)
