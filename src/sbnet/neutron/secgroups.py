"""Security groups and their rules into sbnet's copy, through Neutron's callback registry."""

from __future__ import annotations

from neutron_lib import context as n_context
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import directory

from sbnet.neutron import push


def _group_changed(resource, event, trigger, payload) -> None:
    if event == events.AFTER_DELETE:
        push.delete("security_group", payload.resource_id)
        return
    group = payload.latest_state
    push.put("security_group", group)
    for rule in group.get("security_group_rules") or ():
        push.put("security_group_rule", rule)


def _rule_changed(resource, event, trigger, payload) -> None:
    if event == events.AFTER_DELETE:
        push.delete("security_group_rule", payload.resource_id)
        group_id = payload.metadata.get("security_group_id")
    else:
        rule = payload.latest_state
        push.put("security_group_rule", rule)
        group_id = rule["security_group_id"]
    # A rule's change revises its group (Neutron bumps the group's revision_number).
    if group_id:
        try:
            group = directory.get_plugin().get_security_group(
                n_context.get_admin_context(), group_id)
        except Exception:            # noqa: BLE001 - deleted meanwhile: nothing to revise
            return
        push.put("security_group", group)


def subscribe() -> None:
    for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
        registry.subscribe(_group_changed, resources.SECURITY_GROUP, event)
    for event in (events.AFTER_CREATE, events.AFTER_DELETE):
        registry.subscribe(_rule_changed, resources.SECURITY_GROUP_RULE, event)
