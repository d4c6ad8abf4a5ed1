"""The distributed router on packets: routing, static routes, TTL, conntrack, floating IPs, SNAT."""

from __future__ import annotations

import pytest

from tests.compiler.scenario import (
    ARP,
    ICMP,
    IP,
    TCP,
    Cloud,
    Ether,
    arp_request,
    checksums_valid,
    ip_of,
    raw,
)

OUTSIDE_MAC = "02:00:00:00:00:99"


def router(c: Cloud, project: str, *nets: dict, gateway: dict | None = None) -> dict:
    info = {"external_gateway_info": {"network_id": gateway["id"]}} if gateway else {}
    r = c.api.create("routers", project=project, name="r", **info)
    for n in nets:
        c.api.action(f"routers/{r['id']}/add_router_interface", {"subnet_id": n["subnet"]["id"]})
    return r


def router_port(c: Cloud, r: dict, net: dict) -> dict:
    return next(p for p in c.api.snapshot()["port"]
                if p["device_id"] == r["id"] and p["network_id"] == net["id"])


def group(c: Cloud, project: str, rules=()) -> dict:
    g = c.api.create("security-groups", project=project, name="open")
    for r in rules:
        c.api.create("security-group-rules", project=project, security_group_id=g["id"],
                     direction="ingress", ethertype="IPv4", **r)
    return g


def via(src: dict, gw: dict, dst_ip: str, payload: bytes = b"payload", ttl: int = 64,
        **l4) -> bytes:
    """What `src` sends to `dst_ip` through its router port `gw` (ICMP echo, or TCP)."""
    ip = IP(src=ip_of(src), dst=dst_ip, ttl=ttl)
    l4p = TCP(**l4) if l4 else ICMP(id=7)
    return raw(Ether(src=src["mac_address"], dst=gw["mac_address"]) / ip / l4p / payload)


def two_subnets(kind: str = "vxlan"):
    c = Cloud()
    extra = {"physnet": "physnet1"} if kind == "vlan" else {}
    n1 = c.network("p1", "10.0.1.0/24", kind=kind, **extra)
    n2 = c.network("p1", "10.0.2.0/24", **({"kind": "vlan", "physnet": "physnet1"}
                                           if kind == "vlan" else {}))
    r = router(c, "p1", n1, n2)
    return c, n1, n2, r


@pytest.mark.parametrize("kind", ["vxlan", "vlan"])
@pytest.mark.parametrize("dst_host", ["h1", "h2"])
def test_routing_between_subnets_on_one_host_and_across_hosts(dst_host, kind):
    c, n1, n2, r = two_subnets(kind)
    a, b = c.port("p1", n1, "h1"), c.port("p1", n2, dst_host)
    bystander = c.port("p1", n2, "h1" if dst_host == "h2" else "h2")
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)
    # The gateway's ARP is answered on the spot with the router port's MAC.
    (answer,) = c.send(a, [arp_request(a, ip_of(g1))]).to(a["id"])
    assert Ether(answer)[ARP].hwsrc == g1["mac_address"]
    d = c.send(a, [via(a, g1, ip_of(b))])
    (got,) = d.to(b["id"])
    p = Ether(got)
    assert (p.src, p.dst) == (g2["mac_address"], b["mac_address"])
    assert (p[IP].src, p[IP].dst, p[IP].ttl) == (ip_of(a), ip_of(b), 63)
    assert bytes(p[ICMP].payload) == b"payload"
    assert checksums_valid(got)                         # checksums were kept right
    # (on VLAN networks a copy crosses the physical network between hosts)
    assert sum(map(len, d.ports.values())) == 1 and not d.to(bystander["id"])
    # ...and back: the default group admits the reply (+est in a's network's zone).
    back = Ether(src=b["mac_address"], dst=g2["mac_address"]) / IP(
        src=ip_of(b), dst=ip_of(a)) / ICMP(type=0, id=7) / b"payload"
    (ret,) = c.send(b, [raw(back)]).to(a["id"])
    assert Ether(ret).src == g1["mac_address"] and Ether(ret)[IP].ttl == 63


