"""The compiler's read-only view of the model: indexed resources, hosts, and stable small keys."""

from __future__ import annotations

import functools
import ipaddress
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from sbnet.model.attrs import Invalid, to_cidr, to_ip, to_mac, to_prefix_or_none
from sbnet.model.resources import ACTIVATION_STRATEGIES, activation_strategy  # noqa: F401

TUNNEL_TYPES = ("vxlan", "gre", "geneve")
# The tunnel port of each kind on every host (remote_ip=flow, key=flow): one per kind, as
# Neutron's OVS agent does with flow-based tunnels, so a new host adds no ports anywhere.
TUNNEL_OFPORTS = {"vxlan": 65001, "gre": 65002, "geneve": 65003}
# The port to the host agent's slow path (native DHCP) on every host that has one.
SERVICE_OFPORT = 65010
ROUTER_OWNERS = ("network:router_interface", "network:router_interface_distributed")
GATEWAY_OWNER = "network:router_gateway"
LB_VIP_OWNER = "Octavia"        # a load balancer's VIP port (bound to no host)


@dataclass(frozen=True)
class Chassis:
    """A host as the compiler needs it: its tunnel endpoint, VIF ofports and physical networks.

    `ofports` maps the ids of ports bound here to the ofport of their VIF (the agent plugs the
    VIF and chooses it).  `physnets` maps a physical network name to the ofport of the
    bridge port facing it (VLAN and flat networks, the external network).  `service_ofport`
    is the port to the agent's slow path (native DHCP), None where the agent has none.
    """

    name: str
    tunnel_ip: str
    ofports: Mapping[str, int] = field(default_factory=dict)
    physnets: Mapping[str, int] = field(default_factory=dict)
    profile: str = "software"
    service_ofport: int | None = None


def _order(items: Iterable[dict]) -> list[dict]:
    return sorted(items, key=lambda r: (r.get("created_at") or "", r["id"]))


def allocate_keys(items: Iterable[dict], bits: int, salt: str = "") -> dict[str, int]:
    """Stable small keys for resources: a hash of the id, probed on collision in creation
    order, so an existing resource keeps its key when others come and go (except when one
    it collided with is deleted, which frees nothing it holds).  Key 0 is never used."""
    space = (1 << bits) - 1
    taken: dict[int, str] = {}
    out: dict[str, int] = {}
    for r in _order(items):
        k = zlib.crc32((salt + r["id"]).encode()) % space + 1
        while k in taken:
            k = k % space + 1
        taken[k] = r["id"]
        out[r["id"]] = k
    return out


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def _drop(snapshot: Mapping[str, Any], dropped: Iterable[tuple[str, str]]) -> dict[str, Any]:
    gone = set(dropped)
    nets = {ident for typ, ident in gone if typ == "network"}
    out: dict[str, Any] = {}
    for typ, items in snapshot.items():
        if not isinstance(items, list):
            out[typ] = items
            continue
        out[typ] = [r for r in items if (typ, r.get("id")) not in gone
                    and not (typ in ("subnet", "port") and r.get("network_id") in nets)]
    return out


