"""The ML2 mechanism driver `sbnet`: networks, subnets and ports into sbnet's copy; port binding on live sbnet hosts."""

from __future__ import annotations

from neutron_lib import constants as const
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins.ml2 import api
from oslo_log import log

from neutron.db import provisioning_blocks
from sbnet.neutron import config, push, secgroups
from sbnet.southbound.client import SouthboundError

LOG = log.getLogger(__name__)

ENTITY = "sbnet"                      # our provisioning block on a port
SEGMENT_TYPES = ("vxlan", "gre", "geneve", "vlan", "flat")
UNBOUND = (portbindings.VIF_TYPE_UNBOUND, portbindings.VIF_TYPE_BINDING_FAILED)


def needs_block(port: dict, host: str, vif_type: str, moved: bool) -> bool:
    """A VM's port just bound (or moved) to a host waits for that host's flows: Neutron
    keeps it DOWN and tells Nova network-vif-plugged only when the agent says ACTIVE."""
    owner = port.get("device_owner") or ""
    return bool(host) and vif_type not in UNBOUND and moved \
        and not owner.startswith(const.DEVICE_OWNER_NETWORK_PREFIX)


class SbnetMechanismDriver(api.MechanismDriver):
    """ML2's precommit/postcommit contract: precommit refuses what sbnet cannot carry (in
    Neutron's transaction); postcommit writes what Neutron committed to sbnet's copy."""

    def initialize(self) -> None:
        config.register()
        self.sb = config.southbound()
        secgroups.subscribe()
        from sbnet.neutron import qos, trunk
        qos.register()
        trunk.register()
        LOG.info("sbnet mechanism driver: southbound copy at %s", self.sb.url)

    @property
    def connectivity(self) -> str:
        return portbindings.CONNECTIVITY_L2      # ports without an IP address bind too

    def get_workers(self):
        from sbnet.neutron.maintenance import SyncWorker
        return [SyncWorker()]

    # --- networks ---

    def create_network_precommit(self, context) -> None:
        for seg in context.network_segments:
            if seg[api.NETWORK_TYPE] not in SEGMENT_TYPES:
                raise n_exc.InvalidInput(error_message=(
                    f"sbnet does not carry {seg[api.NETWORK_TYPE]} networks "
                    f"(it carries {', '.join(SEGMENT_TYPES)})"))

    def create_network_postcommit(self, context) -> None:
        push.put("network", context.current)

    def update_network_postcommit(self, context) -> None:
        push.put("network", context.current)

    def delete_network_postcommit(self, context) -> None:
        push.delete("network", context.current["id"])

    # --- subnets ---

    def _network_revised(self, context) -> None:
        """A subnet's change revises its network (Neutron bumps its revision_number)."""
        try:
            push.put("network", context._plugin.get_network(
                context._plugin_context, context.current["network_id"]))
        except n_exc.NetworkNotFound:
            pass

    def create_subnet_postcommit(self, context) -> None:
        push.put("subnet", context.current)
        self._network_revised(context)

    def update_subnet_postcommit(self, context) -> None:
        push.put("subnet", context.current)
        self._network_revised(context)

    def delete_subnet_postcommit(self, context) -> None:
        push.delete("subnet", context.current["id"])
        self._network_revised(context)

    # --- ports ---

    def _block(self, context, moved: bool) -> None:
        if needs_block(context.current, context.host, context.vif_type, moved):
            provisioning_blocks.add_provisioning_component(
                context._plugin_context, context.current["id"], resources.PORT, ENTITY)

    def create_port_precommit(self, context) -> None:
        self._block(context, True)

    def update_port_precommit(self, context) -> None:
        moved = context.host != context.original_host \
            or context.original_vif_type in UNBOUND
        self._block(context, moved)

    def create_port_postcommit(self, context) -> None:
        push.put("port", context.current)

    def update_port_postcommit(self, context) -> None:
        push.put("port", context.current)

    def delete_port_postcommit(self, context) -> None:
        push.delete("port", context.current["id"])

    # --- binding ---

    def bind_port(self, context) -> None:
        """Bind on the first segment the host's sbnet agent can carry; sbnet answers with
        the vif_type and vif_details of the host's datapath (ovs, or tap for the reference
        and eBPF datapaths) and, for vnic_type direct, what its NIC profile allows."""
        port, host = context.current, context.host
        reasons = []
        for seg in context.segments_to_bind:
            segment = {"network_type": seg[api.NETWORK_TYPE],
                       "physical_network": seg[api.PHYSICAL_NETWORK],
                       "segmentation_id": seg[api.SEGMENTATION_ID]}
            try:
                answer = self.sb.bind(host, port, context.network.current, segment)
            except SouthboundError as exc:
                reasons.append(str(exc))
                break
            if "refused" in answer:
                reasons.append(answer["refused"])
                continue
            context.set_binding(seg[api.ID], answer["vif_type"], answer["vif_details"])
            LOG.debug("sbnet bound port %s on host %s: %s", port["id"], host, answer["vif_type"])
            return
        LOG.warning("sbnet refused to bind port %s on host %s: %s", port["id"], host,
                    "; ".join(reasons) or "no segment to bind")
