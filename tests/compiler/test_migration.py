"""A migrating port's traffic goes to every host it may be on, until activation points all hosts at the new one."""

from __future__ import annotations

from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from tests.compiler.scenario import Cloud, icmp, ip_of

NOVA = {"X-Project-Id": "service", "X-Roles": "admin,service"}


def _seen(c: Cloud, host: str) -> int:
    """Packets the host's datapath has looked up (cache hits and upcalls)."""
    s = c.cluster.hosts[host].switch.dpif.stats()
    return s.hits + s.upcalls + sum(s.tier_packets.values())


def _sent_to(c: Cloud, a: dict, b: dict) -> tuple[int, bool, bool]:
    """Copies of one frame from a that reach b's VIF; whether h2 and h3 got one."""
    r2, r3 = _seen(c, "h2"), _seen(c, "h3")
    d = c.send(a, [icmp(a, b)])
    return len(d.to(b["id"])), _seen(c, "h2") > r2, _seen(c, "h3") > r3


def _client_with_floating_ip(c: Cloud) -> tuple:
    """A network routed to an external one, and a port on h2 whose group admits nothing
    inbound, with a floating IP: (network, router, port, floating IP, its MAC)."""
    from tests.compiler.test_l3 import external, router
    ext, _ = external(c)
    net = c.network("p1", "10.0.1.0/24")
    r = router(c, "p1", net, gateway=ext)
    g = c.api.create("security-groups", project="p1", name="client-only")
    for rule in c.api.request("GET", f"security-group-rules?security_group_id={g['id']}")[
            "security_group_rules"]:
        if rule["direction"] == "ingress":
            c.api.delete("security-group-rules", rule["id"])
    b = c.port("p1", net, "h2", device_owner="compute:nova", security_groups=[g["id"]])
    fip = c.api.create("floatingips", project="p1", floating_network_id=ext["id"],
                       port_id=b["id"])
    fmac = next(p for p in c.api.snapshot()["port"]
                if p["device_id"] == fip["id"])["mac_address"]
    return net, r, b, fip, fmac


def test_cloned_to_both_hosts_while_migrating_then_only_to_the_new_one():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1", port_security_enabled=False)
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2", device_owner="compute:nova")
    c.sync()
    assert _sent_to(c, a, b) == (1, True, False)
    # h3's agent is alive (a binding there needs one).
    c.api.client.put("/v2.0/sbnet/hosts/h3", json={"host": {
        "tunnel_ip": c.cluster.hosts["h3"].tunnel_ip, "datapath": "reference"}}, headers=NOVA)
    r = c.api.client.post(f"/v2.0/ports/{b['id']}/bindings", json={"binding": {"host": "h3"}},
                          headers=NOVA)
    assert r.status_code == 201
    c.sync()
    assert _sent_to(c, a, b) == (1, True, True)          # h3 gets a copy: the VM may be there
    assert c.api.client.put(f"/v2.0/ports/{b['id']}/bindings/h3/activate",
                            headers=NOVA).status_code == 200
    c.cluster.unplug(b["id"])
    c.sync()
    # The binding activation left on h2 is not a destination: h3 alone.
    assert _sent_to(c, a, b) == (1, False, True)
    assert c.api.client.delete(f"/v2.0/ports/{b['id']}/bindings/h2",
                               headers=NOVA).status_code == 204
    c.sync()
    assert _sent_to(c, a, b) == (1, False, True)


def test_migrating_to_in_the_profile_is_a_destination_too():
    c = Cloud(hosts=("h1", "h2", "h3"))
    net = c.network("p1", port_security_enabled=False)
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2", device_owner="compute:nova")
    c.sync()
    c.api.update("ports", b["id"], **{"binding:profile": {"migrating_to": "h3"}})
    c.sync()
    assert _sent_to(c, a, b) == (1, True, True)
    c.api.update("ports", b["id"], **{"binding:profile": {}})
    c.sync()
    assert _sent_to(c, a, b) == (1, True, False)



