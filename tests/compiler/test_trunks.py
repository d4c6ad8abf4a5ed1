"""Trunks on packets: a parent's VLAN-tagged frames are its sub-ports' traffic, on their own networks."""

from __future__ import annotations

import pytest

from tests.compiler.scenario import ARP, Cloud, Dot1Q, Ether, arp_request, icmp, ip_of, tcp, udp

VIDS = (101, 102)


def tagged(frame: bytes, vid: int) -> bytes:
    """The frame as it is on the trunk's wire: an 802.1Q tag (priority 0) after the MACs."""
    return frame[:12] + b"\x81\x00" + vid.to_bytes(2, "big") + frame[12:]


def reached(d) -> int:
    """Frames that reached ports (a VLAN network's frames also show on the physical network)."""
    return sum(map(len, d.ports.values()))


def trunk_cloud(kind: str, subports: tuple[int, ...] = VIDS, same_mac: bool = False,
                bound: bool = False):
    """A trunk parent on h1 (network n0) with sub-ports on n1 (VLAN 101) and n2 (VLAN 102),
    and one plain port per network on h2."""
    c = Cloud()
    extra = [{"kind": "vlan", "physnet": "physnet1", "seg": 200 + i} if kind == "vlan" else {}
             for i in range(3)]
    nets = [c.network("p1", cidr=f"10.{i}.0.0/24", **extra[i]) for i in range(3)]
    parent = c.port("p1", nets[0], "h1")
    mac = {"mac_address": parent["mac_address"]} if same_mac else {}
    # Neutron's trunk driver binds sub-ports to the parent's host; they have no VIF of their own.
    subs = [c.port("p1", nets[i], "h1" if bound else None, **mac) for i in (1, 2)]
    plain = [c.port("p1", n, "h2") for n in nets]
    trunk = c.api.create("trunks", project="p1", port_id=parent["id"], sub_ports=[
        {"port_id": s["id"], "segmentation_type": "vlan", "segmentation_id": vid}
        for s, vid in zip(subs, VIDS) if vid in subports])
    c.sync()
    return c, parent, subs, plain, trunk


@pytest.mark.parametrize("kind, bound", [("vxlan", False), ("vlan", False), ("vxlan", True)])
def test_subport_traffic_leaves_the_parent_tagged_and_arrives_untagged(kind, bound):
    c, parent, subs, plain, _ = trunk_cloud(kind, bound=bound)
    for sub, peer, vid in zip(subs, plain[1:], VIDS):
        ping = icmp(peer, sub)
        d = c.send(peer, [ping])
        assert d.to(parent["id"]) == [tagged(ping, vid)]      # the sub-port's VLAN, nothing else
        assert reached(d) == 1
        reply = icmp(sub, peer, type=0)
        back = c.send(parent, [tagged(reply, vid)])
        assert back.to(peer["id"]) == [reply]                 # untagged, intact, only there
        assert reached(back) == 1
        if kind == "vlan":   # between hosts the frame carries its network's VLAN, not the trunk's
            seg = c.api.request("GET", f"networks/{sub['network_id']}")["network"][
                "provider:segmentation_id"]
            assert back.external["physnet1"] == [tagged(reply, seg)]


@pytest.mark.parametrize("kind", ["vxlan", "vlan"])
def test_untagged_frames_are_the_parents_own_network(kind):
    c, parent, subs, plain, _ = trunk_cloud(kind)
    ping = icmp(parent, plain[0])
    d = c.send(parent, [ping])
    assert d.to(plain[0]["id"]) == [ping] and reached(d) == 1
    reply = icmp(plain[0], parent, type=0)
    assert c.send(plain[0], [reply]).to(parent["id"]) == [reply]
    # Untagged, a sub-port network's peer is out of reach: it is another network.
    stray = icmp(parent, plain[1], ip_dst=ip_of(plain[1]))
    assert c.send(parent, [stray]).total == 0


def test_a_frame_on_a_vlan_the_trunk_does_not_carry_is_dropped():
    c, parent, subs, plain, _ = trunk_cloud("vxlan")
    assert c.send(parent, [tagged(icmp(subs[0], plain[1]), 999)]).total == 0
    # A sub-port's frame on the other sub-port's VLAN is in the wrong network.
    assert c.send(parent, [tagged(icmp(subs[0], plain[1]), VIDS[1])]).total == 0


def broadcast(src: dict, payload: bytes) -> bytes:
    """A UDP broadcast on the sender's subnet (security groups pass IP, not other ethertypes)."""
    subnet_bcast = ip_of(src).rsplit(".", 1)[0] + ".255"
    return udp(src, src, 5000, 5001, payload=payload, eth_dst="ff:ff:ff:ff:ff:ff", ip_dst=subnet_bcast)


