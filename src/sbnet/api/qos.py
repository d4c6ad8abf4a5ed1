"""QoS policies and their bandwidth-limit, DSCP-marking and minimum-bandwidth rules."""

from __future__ import annotations

from sbnet.api import rbac
from sbnet.api.context import Context
from sbnet.api.crud import Hooks
from sbnet.model.errors import Conflict, Forbidden
from sbnet.model.resources import QOS_POLICY, QOS_RULES, ResourceSpec
from sbnet.store import Tx

RULE_TYPE = {"bandwidth_limit_rule": "bandwidth_limit", "dscp_marking_rule": "dscp_marking",
             "minimum_bandwidth_rule": "minimum_bandwidth"}


def _refresh(tx: Tx, policy_id: str) -> None:
    """Keep the policy's embedded rule list (what GET /qos/policies shows) in step."""
    policy = tx.get("policy", policy_id)
    if policy is None:
        return
    rules = []
    for spec in QOS_RULES:
        for rule in tx.list(spec.name, parent_id=policy_id):
            rules.append({**rule, "type": RULE_TYPE[spec.name], "qos_policy_id": policy_id})
    policy["rules"] = rules
    tx.update("policy", policy)


class PolicyHooks(Hooks):
    spec = QOS_POLICY

    def _check(self, tx: Tx, ctx: Context, body: dict, changes: dict) -> None:
        if changes.get("shared") and not ctx.is_admin:
            raise Forbidden("rule:create_policy:shared is disallowed by policy")
        if changes.get("is_default"):
            for other in tx.list("policy", project_id=body["project_id"]):
                if other["is_default"] and other["id"] != body["id"]:
                    raise Conflict(f"A default QoS policy exists for project {body['project_id']}.",
                                   type_name="QoSPolicyDefaultAlreadyExists")

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        self._check(tx, ctx, body, body)
        body["rules"] = []
        created = super().create(tx, ctx, body)
        rbac.on_create(tx, "policy", created)
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        self._check(tx, ctx, old, changes)
        rbac.on_update(tx, "policy", old, changes)
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        for typ in ("network", "port", "floatingip"):
            for user in tx.list(typ):
                if user.get("qos_policy_id") == obj["id"]:
                    raise Conflict(f"QoS Policy {obj['id']} is used by {typ} {user['id']}.",
                                   type_name="QosPolicyInUse")
        for spec in QOS_RULES:
            for rule in tx.list(spec.name, parent_id=obj["id"]):
                tx.delete(spec.name, rule)
        rbac.on_delete(tx, obj["id"])
        tx.delete("policy", obj)


class RuleHooks(Hooks):
    """One class for the three rule kinds; a policy holds at most one per kind and direction."""

    def __init__(self, api: object, spec: ResourceSpec) -> None:
        super().__init__(api)
        self.spec = spec

    def _conflict(self, tx: Tx, policy_id: str, rule: dict) -> None:
        for other in tx.list(self.spec.name, parent_id=policy_id):
            if other["id"] != rule["id"] and other.get("direction") == rule.get("direction"):
                raise Conflict(f"Rule {RULE_TYPE[self.spec.name]} conflicts with rule "
                               f"{other['id']} which already exists in QoS Policy {policy_id}.",
                               type_name="QoSRulesConflict")

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        policy_id = body["_parent"]
        self._conflict(tx, policy_id, body)
        policy = tx.get("policy", policy_id)
        created = tx.insert(self.spec.name, {k: v for k, v in body.items() if k != "_parent"},
                            policy["project_id"], policy_id, standard=False)
        _refresh(tx, policy_id)
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        old.update(changes)
        policy_id = tx.parent_of(self.spec.name, old["id"])
        self._conflict(tx, policy_id, old)
        body = tx.update(self.spec.name, old, standard=False)
        _refresh(tx, policy_id)
        return body

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        policy_id = tx.parent_of(self.spec.name, obj["id"])
        tx.delete(self.spec.name, obj)
        _refresh(tx, policy_id)


def _rule_hooks(spec: ResourceSpec) -> type:
    return type(f"{spec.name}_hooks", (RuleHooks,), {
        "spec": spec, "__init__": lambda self, api: RuleHooks.__init__(self, api, spec)})


HOOKS = (PolicyHooks, *(_rule_hooks(s) for s in QOS_RULES))