def test_what_reaches_the_source_for_a_migrating_port_goes_to_both_of_its_vifs():
    """The floating IP's traffic is NATed on the source (the outside's switches still send
    it there): while the port migrates, a copy leaves by the tunnel for the destination
    even though the source's VIF is plugged too (it went out of that VIF twice), with its
    tunnel destination kept across the security group's conntrack pass (it was lost, and
    the copy sent nowhere), and the destination's group admits it by the connection handed
    over; once the VM has left the source, the destination's copy alone arrives, before
    the source's agent has even noticed."""
    from sbnet.agent.migration import port_addresses, port_zones
    from sbnet.datapath import ctmove
    from tests.compiler.test_l3 import from_outside, router_port, via
    c = Cloud(hosts=("h1", "h2", "h3"))
    net, r, b, fip, fmac = _client_with_floating_ip(c)
    c.sync()
    c.send(b, [via(b, router_port(c, r, net), "203.0.113.50", sport=41000, dport=80,
                   flags="S")])

    def inbound():
        return c.cluster.send_external("physnet1", [from_outside(
            fmac, fip["floating_ip_address"], sport=80, dport=41000, flags="SA", ack=1)])
    assert inbound().hosts_of(b["id"]) == ["h2"]
    c.api.client.put("/v2.0/sbnet/hosts/h3", json={"host": {
        "tunnel_ip": c.cluster.hosts["h3"].tunnel_ip, "datapath": "reference"}}, headers=NOVA)
    assert c.api.client.post(f"/v2.0/ports/{b['id']}/bindings", json={"binding": {
        "host": "h3"}}, headers=NOVA).status_code == 201
    c.sync()
    c.cluster.plug_destination(b["id"], "h3")
    c.sync(plug=False)
    topo = c.cluster.topology(c.api.snapshot())
    port = topo.ports[b["id"]]
    ctmove.import_(c.cluster.hosts["h3"].switch.conntrack, ctmove.export(
        c.cluster.hosts["h2"].switch.conntrack, port_zones(topo, port),
        ctmove.addresses(port_addresses(topo, port)), 0.0), 0.0)
    d = inbound()
    assert d.hosts_of(b["id"]) == ["h2", "h3"]
    assert {Ether(f)[IP].dst for f in d.to(b["id"])} == {ip_of(b)}
    c.cluster.unplug(b["id"], "h2")          # the switch-over
    assert inbound().hosts_of(b["id"]) == ["h3"]
    c.sync(plug=False)                       # the source's agent saw it
    assert inbound().hosts_of(b["id"]) == ["h3"]


def test_a_gratuitous_arp_for_a_floating_ip_gets_no_answer_from_its_host():
    """Its host answers the outside's ARP requests for a floating IP, but not a gratuitous
    ARP for it (the destination of a migration announcing it at activation while the
    source still NATs it): the source's reply, from the floating IP's MAC, turned the
    outside's switches back to the source, which dropped the floating IP's traffic once its
    own flows had gone, until the destination's next announcement 0.2-1 s later."""
    from scapy.layers.l2 import ARP
    c = Cloud(hosts=("h1", "h2", "h3"))
    _, _, _, fip, fmac = _client_with_floating_ip(c)
    c.sync()
    ip, other = fip["floating_ip_address"], "02:00:00:00:00:50"

    def ask(src_mac: str, src_ip: str) -> list[bytes]:
        return c.cluster.send_external("physnet1", [bytes(
            Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=src_mac, psrc=src_ip, pdst=ip))]).external.get("physnet1", [])
    (answer,) = ask(other, "203.0.113.50")
    assert Ether(answer)[ARP].hwsrc == fmac
    assert ask(fmac, ip) == []


