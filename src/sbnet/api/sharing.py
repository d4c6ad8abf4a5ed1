"""Who a network or QoS policy is shared with (RBAC entries), and so what one caller may see."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from sbnet.api.context import Context
from sbnet.model.resources import RBAC_POLICY
from sbnet.store import Tx

if TYPE_CHECKING:
    from sbnet.model.resources import ResourceSpec

SHARED, EXTERNAL = "access_as_shared", "access_as_external"
WILDCARD = "*"
# object_type -> (the store's resource type, the actions it takes)
OBJECTS = {"network": ("network", (SHARED, EXTERNAL)), "qos_policy": ("policy", (SHARED,))}
# The stored flag that mirrors a wildcard entry (Neutron's `shared` is a wildcard entry).
FLAG = {SHARED: "shared", EXTERNAL: "router:external"}
BY_STORE = {store: otype for otype, (store, _) in OBJECTS.items()}


class Grants:
    """The RBAC entries of some objects, by object id: who each object is shared with."""

    def __init__(self, rows: list[dict]) -> None:
        self.by_object: dict[str, list[dict]] = defaultdict(list)
        for r in rows:
            self.by_object[r["object_id"]].append(r)

    @classmethod
    def load(cls, tx: Tx, object_id: str | None = None) -> "Grants":
        return cls(tx.list(RBAC_POLICY.name, parent_id=object_id))

    def allows(self, project: str, object_id: str, action: str) -> bool:
        return any(r["action"] == action and r["target_tenant"] in (WILDCARD, project)
                   for r in self.by_object.get(object_id, ()))

    def has(self, object_id: str, action: str) -> bool:
        return any(r["action"] == action for r in self.by_object.get(object_id, ()))


class Sight:
    """What one caller may see in one transaction: own resources, shared and external ones,
    and those an RBAC entry shares with the caller's project (loaded once, when needed)."""

    def __init__(self, tx: Tx, ctx: Context, grants: Grants | None = None) -> None:
        self.tx, self.ctx = tx, ctx
        self._grants = grants
        self._nets: dict[str, bool] = {}

    @property
    def grants(self) -> Grants:
        if self._grants is None:
            self._grants = Grants.load(self.tx)
        return self._grants

    def granted(self, body: dict, action: str) -> bool:
        return self.grants.allows(self.ctx.project_id, body["id"], action)

    def shared(self, spec_name: str, body: dict) -> bool:
        """Whether the object is shared with the caller (wildcard or by an entry)."""
        return bool(body.get("shared")) or (spec_name in BY_STORE and self.granted(body, SHARED))

    def external(self, net: dict) -> bool:
        """Whether the caller may use the network as an external one (gateway, floating IPs)."""
        if net.get("router:external"):
            return True
        if self.ctx.is_admin or net.get("project_id") == self.ctx.project_id:
            return self.grants.has(net["id"], EXTERNAL)
        return self.granted(net, EXTERNAL)

    def sees(self, spec: "ResourceSpec", body: dict) -> bool:
        ctx = self.ctx
        if ctx.is_admin or body.get("project_id") == ctx.project_id:
            return True
        if spec.shared_attr and body.get(spec.shared_attr):
            return True
        if spec.name == "network":
            return bool(body.get("router:external")) or self.granted(body, SHARED) \
                or self.granted(body, EXTERNAL)
        if spec.name == "policy":
            return self.granted(body, SHARED)
        if spec.name == "subnet":  # the subnets of a network shared with the caller
            net_id = body.get("network_id")
            if net_id not in self._nets:
                net = self.tx.get("network", net_id)
                self._nets[net_id] = net is not None and self.shared("network", net)
            return self._nets[net_id]
        return False

    def shown(self, spec_name: str, body: dict) -> dict:
        """The body as this caller sees it: `shared` true where it is shared with the caller,
        `router:external` true where any access_as_external entry makes it external."""
        if spec_name not in BY_STORE or self.ctx.is_admin and spec_name != "network":
            return body
        out = body
        if not body.get("shared") and self.granted(body, SHARED):
            out = {**out, "shared": True}
        if spec_name == "network" and not body.get("router:external") and self.external(body):
            out = {**out, "router:external": True}
        return out
