"""Load balancers on packets (reference switch, two hosts): spread by weight, replies from the
VIP, established connections kept across pool changes, health, UDP, IPv6, routed clients."""

from __future__ import annotations

from collections import Counter

from tests.compiler.scenario import (IP, TCP, UDP, Cloud, Ether, IPv6, checksums_valid, ip_of, raw,
                                     tcp, udp)
from tests.compiler.test_l3 import OUTSIDE_MAC, from_outside, group, nat_cloud, router, router_port

LB = "lbaas"


def balancer(c: Cloud, subnet: dict, protocol: str = "TCP", port: int = 80,
             algorithm: str = "ROUND_ROBIN", members=(), vip_address: str | None = None,
             **pool_kw) -> dict:
    lb = c.api.create(f"{LB}/loadbalancers", project="p1", vip_subnet_id=subnet["id"],
                      **({"vip_address": vip_address} if vip_address else {}))
    li = c.api.create(f"{LB}/listeners", project="p1", loadbalancer_id=lb["id"],
                      protocol=protocol, protocol_port=port)
    pool = c.api.create(f"{LB}/pools", project="p1", listener_id=li["id"], protocol=protocol,
                        lb_algorithm=algorithm, **pool_kw)
    made = [c.api.create(f"{LB}/pools/{pool['id']}/members", project="p1", **m) for m in members]
    vip = next(p for p in c.api.snapshot()["port"] if p["id"] == lb["vip_port_id"])
    return {"lb": lb, "listener": li, "pool": pool, "members": made, "vip": vip}


def where(d, ports: list[dict]) -> list[tuple[dict, bytes]]:
    return [(p, f) for p in ports for f in d.to(p["id"])]


def setup(members=3, weights=(1, 2, 3), **kw):
    c = Cloud()
    net = c.network("p1", "10.0.0.0/24")
    # Fixed addresses: the select group's hash, hence the spread, is the same every run.
    fixed = lambda ip: [{"subnet_id": net["subnet"]["id"], "ip_address": ip}]  # noqa: E731
    clients = [c.port("p1", net, h, fixed_ips=fixed(f"10.0.0.{10 + i}"))
               for i, h in enumerate(("h1", "h2"))]
    backends = [c.port("p1", net, h, fixed_ips=fixed(f"10.0.0.{20 + i}"))
                for i, h in enumerate(("h1", "h2", "h2")[:members])]
    b = balancer(c, net["subnet"], members=[{"address": ip_of(m), "protocol_port": 8080,
                                             "weight": w} for m, w in zip(backends, weights)],
                 vip_address="10.0.0.100", **kw)
    c.sync()
    return c, net, clients, backends, b


def test_connections_spread_by_weight_and_replies_come_from_the_vip():
    c, _net, clients, backends, b = setup()
    vip = b["vip"]
    seen: Counter = Counter()
    for client in clients:
        d = c.send(client, [tcp(client, vip, sport, 80) for sport in range(20000, 20150)])
        got = where(d, backends)
        assert sorted(Ether(f)[TCP].sport for _, f in got) == list(range(20000, 20150))
        for member, frame in got:
            p = Ether(frame)
            # DNAT to the member's address and port, readdressed to the member's MAC
            assert (p.dst, p[IP].dst, p[TCP].dport) == (member["mac_address"], ip_of(member), 8080)
            assert p[IP].src == ip_of(client)
            seen[member["id"]] += 1
    total = sum(seen.values())
    for m, w in zip(backends, (1, 2, 3)):
        assert abs(seen[m["id"]] / total - w / 6) < 0.05, seen
    # a reply from a member reaches the client from the VIP's address and port
    client = clients[1]
    d = c.send(client, [tcp(client, vip, 40000, 80)])
    ((member, _),) = where(d, backends)
    reply = tcp(member, client, 8080, 40000, flags="SA", seq=5000, ack=1001)
    (got,) = c.send(member, [reply]).to(client["id"])
    p = Ether(got)
    assert (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport) == (vip["fixed_ips"][0]["ip_address"],
                                                                  80, ip_of(client), 40000)


