"""The express lane against the numpy reference through routers, floating IPs and load balancers: NAT, TTL, pings and conntrack misses, same packets, counters and connections."""

from __future__ import annotations

from scapy.layers.inet import ICMP

from sbnet.agent.embedded import Cluster
from tests.compiler.scenario import IP, TCP, Ether, ip_of, raw, tcp
from tests.compiler.test_l3 import from_outside, group, nat_cloud, router_port
from tests.compiler.test_lb import setup as lb_setup


def _reference(c) -> Cluster:
    """A numpy-reference cluster synced from the same API as `c`'s (compiled) one."""
    ref = Cluster(list(c.cluster.hosts), physnets=c.cluster.physnet_names, compiled=False)
    ref.sync(c.api.snapshot())
    return ref


def _same(fast: Cluster, ref: Cluster, send) -> None:
    """send(cluster) on both: the same frames out of every port and network, in order."""
    got, want = send(fast), send(ref)
    assert got.ports == want.ports and got.external == want.external


def _same_state(fast: Cluster, ref: Cluster) -> None:
    for host in fast.hosts:
        a, b = fast.hosts[host].switch, ref.hosts[host].switch
        assert sorted(a.dump_megaflows(now=99.0)) == sorted(b.dump_megaflows(now=99.0))
        assert [(s.flow, s.n_packets, s.n_bytes) for s in a.dump_flows(now=99.0)] == \
            [(s.flow, s.n_packets, s.n_bytes) for s in b.dump_flows(now=99.0)]
        assert sorted(a.dump_conntrack()) == sorted(b.dump_conntrack())
        assert a.drop_counts() == b.drop_counts()


def _handed(cluster: Cluster) -> int:
    return sum(h.switch.dpif.lane_handed for h in cluster.hosts.values())


def test_floating_ip_and_router_traffic_stay_in_the_lane():
    """A VM behind a router with a floating IP on another host than the gateway: TCP and
    pings from outside (DNAT), the VM's own connection out (SNAT from the floating IP),
    through TTL and MAC rewrites and two conntrack zones.  Once the connections are up,
    every packet takes the lane on every host, the same bytes as the numpy reference."""
    c, ext, n1, r, _ = nat_cloud("h1", "flat")
    open_ = group(c, "p1", [{"protocol": "icmp"}, {"protocol": "tcp", "port_range_min": 22,
                                                   "port_range_max": 22}])
    vm = c.port("p1", n1, "h2", security_groups=[open_["id"]])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=vm["id"])
    c.sync()
    fast, ref = c.cluster, _reference(c)
    fip_ip = fip["floating_ip_address"]
    fmac = next(p for p in c.api.snapshot()["port"] if p["device_id"] == fip["id"])["mac_address"]
    g1 = router_port(c, r, n1)
    mine, gw = vm["mac_address"], g1["mac_address"]

    def outside(**l4):
        return lambda cl: cl.send_external("physnet1", [from_outside(fmac, fip_ip, None, **l4)])

    def from_vm(l4):
        frame = raw(Ether(src=mine, dst=gw) / IP(src=ip_of(vm), dst="203.0.113.50") / l4 / b"hi")
        return lambda cl: cl.send(vm["id"], [frame])

    opening = [outside(sport=5555, dport=22, flags="S", seq=1),
               from_vm(TCP(sport=22, dport=5555, flags="SA", seq=70, ack=2)),
               outside(sport=5555, dport=22, flags="A", seq=2, ack=71),
               outside(), from_vm(ICMP(type=0, id=9)),
               from_vm(TCP(sport=41000, dport=80, flags="S", seq=500)),
               outside(sport=80, dport=41000, flags="SA", seq=900, ack=501),
               from_vm(TCP(sport=41000, dport=80, flags="A", seq=501, ack=901))]
    for send in opening:
        _same(fast, ref, send)
    steady = (outside(sport=5555, dport=22, flags="PA", seq=2, ack=71),
              from_vm(TCP(sport=22, dport=5555, flags="PA", seq=71, ack=2)),
              outside(), from_vm(ICMP(type=0, id=9)),
              from_vm(TCP(sport=41000, dport=80, flags="PA", seq=501, ack=901)),
              outside(sport=80, dport=41000, flags="A", seq=901, ack=501))
    for k in range(4):
        if k == 2:
            # The first rounds met new megaflows (+est after the opening's +new) and keys
            # the cache had seen only from the general path.
            before = _handed(fast)
        for send in steady:
            _same(fast, ref, send)
    assert _handed(fast) == before
    _same_state(fast, ref)
    # A tuple in conntrack's overflow table (its 64-bit hash taken by another): the
    # compiled path cannot see it, so ct steps go to the general path, with the same result.
    for h in fast.hosts.values():
        h.switch.dpif.conntrack.table.overflow[("collided",)] = -1
    for send in steady:
        _same(fast, ref, send)
    assert _handed(fast) > before
    _same_state(fast, ref)


def test_load_balanced_connections_stay_in_the_lane():
    """Clients on both hosts to a VIP with members on both: the DNAT on the client's host,
    the un-NAT of replies there, and the member's host where the LB zone knows nothing
    (ct(nat) misses, +new without a commit).  Once the connections are up, every packet
    takes the lane, the same bytes as the numpy reference."""
    c, _net, clients, backends, b = lb_setup()
    fast, ref = c.cluster, _reference(c)
    vip = b["vip"]
    conns = []
    for client in clients:
        for sport in (20000, 20001, 20002):
            d = fast.send(client["id"], [tcp(client, vip, sport, 80, flags="S", seq=1000)])
            ref.send(client["id"], [tcp(client, vip, sport, 80, flags="S", seq=1000)])
            (member,) = [m for m in backends if d.to(m["id"])]
            conns.append((client, member, sport))
    for client, member, sport in conns:
        _same(fast, ref, lambda cl: cl.send(member["id"], [
            tcp(member, client, 8080, sport, flags="SA", seq=5000, ack=1001)]))
        _same(fast, ref, lambda cl: cl.send(client["id"], [
            tcp(client, vip, sport, 80, flags="A", seq=1001, ack=5001)]))
    for k in range(4):
        if k == 2:
            before = _handed(fast)
        for client, member, sport in conns:
            _same(fast, ref, lambda cl: cl.send(client["id"], [
                tcp(client, vip, sport, 80, flags="PA", seq=1001, ack=5001)]))
            _same(fast, ref, lambda cl: cl.send(member["id"], [
                tcp(member, client, 8080, sport, flags="A", seq=5001, ack=1001)]))
    assert _handed(fast) == before
    _same_state(fast, ref)