def v6_subnets(b_host: str):
    """Two IPv6 subnets on a router, a port on the first on h1 and one on the second."""
    c = Cloud()
    n1, n2 = c.network("p1", "fd00:1::/64"), c.network("p1", "fd00:2::/64")
    r = router(c, "p1", n1, n2)
    return c, n1, n2, r, c.port("p1", n1, "h1"), c.port("p1", n2, b_host)


@pytest.mark.parametrize("dst_host", ["h1", "h2"])
def test_ipv6_routing_between_connected_subnets(dst_host):
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    c, n1, n2, r, a, b = v6_subnets(dst_host)
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)
    ping = raw(Ether(src=a["mac_address"], dst=g1["mac_address"])
               / IPv6(src=ip_of(a, 6), dst=ip_of(b, 6), hlim=64) / ICMPv6EchoRequest(id=3)
               / b"payload")
    d = c.send(a, [ping])
    (got,) = d.to(b["id"])
    p = Ether(got)
    assert (p.src, p.dst, p[IPv6].hlim) == (g2["mac_address"], b["mac_address"], 63)
    assert (p[IPv6].src, p[IPv6].dst, p[ICMPv6EchoRequest].data) == (
        ip_of(a, 6), ip_of(b, 6), b"payload")
    assert d.total == 1
    pong = raw(Ether(src=b["mac_address"], dst=g2["mac_address"])
               / IPv6(src=ip_of(b, 6), dst=ip_of(a, 6)) / ICMPv6EchoReply(id=3) / b"payload")
    (back,) = c.send(b, [pong]).to(a["id"])
    assert Ether(back)[IPv6].hlim == 63
    expired = Ether(ping)
    expired[IPv6].hlim = 1
    assert c.send(a, [raw(expired)]).total == 0


@pytest.mark.parametrize("a_host", ["h1", "h2"])
def test_router_gateway_answers_nd_with_the_router_flag(a_host):
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6

    from tests.compiler.scenario import solicit
    c = Cloud()
    n1, n2 = c.network("p1", "fd00:1::/64"), c.network("p1", "fd00:2::/64")
    r = router(c, "p1", n1, n2)
    a = c.port("p1", n1, a_host)
    c.sync()
    g1 = router_port(c, r, n1)
    gw_ip = n1["subnet"]["gateway_ip"]
    assert ip_of(g1, 6) == gw_ip
    d = c.send(a, [solicit(a, gw_ip)])
    (reply,) = d.to(a["id"])
    p = Ether(reply)
    assert (p.src, p.dst, p[IPv6].src, p[IPv6].dst) == (
        g1["mac_address"], a["mac_address"], gw_ip, ip_of(a, 6))
    na = p[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (1, 1, 1, gw_ip)
    assert p[ICMPv6NDOptDstLLAddr].lladdr == g1["mac_address"]
    assert d.total == 1


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("a_host", ["h1", "h2"])
def test_router_answers_ping_to_its_addresses(a_host, version):
    from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    c = Cloud()
    cidrs = ("10.0.1.0/24", "10.0.2.0/24") if version == 4 else ("fd00:1::/64", "fd00:2::/64")
    n1, n2 = c.network("p1", cidrs[0]), c.network("p1", cidrs[1])
    r = router(c, "p1", n1, n2)
    a = c.port("p1", n1, a_host)
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)
    for target in (ip_of(g1, version), ip_of(g2, version)):   # its own side and the far one
        if version == 4:
            ping = Ether(src=a["mac_address"], dst=g1["mac_address"]) / IP(
                src=ip_of(a), dst=target, ttl=3) / ICMP(id=9, seq=4) / b"probe"
        else:
            ping = Ether(src=a["mac_address"], dst=g1["mac_address"]) / IPv6(
                src=ip_of(a, 6), dst=target, hlim=3) / ICMPv6EchoRequest(id=9, seq=4, data=b"probe")
        d = c.send(a, [raw(ping)])
        (got,) = d.to(a["id"])
        assert d.total == 1
        p = Ether(got)
        assert (p.src, p.dst) == (g1["mac_address"], a["mac_address"])
        if version == 4:
            assert (p[IP].src, p[IP].dst, p[ICMP].type, p[ICMP].id, p[ICMP].seq) == (
                target, ip_of(a), 0, 9, 4)
            assert bytes(p[ICMP].payload) == b"probe"
        else:
            e = p[ICMPv6EchoReply]
            assert (p[IPv6].src, p[IPv6].dst, e.id, e.seq, e.data) == (
                target, ip_of(a, 6), 9, 4, b"probe")
        assert checksums_valid(got)