def test_the_destination_translates_the_vms_first_frames_before_it_runs_there():
    """From the connections handed over, the destination makes the frames the VM will send
    first (an acknowledgement of each TCP stream, the next echo request) and translates them
    ahead, conntrack passes included, on a scratch table: its own connection table is not
    touched, and after the switch-over those frames reach the peer on another host and the
    outside through the router, and a neighbour on the destination answers, without a
    single upcall there for any of them."""
    from scapy.layers.inet import ICMP, TCP
    from sbnet.agent.migration import port_addresses, port_zones
    from sbnet.agent.migrationwarm import first_frames
    from sbnet.datapath import ctmove
    from sbnet.datapath.prewarm import translate_ahead
    from sbnet.flows import fields as F
    from tests.compiler.scenario import tcp
    from tests.compiler.test_l3 import from_outside, router_port, via
    c = Cloud(hosts=("h1", "h2", "h3"))
    net, r, b, fip, fmac = _client_with_floating_ip(c)
    peer = c.api.create("security-groups", project="p1", name="peer")
    for proto in ("tcp", "icmp"):
        c.api.create("security-group-rules", project="p1", security_group_id=peer["id"],
                     direction="ingress", ethertype="IPv4", protocol=proto)
    a = c.port("p1", net, "h1", security_groups=[peer["id"]])
    q = c.port("p1", net, "h3", security_groups=[peer["id"]])   # a neighbour where b goes
    c.sync()
    gw = router_port(c, r, net)
    # b's connections: a TCP stream and pings to a, a TCP stream to the outside.
    assert c.send(b, [tcp(b, a, 41001, 5001, flags="S")]).to(a["id"])
    assert c.send(a, [tcp(a, b, 5001, 41001, flags="SA", seq=5000, ack=1001)]).to(b["id"])
    assert c.send(b, [icmp(b, a, id=77)]).to(a["id"])
    assert c.send(b, [tcp(b, q, 41002, 5002, flags="S")]).to(q["id"])
    assert c.send(q, [tcp(q, b, 5002, 41002, flags="SA", seq=7000, ack=1001)]).to(b["id"])
    c.send(b, [via(b, gw, "203.0.113.50", sport=41000, dport=80, flags="S")])
    assert c.cluster.send_external("physnet1", [from_outside(
        fmac, fip["floating_ip_address"], sport=80, dport=41000, flags="SA", ack=1)]).to(b["id"])
    c.api.client.put("/v2.0/sbnet/hosts/h3", json={"host": {
        "tunnel_ip": c.cluster.hosts["h3"].tunnel_ip, "datapath": "reference"}}, headers=NOVA)
    assert c.api.client.post(f"/v2.0/ports/{b['id']}/bindings", json={"binding": {
        "host": "h3"}}, headers=NOVA).status_code == 201
    c.sync()
    ofport = c.cluster.plug_destination(b["id"], "h3")
    c.sync(plug=False)
    topo = c.cluster.topology(c.api.snapshot())
    port = topo.ports[b["id"]]
    entries = ctmove.export(c.cluster.hosts["h2"].switch.conntrack, port_zones(topo, port),
                            ctmove.addresses(port_addresses(topo, port)), 0.0)
    sw = c.cluster.hosts["h3"].switch
    ctmove.import_(sw.conntrack, entries, 0.0)
    frames = first_frames(topo, port, ofport, entries)
    assert len(frames) == 4 and {f[0] for f in frames} == {ofport}
    table = sw.conntrack.dump()
    made = translate_ahead(sw, frames, entries, 0.0)
    assert made
    assert sw.conntrack.dump() == table
    c.cluster.unplug(b["id"], "h2")              # the switch-over
    c.cluster.where[b["id"]] = ("h3", ofport)
    before = {mf.mf_id for mf in sw.dpif.flow_dump()}
    d = c.send(b, [tcp(b, a, 41001, 5001, flags="A", seq=1001, ack=5001)])
    assert [Ether(f)[TCP].dport for f in d.to(a["id"])] == [5001]
    d = c.send(b, [icmp(b, a, id=77, seq=2)])
    assert [Ether(f)[ICMP].type for f in d.to(a["id"])] == [8]
    d = c.send(b, [via(b, gw, "203.0.113.50", sport=41000, dport=80, flags="A", seq=1, ack=1)])
    out = [Ether(f) for f in d.external.get("physnet1", ())]
    assert [(f[IP].dst, f[TCP].dport) for f in out] == [("203.0.113.50", 80)]
    # q's answer on h3 was translated ahead too (b's frame to it leaves by q's VIF there).
    d = c.send(q, [tcp(q, b, 5002, 41002, flags="A", seq=7001, ack=1001)])
    assert [Ether(f)[TCP].sport for f in d.to(b["id"])] == [5002]
    # So was a's answer, from h1 through the tunnel (h3 held h1's copies of b's traffic
    # until b ran there, so no copy has made it).
    d = c.send(a, [tcp(a, b, 5001, 41001, flags="A", seq=5001, ack=1002)])
    assert [Ether(f)[TCP].sport for f in d.to(b["id"])] == [5001]
    # (h3 also hears h1's frame to the outside on the physical network, and drops it.)
    slot = F.SLOT_INDEX["in_port"]
    assert [mf for mf in sw.dpif.flow_dump() if mf.mf_id not in before and dict(zip(
        mf.slots, mf.value)).get(slot) in (ofport, c.cluster.where[q["id"]][1], *sw.tunnels)
        ] == []
