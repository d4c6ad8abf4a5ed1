"""Security groups on packets: allowed and denied flows, replies, statelessness, remote groups."""

from __future__ import annotations

import pytest

from tests.compiler.scenario import Cloud, icmp, ip_of, tcp, udp


def group(c: Cloud, project: str, name: str, stateful: bool = True, rules=()) -> dict:
    g = c.api.create("security-groups", project=project, name=name, stateful=stateful)
    for r in rules:
        c.api.create("security-group-rules", project=project, security_group_id=g["id"],
                     **{"direction": "ingress", "ethertype": "IPv4", **r})
    return g


def conversation(c, client, server, sport, dport):
    """Client SYN, server SYN-ACK, client ACK: which of them arrived."""
    syn = c.send(client, [tcp(client, server, sport, dport, "S", seq=100)]).to(server["id"])
    synack = c.send(server, [tcp(server, client, dport, sport, "SA", seq=500, ack=101)]
                    ).to(client["id"])
    ack = c.send(client, [tcp(client, server, sport, dport, "A", seq=101, ack=501)]
                 ).to(server["id"])
    return bool(syn), bool(synack), bool(ack)


@pytest.mark.parametrize("server_host", ["h1", "h2"])
def test_service_reachable_other_port_refused_replies_pass(server_host):
    c = Cloud()
    net = c.network("p1")
    web = group(c, "p1", "web", rules=[{"protocol": "tcp", "port_range_min": 22,
                                        "port_range_max": 22}])
    client = c.port("p1", net, "h1")                        # the project's default group
    server = c.port("p1", net, server_host, security_groups=[web["id"]])
    c.sync()
    assert conversation(c, client, server, 40000, 22) == (True, True, True)
    assert conversation(c, client, server, 40001, 80)[0] is False
    # Unsolicited inbound to the client (not from a member of its default group) is dropped.
    assert not c.send(server, [tcp(server, client, 22, 40002, "S")]).to(client["id"])


def test_default_group_admits_members_only():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    outsider = c.port("p1", net, "h3", security_groups=[group(c, "p1", "empty")["id"]])
    c.sync()
    assert c.send(a, [icmp(a, b)]).to(b["id"])
    assert not c.send(outsider, [icmp(outsider, b)]).to(b["id"])


def test_port_range_rule_boundaries():
    c = Cloud()
    net = c.network("p1")
    g = group(c, "p1", "range", rules=[{"protocol": "udp", "port_range_min": 1000,
                                        "port_range_max": 1999}])
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2", security_groups=[g["id"]])
    c.sync()
    got = {p: bool(c.send(a, [udp(a, b, 5000, p)]).to(b["id"]))
           for p in (999, 1000, 1001, 1500, 1024, 1998, 1999, 2000)}
    assert got == {999: False, 1000: True, 1001: True, 1500: True, 1024: True, 1998: True,
                   1999: True, 2000: False}


def test_stateless_group_behaves_statelessly():
    c = Cloud()
    net = c.network("p1")
    srv = group(c, "p1", "srv", stateful=False,
                rules=[{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}])
    cli = group(c, "p1", "cli", stateful=False)
    a = c.port("p1", net, "h1", security_groups=[cli["id"]])
    b = c.port("p1", net, "h2", security_groups=[srv["id"]])
    c.sync()
    syn, synack, _ = conversation(c, a, b, 40000, 22)
    assert syn and not synack                   # no conntrack: the reply needs its own rule
    c.api.create("security-group-rules", project="p1", security_group_id=cli["id"],
                 direction="ingress", ethertype="IPv4", protocol="tcp", port_range_min=32768,
                 port_range_max=60999)
    c.sync()
    assert conversation(c, a, b, 40000, 22) == (True, True, True)
    # ...and an unsolicited SYN to that range passes too: that is what stateless means.
    assert c.send(b, [tcp(b, a, 22, 50000, "S")]).to(a["id"])