def test_ping_to_an_address_the_router_does_not_have_is_routed_not_answered():
    c, n1, n2, r = two_subnets()
    a, b = c.port("p1", n1, "h1"), c.port("p1", n2, "h2")
    c.sync()
    d = c.send(a, [via(a, router_port(c, r, n1), ip_of(b))])
    assert d.to(a["id"]) == [] and len(d.to(b["id"])) == 1


def conversation(c, client, cgw, server, sgw, sport, dport):
    syn = c.send(client, [via(client, cgw, ip_of(server), b"", sport=sport, dport=dport,
                              flags="S", seq=100)]).to(server["id"])
    synack = c.send(server, [via(server, sgw, ip_of(client), b"", sport=dport, dport=sport,
                                 flags="SA", seq=500, ack=101)]).to(client["id"])
    ack = c.send(client, [via(client, cgw, ip_of(server), b"", sport=sport, dport=dport,
                              flags="A", seq=101, ack=501)]).to(server["id"])
    return bool(syn), bool(synack), bool(ack)


@pytest.mark.parametrize("server_host", ["h1", "h2"])
def test_routed_connection_reply_passes_unsolicited_syn_dropped(server_host):
    c, n1, n2, r = two_subnets()
    web = group(c, "p1", [{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}])
    client = c.port("p1", n1, "h1")                   # default group: ingress from members
    server = c.port("p1", n2, server_host, security_groups=[web["id"]])
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)
    assert conversation(c, client, g1, server, g2, 40000, 22) == (True, True, True)
    unsolicited = via(server, g2, ip_of(client), b"", sport=22, dport=40001, flags="S")
    assert not c.send(server, [unsolicited]).to(client["id"])


def test_static_route_to_a_vm_acting_as_router():
    c, n1, n2, r = two_subnets()
    a, hop = c.port("p1", n1, "h1"), c.port("p1", n2, "h2")
    c.api.action(f"routers/{r['id']}/add_extraroutes",
                 {"router": {"routes": [{"destination": "192.168.50.0/24",
                                         "nexthop": ip_of(hop)}]}})
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)
    (got,) = c.send(a, [via(a, g1, "192.168.50.7")]).to(hop["id"])
    p = Ether(got)
    assert (p.src, p.dst, p[IP].dst, p[IP].ttl) == (g2["mac_address"], hop["mac_address"],
                                                    "192.168.50.7", 63)
    # Not covered by any route: dropped.
    assert c.send(a, [via(a, g1, "192.168.51.7")]).total == 0


@pytest.mark.parametrize("hop_host", ["h1", "h2"])
def test_ipv6_static_route_to_a_vm_acting_as_router(hop_host):
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    c, n1, n2, r, a, hop = v6_subnets(hop_host)
    c.api.action(f"routers/{r['id']}/add_extraroutes",
                 {"router": {"routes": [{"destination": "fd00:50::/64",
                                         "nexthop": ip_of(hop, 6)}]}})
    c.sync()
    g1, g2 = router_port(c, r, n1), router_port(c, r, n2)

    def ping(dst):
        return raw(Ether(src=a["mac_address"], dst=g1["mac_address"])
                   / IPv6(src=ip_of(a, 6), dst=dst, hlim=9) / ICMPv6EchoRequest(id=5))
    (got,) = c.send(a, [ping("fd00:50::7")]).to(hop["id"])
    p = Ether(got)
    assert (p.src, p.dst, p[IPv6].dst, p[IPv6].hlim) == (g2["mac_address"], hop["mac_address"],
                                                         "fd00:50::7", 8)
    assert c.send(a, [ping("fd00:51::7")]).total == 0      # no route


