"""Same-network delivery across hosts on every network type, flooding, and the ARP and ND responders."""

from __future__ import annotations

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptDstLLAddr

from tests.compiler.scenario import (
    ARP,
    Cloud,
    Dot1Q,
    Ether,
    IPv6,
    arp_request,
    checksums_valid,
    icmp,
    ip_of,
    raw,
    solicit,
)


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


def advert_of(frame: bytes) -> tuple:
    """(eth src, eth dst, ip src, ip dst, hop limit, R, S, O, target, TLL) of an NA, after
    checking its ICMPv6 checksum."""
    assert checksums_valid(frame), "bad ICMPv6 checksum"
    p = Ether(frame)
    na = p[ICMPv6ND_NA]
    return (p.src, p.dst, p[IPv6].src, p[IPv6].dst, p[IPv6].hlim, na.R, na.S, na.O, na.tgt,
            p[ICMPv6NDOptDstLLAddr].lladdr)


@pytest.mark.parametrize("b_host", ["h1", "h2"])
def test_nd_for_a_known_port_is_answered_on_the_spot(b_host):
    c = Cloud()
    net = c.network("p1", "fd00:1::/64")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, b_host)
    c.sync()
    d = c.send(a, [solicit(a, ip_of(b, 6))])
    (reply,) = d.to(a["id"])
    assert advert_of(reply) == (b["mac_address"], a["mac_address"], ip_of(b, 6), ip_of(a, 6),
                                255, 0, 1, 1, ip_of(b, 6), b["mac_address"])
    assert d.total == 1                      # answered here: b never sees the solicitation


def test_nd_on_a_trunk_subport_is_answered_with_its_vlan():
    c = Cloud()
    net, sub_net = c.network("p1", "10.0.0.0/24"), c.network("p1", "fd00:5::/64")
    parent = c.port("p1", net, "h1")
    child = c.port("p1", sub_net, None, mac_address=parent["mac_address"])
    c.api.create("trunks", project="p1", port_id=parent["id"],
                 sub_ports=[{"port_id": child["id"], "segmentation_type": "vlan",
                             "segmentation_id": 42}])
    peer = c.port("p1", sub_net, "h2")
    c.sync()
    ns = Ether(solicit(child, ip_of(peer, 6)))
    tagged = raw(Ether(src=ns.src, dst=ns.dst) / Dot1Q(vlan=42) / ns[IPv6])
    (reply,) = c.send(parent, [tagged]).to(parent["id"])
    r = Ether(reply)
    assert r[Dot1Q].vlan == 42 and r[ICMPv6ND_NA].tgt == ip_of(peer, 6)
    assert r[ICMPv6NDOptDstLLAddr].lladdr == peer["mac_address"]


def test_duplicate_address_detection_is_not_answered_but_flooded():
    c = Cloud()
    net = c.network("p1", "fd00:1::/64")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    probe = solicit(a, ip_of(a, 6), ip_src="::")
    d = c.send(a, [probe])
    assert d.to(a["id"]) == [] and d.to(b["id"]) == [probe]
    # Another VM probing for b's address hears nothing from the responder either.
    d = c.send(a, [solicit(a, ip_of(b, 6), ip_src="::")])
    assert d.to(a["id"]) == []


@pytest.mark.parametrize("hlim", [64, 1])
def test_invalid_solicitation_is_not_answered(hlim):
    c = Cloud()
    net = c.network("p1", "fd00:1::/64")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    d = c.send(a, [solicit(a, ip_of(b, 6), hlim=hlim)])
    assert d.to(a["id"]) == []               # b's own stack discards it (RFC 4861 7.1.1)


def test_nd_for_an_unknown_address_is_flooded_not_answered():
    c = Cloud()
    net = c.network("p1", "fd00:1::/64")
    a, b = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    c.sync()
    ns = solicit(a, "fd00:1::99")
    d = c.send(a, [ns])
    assert d.to(a["id"]) == [] and d.to(b["id"]) == [ns]
    assert Ether(d.to(b["id"])[0])[ICMPv6ND_NS].tgt == "fd00:1::99"
