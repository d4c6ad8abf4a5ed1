"""The `sbnet` provider driver of a real Octavia: octavia-lib's ProviderDriver writing to sbnet's Octavia v2 API."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from octavia_lib.api.drivers import driver_lib
from octavia_lib.api.drivers import exceptions as exc
from octavia_lib.api.drivers import provider_base

from sbnet.octavia.status import LBAAS, StatusRelay, flatten
from sbnet.southbound.client import Southbound, SouthboundError

# What each resource's create and update carry over (Octavia's name -> sbnet's, same unless
# the id); the rest of Octavia's provider model (TLS containers, vnic types) sbnet does not do.
CREATE = {
    "loadbalancer": ("name", "description", "admin_state_up", "project_id", "vip_port_id",
                     "vip_qos_policy_id"),
    "listener": ("name", "description", "admin_state_up", "project_id", "loadbalancer_id",
                 "protocol", "protocol_port", "connection_limit", "default_pool_id",
                 "timeout_client_data", "timeout_member_connect", "timeout_member_data",
                 "timeout_tcp_inspect", "allowed_cidrs", "insert_headers"),
    "pool": ("name", "description", "admin_state_up", "project_id", "loadbalancer_id",
             "listener_id", "protocol", "lb_algorithm", "session_persistence", "tls_enabled"),
    "member": ("name", "admin_state_up", "project_id", "address", "protocol_port", "weight",
               "backup", "subnet_id", "monitor_address", "monitor_port"),
    "healthmonitor": ("name", "admin_state_up", "project_id", "pool_id", "type", "delay",
                      "timeout", "max_retries", "max_retries_down", "http_method", "url_path",
                      "expected_codes", "http_version", "domain_name"),
}
UPDATE = {
    "loadbalancer": ("name", "description", "admin_state_up", "vip_qos_policy_id"),
    "listener": ("name", "description", "admin_state_up", "connection_limit", "default_pool_id",
                 "timeout_client_data", "timeout_member_connect", "timeout_member_data",
                 "timeout_tcp_inspect", "allowed_cidrs", "insert_headers"),
    "pool": ("name", "description", "admin_state_up", "lb_algorithm", "session_persistence",
             "tls_enabled"),
    "member": ("name", "admin_state_up", "weight", "backup", "monitor_address", "monitor_port"),
    "healthmonitor": ("name", "admin_state_up", "delay", "timeout", "max_retries",
                      "max_retries_down", "http_method", "url_path", "expected_codes",
                      "http_version", "domain_name"),
}
ID = {"loadbalancer": "loadbalancer_id", "listener": "listener_id", "pool": "pool_id",
      "member": "member_id", "healthmonitor": "healthmonitor_id"}
PATH = {"loadbalancer": "loadbalancers", "listener": "listeners", "pool": "pools",
        "healthmonitor": "healthmonitors"}
VIP_OWNER = "Octavia"
LOG = logging.getLogger(__name__)


def _fields(obj: Any, names: tuple[str, ...], *, create: bool) -> dict:
    """The attributes Octavia set on `obj` (unset ones are left out; on create, None too, so
    sbnet applies its defaults)."""
    given = obj.to_dict() if obj is not None else {}
    return {k: given[k] for k in names if k in given and not (create and given[k] is None)}


def _driver_error(e: SouthboundError) -> Exception:
    """sbnet's refusal, as Octavia's API shows it: 501 is Octavia's own "does not support a
    requested option"; anything else the user's request or sbnet failing."""
    message = str(e).split(": ", 1)[-1]
    if e.status == 501:     # Octavia's API says "Provider 'sbnet' does not support..." itself
        message = message.split("requested option: ", 1)[-1]
        return exc.UnsupportedOptionError(user_fault_string=message,
                                          operator_fault_string=str(e))
    return exc.DriverError(user_fault_string=message, operator_fault_string=str(e))


def agent_sockets() -> dict[str, str]:
    """The driver agent's sockets as Octavia's configuration names them ([driver_agent], when
    the driver runs in Octavia's API, which has loaded it); octavia-lib's defaults elsewhere."""
    try:
        from oslo_config import cfg
    except ImportError:
        return {}
    try:
        conf = cfg.CONF.driver_agent
        return {"status_socket": conf.status_socket_path, "stats_socket": conf.stats_socket_path,
                "get_socket": conf.get_socket_path}
    except (cfg.NoSuchOptError, cfg.NoSuchGroupError):
        return {}