def test_established_connections_keep_their_member_when_the_pool_changes():
    c, _net, clients, backends, b = setup()
    client, vip = clients[0], b["vip"]
    d = c.send(client, [tcp(client, vip, sport, 80) for sport in range(21000, 21030)])
    first = {Ether(f)[TCP].sport: m["id"] for m, f in where(d, backends)}
    assert len(first) == 30 and len(set(first.values())) == 3
    # the heaviest member leaves; another one is disabled
    heavy, light = b["members"][2], b["members"][0]
    c.api.delete(f"{LB}/pools/{b['pool']['id']}/members", heavy["id"])
    c.api.update(f"{LB}/pools/{b['pool']['id']}/members", light["id"], admin_state_up=False)
    c.sync()
    d = c.send(client, [tcp(client, vip, sport, 80, flags="A", seq=1001, ack=1)
                        for sport in first])
    # no rehash of existing connections: each stays on its member, the removed one's too
    assert {Ether(f)[TCP].sport: m["id"] for m, f in where(d, backends)} == first
    d = c.send(client, [tcp(client, vip, sport, 80) for sport in range(22000, 22020)])
    assert {m["id"] for m, _ in where(d, backends)} == {backends[1]["id"]}
    assert len(where(d, backends)) == 20


def test_failed_members_leave_the_buckets_and_come_back():
    c, _net, clients, backends, b = setup()
    pool = b["pool"]
    c.api.create(f"{LB}/healthmonitors", project="p1", pool_id=pool["id"], type="TCP", delay=1,
                 timeout=1, max_retries=1)
    down = b["members"][1]
    c.api.request("PUT", "sbnet/lbaas/health", {"members": {down["id"]: "ERROR"}})
    c.sync()
    assert c.api.request("GET", f"lbaas/pools/{pool['id']}/members/{down['id']}")["member"][
        "operating_status"] == "ERROR"
    assert c.api.request("GET", f"lbaas/pools/{pool['id']}")["pool"]["operating_status"] == \
        "DEGRADED"
    client = clients[0]

    def targets(first: int) -> set[str]:
        d = c.send(client, [tcp(client, b["vip"], s, 80) for s in range(first, first + 30)])
        assert len(where(d, backends)) == 30
        return {m["id"] for m, _ in where(d, backends)}
    assert backends[1]["id"] not in targets(23000)
    c.api.request("PUT", "sbnet/lbaas/health", {"members": {down["id"]: "ONLINE"}})
    c.sync()
    assert backends[1]["id"] in targets(24000)


def test_backup_members_only_when_the_others_are_gone():
    c, _net, clients, backends, b = setup(members=2, weights=(1, 1))
    pool = b["pool"]
    c.api.update(f"{LB}/pools/{pool['id']}/members", b["members"][1]["id"], backup=True)
    c.sync()
    client = clients[0]
    d = c.send(client, [tcp(client, b["vip"], sport, 80) for sport in range(25000, 25030)])
    assert [m["id"] for m, _ in where(d, backends)] == [backends[0]["id"]] * 30
    c.api.update(f"{LB}/pools/{pool['id']}/members", b["members"][0]["id"], admin_state_up=False)
    c.sync()
    d = c.send(client, [tcp(client, b["vip"], 25100, 80)])
    assert [m["id"] for m, _ in where(d, backends)] == [backends[1]["id"]]


def test_source_ip_keeps_a_client_on_one_member():
    c, _net, clients, backends, b = setup(algorithm="SOURCE_IP")
    for client in clients:
        d = c.send(client, [tcp(client, b["vip"], sport, 80) for sport in range(26000, 26040)])
        assert len(where(d, backends)) == 40
        assert len({m["id"] for m, _ in where(d, backends)}) == 1


def test_udp_listener_and_other_ports_untouched():
    c = Cloud()
    net = c.network("p1", "10.0.0.0/24")
    client, m1, m2 = c.port("p1", net, "h1"), c.port("p1", net, "h2"), c.port("p1", net, "h2")
    b = balancer(c, net["subnet"], "UDP", 53, members=[
        {"address": ip_of(m), "protocol_port": 5353} for m in (m1, m2)])
    c.sync()
    d = c.send(client, [udp(client, b["vip"], 3333, 53, b"query")])
    ((member, frame),) = where(d, [m1, m2])
    assert (Ether(frame)[UDP].dport, bytes(Ether(frame)[UDP].payload)) == (5353, b"query")
    (back,) = c.send(member, [udp(member, client, 5353, 3333, b"answer")]).to(client["id"])
    assert (Ether(back)[IP].src, Ether(back)[UDP].sport) == (b["lb"]["vip_address"], 53)
    # a port the load balancer does not listen on is not balanced
    d = c.send(client, [udp(client, b["vip"], 3333, 54)])
    assert where(d, [m1, m2]) == []


