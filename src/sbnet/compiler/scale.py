"""Synthetic clouds for scale measurements: Neutron-shaped snapshots of many ports, groups and rules."""

from __future__ import annotations

import ipaddress
import random
import uuid
from dataclasses import dataclass, field


@dataclass
class Shape:
    """How big the cloud is.  A third of the rules name a remote group, as in clouds that
    use groups for tiers; every port is in one to three groups."""

    ports: int = 1000
    hosts: int = 10
    networks: int = 20
    groups: int = 100
    rules_per_group: int = 10
    projects: int = 5
    seed: int = 1


@dataclass
class Cloud:
    """A generated model and the ids a benchmark needs to extend it."""

    shape: Shape
    snapshot: dict
    hosts: list[str]
    rng: random.Random
    ip_next: dict[str, int] = field(default_factory=dict)   # network id -> next host index
    clock: int = 0

    def stamp(self) -> str:
        """Creation times in order (stable keys are allocated in creation order)."""
        self.clock += 1
        return f"2026-01-01T{self.clock // 3600 % 24:02d}:{self.clock // 60 % 60:02d}:" \
               f"{self.clock % 60:02d}.{self.clock:07d}Z"

    def stamps(self) -> dict:
        """created_at, updated_at and revision_number, as the API gives every resource (the
        compiler tells versions apart by them)."""
        t = self.stamp()
        return {"created_at": t, "updated_at": t, "revision_number": 1}

    def new_port(self, host: str, network: dict | None = None, groups: list[str] | None = None) -> dict:
        """A VIF port as the API returns it, bound to `host`; not yet in the snapshot."""
        snap = self.snapshot
        net = network or self.rng.choice(snap["network"])
        subnet = next(s for s in snap["subnet"] if s["network_id"] == net["id"])
        idx = self.ip_next[net["id"]]
        self.ip_next[net["id"]] = idx + 1
        ip = str(ipaddress.ip_network(subnet["cidr"]).network_address + idx)
        if groups is None:
            sgs = snap["security_group"]
            groups = [g["id"] for g in self.rng.sample(sgs, self.rng.randint(1, min(3, len(sgs))))]
        n = self.rng.getrandbits(24)
        return {
            "id": str(uuid.UUID(int=self.rng.getrandbits(128))), "network_id": net["id"],
            "project_id": net["project_id"], "tenant_id": net["project_id"], "name": "",
            "admin_state_up": True, "mac_address": f"fa:16:3e:{n >> 16:02x}:{n >> 8 & 255:02x}:{n & 255:02x}",
            "fixed_ips": [{"subnet_id": subnet["id"], "ip_address": ip}],
            "device_id": str(uuid.UUID(int=self.rng.getrandbits(128))), "device_owner": "compute:nova",
            "binding:host_id": host, "binding:vnic_type": "normal", "port_security_enabled": True,
            "security_groups": groups, "allowed_address_pairs": [], "qos_policy_id": None,
            "status": "ACTIVE", **self.stamps(),
        }

    def with_port(self, port: dict) -> dict:
        """A new snapshot: this one plus `port` (the others' dicts are shared, not copied)."""
        snap = dict(self.snapshot)
        snap["port"] = [*snap["port"], port]
        snap["revision"] = snap.get("revision", 0) + 1
        return snap


def generate(shape: Shape | None = None) -> Cloud:
    """A cloud of `shape`: vxlan networks with one IPv4 subnet each, groups with Neutron's two
    default egress rules and ingress rules (TCP/UDP ranges, ICMP, from prefixes or remote
    groups), ports spread round-robin over the hosts and at random over the networks."""
    shape = shape or Shape()
    rng = random.Random(shape.seed)
    uid = lambda: str(uuid.UUID(int=rng.getrandbits(128)))
    hosts = [f"host{i}" for i in range(shape.hosts)]
    cloud = Cloud(shape, {"revision": 1, "network": [], "subnet": [], "port": [],
                          "security_group": [], "security_group_rule": []}, hosts, rng)
    snap = cloud.snapshot
    projects = [f"project{i}" for i in range(shape.projects)]
    for i in range(shape.networks):
        project = projects[i % len(projects)]
        net = {"id": uid(), "name": f"net{i}", "project_id": project, "tenant_id": project,
               "admin_state_up": True, "status": "ACTIVE", "shared": False, "mtu": 1450,
               "provider:network_type": "vxlan", "provider:physical_network": None,
               "provider:segmentation_id": 1000 + i, "port_security_enabled": True,
               "router:external": False, "qos_policy_id": None, **cloud.stamps()}
        cidr = f"10.{i // 16}.{(i % 16) * 16}.0/20"
        sub = {"id": uid(), "network_id": net["id"], "project_id": project, "tenant_id": project,
               "name": f"sub{i}", "cidr": cidr, "ip_version": 4,
               "gateway_ip": str(ipaddress.ip_network(cidr).network_address + 1),
               "enable_dhcp": True, **cloud.stamps()}
        net["subnets"] = [sub["id"]]
        snap["network"].append(net)
        snap["subnet"].append(sub)
        cloud.ip_next[net["id"]] = 10
    groups = []
    for i in range(shape.groups):
        project = projects[i % len(projects)]
        groups.append({"id": uid(), "name": f"sg{i}", "project_id": project, "tenant_id": project,
                       "stateful": True, **cloud.stamps()})
    snap["security_group"] = groups
    for i, g in enumerate(groups):
        for r in _rules(rng, g, groups, shape.rules_per_group, i):
            r.update(id=uid(), security_group_id=g["id"], project_id=g["project_id"],
                     tenant_id=g["project_id"], remote_address_group_id=None, **cloud.stamps())
            snap["security_group_rule"].append(r)
    # Hosts round-robin, networks at random: as a scheduler places VMs, so every host ends
    # up with ports on most networks (round-robin both would put each host on a few only).
    for i in range(shape.ports):
        snap["port"].append(cloud.new_port(hosts[i % len(hosts)]))
    return cloud


def _rules(rng: random.Random, group: dict, groups: list[dict], n: int, index: int) -> list[dict]:
    """Two default egress rules, then ingress rules of which enough take a remote group
    (instead of a prefix) that a third of all rules do."""
    def rule(direction, ethertype="IPv4", protocol=None, lo=None, hi=None, prefix=None, remote=None):
        return {"direction": direction, "ethertype": ethertype, "protocol": protocol,
                "port_range_min": lo, "port_range_max": hi, "remote_ip_prefix": prefix,
                "remote_group_id": remote}
    out = [rule("egress"), rule("egress", "IPv6")][:n]
    m = max(1, n - len(out))             # ingress rules per group
    k = 0
    while len(out) < n:
        # A third of all rules are remote-group rules, spread evenly over the ingress ones.
        j = index * m + k
        remote = rng.choice(groups)["id"] if (j + 1) * n // (3 * m) > j * n // (3 * m) else None
        prefix = None if remote else rng.choice(("0.0.0.0/0", f"192.168.{rng.randrange(256)}.0/24",
                                                 f"172.16.{rng.randrange(256)}.0/24"))
        kind = k % 4
        k += 1
        if kind == 3:
            out.append(rule("ingress", protocol="icmp", prefix=prefix, remote=remote))
        else:
            port = rng.choice((22, 80, 443, 3306, 5432, 8080, 6379))
            hi = port if kind == 0 else port + rng.choice((0, 9, 99))
            out.append(rule("ingress", protocol="udp" if kind == 2 else "tcp", lo=port, hi=hi,
                            prefix=prefix, remote=remote))
    return out
