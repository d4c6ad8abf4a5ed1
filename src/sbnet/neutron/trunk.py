"""The trunk driver `sbnet`: trunks and their sub-ports into sbnet's copy (the compiler tags sub-port traffic)."""

from __future__ import annotations

from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.services.trunk import constants as trunk_consts
from oslo_config import cfg

from neutron.objects import trunk as trunk_objects
from neutron.services.trunk.drivers import base
from sbnet.neutron import push


@registry.has_registry_receivers
class SbnetTrunkDriver(base.DriverBase):
    @property
    def is_loaded(self) -> bool:
        return "sbnet" in cfg.CONF.ml2.mechanism_drivers

    @registry.receives(resources.TRUNK_PLUGIN, [events.AFTER_INIT])
    def register(self, resource, event, trigger, payload=None) -> None:
        super().register(resource, event, trigger, payload=payload)
        self._plugin = trigger
        for event in (events.AFTER_CREATE, events.AFTER_UPDATE, events.AFTER_DELETE):
            registry.subscribe(self._trunk_changed, resources.TRUNK, event)
        for event in (events.AFTER_CREATE, events.AFTER_DELETE):
            registry.subscribe(self._trunk_changed, resources.SUBPORTS, event)

    def _trunk_changed(self, resource, event, trigger, payload) -> None:
        trunk = payload.states[-1] if payload.states else None
        if resource == resources.TRUNK and event == events.AFTER_DELETE:
            push.delete("trunk", payload.states[0].id)
            return
        trunk_id = trunk.id if trunk is not None else payload.resource_id
        context = payload.context.elevated()
        # sbnet carries a trunk as soon as its copy is written: no agent to wait for.
        body = self._plugin.get_trunk(context, trunk_id)
        if body["status"] != trunk_consts.TRUNK_ACTIVE_STATUS:
            obj = trunk_objects.Trunk.get_object(context, id=trunk_id)
            if obj is not None:
                obj.update(status=trunk_consts.TRUNK_ACTIVE_STATUS)
            body = self._plugin.get_trunk(context, trunk_id)
        push.put("trunk", body)


DRIVER: SbnetTrunkDriver | None = None


def register() -> None:
    global DRIVER
    if DRIVER is None:
        DRIVER = SbnetTrunkDriver(
            "sbnet", (portbindings.VIF_TYPE_OVS, portbindings.VIF_TYPE_TAP),
            (trunk_consts.SEGMENTATION_TYPE_VLAN,), None, can_trunk_bound_port=True)