def test_ttl_expiry_drops_the_packet():
    c, n1, n2, r = two_subnets()
    a, b = c.port("p1", n1, "h1"), c.port("p1", n2, "h2")
    c.sync()
    g1 = router_port(c, r, n1)
    assert c.send(a, [via(a, g1, ip_of(b), ttl=1)]).total == 0
    (got,) = c.send(a, [via(a, g1, ip_of(b), ttl=2)]).to(b["id"])
    assert Ether(got)[IP].ttl == 1


def test_router_does_not_route_into_another_projects_overlapping_subnet():
    c = Cloud()
    n1, n2 = c.network("p1", "10.0.1.0/24"), c.network("p1", "10.0.2.0/24")
    m1, m2 = c.network("p2", "10.0.1.0/24"), c.network("p2", "10.0.2.0/24")
    r1, r2 = router(c, "p1", n1, n2), router(c, "p2", m1, m2)
    a, b = c.port("p1", n1, "h1"), c.port("p1", n2, "h2")
    x, y = c.port("p2", m1, "h1"), c.port("p2", m2, "h2", fixed_ips=[{"ip_address": ip_of(b)}])
    c.sync()
    d = c.send(a, [via(a, router_port(c, r1, n1), ip_of(b))])
    assert d.to(b["id"]) and d.total == 1
    d = c.send(x, [via(x, router_port(c, r2, m1), ip_of(y))])
    assert d.to(y["id"]) and d.total == 1
    # p1's port addressing p2's router MAC on its own network reaches nothing.
    assert c.send(a, [via(a, router_port(c, r2, m1), ip_of(y))]).total == 0


# --- the external network: floating IPs and SNAT ---------------------------------------


def external(c: Cloud, kind: str = "flat") -> tuple[dict, dict]:
    """The external network on physnet1, and a host of the outside world on it (a port
    no host binds, which gives the routers its MAC)."""
    seg = {"seg": 300} if kind == "vlan" else {}
    ext = c.network("admin", "203.0.113.0/24", kind=kind, physnet="physnet1",
                    **{"router:external": True}, **seg)
    outside = c.port("admin", ext, None, mac_address=OUTSIDE_MAC,
                     fixed_ips=[{"ip_address": "203.0.113.50"}])
    return ext, outside


def from_outside(dst_mac: str, dst_ip: str, vlan: int | None = None, **l4) -> bytes:
    from scapy.layers.l2 import Dot1Q
    eth = Ether(src=OUTSIDE_MAC, dst=dst_mac)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    l4p = TCP(**l4) if l4 else ICMP(id=9)
    return raw(eth / IP(src="203.0.113.50", dst=dst_ip) / l4p / b"hello")


def strip(frame: bytes):
    from scapy.layers.l2 import Dot1Q
    p = Ether(frame)
    return p[Dot1Q].vlan if Dot1Q in p else None, p


def nat_cloud(gateway_host: str | None, kind: str = "flat", inside: str = "vxlan"):
    c = Cloud()
    ext, _ = external(c, kind)
    n1 = c.network("p1", "10.0.1.0/24", kind=inside,
                   **({"physnet": "physnet1"} if inside == "vlan" else {}))
    r = router(c, "p1", n1, gateway=ext)
    gw = router_port(c, r, ext)
    if gateway_host:
        c.api.update("ports", gw["id"], **{"binding:host_id": gateway_host})
    return c, ext, n1, r, gw