def test_ipv6_vip():
    c = Cloud()
    net = c.network("p1", "fd00:1::/64")
    client, m1 = c.port("p1", net, "h1"), c.port("p1", net, "h2")
    b = balancer(c, net["subnet"], members=[{"address": ip_of(m1, 6), "protocol_port": 8080}])
    c.sync()
    vip6 = b["lb"]["vip_address"]
    syn = raw(Ether(src=client["mac_address"], dst=b["vip"]["mac_address"])
              / IPv6(src=ip_of(client, 6), dst=vip6) / TCP(sport=1234, dport=80, flags="S"))
    (got,) = c.send(client, [syn]).to(m1["id"])
    assert (Ether(got)[IPv6].dst, Ether(got)[TCP].dport) == (ip_of(m1, 6), 8080)
    reply = raw(Ether(src=m1["mac_address"], dst=client["mac_address"])
                / IPv6(src=ip_of(m1, 6), dst=ip_of(client, 6))
                / TCP(sport=8080, dport=1234, flags="SA", ack=1))
    (back,) = c.send(m1, [reply]).to(client["id"])
    assert (Ether(back)[IPv6].src, Ether(back)[TCP].sport) == (vip6, 80)


def test_client_on_another_subnet_through_the_router():
    c = Cloud()
    n1, n2 = c.network("p1", "10.0.1.0/24"), c.network("p1", "10.0.2.0/24")
    r = router(c, "p1", n1, n2)
    client, m1 = c.port("p1", n1, "h1"), c.port("p1", n2, "h2")
    b = balancer(c, n2["subnet"], members=[{"address": ip_of(m1), "protocol_port": 8080}])
    c.sync()
    g1 = router_port(c, r, n1)
    vip_ip = b["lb"]["vip_address"]
    syn = tcp(client, g1, 5555, 80, ip_dst=vip_ip)
    (got,) = c.send(client, [syn]).to(m1["id"])
    p = Ether(got)
    assert (p.dst, p[IP].dst, p[TCP].dport, p[IP].src) == (m1["mac_address"], ip_of(m1), 8080,
                                                           ip_of(client))
    g2 = router_port(c, r, n2)
    reply = tcp(m1, g2, 8080, 5555, flags="SA", ack=1001, ip_dst=ip_of(client))
    (back,) = c.send(m1, [reply]).to(client["id"])
    assert (Ether(back)[IP].src, Ether(back)[TCP].sport) == (vip_ip, 80)


def test_hairpin_member_reaches_itself_and_others_through_its_vip():
    """A member calling its own VIP: balanced to itself it gets the connection from the VIP
    (SNAT), and its reply comes back to it from VIP:80; balanced to another member, that one
    sees the caller's address and its reply comes back from the VIP too."""
    c, _net, _clients, backends, b = setup(members=2, weights=(1, 1))
    vip, me, other = b["vip"], backends[0], backends[1]
    vip_ip = b["lb"]["vip_address"]
    # members admit the VIP as a source (their default group admits only its members)
    c.api.create("security-group-rules", project="p1", direction="ingress", ethertype="IPv4",
                 security_group_id=me["security_groups"][0], remote_ip_prefix=f"{vip_ip}/32")
    c.sync()
    d = c.send(me, [tcp(me, vip, sport, 80) for sport in range(27000, 27040)])
    got = {Ether(f)[TCP].sport: (m, Ether(f)) for m, f in where(d, backends)}
    assert len(got) == 40 and {m["id"] for m, _ in got.values()} == {me["id"], other["id"]}
    own = other_sport = None
    for sport, (m, p) in got.items():
        if m["id"] == me["id"]:
            # hairpin: from the VIP's address and MAC, to the member's own address and port
            assert (p.src, p[IP].src, p.dst, p[IP].dst, p[TCP].dport) == (
                vip["mac_address"], vip_ip, me["mac_address"], ip_of(me), 8080)
            own = sport
        else:
            assert (p[IP].src, p[IP].dst, p[TCP].dport) == (ip_of(me), ip_of(other), 8080)
            other_sport = sport
    # the member answers the VIP (its stack saw the VIP as the source) ...
    reply = tcp(me, vip, 8080, own, flags="SA", seq=5000, ack=1001)
    (back,) = c.send(me, [reply]).to(me["id"])
    p = Ether(back)
    # ... and its own connection's reply arrives from VIP:80, to the port it called from
    assert (p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport, p.dst) == (
        vip_ip, 80, ip_of(me), own, me["mac_address"])
    assert checksums_valid(back)
    # the other member's reply to the caller comes back from the VIP too
    reply = tcp(other, me, 8080, other_sport, flags="SA", seq=5000, ack=1001)
    (back,) = c.send(other, [reply]).to(me["id"])
    assert (Ether(back)[IP].src, Ether(back)[TCP].sport) == (vip_ip, 80)
    # the rest of the handshake and data stay on the hairpin connection
    ack = tcp(me, vip, own, 80, flags="A", seq=1001, ack=5001)
    (fwd,) = c.send(me, [ack]).to(me["id"])
    assert (Ether(fwd)[IP].src, Ether(fwd)[TCP].dport) == (vip_ip, 8080)


