"""Same-network delivery across hosts on every network type, flooding and the ARP responder."""

from __future__ import annotations

import pytest

from tests.compiler.scenario import ARP, Cloud, Dot1Q, Ether, arp_request, icmp, ip_of


@pytest.mark.parametrize("kind", ["vxlan", "gre", "geneve", "vlan", "flat"])
def test_vm_to_vm_across_hosts(kind):
    c = Cloud()
    extra = {"physnet": "physnet1"} if kind in ("vlan", "flat") else {}
    net = c.network("p1", kind=kind, port_security_enabled=False, **extra)
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2")
    a2 = c.port("p1", net, "h1")
    c.sync()
    d = c.send(a, [icmp(a, b)])
    assert d.to(b["id"]) == [icmp(a, b)]          # arrives intact, only at b
    assert d.to(a2["id"]) == [] and d.to(a["id"]) == []
    back = c.send(b, [icmp(b, a)])
    assert back.to(a["id"]) == [icmp(b, a)]
    local = c.send(a, [icmp(a, a2)])
    assert local.to(a2["id"]) == [icmp(a, a2)] and local.external == {}


def test_arp_for_a_known_port_is_answered_on_the_spot():
    c = Cloud()
    net = c.network("p1")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    d = c.send(a, [arp_request(a, ip_of(b))])
    (reply,) = d.to(a["id"])
    r = Ether(reply)
    assert r[ARP].op == 2 and r[ARP].psrc == ip_of(b) and r[ARP].hwsrc == b["mac_address"]
    assert r.dst == a["mac_address"] and d.to(b["id"]) == []


def test_broadcast_reaches_every_port_of_the_network_once_and_nothing_else():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1", port_security_enabled=False)
    other = c.network("p1", cidr="10.9.0.0/24", port_security_enabled=False)
    ports = [c.port("p1", net, h) for h in ("h1", "h2", "h3", "h3")]
    stranger = c.port("p1", other, "h2")
    c.sync()
    frame = bytes(Ether(src=ports[0]["mac_address"], dst="ff:ff:ff:ff:ff:ff", type=0x88b5)
                  / (b"x" * 50))
    d = c.send(ports[0], [frame])
    assert all(d.to(p["id"]) == [frame] for p in ports[1:])
    assert d.to(ports[0]["id"]) == [] and d.to(stranger["id"]) == []


def test_overlapping_projects_stay_isolated():
    c = Cloud()
    n1, n2 = c.network("p1", cidr="10.0.0.0/24"), c.network("p2", cidr="10.0.0.0/24")
    a1, b1 = c.port("p1", n1, "h1", port_security_enabled=False), c.port("p1", n1, "h2")
    a2, b2 = c.port("p2", n2, "h1", port_security_enabled=False), c.port("p2", n2, "h2")
    c.sync()
    d = c.send(a1, [icmp(a1, b2, ip_dst=ip_of(b2))])   # p2's MAC from p1's network
    assert d.total == 0