@pytest.mark.parametrize("kind", ["flat", "vlan"])
@pytest.mark.parametrize("vm_host", ["h1", "h2"])
def test_floating_ip_reachable_from_outside_and_replies_leave_from_it(vm_host, kind):
    c, ext, n1, r, _ = nat_cloud("h1", kind)
    vlan = 300 if kind == "vlan" else None
    open_ = group(c, "p1", [{"protocol": "icmp"}, {"protocol": "tcp", "port_range_min": 22,
                                                   "port_range_max": 22}])
    vm = c.port("p1", n1, vm_host, security_groups=[open_["id"]])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=vm["id"])
    c.sync()
    fip_ip = fip["floating_ip_address"]
    fmac = next(p for p in c.api.snapshot()["port"] if p["device_id"] == fip["id"])["mac_address"]
    g1 = router_port(c, r, n1)
    # ARP for the floating IP: one answer, from the VM's host, with the floating IP's MAC.
    ask = Ether(src=OUTSIDE_MAC, dst="ff:ff:ff:ff:ff:ff")
    if vlan:
        from scapy.layers.l2 import Dot1Q
        ask = ask / Dot1Q(vlan=vlan)
    ask = raw(ask / ARP(op=1, hwsrc=OUTSIDE_MAC, psrc="203.0.113.50", pdst=fip_ip))
    d = c.cluster.send_external("physnet1", [ask])
    (answer,) = d.external["physnet1"]
    tag, a = strip(answer)
    assert (tag, a[ARP].op, a[ARP].psrc, a[ARP].hwsrc, a.dst) == (vlan, 2, fip_ip, fmac,
                                                                 OUTSIDE_MAC)
    # Ping and TCP from outside arrive with the fixed IP as destination.
    for l4 in ({}, {"sport": 5555, "dport": 22, "flags": "S", "seq": 1}):
        d = c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip, vlan, **l4)])
        (got,) = d.to(vm["id"])
        p = Ether(got)
        assert (p.src, p.dst) == (g1["mac_address"], vm["mac_address"])
        assert (p[IP].src, p[IP].dst, p[IP].ttl) == ("203.0.113.50", ip_of(vm), 63)
        assert d.total == 1
    # The replies leave with the floating IP as source, from its MAC, to the outside host.
    for l4 in ({}, {"sport": 22, "dport": 5555, "flags": "SA", "seq": 70, "ack": 2}):
        frame = raw(Ether(src=vm["mac_address"], dst=g1["mac_address"])
                    / IP(src=ip_of(vm), dst="203.0.113.50")
                    / (TCP(**l4) if l4 else ICMP(type=0, id=9)) / b"hello")
        d = c.send(vm, [frame])
        (out,) = d.external["physnet1"]
        tag, p = strip(out)
        assert (tag, p.src, p.dst) == (vlan, fmac, OUTSIDE_MAC)
        assert (p[IP].src, p[IP].dst, p[IP].ttl) == (fip_ip, "203.0.113.50", 63)
        assert sum(map(len, d.ports.values())) == 0
    # The VM's own connection out uses the floating IP too, and its reply comes back.
    out = c.send(vm, [via(vm, g1, "203.0.113.50", sport=41000, dport=80, flags="S")])
    tag, p = strip(out.external["physnet1"][0])
    assert (p[IP].src, p[TCP].sport) == (fip_ip, 41000)
    d = c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip, vlan, sport=80,
                                                          dport=41000, flags="SA", ack=1)])
    assert Ether(d.to(vm["id"])[0])[IP].dst == ip_of(vm)


@pytest.mark.parametrize("gateway_host,vm_host,inside", [
    ("h1", "h1", "vxlan"), ("h1", "h2", "vxlan"), (None, "h2", "vxlan"), ("h1", "h2", "vlan")])