def test_remote_group_membership_changes_take_effect():
    c = Cloud()
    net = c.network("p1")
    friends = group(c, "p1", "friends")
    guarded = group(c, "p1", "guarded")
    c.api.create("security-group-rules", project="p1", security_group_id=guarded["id"],
                 direction="ingress", ethertype="IPv4", protocol="tcp",
                 port_range_min=5432, port_range_max=5432, remote_group_id=friends["id"])
    db = c.port("p1", net, "h2", security_groups=[guarded["id"]])
    app = c.port("p1", net, "h1", security_groups=[friends["id"]])
    other = c.port("p1", net, "h1", security_groups=[])
    c.sync()
    other = c.api.update("ports", other["id"], security_groups=[guarded["id"]])
    c.sync()
    assert conversation(c, app, db, 40000, 5432) == (True, True, True)
    assert not c.send(other, [tcp(other, db, 40000, 5432)]).to(db["id"])
    c.api.update("ports", other["id"], security_groups=[friends["id"]])
    diffs = c.sync()
    assert c.send(other, [tcp(other, db, 40001, 5432)]).to(db["id"])
    c.api.update("ports", app["id"], security_groups=[])
    c.sync()
    assert not c.send(app, [tcp(app, db, 40002, 5432)]).to(db["id"])
    # The membership change touched a few flows, not the whole pipeline.
    assert 0 < diffs["h2"].size < 20


def test_icmp_rule_and_ipv4_only_rule_does_not_admit_ipv6():
    c = Cloud()
    net = c.network("p1")
    g = group(c, "p1", "ping", rules=[{"protocol": "icmp"}])
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2", security_groups=[g["id"]])
    c.sync()
    assert c.send(a, [icmp(a, b)]).to(b["id"])
    assert c.send(b, [icmp(b, a, type=0)]).to(a["id"])     # the echo reply is +est
    assert not c.send(b, [icmp(b, a, type=8, id=9)]).to(a["id"])   # b's own ping is not
    ip6 = c.network("p1", cidr="fd00:7::/64")
    a6, b6 = c.port("p1", ip6, "h1"), c.port("p1", ip6, "h2", security_groups=[g["id"]])
    c.sync()
    from tests.compiler.scenario import ICMP, IPv6, Ether, raw
    from scapy.layers.inet6 import ICMPv6EchoRequest
    ping6 = raw(Ether(src=a6["mac_address"], dst=b6["mac_address"])
                / IPv6(src=ip_of(a6, 6), dst=ip_of(b6, 6)) / ICMPv6EchoRequest())
    assert not c.send(a6, [ping6]).to(b6["id"])


def test_invalid_packet_dropped():
    c = Cloud()
    net = c.network("p1")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    # A SYN-ACK may not open a connection: conntrack says +inv, although b admits a.
    assert not c.send(a, [tcp(a, b, 40000, 80, "SA", seq=5, ack=7)]).to(b["id"])
    assert c.send(a, [tcp(a, b, 40000, 80, "S", seq=5)]).to(b["id"])


@pytest.mark.parametrize("kind", ["vxlan", "vlan"])
def test_broadcast_meets_each_receivers_ingress_groups(kind):
    c = Cloud()
    extra = {"physnet": "physnet1"} if kind == "vlan" else {}
    net = c.network("p1", kind=kind, **extra)
    svc = group(c, "p1", "udp5000", rules=[{"protocol": "udp", "port_range_min": 5000,
                                            "port_range_max": 5000}])
    closed = group(c, "p1", "closed")
    a = c.port("p1", net, "h1")
    open_ = [c.port("p1", net, h, security_groups=[svc["id"]]) for h in ("h1", "h2")]
    shut = [c.port("p1", net, h, security_groups=[closed["id"]]) for h in ("h1", "h2")]
    bare = c.port("p1", net, "h2", port_security_enabled=False, security_groups=[])
    c.sync()
    to_all = {"eth_dst": "ff:ff:ff:ff:ff:ff", "ip_dst": "10.0.0.255"}
    for dport, opened in ((5000, True), (6000, False)):
        d = c.send(a, [udp(a, a, 40000, dport, **to_all)])
        assert all(bool(d.to(p["id"])) is opened for p in open_), dport
        assert not any(d.to(p["id"]) for p in shut)
        assert len(d.to(bare["id"])) == 1           # no groups: everything arrives
    # ARP broadcasts are not filtered by groups (as Neutron's firewall).
    from tests.compiler.scenario import arp_request
    d = c.send(a, [arp_request(a, "10.0.0.250")])
    assert all(len(d.to(p["id"])) == 1 for p in open_ + shut + [bare])
