"""The sbnet worker in Neutron's periodic-workers process: port status back to Neutron, and the maintenance task."""

from __future__ import annotations

import threading

from neutron_lib import constants as const
from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib import worker
from neutron_lib.callbacks import resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_config import cfg
from oslo_log import log

from neutron.db import provisioning_blocks
from sbnet.neutron.config import southbound
from sbnet.southbound.client import SouthboundError
from sbnet.southbound.sync import Drift, compare, repair

LOG = log.getLogger(__name__)
ENTITY = "sbnet"
STATUSES = (const.PORT_STATUS_ACTIVE, const.PORT_STATUS_DOWN)


def read_neutron(context) -> dict[str, dict[str, dict]]:
    """Neutron's resources of every type a loaded plugin serves, as its API shows them."""
    core = directory.get_plugin()
    calls = {"network": core.get_networks, "subnet": core.get_subnets, "port": core.get_ports,
             "security_group": core.get_security_groups,
             "security_group_rule": core.get_security_group_rules}
    l3 = directory.get_plugin(plugin_constants.L3)
    if l3 is not None:
        calls.update(router=l3.get_routers, floatingip=l3.get_floatingips)
    qos = directory.get_plugin(plugin_constants.QOS)
    if qos is not None:
        calls["policy"] = qos.get_policies
    trunk = directory.get_plugin("trunk")
    if trunk is not None:
        calls["trunk"] = trunk.get_trunks
    sfc = directory.get_plugin("sfc")
    if sfc is not None:
        calls.update(port_pair=sfc.get_port_pairs, port_pair_group=sfc.get_port_pair_groups,
                     port_chain=sfc.get_port_chains)
    fc = directory.get_plugin("flow_classifier")
    if fc is not None:
        calls["flow_classifier"] = fc.get_flow_classifiers
    return {typ: {r["id"]: r for r in call(context)} for typ, call in calls.items()}


def status_to_neutron(context, port_id: str, status: str) -> bool:
    """The agents say a port is ACTIVE or DOWN: make Neutron say so.  ACTIVE goes through our
    provisioning block, so Neutron's notifier tells Nova network-vif-plugged.  True if
    Neutron's port status changed."""
    plugin = directory.get_plugin()
    try:
        port = plugin.get_port(context, port_id)
    except n_exc.PortNotFound:
        return False
    host = port.get("binding:host_id")
    if status not in STATUSES or not host or port["status"] == status:
        return False
    if status == const.PORT_STATUS_ACTIVE:
        provisioning_blocks.provisioning_complete(context, port_id, resources.PORT, ENTITY)
        if plugin.get_port(context, port_id)["status"] == status:
            return True
        if provisioning_blocks.is_object_blocked(context, port_id, resources.PORT):
            return False                       # another entity (DHCP) still provisions it
    plugin.update_port_status(context, port_id, status, host)
    return True


def maintain(context) -> tuple[Drift, int, int]:
    """One full comparison and repair: (drift found, writes to sbnet, Neutron port statuses
    fixed).  The copy is read first, so a resource Neutron creates meanwhile counts as
    missing (written again), never as extra (deleted)."""
    sb = southbound()
    copy = sb.inventory()
    neutron = read_neutron(context)
    drift = compare(neutron, copy)
    writes = repair(drift, neutron, sb) if drift.count else 0
    fixed = 0
    for pid, item in copy.get("port", {}).items():
        port = neutron["port"].get(pid)
        if port is not None and item.get("status") in STATUSES \
                and item["status"] != port["status"]:
            fixed += status_to_neutron(context, pid, item["status"])
    return drift, writes, fixed


class SyncWorker(worker.BaseWorker):
    """Two threads: one follows sbnet's change feed for the status the agents report, the
    other runs the maintenance task every [sbnet] maintenance_interval seconds."""

    def __init__(self) -> None:
        super().__init__(worker_process_count=0, desc="sbnet sync worker")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        super().start(desc="sbnet sync worker")
        LOG.info("sbnet sync worker: following %s, maintenance every %ss", southbound().url,
                 cfg.CONF.sbnet.maintenance_interval)
        for target in (self._follow, self._maintain):
            t = threading.Thread(target=target, name=f"sbnet-{target.__name__[1:]}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()

    def wait(self) -> None:
        for t in self._threads:
            t.join()

    def reset(self) -> None:
        pass

    def _follow(self) -> None:
        sb = southbound()
        context = n_context.get_admin_context()
        since = None
        while not self._stop.is_set():
            try:
                if since is None:
                    since = sb.revision()
                rows, _ = sb.changes(since, wait=10.0)
                for row in rows:
                    since = row["revision"]
                    if row["resource"] == "port" and row["op"] == "update":
                        status_to_neutron(context, row["id"], row["body"].get("status"))
            except SouthboundError as exc:
                LOG.warning("sbnet change feed: %s", exc)
                self._stop.wait(2.0)
            except Exception:                 # noqa: BLE001 - keep following
                LOG.exception("sbnet: port status back to Neutron failed")
                self._stop.wait(2.0)

    def _maintain(self) -> None:
        context = n_context.get_admin_context()
        while not self._stop.wait(cfg.CONF.sbnet.maintenance_interval):
            try:
                drift, writes, fixed = maintain(context)
                if drift.count or fixed:
                    LOG.info("sbnet maintenance: %d difference(s), %d write(s), %d port "
                             "status(es) fixed: %s", drift.count, writes, fixed,
                             "; ".join(drift.lines()[:20]))
            except SouthboundError as exc:
                LOG.warning("sbnet maintenance skipped: %s", exc)
            except Exception:                 # noqa: BLE001
                LOG.exception("sbnet maintenance failed")