def test_floating_ip_on_the_vip_is_balanced_from_outside():
    """Outside -> floating IP -> VIP -> member: the gateway host (h1) DNATs the floating IP to
    the VIP and balances it to members on both hosts; their replies leave from FIP:80."""
    c, ext, n1, r, _gw = nat_cloud("h1")
    open_ = group(c, "p1", [{"protocol": "tcp", "port_range_min": 8080, "port_range_max": 8080}])
    members = [c.port("p1", n1, h, security_groups=[open_["id"]]) for h in ("h1", "h2")]
    b = balancer(c, n1["subnet"], members=[{"address": ip_of(m), "protocol_port": 8080}
                                           for m in members])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=b["vip"]["id"])
    c.sync()
    fip_ip = fip["floating_ip_address"]
    fmac = next(p for p in c.api.snapshot()["port"] if p["device_id"] == fip["id"])["mac_address"]
    g1 = router_port(c, r, n1)
    seen = {}
    for sport in range(30000, 30030):
        d = c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip, sport=sport,
                                                              dport=80, flags="S", seq=1)])
        ((member, frame),) = where(d, members)
        p = Ether(frame)
        assert (p.dst, p[IP].src, p[IP].dst, p[TCP].dport) == (
            member["mac_address"], "203.0.113.50", ip_of(member), 8080)
        seen[sport] = member
    assert {m["id"] for m in seen.values()} == {m["id"] for m in members}
    for sport, member in list(seen.items())[:6]:
        # the member's reply, routed to the gateway host, leaves from the floating IP's port 80
        reply = raw(Ether(src=member["mac_address"], dst=g1["mac_address"])
                    / IP(src=ip_of(member), dst="203.0.113.50")
                    / TCP(sport=8080, dport=sport, flags="SA", seq=70, ack=2))
        (out,) = c.send(member, [reply]).external["physnet1"]
        p = Ether(out)
        assert (p.src, p.dst, p[IP].src, p[TCP].sport, p[IP].dst, p[TCP].dport) == (
            fmac, OUTSIDE_MAC, fip_ip, 80, "203.0.113.50", sport)
        # and the connection's next packet stays on its member
        d = c.cluster.send_external("physnet1", [from_outside(fmac, fip_ip, sport=sport,
                                                              dport=80, flags="A", seq=2, ack=71)])
        assert [m["id"] for m, _ in where(d, members)] == [member["id"]]


def test_other_traffic_of_the_network_stays_on_the_express_lane():
    """Only members' replies pass the LB zone on delivery: a connection between two ports
    that are not members, on a network with a VIP, runs on the compiled lane once
    established (a ct with NAT would send every one of its packets to the general path)."""
    c, _net, clients, _backends, _b = setup()
    a, z = clients
    c.send(a, [tcp(a, z, 40000, 22)])
    c.send(z, [tcp(z, a, 22, 40000, flags="SA", seq=500, ack=1001)])
    c.send(a, [tcp(a, z, 40000, 22, flags="A", seq=1001, ack=501)])
    dpifs = [c.cluster.hosts[h].switch.dpif for h in ("h1", "h2")]
    before = [d.lane_packets for d in dpifs]
    for i in range(5):
        assert c.send(a, [tcp(a, z, 40000, 22, flags="PA", seq=1001 + i, ack=501)]).to(z["id"])
        assert c.send(z, [tcp(z, a, 22, 40000, flags="PA", seq=501 + i, ack=1002 + i)]).to(a["id"])
    assert all(d.lane_packets - n >= 8 for d, n in zip(dpifs, before)), \
        [d.lane_packets - n for d, n in zip(dpifs, before)]
