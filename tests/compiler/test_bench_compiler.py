"""The compiler benchmark in small: a generated cloud compiles to sane flow counts, and a port
add changes on other hosts exactly the flows that name the new port."""

from __future__ import annotations

import ipaddress

import pytest

from sbnet.agent.embedded import Cluster, apply_diff
from sbnet.compiler.compile import Compiler, compile_host
from sbnet.compiler.scale import Shape, generate
from sbnet.compiler.topology import mac_int
from sbnet.flows import fields as F

SHAPE = Shape(ports=100, hosts=3, networks=4, groups=10, rules_per_group=10, seed=7)


@pytest.fixture(scope="module")
def world():
    cloud = generate(SHAPE)
    cluster = Cluster(cloud.hosts)
    cluster.plug_bound(cloud.snapshot)
    topo = cluster.topology(cloud.snapshot)
    compilers = {h: Compiler(h) for h in cloud.hosts}
    for h, c in compilers.items():
        c.compile(topo)
        apply_diff(cluster.hosts[h].switch, c.last_diff)
    return cloud, cluster, compilers


def test_generated_cloud_has_the_asked_shape():
    cloud = generate(SHAPE)
    snap = cloud.snapshot
    rules = snap["security_group_rule"]
    assert len(snap["port"]) == 100 and len(snap["network"]) == 4
    assert len(rules) == 100 and abs(sum(1 for r in rules if r["remote_group_id"]) - 33) <= 1
    assert all(1 <= len(p["security_groups"]) <= 3 for p in snap["port"])
    ips = [p["fixed_ips"][0]["ip_address"] for p in snap["port"]]
    assert len(set(ips)) == len(ips) and len({p["mac_address"] for p in snap["port"]}) == 100


def test_flow_counts_are_sane(world):
    cloud, cluster, compilers = world
    counts = {h: len(c.flows) for h, c in compilers.items()}
    local = {h: len(cluster.hosts[h].ofports) for h in cloud.hosts}
    # Per-port flows dominate: each host's count grows with its ports, and no host is an outlier.
    assert all(counts[h] > 5 * local[h] for h in cloud.hosts)
    assert max(counts.values()) < 1.5 * min(counts.values())
    # Every host's table equals a compile from scratch and is what its switch holds.
    topo = cluster.topology(cloud.snapshot)
    for h, c in compilers.items():
        assert c.flows.keys() == compile_host(topo, h).flows.keys()
        assert len(list(cluster.hosts[h].switch.rules())) == counts[h]


def _names_port(flow, mac: int, ip: int) -> bool:
    for name, value, _ in flow.match.items:
        kind = F.lookup(name).kind
        if (kind is F.Kind.MAC and value == mac) or (kind is F.Kind.IPV4 and value == ip):
            return True
    return False


def test_port_add_touches_on_other_hosts_only_the_flows_naming_the_port(world):
    cloud, cluster, compilers = world
    host = cloud.hosts[0]
    # A network the host is on already: its flooding to the other hosts does not change.
    net = next(n for n in cloud.snapshot["network"]
               if any(p["network_id"] == n["id"] and p["binding:host_id"] == host
                      for p in cloud.snapshot["port"]))
    port = cloud.new_port(host, network=net)
    snap = cloud.with_port(port)
    cluster.plug(port["id"], host)
    topo = cluster.topology(snap)
    mac, ip = mac_int(port["mac_address"]), int(ipaddress.ip_address(port["fixed_ips"][0]["ip_address"]))
    groups = set(port["security_groups"])
    for h, c in compilers.items():
        c.compile(topo)
        d = c.last_diff
        apply_diff(cluster.hosts[h].switch, d)
        if h == host:
            assert d.add and not d.delete
            continue
        touched = d.add + d.modify + d.delete
        assert all(_names_port(f, mac, ip) for f in touched), \
            [str(f) for f in touched if not _names_port(f, mac, ip)]
        # And the flows that must change do: the MAC where the network is, the address where
        # a local port's group admits the new port's groups as remote.
        on_net = any(p["network_id"] == net["id"] and p["binding:host_id"] == h
                     for p in snap["port"])
        admits = {r["security_group_id"] for r in snap["security_group_rule"]
                  if r["remote_group_id"] in groups}
        remote = any(admits & set(p["security_groups"]) for p in snap["port"]
                     if p["binding:host_id"] == h)
        assert on_net == any(_names_port(f, mac, -1) for f in d.add)
        assert remote == any(_names_port(f, -1, ip) for f in d.add + d.modify)
    cloud.snapshot = snap
