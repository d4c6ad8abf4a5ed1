"""The L3 service plugin `sbnet-router`: Neutron's router and floating IP database, copied to sbnet.

Routing, SNAT and floating IPs run in sbnet's distributed router (the compiler's l3 stages),
so there are no L3 agents to schedule: a floating IP is ACTIVE once its copy is written."""

from __future__ import annotations

from neutron_lib import constants as const
from neutron_lib.api.definitions import extraroute, l3 as l3_apidef, l3_ext_gw_mode
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.services import base as service_base

from neutron.db import extraroute_db, l3_gwmode_db
from neutron.db.models import l3 as l3_models
from neutron.quota import resource_registry
from sbnet.neutron import push


class SbnetL3RouterPlugin(service_base.ServicePluginBase,
                          extraroute_db.ExtraRoute_db_mixin,
                          l3_gwmode_db.L3_NAT_db_mixin):
    """Routers, interfaces, gateways and floating IPs: Neutron's own database code, then the
    copy.  Router ports (interfaces, gateway, floating IPs' ports) reach sbnet through ML2."""

    supported_extension_aliases = [l3_apidef.ALIAS, l3_ext_gw_mode.ALIAS, extraroute.ALIAS]

    __native_pagination_support = True
    __native_sorting_support = True

    @resource_registry.tracked_resources(router=l3_models.Router,
                                         floatingip=l3_models.FloatingIP)
    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def get_plugin_type(cls):
        return plugin_constants.L3

    def get_plugin_description(self) -> str:
        return "sbnet L3 service plugin: distributed routing, SNAT and floating IPs in sbnet"

    def _push_router(self, context, router_id: str) -> None:
        push.put("router", self.get_router(context.elevated(), router_id))

    def create_router(self, context, router):
        out = super().create_router(context, router)
        self._push_router(context, out["id"])
        return self.get_router(context, out["id"])

    def update_router(self, context, id, router):
        super().update_router(context, id, router)
        self._push_router(context, id)
        return self.get_router(context, id)

    def delete_router(self, context, id):
        super().delete_router(context, id)
        push.delete("router", id)

    def add_router_interface(self, context, router_id, interface_info=None):
        out = super().add_router_interface(context, router_id, interface_info)
        self._push_router(context, router_id)
        return out

    def remove_router_interface(self, context, router_id, interface_info):
        out = super().remove_router_interface(context, router_id, interface_info)
        self._push_router(context, router_id)
        return out

    # --- floating IPs ---

    def _push_fip(self, context, fip_id: str) -> dict:
        admin = context.elevated()
        fip = self.get_floatingip(admin, fip_id)
        want = const.FLOATINGIP_STATUS_ACTIVE if fip.get("port_id") \
            else const.FLOATINGIP_STATUS_DOWN
        if fip["status"] != want:
            self.update_floatingip_status(admin, fip_id, want)
            fip = self.get_floatingip(admin, fip_id)
        push.put("floatingip", fip)
        return fip

    def create_floatingip(self, context, floatingip,
                          initial_status=const.FLOATINGIP_STATUS_DOWN):
        out = super().create_floatingip(context, floatingip, initial_status=initial_status)
        self._push_fip(context, out["id"])
        return self.get_floatingip(context, out["id"])

    def update_floatingip(self, context, id, floatingip):
        super().update_floatingip(context, id, floatingip)
        self._push_fip(context, id)
        return self.get_floatingip(context, id)

    def delete_floatingip(self, context, id):
        super().delete_floatingip(context, id)
        push.delete("floatingip", id)

    def disassociate_floatingips(self, context, port_id, do_notify=True):
        admin = context.elevated()
        fips = self.get_floatingips(admin, filters={"port_id": [port_id]})
        out = super().disassociate_floatingips(context, port_id, do_notify=do_notify)
        for fip in fips:
            self._push_fip(admin, fip["id"])
        return out
