"""Per load balancer, the offload report says what its traffic ran on the NIC tier and why the rest did not."""

from __future__ import annotations

from sbnet.agent.embedded import Cluster
from sbnet.offload.report import cluster_report
from tests.compiler.scenario import TCP, Cloud, Ether, ip_of, tcp
from tests.compiler.test_lb import balancer, where


def test_established_vip_connections_run_on_the_smartnic_new_ones_in_software():
    c = Cloud()
    c.cluster = Cluster(["h1", "h2"], offload="smartnic")
    net = c.network("p1", "10.0.0.0/24")
    client = c.port("p1", net, "h1")
    members = [c.port("p1", net, "h2"), c.port("p1", net, "h2")]
    b = balancer(c, net["subnet"], members=[{"address": ip_of(m), "protocol_port": 8080}
                                            for m in members])
    c.sync()
    vip, conns = b["vip"], 10
    d = c.send(client, [tcp(client, vip, 30000 + i, 80, seq=100) for i in range(conns)])
    chosen = {}
    for m, frame in where(d, members):
        chosen[Ether(frame)[TCP].sport] = m
    assert len(chosen) == conns
    for sport, m in chosen.items():
        c.send(m, [tcp(m, client, 8080, sport, flags="SA", seq=500, ack=101)])
    for rnd in range(5):
        t = c.cluster.clock() + 1.0          # time passes: the NIC inserts megaflows at its rate
        c.cluster.clock = lambda t=t: t
        d = c.send(client, [tcp(client, vip, 30000 + i, 80, flags="A", seq=101 + rnd, ack=501)
                            for i in range(conns)])
        assert len(where(d, members)) == conns
    rep = cluster_report(c.cluster)
    (lb,) = [r for r in rep["resources"] if r["kind"] == "loadbalancer"]
    assert lb["id"] == b["lb"]["id"] and "h1" in lb["hosts"]
    # the steady packets of established connections went through the NIC tier on h1 ...
    assert lb["packets_nic"] >= conns * 3 and lb["megaflows_nic"] >= 1
    # ... the first packet of each connection (select group, commit with DNAT) did not, and
    # the report says why
    assert lb["packets_software"] >= conns
    assert any("ct_state=+new" in why or "+new" in why for why in lb["reasons"]), lb["reasons"]