@pytest.mark.parametrize("kind", ["vxlan", "vlan"])
def test_broadcast_reaches_the_trunk_on_the_subports_vlan_only(kind):
    c, parent, subs, plain, _ = trunk_cloud(kind)
    frame = broadcast(plain[1], b"in")
    d = c.send(plain[1], [frame])
    assert d.to(parent["id"]) == [tagged(frame, 101)] and reached(d) == 1
    out = broadcast(subs[1], b"out")
    d = c.send(parent, [tagged(out, 102)])
    assert d.to(plain[2]["id"]) == [out] and reached(d) == 1


def test_a_subports_arp_is_answered_with_its_vlan_tag():
    c, parent, subs, plain, _ = trunk_cloud("vxlan")
    for sub, peer, vid in zip(subs, plain[1:], VIDS):
        d = c.send(parent, [tagged(arp_request(sub, ip_of(peer)), vid)])
        (reply,) = d.to(parent["id"])
        r = Ether(reply)
        assert r[Dot1Q].vlan == vid and r[ARP].op == 2
        assert r[ARP].psrc == ip_of(peer) and r[ARP].hwsrc == peer["mac_address"]
        assert r.dst == sub["mac_address"] and d.total == 1
    # The parent's own ARP is answered untagged.
    (reply,) = c.send(parent, [arp_request(parent, ip_of(plain[0]))]).to(parent["id"])
    assert Dot1Q not in Ether(reply) and Ether(reply)[ARP].hwsrc == plain[0]["mac_address"]


def test_subport_port_security_applies_to_its_own_addresses():
    """Sub-ports commonly share the parent's MAC; the VLAN still says which port's IPs apply."""
    c, parent, subs, plain, _ = trunk_cloud("vxlan", same_mac=True)
    s1, s2 = subs
    peer = plain[1]
    good = icmp(s1, peer)
    assert c.send(parent, [tagged(good, 101)]).to(peer["id"]) == [good]
    spoof = icmp(s1, peer, ip_src=ip_of(s2))               # the other sub-port's address
    assert c.send(parent, [tagged(spoof, 101)]).total == 0
    c.api.update("ports", s1["id"], allowed_address_pairs=[{"ip_address": ip_of(s2)}])
    c.sync()
    assert c.send(parent, [tagged(spoof, 101)]).to(peer["id"]) == [spoof]


def test_a_subports_security_groups_apply_to_its_vlan_and_not_to_the_others():
    c, parent, subs, plain, _ = trunk_cloud("vxlan")
    ssh = c.api.create("security-groups", project="p1", name="ssh-in-only")
    c.api.create("security-group-rules", project="p1", security_group_id=ssh["id"],
                 direction="ingress", ethertype="IPv4", protocol="tcp", port_range_min=22,
                 port_range_max=22)
    c.api.update("ports", subs[0]["id"], security_groups=[ssh["id"]])
    c.sync()
    peer1, peer2 = plain[1], plain[2]
    syn = tcp(peer1, subs[0], 40000, 22)
    assert c.send(peer1, [syn]).to(parent["id"]) == [tagged(syn, 101)]
    assert c.send(peer1, [tcp(peer1, subs[0], 40000, 80)]).total == 0
    assert c.send(parent, [tagged(icmp(subs[0], peer1), 101)]).total == 0    # no egress rule
    # The other sub-port keeps the default group: its traffic flows both ways.
    ping = icmp(subs[1], peer2)
    assert c.send(parent, [tagged(ping, 102)]).to(peer2["id"]) == [ping]
    web = tcp(peer2, subs[1], 40000, 80)
    assert c.send(peer2, [web]).to(parent["id"]) == [tagged(web, 102)]


def test_adding_a_subport_to_a_running_trunk_starts_its_traffic():
    c, parent, subs, plain, trunk = trunk_cloud("vxlan", subports=(101,))
    s2, peer = subs[1], plain[2]
    out = icmp(s2, peer)
    assert c.send(parent, [tagged(out, 102)]).total == 0
    c.api.action(f"trunks/{trunk['id']}/add_subports", {"sub_ports": [
        {"port_id": s2["id"], "segmentation_type": "vlan", "segmentation_id": 102}]})
    c.sync()
    assert c.send(parent, [tagged(out, 102)]).to(peer["id"]) == [out]
    back = icmp(peer, s2, type=0)
    assert c.send(peer, [back]).to(parent["id"]) == [tagged(back, 102)]
    # The sub-port that was there keeps working.
    first = icmp(subs[0], plain[1])
    assert c.send(parent, [tagged(first, 101)]).to(plain[1]["id"]) == [first]
    c.api.action(f"trunks/{trunk['id']}/remove_subports", {"sub_ports": [{"port_id": s2["id"]}]})
    c.sync()
    assert c.send(parent, [tagged(out, 102)]).total == 0