def malformed(snapshot: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    """Ports and subnets whose addresses the API's validation would refuse, with why."""
    out = {}
    for p in snapshot.get("port", ()):
        try:
            to_mac(p.get("mac_address"))
            for f in p.get("fixed_ips") or ():
                to_ip(f.get("ip_address"))
            for pair in p.get("allowed_address_pairs") or ():
                ip = pair.get("ip_address")
                to_prefix_or_none(ip) if "/" in str(ip) else to_ip(ip)
                to_mac(pair.get("mac_address") or p.get("mac_address"))
        except (Invalid, AttributeError) as exc:
            out[("port", p.get("id"))] = f"malformed: {exc}"
    for sub in snapshot.get("subnet", ()):
        try:
            to_cidr(sub.get("cidr"), strict=False)
        except Invalid as exc:
            out[("subnet", sub.get("id"))] = f"malformed: {exc}"
    return out


class Topology:
    """Everything a compile reads, indexed once per model revision."""

    def __init__(self, snapshot: Mapping[str, Any], chassis: Iterable[Chassis] = ()) -> None:
        # What the API would have refused (malformed addresses) is not compiled at all:
        # the compiler reports it (Compiler.faults) and works on the rest.
        self.invalid = malformed(snapshot)
        if self.invalid:
            snapshot = _drop(snapshot, self.invalid)
        self.snapshot = snapshot
        self._given = list(chassis)
        chassis = self._given
        self.revision = snapshot.get("revision", 0)
        # Hosts the agents registered (sbnet.api.hosts), overridden by the ones given (which
        # know their VIF ofports).
        self.chassis = {h["id"]: Chassis(h["id"], h["tunnel_ip"], {}, dict(h.get("physnets") or {}),
                                         h.get("profile") or "software")
                        for h in snapshot.get("host", ())}
        self.chassis.update({c.name: c for c in chassis})
        get = lambda typ: list(snapshot.get(typ, ()))  # noqa: E731
        self.networks = {n["id"]: n for n in get("network")}
        self.subnets = {s["id"]: s for s in get("subnet")}
        self.ports = {p["id"]: p for p in get("port")}
        self.security_groups = {g["id"]: g for g in get("security_group")}
        self.routers = {r["id"]: r for r in get("router")}
        self.floating_ips = {f["id"]: f for f in get("floatingip")}
        self.qos_policies = {q["id"]: q for q in get("policy")}
        self.trunks = {t["id"]: t for t in get("trunk")}
        self.port_pairs = {x["id"]: x for x in get("port_pair")}
        self.port_pair_groups = {x["id"]: x for x in get("port_pair_group")}
        self.flow_classifiers = {x["id"]: x for x in get("flow_classifier")}
        self.port_chains = {x["id"]: x for x in get("port_chain")}
        # Octavia's load balancers (sbnet.model.lbaas), read by sbnet.compiler.lb.
        self.loadbalancers = {x["id"]: x for x in get("lb_loadbalancer")}
        self.lb_listeners = {x["id"]: x for x in get("lb_listener")}
        self.lb_pools = {x["id"]: x for x in get("lb_pool")}
        self.lb_members: dict[str, list[dict]] = defaultdict(list)
        for x in _order(get("lb_member")):
            self.lb_members[x.get("pool_id")].append(x)
        self.lb_monitors = {x.get("pool_id"): x for x in get("lb_healthmonitor")}
        # A policy's rules, each with its "type" (bandwidth_limit, dscp_marking, ...).
        self.qos_rules = {pid: list(q.get("rules") or ()) for pid, q in self.qos_policies.items()}
        self.sg_rules: dict[str, list[dict]] = defaultdict(list)
        for r in get("security_group_rule"):
            self.sg_rules[r["security_group_id"]].append(r)

        self.subnets_of: dict[str, list[dict]] = defaultdict(list)
        for s in self.subnets.values():
            self.subnets_of[s["network_id"]].append(s)
        self.ports_of: dict[str, list[dict]] = defaultdict(list)
        self.ports_on: dict[str, list[dict]] = defaultdict(list)
        self.members: dict[str, list[dict]] = defaultdict(list)   # security group -> ports
        self.router_ports: dict[str, list[dict]] = defaultdict(list)
        self.gateway_ports: dict[str, dict] = {}
        # Live migration: hosts a port is moving to (its inactive bindings, or migrating_to),
        # and the activation strategy of each (port, destination) that has one.
        self.moving_to = migration_targets(snapshot.get("port_binding", ()), self.ports)
        self.activation = {(b["port_id"], b["host"]): activation_strategy(b)
                           for b in snapshot.get("port_binding", ())
                           if not b.get("former") and activation_strategy(b)}
        for p in _order(self.ports.values()):
            self.ports_of[p["network_id"]].append(p)
            host = p.get("binding:host_id") or ""
            if host:
                self.ports_on[host].append(p)
            for target in self.moving_to.get(p["id"], ()):
                self.ports_on[target].append(p)
            if port_secured(p, self.networks.get(p["network_id"])):
                for g in p.get("security_groups") or ():
                    self.members[g].append(p)
            if p.get("device_owner") in ROUTER_OWNERS and self.l3_owned(p, self.routers):
                self.router_ports[p["device_id"]].append(p)
            elif p.get("device_owner") == GATEWAY_OWNER and self.l3_owned(p, self.routers):
                self.gateway_ports[p["device_id"]] = p
        # Sub-ports belong to the trunk's parent: they are bound where the parent is.
        self.subport_of: dict[str, tuple[dict, int]] = {}
        for t in self.trunks.values():
            for sp in t.get("sub_ports") or ():
                self.subport_of[sp["port_id"]] = (t, int(sp["segmentation_id"]))

        self.net_key = allocate_keys(self.networks.values(), 24, "net")
        self.zone = allocate_keys(self.networks.values(), 16, "zone")
        self.port_key = allocate_keys(self.ports.values(), 31, "port")
        self.router_key = allocate_keys(self.routers.values(), 24, "router")
        # Routers attached to each network (interfaces and gateway), for distributed routing.
        self.routers_on: dict[str, set[str]] = defaultdict(set)
        for rid, ports in self.router_ports.items():
            for p in ports:
                self.routers_on[p["network_id"]].add(rid)
        for rid, p in self.gateway_ports.items():
            self.routers_on[p["network_id"]].add(rid)
        self._hosts_of: dict[str, set[str]] = {}
        self.router_zone = {rid: k for rid, k in allocate_keys(
            [*self.networks.values(), *self.routers.values()], 16, "zone").items()
            if rid in self.routers}
        # Each network's load-balancing conntrack zone (its clients' connections to VIPs).
        # And its hairpin zone: a member calling its own VIP is SNATed to the VIP there.
        lb_nets = [{"id": f"{kind}:{n['id']}", "created_at": n.get("created_at")}
                   for kind in ("lb", "lbh") for n in self.networks.values()]
        zones = allocate_keys([*self.networks.values(), *self.routers.values(), *lb_nets], 16,
                              "zone")
        self.lb_zone = {i[3:]: k for i, k in zones.items() if i.startswith("lb:")}
        self.lb_hairpin_zone = {i[4:]: k for i, k in zones.items() if i.startswith("lbh:")}
        self.lb_group = allocate_keys(self.lb_listeners.values(), 24, "lb")

    def without(self, dropped: Iterable[tuple[str, str]]) -> "Topology":
        """This model less some resources ((type, id) pairs): what the compiler builds when
        they cannot be compiled.  A network goes with its subnets and ports."""
        topo = Topology(_drop(self.snapshot, dropped), self._given)
        topo.invalid = {**self.invalid, **topo.invalid}
        return topo

    def created(self, typ: str, ident: str) -> tuple[str, str]:
        """When a resource was created, as (created_at, id): of two resources that cannot
        both be compiled, the newer one is left out (created_at has Neutron's one-second
        resolution; within one second the larger id counts as newer)."""
        for r in self.snapshot.get(typ, ()):
            if r.get("id") == ident:
                return (r.get("created_at") or "", ident)
        return ("", ident)

    # --- questions stages ask ---------------------------------------------------------

    @staticmethod
    def l3_owned(port: dict, owners: Mapping[str, dict]) -> bool:
        """Whether a router's (or floating IP's) port really is its own: the device exists and
        the port is the L3 service's (no project) or in the device's project.  The API
        refuses other ports (DeviceIDNotOwnedByTenant); this keeps a port that claims a
        device_id anyway from being compiled as another project's router or floating IP."""
        dev = owners.get(port.get("device_id"))
        return dev is not None and port.get("project_id") in ("", None, dev.get("project_id"))

    def network_type(self, net: dict) -> str:
        return net.get("provider:network_type") or "vxlan"

    def active_host(self, port: dict) -> str:
        """The host of a port's active binding (a sub-port's is its trunk parent's)."""
        sub = self.subport_of.get(port["id"])
        if sub is not None:
            parent = self.ports.get(sub[0]["port_id"])
            return (parent.get("binding:host_id") or "") if parent else ""
        return port.get("binding:host_id") or ""

    def hosts_for(self, port: dict) -> tuple[str, ...]:
        """Every host a port may be on: its active host, then the hosts it is migrating to
        (traffic to it goes to all of them while it moves, as OVN clones it)."""
        active = self.active_host(port)
        sub = self.subport_of.get(port["id"])
        moving = self.moving_to.get(sub[0]["port_id"] if sub else port["id"], ())
        return tuple(h for h in (active, *moving) if h)

    def host_of(self, port: dict) -> str:
        """The host a port's packets are on: its active host, or during a migration the
        host its VIF is plugged on (the destination, once the VM runs there)."""
        hosts = self.hosts_for(port)
        if len(hosts) > 1:
            sub = self.subport_of.get(port["id"])
            vif = sub[0]["port_id"] if sub else port["id"]
            for h in hosts:
                ch = self.chassis.get(h)
                if ch is not None and vif in ch.ofports:
                    return h
        return hosts[0] if hosts else ""

    def local_ports(self, host: str) -> list[dict]:
        """Ports whose VIF is on `host` and that the agent has plugged (has an ofport).
        A trunk's sub-ports are not among them even when bound there (Neutron binds them to
        the parent's host): their frames are the parent VIF's, tagged."""
        ch = self.chassis.get(host)
        if ch is None:
            return []
        return [p for p in self.ports_on[host] if p["id"] in ch.ofports and is_vif(p)
                and p["id"] not in self.subport_of]

    def _port_hosts(self, network_id: str) -> set[str]:
        out = set()
        for p in self.ports_of[network_id]:
            out.update(h for h in self.hosts_for(p) if h in self.chassis)
        return out

    def hosts_of(self, network_id: str) -> set[str]:
        """Hosts the network's pipeline must be on (for flooding and remote delivery): those
        with a port of it, and those that route into it, since the sender's host routes:
        hosts with a port on another network of one of its routers, and the routers'
        gateway hosts."""
        out = self._hosts_of.get(network_id)
        if out is None:
            out = self._port_hosts(network_id)
            for rid in self.routers_on.get(network_id, ()):
                for net in self.router_networks(rid):
                    out |= self._port_hosts(net)
                gw = self.gateway_host(rid)
                if gw:
                    out.add(gw)
            self._hosts_of[network_id] = out
        return set(out)

    def router_networks(self, router_id: str) -> set[str]:
        nets = {p["network_id"] for p in self.router_ports.get(router_id, ())}
        gw = self.gateway_ports.get(router_id)
        return nets | ({gw["network_id"]} if gw else set())

    def gateway_host(self, router_id: str) -> str:
        """The host doing a router's centralized SNAT (and answering for its gateway IP):
        the gateway port's binding if it names a host, else the rendezvous-hash winner
        among hosts on the external network's physical network (stable as hosts come and
        go).  "" when the router has no gateway or no host can reach it."""
        gw = self.gateway_ports.get(router_id)
        if gw is None:
            return ""
        bound = gw.get("binding:host_id") or ""
        if bound in self.chassis:
            return bound
        net = self.networks.get(gw["network_id"]) or {}
        physnet = net.get("provider:physical_network")
        able = [c for c in self.chassis.values()
                if self.network_type(net) in TUNNEL_TYPES or physnet in c.physnets]
        if not able:
            return ""
        return max(able, key=lambda c: zlib.crc32(f"{router_id}:{c.name}".encode())).name

    # --- unit inputs (see compile.Context.unit) -----------------------------------------

    def port_deps(self, port: dict) -> tuple:
        """Everything about a port that a flow for it may depend on: its own version and
        key, its network's, the host it is on (tunnel IP) and its VIF ofport there
        (computed once per model: every stage asks)."""
        memo = self.__dict__.setdefault("_port_deps_memo", {})
        out = memo.get(port["id"])
        if out is None:
            out = memo[port["id"]] = self._port_deps(port)
        return out

    def _port_deps(self, port: dict) -> tuple:
        net = self.networks.get(port["network_id"]) or {}
        host = self.host_of(port)
        ch = self.chassis.get(host)
        sub = self.subport_of.get(port["id"])
        vif = sub[0]["port_id"] if sub else port["id"]
        moving = tuple((h, self.chassis[h].tunnel_ip, self.chassis[h].ofports.get(vif))
                       for h in self.hosts_for(port) if h in self.chassis) \
            if vif in self.moving_to else ()
        return (version(port), self.port_key[port["id"]], version(net),
                self.net_key.get(port["network_id"]), self.zone.get(port["network_id"]), host,
                ch.tunnel_ip if ch else None, ch.ofports.get(vif) if ch else None,
                (version(sub[0]), sub[1]) if sub else None, moving)

    def trunk_of(self, port: dict) -> dict | None:
        """The trunk whose parent is `port`."""
        return self._trunk_by_parent().get(port["id"])

    def _trunk_by_parent(self) -> dict[str, dict]:
        try:
            return self.__dict__["_trunks_by_parent"]
        except KeyError:
            out = {t["port_id"]: t for t in self.trunks.values()}
            self.__dict__["_trunks_by_parent"] = out
            return out

    def trunk_deps(self, port: dict) -> tuple:
        t = self.trunk_of(port)
        if t is None:
            return ()
        return (version(t), tuple(self.port_deps(self.ports[sp["port_id"]])
                                  for sp in t.get("sub_ports") or () if sp["port_id"] in self.ports))

    def ips(self, port: dict, version: int | None = None) -> list[str]:
        return [f["ip_address"] for f in port.get("fixed_ips") or ()
                if version is None or ip_version(f["ip_address"]) == version]


@functools.lru_cache(maxsize=1 << 16)
def ip_version(addr: str) -> int:
    return ipaddress.ip_address(addr).version


@functools.lru_cache(maxsize=1 << 16)
def ip_value(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def version(body: dict) -> tuple:
    """A resource's version: the API bumps revision_number on every change.  Bodies without
    one (hand-made snapshots) are compared by content."""
    rev = body.get("revision_number")
    if rev is None:
        return (body.get("id"), repr(sorted(body.items(), key=lambda kv: kv[0])))
    return (body["id"], rev, body.get("updated_at"))


def take_announcements(snapshot: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model as the hosts run it: a port whose VM announced itself on a destination
    (its binding's activation strategy; agent-reported, `announced`) is that host's, as if
    its binding were activated (OVN's activation-strategy), until Nova activates it."""
    moved = {b["port_id"]: b for b in snapshot.get("port_binding", ())
             if b.get("announced") and not b.get("former")}
    if not moved:
        return snapshot
    ports = []
    for p in snapshot.get("port", ()):
        b = moved.get(p["id"])
        if b is not None:
            # A version of its own: everything compiled from the port is compiled again.
            p = {**p, "binding:host_id": b["host"],
                 "updated_at": f"{p.get('updated_at')}+announced@{b['host']}"}
        ports.append(p)
    bindings = [dict(b, former=True) if moved.get(b.get("port_id")) is b else b
                for b in snapshot.get("port_binding", ())]
    return {**snapshot, "port": ports, "port_binding": bindings}


def migration_targets(bindings: Iterable[dict], ports: Mapping[str, dict]) -> dict[str, tuple]:
    """Port id -> hosts it is migrating to: its inactive bindings (Neutron's
    binding-extended; not the one an activation left behind on the old host) and the host
    its active binding's profile names in migrating_to (Nova without multiple bindings)."""
    out: dict[str, list[str]] = defaultdict(list)
    for b in bindings:
        if b.get("host") and not b.get("former") and b.get("port_id") in ports:
            out[b["port_id"]].append(b["host"])
    for pid, p in ports.items():
        to = (p.get("binding:profile") or {}).get("migrating_to")
        if isinstance(to, str) and to and to not in out.get(pid, ()):
            out[pid].append(to)
    return {pid: tuple(sorted(h for h in hosts if h != (ports[pid].get("binding:host_id") or "")))
            for pid, hosts in out.items()
            if any(h != (ports[pid].get("binding:host_id") or "") for h in hosts)}


def is_vif(port: dict) -> bool:
    """A port a VM (or a service function) plugs in, not a router's or DHCP's own port."""
    owner = port.get("device_owner") or ""
    return not owner.startswith("network:")


def port_secured(port: dict, net: dict | None) -> bool:
    pse = port.get("port_security_enabled")
    if pse is None:
        pse = True if net is None else net.get("port_security_enabled", True)
    return bool(pse)