class SbnetProviderDriver(provider_base.ProviderDriver):
    """Octavia's API calls these in its request (before it commits); each writes the object,
    with Octavia's id, to sbnet's Octavia v2 API, where the compiler turns it into every host's
    flows, and raises what sbnet refuses; the statuses follow from a thread (StatusRelay).

    sbnet is found at SBNET_URL (default http://127.0.0.1:9696), with a Keystone token from
    SBNET_TOKEN where sbnet checks them; it is called as an admin.  The health checks'
    verdicts are polled every SBNET_STATUS_INTERVAL seconds (default 5)."""

    def __init__(self, url: str | None = None, token: str | None = None,
                 library: driver_lib.DriverLibrary | None = None,
                 status_interval: float | None = None, commit_wait: float = 30.0) -> None:
        super().__init__()
        if status_interval is None:
            status_interval = float(os.environ.get("SBNET_STATUS_INTERVAL", "5"))
        self.sbnet = Southbound(url or os.environ.get("SBNET_URL", "http://127.0.0.1:9696"),
                                token or os.environ.get("SBNET_TOKEN"))
        self._library = library
        self.relay = StatusRelay(self.sbnet, self._report, self._present, status_interval,
                                 commit_wait, self._orphan)

    # --- plumbing ---

    @property
    def library(self) -> driver_lib.DriverLibrary:
        if self._library is None:       # waits for Octavia's driver agent's sockets
            self._library = driver_lib.DriverLibrary(**agent_sockets())
        return self._library

    def _report(self, status: dict) -> None:
        self.library.update_loadbalancer_status(status)

    def _orphan(self, kind: str, ident: str) -> None:
        """A create Octavia rolled back after the driver had written it: out of sbnet."""
        try:
            if kind == "member":
                member = self._find_member(ident)
                if member is not None:
                    self._call("DELETE", f"pools/{member['pool_id']}/members/{ident}")
            elif kind == "loadbalancer":
                vip = self._call("GET", f"loadbalancers/{ident}")["loadbalancer"]["vip_port_id"]
                self._call("DELETE", f"loadbalancers/{ident}?cascade=true")
                self._delete_vip_port(vip, ident)
            else:
                self._call("DELETE", f"{PATH[kind]}/{ident}")
        except (exc.DriverError, exc.UnsupportedOptionError) as e:
            LOG.warning("sbnet: %s %s not taken out of sbnet: %s", kind, ident, e)

    def _find_member(self, ident: str) -> dict | None:
        for pool in self._call("GET", "pools")["pools"]:
            if any(m["id"] == ident for m in pool["members"]):
                return {"pool_id": pool["id"]}
        return None

    def _present(self, kind: str, ident: str) -> bool:
        """Whether Octavia holds the object (its driver agent reads Octavia's database)."""
        return getattr(self.library, f"get_{kind}")(ident) is not None

    def _call(self, method: str, path: str, body: Any = None) -> dict:
        start = time.monotonic()
        try:
            return self.sbnet.request(method, f"{LBAAS}/{path}", body)
        except SouthboundError as e:
            raise _driver_error(e) from None
        finally:
            LOG.debug("sbnet: %s %s took %.3f s", method, path.split("?")[0],
                     time.monotonic() - start)

    def _create(self, kind: str, obj: Any, path: str | None = None) -> dict:
        body = dict(_fields(obj, CREATE[kind], create=True), id=getattr(obj, ID[kind]))
        return self._call("POST", path or PATH[kind], {kind: body})[kind]

    def _update(self, kind: str, old: Any, new: Any, path: str) -> None:
        changes = _fields(new, UPDATE[kind], create=False)
        if changes:
            self._call("PUT", path, {kind: changes})

    def _lb_of_pool(self, pool_id: str) -> str:
        return self._call("GET", f"pools/{pool_id}")["pool"]["loadbalancer_id"]

    def _ids(self, lb_id: str) -> dict[str, set[str]]:
        try:
            tree = flatten(self._call("GET", f"loadbalancers/{lb_id}/status"))
        except exc.DriverError:
            return {}
        return {k: {x["id"] for x in v} for k, v in tree.items()}

    def _deleted(self, lb_id: str, before: dict[str, set[str]],
                 made: tuple[str, str] | None = None) -> None:
        """Report what a delete took away (its cascade too) as DELETED, the rest as it is."""
        after = self._ids(lb_id)
        gone = {k: [{"id": i, "provisioning_status": "DELETED", "operating_status": "OFFLINE"}
                    for i in sorted(ids - after.get(k, set()))] for k, ids in before.items()}
        self.relay.changed(lb_id, {k: v for k, v in gone.items() if v}, made)

    # --- load balancers ---

    def create_vip_port(self, loadbalancer_id, project_id, vip_dictionary,
                        additional_vip_dicts=None):
        """The VIP port in sbnet's Neutron model (sbnet is the Neutron API of such a cloud)."""
        if additional_vip_dicts:
            raise exc.UnsupportedOptionError(
                user_fault_string="Provider 'sbnet' does not support additional VIPs.",
                operator_fault_string="sbnet balances one VIP address per load balancer.")
        fixed: dict = {}
        if vip_dictionary.get("vip_subnet_id"):
            fixed["subnet_id"] = vip_dictionary["vip_subnet_id"]
        if vip_dictionary.get("vip_address"):
            fixed["ip_address"] = vip_dictionary["vip_address"]
        network = vip_dictionary.get("vip_network_id")
        if not network and fixed.get("subnet_id"):
            try:
                network = self.sbnet.request("GET", f"subnets/{fixed['subnet_id']}")[
                    "subnet"]["network_id"]
            except SouthboundError as e:
                raise _driver_error(e) from None
        if not network:
            raise exc.DriverError(user_fault_string="The VIP needs a network or a subnet.")
        port = {"network_id": network, "project_id": project_id,
                "name": f"octavia-lb-{loadbalancer_id}", "device_owner": VIP_OWNER,
                "device_id": f"lb-{loadbalancer_id}", "port_security_enabled": False}
        if fixed:
            port["fixed_ips"] = [fixed]
        try:
            made = self.sbnet.request("POST", "ports", {"port": port})["port"]
        except SouthboundError as e:
            raise _driver_error(e) from None
        ip = made["fixed_ips"][0]
        return (dict(vip_dictionary, vip_port_id=made["id"], vip_network_id=network,
                     vip_subnet_id=ip["subnet_id"], vip_address=ip["ip_address"]), [])

    def loadbalancer_create(self, loadbalancer):
        for what in ("flavor", "availability_zone"):
            if getattr(loadbalancer, what, None):
                raise exc.UnsupportedOptionError(
                    user_fault_string=f"Provider 'sbnet' does not support a {what}.",
                    operator_fault_string=f"sbnet has no {what} metadata.")
        lb_id = loadbalancer.loadbalancer_id
        self._create("loadbalancer", loadbalancer)
        # Octavia's single-call create: the whole graph in one request; pools first (their
        # listeners name them as default pools), each on the load balancer alone.
        for pool in loadbalancer.pools or []:
            self._pool_graph(pool, graph=True)
        for listener in loadbalancer.listeners or []:
            self._create("listener", listener)
        self.relay.changed(lb_id, made=("loadbalancer", lb_id))

    def loadbalancer_update(self, old_loadbalancer, new_loadbalancer):
        lb_id = old_loadbalancer.loadbalancer_id
        self._update("loadbalancer", old_loadbalancer, new_loadbalancer, f"loadbalancers/{lb_id}")
        self.relay.changed(lb_id)

    def loadbalancer_delete(self, loadbalancer, cascade=False):
        lb_id = loadbalancer.loadbalancer_id
        before = self._ids(lb_id)
        try:
            vip = self._call("GET", f"loadbalancers/{lb_id}")["loadbalancer"]["vip_port_id"]
        except exc.DriverError:
            vip = None
        self._call("DELETE", f"loadbalancers/{lb_id}" + ("?cascade=true" if cascade else ""))
        if vip:
            self._delete_vip_port(vip, lb_id)
        self._deleted(lb_id, before)

    def _delete_vip_port(self, port_id: str, lb_id: str) -> None:
        """The VIP port create_vip_port made (and only that one: a port the user gave stays)."""
        try:
            port = self.sbnet.request("GET", f"ports/{port_id}")["port"]
            if port.get("device_owner") == VIP_OWNER and port.get("device_id") == f"lb-{lb_id}":
                self.sbnet.request("DELETE", f"ports/{port_id}")
        except SouthboundError as e:
            if e.status != 404:
                raise _driver_error(e) from None

    def loadbalancer_failover(self, loadbalancer_id):
        raise exc.NotImplementedError(
            user_fault_string="Provider 'sbnet' has nothing to fail over: every host "
                              "balances its own connections.",
            operator_fault_string="sbnet's load balancers run in every host's datapath.")

    # --- listeners ---

    def listener_create(self, listener):
        self._create("listener", listener)
        self.relay.changed(listener.loadbalancer_id, made=("listener", listener.listener_id))

    def listener_update(self, old_listener, new_listener):
        self._update("listener", old_listener, new_listener,
                     f"listeners/{old_listener.listener_id}")
        self.relay.changed(old_listener.loadbalancer_id)

    def listener_delete(self, listener):
        before = self._ids(listener.loadbalancer_id)
        self._call("DELETE", f"listeners/{listener.listener_id}")
        self._deleted(listener.loadbalancer_id, before)

    # --- pools, members, health monitors ---

    def _pool_graph(self, pool, graph: bool = False) -> None:
        body = dict(_fields(pool, CREATE["pool"], create=True), id=pool.pool_id)
        if graph:
            body.pop("listener_id", None)
        self._call("POST", "pools", {"pool": body})
        for member in pool.members or []:
            self._create("member", member, f"pools/{pool.pool_id}/members")
        if pool.healthmonitor:
            self._create("healthmonitor", pool.healthmonitor)

    def pool_create(self, pool):
        self._pool_graph(pool)
        self.relay.changed(pool.loadbalancer_id, made=("pool", pool.pool_id))

    def pool_update(self, old_pool, new_pool):
        self._update("pool", old_pool, new_pool, f"pools/{old_pool.pool_id}")
        self.relay.changed(old_pool.loadbalancer_id)

    def pool_delete(self, pool):
        before = self._ids(pool.loadbalancer_id)
        self._call("DELETE", f"pools/{pool.pool_id}")
        self._deleted(pool.loadbalancer_id, before)

    def member_create(self, member):
        lb_id = self._lb_of_pool(member.pool_id)
        self._create("member", member, f"pools/{member.pool_id}/members")
        self.relay.changed(lb_id, made=("member", member.member_id))

    def member_update(self, old_member, new_member):
        lb_id = self._lb_of_pool(old_member.pool_id)
        self._update("member", old_member, new_member,
                     f"pools/{old_member.pool_id}/members/{old_member.member_id}")
        self.relay.changed(lb_id)

    def member_delete(self, member):
        lb_id = self._lb_of_pool(member.pool_id)
        before = self._ids(lb_id)
        self._call("DELETE", f"pools/{member.pool_id}/members/{member.member_id}")
        self._deleted(lb_id, before)

    def member_batch_update(self, pool_id, members):
        """The pool's members become `members`: new ones created, known ones updated, the
        others deleted."""
        lb_id = self._lb_of_pool(pool_id)
        before = self._ids(lb_id)
        path = f"pools/{pool_id}/members"
        have = {x["id"] for x in self._call("GET", path)["members"]}
        want = {m.member_id: m for m in members}
        made = None
        for ident, member in want.items():
            if ident in have:
                self._update("member", None, member, f"{path}/{ident}")
            else:
                self._create("member", member, path)
                made = ("member", ident)
        for ident in have - set(want):
            self._call("DELETE", f"{path}/{ident}")
        self._deleted(lb_id, before, made)

    def health_monitor_create(self, healthmonitor):
        lb_id = self._lb_of_pool(healthmonitor.pool_id)
        self._create("healthmonitor", healthmonitor)
        self.relay.changed(lb_id, made=("healthmonitor", healthmonitor.healthmonitor_id))

    def health_monitor_update(self, old_healthmonitor, new_healthmonitor):
        lb_id = self._lb_of_pool(old_healthmonitor.pool_id)
        self._update("healthmonitor", old_healthmonitor, new_healthmonitor,
                     f"healthmonitors/{old_healthmonitor.healthmonitor_id}")
        self.relay.changed(lb_id)

    def health_monitor_delete(self, healthmonitor):
        lb_id = self._lb_of_pool(healthmonitor.pool_id)
        before = self._ids(lb_id)
        self._call("DELETE", f"healthmonitors/{healthmonitor.healthmonitor_id}")
        self._deleted(lb_id, before)

    # --- flavors and availability zones: sbnet has neither ---

    def get_supported_flavor_metadata(self):
        return {}

    def validate_flavor(self, flavor_metadata):
        if flavor_metadata:
            raise exc.UnsupportedOptionError(
                user_fault_string=f"Provider 'sbnet' supports no flavor metadata: "
                                  f"{', '.join(sorted(flavor_metadata))}.",
                operator_fault_string="sbnet has no flavors.")

    def get_supported_availability_zone_metadata(self):
        return {}

    def validate_availability_zone(self, availability_zone_metadata):
        if availability_zone_metadata:
            raise exc.UnsupportedOptionError(
                user_fault_string="Provider 'sbnet' supports no availability zone metadata.",
                operator_fault_string="sbnet has no availability zones.")