def test_snat_to_the_gateway_ip_for_ports_without_floating_ip(gateway_host, vm_host, inside):
    c, _, n1, r, gw = nat_cloud(gateway_host, inside=inside)
    vm = c.port("p1", n1, vm_host)
    other = c.port("p1", n1, "h2" if vm_host == "h1" else "h1")
    c.sync()
    gw_ip = ip_of(gw)
    g1 = router_port(c, r, n1)
    d = c.send(vm, [via(vm, g1, "203.0.113.50", b"out", sport=42000, dport=443, flags="S")])
    # On the external network (untagged), not the inside VLAN taking it to the gateway host.
    (out,) = [f for f in d.external["physnet1"] if strip(f)[0] is None]
    p = Ether(out)
    assert (p.src, p.dst) == (gw["mac_address"], OUTSIDE_MAC)
    assert (p[IP].src, p[IP].dst, p[IP].ttl, p[TCP].dport) == (gw_ip, "203.0.113.50", 63, 443)
    assert sum(map(len, d.ports.values())) == 0
    sport = p[TCP].sport
    reply = from_outside(gw["mac_address"], gw_ip, sport=443, dport=sport, flags="SA", seq=9,
                         ack=1001)
    d = c.cluster.send_external("physnet1", [reply])
    (back,) = d.to(vm["id"])
    q = Ether(back)
    assert (q.src, q.dst) == (g1["mac_address"], vm["mac_address"])
    assert (q[IP].src, q[IP].dst, q[TCP].dport) == ("203.0.113.50", ip_of(vm), 42000)
    assert sum(map(len, d.ports.values())) == 1 and not d.to(other["id"])
    # Nothing was opened from outside: an unsolicited SYN to the gateway IP reaches no one.
    d = c.cluster.send_external("physnet1", [from_outside(gw["mac_address"], gw_ip, sport=443,
                                                          dport=42001, flags="S")])
    assert sum(map(len, d.ports.values())) == 0


def test_gateway_ip_answers_arp_from_its_gateway_host_only():
    c, _, n1, _, gw = nat_cloud("h2")
    c.port("p1", n1, "h1")
    c.sync()
    ask = raw(Ether(src=OUTSIDE_MAC, dst="ff:ff:ff:ff:ff:ff")
              / ARP(op=1, hwsrc=OUTSIDE_MAC, psrc="203.0.113.50", pdst=ip_of(gw)))
    (answer,) = c.cluster.send_external("physnet1", [ask]).external["physnet1"]
    assert Ether(answer)[ARP].hwsrc == gw["mac_address"]


def test_floating_ip_reached_from_inside_through_the_gateway_host():
    """A port without a floating IP reaches another port's floating IP the way the outside
    does: SNAT on the gateway host, out on the external network, DNAT on the VM's host."""
    c, ext, n1, r, gw = nat_cloud("h1")
    open_ = group(c, "p1", [{"protocol": "tcp", "port_range_min": 22, "port_range_max": 22}])
    client = c.port("p1", n1, "h2")
    server = c.port("p1", n1, "h2", security_groups=[open_["id"]])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=server["id"])
    c.sync()
    g1 = router_port(c, r, n1)
    fip_ip = fip["floating_ip_address"]
    (got,) = c.send(client, [via(client, g1, fip_ip, b"", sport=43000, dport=22, flags="S",
                                 seq=1)]).to(server["id"])
    p = Ether(got)
    assert (p[IP].src, p[IP].dst) == (ip_of(gw), ip_of(server))
    reply = raw(Ether(src=server["mac_address"], dst=g1["mac_address"])
                / IP(src=ip_of(server), dst=ip_of(gw))
                / TCP(sport=22, dport=p[TCP].sport, flags="SA", seq=50, ack=2))
    (back,) = c.send(server, [reply]).to(client["id"])
    q = Ether(back)
    assert (q[IP].src, q[IP].dst, q[TCP].dport) == (fip_ip, ip_of(client), 43000)


