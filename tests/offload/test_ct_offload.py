"""Conntrack on the NIC tier: established TCP connections go to the NIC's table up to its capacity."""

from __future__ import annotations

import dataclasses

import numpy as np

from sbnet.offload import builtin_profiles
from sbnet.offload.compare import Cloud, endpoints
from sbnet.offload.workload import TcpWorkload

CONNS, SEGMENTS, CAPACITY = 12, 6, 5


def _run(profile):
    cloud = Cloud.make("smartnic")
    # The same hosts, but NICs whose conntrack table holds CAPACITY connections.
    from sbnet.agent.embedded import Cluster
    cloud.cluster = Cluster(["h1", "h2"], offload=profile)
    net = cloud.network("vxlan")
    web = cloud.group("web")
    c = cloud.port(net, "h1")
    s = cloud.port(net, "h2", security_groups=[web["id"]])
    cloud.sync()
    cep, sep = endpoints(c, s)
    res = TcpWorkload(cloud.cluster, cep, sep, np.full(CONNS, SEGMENTS)).run()
    return cloud, res


def test_connections_beyond_the_capacity_stay_in_software_and_counts_are_exact():
    small = dataclasses.replace(builtin_profiles()["smartnic"], ct_capacity=CAPACITY)
    cloud, res = _run(small)
    tot, steady = res.total(), res.phases["steady"]
    assert tot.delivered == tot.sent == CONNS * (6 + 2 * SEGMENTS)
    for h in cloud.cluster.hosts.values():
        tier = h.switch.tier
        # Every packet crossed both hosts and is counted once on each, on one tier.
        assert sum(h.switch.tier_packets.values()) == tot.sent
        assert tier.ct_refused == CONNS - CAPACITY          # each refused connection once
        assert tier.ct_count() == 0                          # FINs took them off the NIC
    # Steady state: the held connections' data and ACKs on the NIC, the others in software.
    assert steady.nic == 2 * CAPACITY * 2 * SEGMENTS
    assert steady.software == 2 * (CONNS - CAPACITY) * 2 * SEGMENTS
    # Handshakes and teardowns are software: +new, not yet established, or closing.
    for phase in ("setup", "teardown"):
        assert res.phases[phase].nic == 0


def test_with_room_for_all_every_steady_packet_is_on_the_nic():
    cloud, res = _run("smartnic")
    steady = res.phases["steady"]
    assert steady.software == 0 and steady.nic == 2 * CONNS * 2 * SEGMENTS
    assert all(h.switch.tier.ct_refused == 0 for h in cloud.cluster.hosts.values())
    # Megaflows are per traffic class, not per connection (no rule's ports get unwildcarded
    # by packets of another protocol), so the NIC holds a handful of flows for them all.
    assert all(len(h.switch.cache) < CONNS / 2 for h in cloud.cluster.hosts.values())


def test_a_software_host_counts_every_packet_in_software():
    cloud, res = _run("software")
    tot = res.total()
    assert tot.nic == 0 and tot.software == 2 * tot.sent
