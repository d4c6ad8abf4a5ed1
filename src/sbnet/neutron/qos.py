"""The QoS service driver `sbnet`: policies (with their rules) into sbnet's copy; the compiler applies them."""

from __future__ import annotations

from neutron_lib.api.definitions import portbindings
from neutron_lib.services.qos import base, constants as qos_consts
from oslo_config import cfg

from sbnet.neutron import push

DIRECTIONS = {"type:values": ["ingress", "egress"]}
SUPPORTED_RULES = {
    qos_consts.RULE_TYPE_BANDWIDTH_LIMIT: {
        qos_consts.MAX_KBPS: {"type:range": [0, 2**31 - 1]},
        qos_consts.MAX_BURST: {"type:range": [0, 2**31 - 1]},
        qos_consts.DIRECTION: DIRECTIONS},
    qos_consts.RULE_TYPE_DSCP_MARKING: {
        qos_consts.DSCP_MARK: {"type:values": list(range(0, 64, 2))}},
    qos_consts.RULE_TYPE_MINIMUM_BANDWIDTH: {
        qos_consts.MIN_KBPS: {"type:range": [0, 2**31 - 1]},
        qos_consts.DIRECTION: DIRECTIONS},
}


def _body(policy) -> dict:
    """The policy as the API shows it, rules inside (each with its type)."""
    out = policy.to_dict()
    out["rules"] = [dict(r.to_dict(), type=r.rule_type) for r in policy.rules]
    out.setdefault("tenant_id", out.get("project_id"))
    return out


class SbnetQosDriver(base.DriverBase):
    @property
    def is_loaded(self) -> bool:
        return "sbnet" in cfg.CONF.ml2.mechanism_drivers

    def create_policy(self, context, policy) -> None:
        push.put("policy", _body(policy))

    def update_policy(self, context, policy) -> None:
        push.put("policy", _body(policy))

    def delete_policy(self, context, policy) -> None:
        push.delete("policy", policy.id)


DRIVER: SbnetQosDriver | None = None


def register() -> None:
    global DRIVER
    if DRIVER is None:
        DRIVER = SbnetQosDriver(
            name="sbnet", vif_types=[portbindings.VIF_TYPE_OVS, portbindings.VIF_TYPE_TAP],
            vnic_types=[portbindings.VNIC_NORMAL, portbindings.VNIC_DIRECT],
            supported_rules=SUPPORTED_RULES, requires_rpc_notifications=False)