def test_floating_ip_disassociated_then_the_port_uses_snat():
    c, ext, n1, r, gw = nat_cloud("h1")
    open_ = group(c, "p1", [{"protocol": "icmp"}])
    vm = c.port("p1", n1, "h2", security_groups=[open_["id"]])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=vm["id"])
    c.sync()
    fmac = next(p for p in c.api.snapshot()["port"] if p["device_id"] == fip["id"])["mac_address"]
    fip_ip = fip["floating_ip_address"]
    assert c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip)]).to(vm["id"])
    c.api.update("floatingips", fip["id"], port_id=None)
    c.sync()
    d = c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip)])
    assert sum(map(len, d.ports.values())) == 0
    out = c.send(vm, [via(vm, router_port(c, r, n1), "203.0.113.50")])
    (frame,) = out.external["physnet1"]
    assert Ether(frame)[IP].src == ip_of(gw)


@pytest.mark.parametrize("vm_host", ["h1", "h2"])
def test_ipv6_reaches_the_outside_routed_not_natted(vm_host):
    from scapy.layers.inet6 import (
        ICMPv6EchoReply,
        ICMPv6EchoRequest,
        ICMPv6ND_NA,
        ICMPv6NDOptDstLLAddr,
        IPv6,
    )

    from tests.compiler.scenario import solicit
    c = Cloud()
    ext = c.network("admin", "203.0.113.0/24", kind="flat", physnet="physnet1",
                    **{"router:external": True})
    c.api.create("subnets", project="admin", network_id=ext["id"], cidr="2001:db8:ff::/64",
                 ip_version=6, gateway_ip="2001:db8:ff::50")
    outside = c.port("admin", ext, None, mac_address=OUTSIDE_MAC,
                     fixed_ips=[{"ip_address": "203.0.113.50"}, {"ip_address": "2001:db8:ff::50"}])
    n1 = c.network("p1", "fd00:1::/64")
    r = router(c, "p1", n1, gateway=ext)
    gw = router_port(c, r, ext)
    c.api.update("ports", gw["id"], **{"binding:host_id": "h1"})
    vm = c.port("p1", n1, vm_host)
    c.sync()
    gw = router_port(c, r, ext)
    gw6, g1 = ip_of(gw, 6), router_port(c, r, n1)
    ping = raw(Ether(src=vm["mac_address"], dst=g1["mac_address"])
               / IPv6(src=ip_of(vm, 6), dst="2001:db8:99::7", hlim=64) / ICMPv6EchoRequest(id=4))
    d = c.send(vm, [ping])
    (out,) = [f for f in d.external["physnet1"] if strip(f)[0] is None]
    p = Ether(out)
    assert (p.src, p.dst) == (gw["mac_address"], OUTSIDE_MAC)
    assert (p[IPv6].src, p[IPv6].dst, p[IPv6].hlim) == (ip_of(vm, 6), "2001:db8:99::7", 63)
    reply = raw(Ether(src=OUTSIDE_MAC, dst=gw["mac_address"])
                / IPv6(src="2001:db8:99::7", dst=ip_of(vm, 6), hlim=60) / ICMPv6EchoReply(id=4))
    d = c.cluster.send_external("physnet1", [reply])
    (back,) = d.to(vm["id"])
    q = Ether(back)
    assert (q.src, q.dst, q[IPv6].src, q[IPv6].hlim) == (
        g1["mac_address"], vm["mac_address"], "2001:db8:99::7", 59)
    # The upstream router resolves the gateway address: the gateway host alone answers.
    d = c.cluster.send_external("physnet1", [solicit(outside, gw6, ip_src="2001:db8:ff::50")])
    (na,) = d.external["physnet1"]
    a = Ether(na)
    assert (a.src, a.dst, a[IPv6].src, a[IPv6].dst) == (
        gw["mac_address"], OUTSIDE_MAC, gw6, "2001:db8:ff::50")
    assert (a[ICMPv6ND_NA].R, a[ICMPv6ND_NA].S, a[ICMPv6ND_NA].tgt) == (1, 1, gw6)
    assert a[ICMPv6NDOptDstLLAddr].lladdr == gw["mac_address"]
