"""Security groups and rules, including each project's lazily created default group."""

from __future__ import annotations

import uuid

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch
from sbnet.model import secgroups
from sbnet.model.errors import Conflict
from sbnet.model.resources import SECURITY_GROUP, SECURITY_GROUP_RULE
from sbnet.store import Tx


def _new_rule(tx: Tx, group: dict, rule: dict) -> dict:
    rule = {"id": str(uuid.uuid4()), "project_id": group["project_id"],
            "tenant_id": group["project_id"], **rule}
    rule.update(normalized_cidr=rule.get("remote_ip_prefix"),
                belongs_to_default_sg=group["name"] == "default")
    return tx.insert("security_group_rule", rule, group["project_id"], group["id"])


def _create_group(tx: Tx, body: dict, is_default: bool) -> dict:
    rules = [_new_rule(tx, body, r) for r in secgroups.default_rules(body["id"], is_default)]
    body["security_group_rules"] = rules
    body["shared"] = False
    return tx.insert("security_group", body, body["project_id"])


def _default_group(tx: Tx, project_id: str) -> dict | None:
    return next((g for g in tx.list("security_group", project_id=project_id)
                 if g["name"] == "default"), None)


def ensure_default_group(tx: Tx, project_id: str) -> dict:
    """The project's "default" group, created with Neutron's default rules on first need."""
    group = _default_group(tx, project_id)
    if group is None:  # none yet: no concurrent port create of the project may make it too
        tx.lock(f"default_security_group:{project_id}")
        group = _default_group(tx, project_id)
    if group is not None:
        return group
    body = {"id": str(uuid.uuid4()), "name": "default", "description": "Default security group",
            "project_id": project_id, "tenant_id": project_id, "stateful": True, "tags": []}
    return _create_group(tx, body, is_default=True)


def _refresh_rules(tx: Tx, group_id: str) -> None:
    group = tx.get("security_group", group_id)
    if group is not None:
        group["security_group_rules"] = tx.list("security_group_rule", parent_id=group_id)
        tx.update("security_group", group)


class SecurityGroupHooks(Hooks):
    spec = SECURITY_GROUP

    def before_list(self, ctx: Context) -> None:
        with self.api.store.read() as tx:
            if any(g["name"] == "default" for g in tx.list("security_group", project_id=ctx.project_id)):
                return
        with self.api.store.write() as tx:
            ensure_default_group(tx, ctx.project_id)

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        ensure_default_group(tx, body["project_id"])
        if body["name"] == "default":
            raise Conflict("Default security group already exists.",
                           type_name="SecurityGroupDefaultAlreadyExists")
        return _create_group(tx, body, is_default=False)

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if "name" in changes and (old["name"] == "default") != (changes["name"] == "default"):
            raise Conflict("Updating default security group not allowed.",
                           type_name="SecurityGroupCannotUpdateDefault")
        if "stateful" in changes and changes["stateful"] != old["stateful"] and self._ports(tx, old):
            raise Conflict(f"Security Group {old['id']} in use.", type_name="SecurityGroupInUse")
        return super().update(tx, ctx, old, changes)

    @staticmethod
    def _ports(tx: Tx, group: dict) -> list[dict]:
        return [p for p in tx.list("port") if group["id"] in p["security_groups"]]

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        if obj["name"] == "default" and not ctx.is_admin:
            raise Conflict("Insufficient rights for removing default security group.",
                           type_name="SecurityGroupCannotRemoveDefault")
        if self._ports(tx, obj):
            raise Conflict(f"Security Group {obj['id']} in use.", type_name="SecurityGroupInUse")
        for rule in tx.list("security_group_rule", parent_id=obj["id"]):
            tx.delete("security_group_rule", rule)
        tx.delete("security_group", obj)
        # Rules elsewhere that named this group as their remote go with it, as in Neutron.
        touched = set()
        for rule in tx.list("security_group_rule"):
            if rule.get("remote_group_id") == obj["id"]:
                tx.delete("security_group_rule", rule)
                touched.add(rule["security_group_id"])
        for gid in touched:
            _refresh_rules(tx, gid)


class SecurityGroupRuleHooks(Hooks):
    spec = SECURITY_GROUP_RULE

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        group = fetch(tx, ctx, SECURITY_GROUP, body["security_group_id"], write=True)
        rule = secgroups.check_rule(body)
        if rule.get("remote_group_id"):
            fetch(tx, ctx, SECURITY_GROUP, rule["remote_group_id"])
        existing = tx.list("security_group_rule", parent_id=group["id"])
        secgroups.check_duplicate(rule, existing)
        rule.update(normalized_cidr=rule.get("remote_ip_prefix"),
                    belongs_to_default_sg=group["name"] == "default",
                    project_id=group["project_id"], tenant_id=group["project_id"])
        created = tx.insert("security_group_rule", rule, group["project_id"], group["id"])
        _refresh_rules(tx, group["id"])
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        body = super().update(tx, ctx, old, changes)
        _refresh_rules(tx, old["security_group_id"])
        return body

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        tx.delete("security_group_rule", obj)
        _refresh_rules(tx, obj["security_group_id"])


HOOKS = (SecurityGroupHooks, SecurityGroupRuleHooks)
