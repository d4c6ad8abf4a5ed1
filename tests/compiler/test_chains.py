"""Port chains on packets: classified traffic visits its service functions in order, then its destination."""

from __future__ import annotations

from dataclasses import dataclass, field

from scapy.contrib.mpls import MPLS
from scapy.contrib.nsh import NSH

from tests.compiler.scenario import (
    IP,
    UDP,
    Cloud,
    Ether,
    IPv6,
    icmp,
    ip_of,
    raw,
    tcp,
    udp,
)


@dataclass
class ServiceFunction:
    """An NSH-aware service function: what reaches its ingress port must be NSH for its
    chain; it decrements the service index and sends the packet back from its egress port.
    An unaware one (a bump in the wire) must get plain frames and returns them as they are."""

    name: str
    ingress: dict
    egress: dict
    aware: bool = True
    mpls: bool = False
    seen: list = field(default_factory=list)      # (spi, si, inner frame)

    def handle(self, frames: list[bytes], at: dict, back: dict) -> list[bytes]:
        """The frames that reached port `at`, processed, to send from port `back`."""
        if self.mpls:
            return [self.handle_mpls(f) for f in frames]
        if not self.aware:
            assert all(Ether(f).type != 0x894F for f in frames)
            self.seen += [(None, None, f) for f in frames]
            return list(frames)
        out = []
        for f in frames:
            pkt = Ether(f)
            assert pkt.type == 0x894F and pkt.dst == at["mac_address"], pkt.summary()
            hdr = pkt[NSH]
            self.seen.append((hdr.spi, hdr.si, raw(hdr.payload)))
            hdr.si -= 1
            pkt.src = back["mac_address"]
            out.append(raw(pkt))
        return out


    def handle_mpls(self, frame: bytes) -> bytes:
        """An MPLS-aware SF: label SPI << 8 | SI after the frame's own Ethernet header;
        it returns the frame with the label's SI one lower (traffic class kept)."""
        pkt = Ether(frame)
        assert pkt.type == 0x8847
        label = pkt[MPLS]
        assert label.s == 1
        inner = raw(Ether(src=pkt.src, dst=pkt.dst, type=0x0800) / label.payload)
        self.seen.append((label.label >> 8, label.label & 0xFF, inner))
        label.label -= 1
        return raw(pkt)


class Chains(Cloud):
    """A Cloud whose sends play the service functions until every frame has landed."""

    def __init__(self, hosts=("h1", "h2", "h3")) -> None:
        super().__init__(hosts=hosts)
        self.sfs: dict[str, ServiceFunction] = {}
        self.visits: list[str] = []
        self.external: dict[str, list[bytes]] = {}

    def service_function(self, name: str, net: dict, host: str, aware: bool = True,
                         mpls: bool = False) -> ServiceFunction:
        # Default security groups: NSH frames to and from an SF are not theirs to judge.
        ingress = self.port("p1", net, host, name=f"{name}-in")
        egress = self.port("p1", net, host, name=f"{name}-out")
        sf = ServiceFunction(name, ingress, egress, aware, mpls)
        self.sfs[ingress["id"]] = self.sfs[egress["id"]] = sf
        return sf

    def group(self, *sfs: ServiceFunction) -> dict:
        pairs = [self.api.create("sfc/port_pairs", project="p1", ingress=sf.ingress["id"],
                                 egress=sf.egress["id"], service_function_parameters={
                                     "correlation": ("mpls" if sf.mpls else "nsh") if sf.aware
                                     else None})
                 for sf in sfs]
        return self.api.create("sfc/port_pair_groups", project="p1",
                               port_pairs=[p["id"] for p in pairs])

    def classifier(self, src: dict, **kw) -> dict:
        return self.api.create("sfc/flow_classifiers", project="p1",
                               logical_source_port=src["id"], **kw)

    def chain(self, groups: list[dict], classifiers: list[dict], **params) -> dict:
        """A chain; NSH unless it asks otherwise (the API's default is networking-sfc's mpls)."""
        return self.api.create("sfc/port_chains", project="p1",
                               port_pair_groups=[g["id"] for g in groups],
                               flow_classifiers=[c["id"] for c in classifiers],
                               chain_parameters=params or {"correlation": "nsh"})

    def send(self, port: dict, frames) -> dict[str, list[bytes]]:
        """Where the frames finally landed (service functions' ingress ports excluded)."""
        landed: dict[str, list[bytes]] = {}
        pending = [(port, frames)]
        for _ in range(16):
            if not pending:
                return landed
            nxt = []
            for p, fs in pending:
                d = super().send(p, fs)
                for net, got in d.external.items():    # what crossed a physical network
                    self.external.setdefault(net, []).extend(got)
                for pid, got in d.ports.items():
                    sf = self.sfs.get(pid)
                    if sf is None:
                        landed.setdefault(pid, []).extend(got)
                        continue
                    self.visits += [sf.name] * len(got)
                    # In by its ingress, out by its egress; the other way on a symmetric
                    # chain's way back.
                    at, back = ((sf.ingress, sf.egress) if pid == sf.ingress["id"]
                                else (sf.egress, sf.ingress))
                    nxt.append((back, sf.handle(got, at, back)))
            pending = nxt
        raise AssertionError("frames still moving after 16 rounds")


def endpoints(c: Chains, src: str, dst: str, **net_kw) -> tuple[dict, dict, dict]:
    """A network and two ports on it that may send anything (source on `src`, destination on `dst`)."""
    net = c.network("p1", **net_kw)
    return (net, c.port("p1", net, src, port_security_enabled=False),
            c.port("p1", net, dst, port_security_enabled=False))


def two_group_chain(c: Chains):
    net, a, b = endpoints(c, "h1", "h3")
    sf1, sf2 = c.service_function("sf1", net, "h2"), c.service_function("sf2", net, "h3")
    fc = c.classifier(a, protocol="tcp", destination_port_range_min=80,
                      destination_port_range_max=80)
    chain = c.chain([c.group(sf1), c.group(sf2)], [fc])
    c.sync()
    return a, b, sf1, sf2, chain


def test_a_chain_of_two_groups_visits_sf1_then_sf2_then_the_destination_intact():
    c = Chains()
    a, b, sf1, sf2, chain = two_group_chain(c)
    frame = tcp(a, b, 40000, 80)
    landed = c.send(a, [frame])
    assert c.visits == ["sf1", "sf2"] and c.external == {}
    spi = chain["chain_id"]
    assert sf1.seen == [(spi, 255, frame)] and sf2.seen == [(spi, 254, frame)]
    assert landed == {b["id"]: [frame]}


def test_traffic_the_classifier_does_not_match_goes_straight_to_the_destination():
    c = Chains()
    a, b, *_ = two_group_chain(c)
    other = [tcp(a, b, 40000, 443), udp(a, b, 5000, 80), icmp(a, b)]
    landed = c.send(a, other)
    assert c.visits == [] and landed == {b["id"]: other}
    back = c.send(b, [tcp(b, a, 80, 40000)])        # the reverse direction is not classified
    assert c.visits == [] and back == {a["id"]: [tcp(b, a, 80, 40000)]}


def test_deleting_the_chain_restores_direct_delivery():
    c = Chains()
    a, b, _, _, chain = two_group_chain(c)
    frame = tcp(a, b, 40000, 80)
    assert c.send(a, [frame]) == {b["id"]: [frame]} and c.visits == ["sf1", "sf2"]
    c.api.delete("sfc/port_chains", chain["id"])
    c.sync()
    c.visits.clear()
    assert c.send(a, [frame]) == {b["id"]: [frame]} and c.visits == []


def test_a_group_of_two_pairs_shares_flows_and_keeps_each_flow_on_one_pair():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h2")
    left, right = c.service_function("left", net, "h2"), c.service_function("right", net, "h3")
    fc = c.classifier(a, protocol="udp")
    c.chain([c.group(left, right)], [fc])
    c.sync()
    many = [udp(a, b, 1000 + i, 53, payload=b"%d" % i) for i in range(40)]
    landed = c.send(a, many)
    assert sorted(landed[b["id"]]) == sorted(many) and len(c.visits) == 40
    assert 8 <= c.visits.count("left") <= 32           # both pairs carry a fair share
    c.visits.clear()
    one = [udp(a, b, 1234, 53, payload=b"%d" % i) for i in range(10)]
    landed = c.send(a, one)
    assert landed == {b["id"]: one} and len(set(c.visits)) == 1 and len(c.visits) == 10


def test_the_chosen_pair_holds_at_every_group_of_a_flow_across_hosts():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h1")
    g1 = [c.service_function(n, net, h) for n, h in (("x1", "h2"), ("x2", "h3"))]
    g2 = [c.service_function(n, net, h) for n, h in (("y1", "h3"), ("y2", "h2"))]
    c.chain([c.group(*g1), c.group(*g2)], [c.classifier(a, protocol="tcp")])
    c.sync()
    frames = [tcp(a, b, 2000 + i, 22) for i in range(24)]
    landed = c.send(a, frames)
    assert sorted(landed[b["id"]]) == sorted(frames)
    # Each flow went through exactly one pair of each group, in order.
    for f in frames:
        path = [sf.name for sf in g1 + g2 for (_, _, inner) in sf.seen if inner == f]
        assert len(path) == 2 and path[0][0] == "x" and path[1][0] == "y", path
    assert {n for n in c.visits} == {"x1", "x2", "y1", "y2"}


def test_classifier_fields_select_the_traffic():
    c = Chains(hosts=("h1", "h2"))
    net, a, b = endpoints(c, "h1", "h2")
    d = c.port("p1", net, "h2", port_security_enabled=False)
    sf = c.service_function("sf", net, "h2")
    fc = c.classifier(a, protocol="udp", source_port_range_min=1000, source_port_range_max=1999,
                      destination_ip_prefix=f"{ip_of(b)}/32", logical_destination_port=b["id"])
    c.chain([c.group(sf)], [fc])
    c.sync()
    hit = [udp(a, b, 1000, 9), udp(a, b, 1999, 9)]
    miss = [udp(a, b, 999, 9), udp(a, b, 2000, 9), udp(a, d, 1500, 9), tcp(a, b, 1500, 9)]
    landed = c.send(a, hit + miss)
    assert sorted(landed[b["id"]]) == sorted(hit + [f for f in miss if Ether(f).dst == b["mac_address"]])
    assert [inner for (_, _, inner) in sf.seen] == hit


def test_stateful_groups_see_a_chained_connection_as_one_connection():
    c = Chains()
    net = c.network("p1")
    sg_a = c.api.create("security-groups", project="p1", name="client")
    sg_b = c.api.create("security-groups", project="p1", name="web")
    for r in c.api.snapshot()["security_group_rule"]:
        if r["security_group_id"] in (sg_a["id"], sg_b["id"]) and r["direction"] == "ingress":
            c.api.delete("security-group-rules", r["id"])
    c.api.create("security-group-rules", project="p1", security_group_id=sg_b["id"],
                 direction="ingress", ethertype="IPv4", protocol="tcp", port_range_min=80,
                 port_range_max=80)
    a = c.port("p1", net, "h1", security_groups=[sg_a["id"]])   # accepts no new connection
    b = c.port("p1", net, "h3", security_groups=[sg_b["id"]])
    sf = c.service_function("sf", net, "h2")
    c.chain([c.group(sf)], [c.classifier(a, protocol="tcp")])
    c.sync()
    syn = tcp(a, b, 40000, 80)
    assert c.send(a, [syn]) == {b["id"]: [syn]} and c.visits == ["sf"]
    # The reply is not chained; a's groups let it in only as part of a's connection.
    synack = tcp(b, a, 80, 40000, flags="SA", seq=5000, ack=1001)
    assert c.send(b, [synack]) == {a["id"]: [synack]}
    stranger = tcp(b, a, 81, 40001)
    assert c.send(b, [stranger]) == {}


def test_an_nsh_unaware_service_function_gets_and_returns_the_plain_frame():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h1")
    wire = c.service_function("wire", net, "h2", aware=False)
    sf = c.service_function("sf", net, "h3")
    lb = [c.service_function(n, net, h, aware=False) for n, h in (("lb1", "h2"), ("lb2", "h3"))]
    chain = c.chain([c.group(wire), c.group(sf), c.group(*lb)], [c.classifier(a, protocol="udp")])
    c.sync()
    frames = [udp(a, b, 3000 + i, 53) for i in range(16)]
    landed = c.send(a, frames)
    assert sorted(landed[b["id"]]) == sorted(frames)
    assert sorted(inner for (_, _, inner) in wire.seen) == sorted(frames)
    # The aware SF after it sees the chain's context again: the second group's index.
    assert sorted(sf.seen) == sorted((chain["chain_id"], 254, f) for f in frames)
    assert {n for n in c.visits if n.startswith("lb")} == {"lb1", "lb2"}
    assert c.visits.count("lb1") + c.visits.count("lb2") == 16


def test_an_mpls_chain_labels_the_frame_for_its_sfs_and_shares_flows_the_same_way():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h3")
    fw = c.service_function("fw", net, "h2", mpls=True)
    wire = c.service_function("wire", net, "h3", aware=False)
    lb = [c.service_function(n, net, h, mpls=True) for n, h in (("lb1", "h2"), ("lb2", "h3"))]
    chain = c.api.create("sfc/port_chains", project="p1",   # networking-sfc's default: mpls
                         port_pair_groups=[c.group(fw)["id"], c.group(wire)["id"],
                                           c.group(*lb)["id"]],
                         flow_classifiers=[c.classifier(a, protocol="tcp")["id"]])
    assert chain["chain_parameters"]["correlation"] == "mpls"
    c.sync()
    frames = [tcp(a, b, 5000 + i, 443) for i in range(24)]
    landed = c.send(a, frames)
    assert sorted(landed[b["id"]]) == sorted(frames)
    spi = chain["chain_id"]
    assert sorted(fw.seen) == sorted((spi, 255, f) for f in frames)
    assert sorted(inner for (_, _, inner) in wire.seen) == sorted(frames)
    both = [(x.name, si, f) for x in lb for (_, si, f) in x.seen]
    assert sorted(f for (_, _, f) in both) == sorted(frames) and {si for (_, si, _) in both} == {253}
    assert {n for (n, _, _) in both} == {"lb1", "lb2"}
    # The same flow again takes the same pair.
    again = c.send(a, frames[:1] * 3)
    first = next(n for (n, _, f) in both if f == frames[0])
    assert again == {b["id"]: frames[:1] * 3} and c.visits[-3:] == [first] * 3


def test_a_chain_on_a_vlan_network_hops_between_hosts_over_the_physical_network():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h2", kind="vlan", physnet="physnet1", seg=120)
    sf1, sf2 = c.service_function("sf1", net, "h3"), c.service_function("sf2", net, "h2")
    chain = c.chain([c.group(sf1), c.group(sf2)], [c.classifier(a, protocol="udp")])
    c.sync()
    frame = udp(a, b, 4000, 4789)
    assert c.send(a, [frame]) == {b["id"]: [frame]} and c.visits == ["sf1", "sf2"]
    assert sf2.seen == [(chain["chain_id"], 254, frame)]
    # h1 -> sf1 on h3 -> sf2 on h2: two NSH hops in VLAN 120 on the physical network.
    hops = [Ether(f) for f in c.external["physnet1"]]
    assert [(h.vlan, h[NSH].si) for h in hops] == [(120, 255), (120, 254)]


def test_changing_a_chains_groups_changes_the_path_after_sync():
    c = Chains()
    a, b, _, _, chain = two_group_chain(c)
    sf3 = c.service_function("sf3", c.api.snapshot()["network"][0], "h1")
    c.api.update("sfc/port_chains", chain["id"],
                 port_pair_groups=[c.group(sf3)["id"], chain["port_pair_groups"][1]])
    c.sync()
    frame = tcp(a, b, 40000, 80)
    assert c.send(a, [frame]) == {b["id"]: [frame]} and c.visits == ["sf3", "sf2"]


def test_after_the_chain_routed_traffic_goes_through_the_router():
    c = Chains()
    n1, a, _ = endpoints(c, "h1", "h1", cidr="10.0.1.0/24")
    n2 = c.network("p1", "10.0.2.0/24")
    b = c.port("p1", n2, "h3", port_security_enabled=False)
    r = c.api.create("routers", project="p1", name="r")
    for n in (n1, n2):
        c.api.action(f"routers/{r['id']}/add_router_interface", {"subnet_id": n["subnet"]["id"]})
    gw = next(p for p in c.api.snapshot()["port"]
              if p["device_id"] == r["id"] and p["network_id"] == n1["id"])
    sf = c.service_function("sf", n1, "h2")
    c.chain([c.group(sf)], [c.classifier(a, protocol="udp", logical_destination_port=b["id"])])
    c.sync()
    frame = udp(a, b, 1000, 2000, eth_dst=gw["mac_address"])
    landed = c.send(a, [frame])
    assert c.visits == ["sf"] and sf.seen[0][2] == frame
    (got,) = landed[b["id"]]
    p = Ether(got)
    assert (p.dst, p[IP].src, p[IP].dst, p[IP].ttl) == (b["mac_address"], ip_of(a), ip_of(b), 63)


def test_a_one_armed_service_function_receives_and_returns_on_the_same_port():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h3")
    arm = c.port("p1", net, "h2", name="arm")
    sf = ServiceFunction("arm", arm, arm)
    c.sfs[arm["id"]] = sf
    c.chain([c.group(sf)], [c.classifier(a, protocol="tcp")])
    c.sync()
    frame = tcp(a, b, 1, 2)
    assert c.send(a, [frame]) == {b["id"]: [frame]} and c.visits == ["arm"]


def test_a_symmetric_chain_takes_the_replies_back_through_the_groups_in_reverse():
    c = Chains()
    net, a, b = endpoints(c, "h1", "h3")
    fw, ids = c.service_function("fw", net, "h2"), c.service_function("ids", net, "h3")
    fc = c.classifier(a, protocol="tcp", destination_port_range_min=80,
                      destination_port_range_max=80, logical_destination_port=b["id"])
    chain = c.chain([c.group(fw), c.group(ids)], [fc], correlation="nsh", symmetric=True)
    c.sync()
    syn = tcp(a, b, 40000, 80)
    assert c.send(a, [syn]) == {b["id"]: [syn]} and c.visits == ["fw", "ids"]
    reply = tcp(b, a, 80, 40000, flags="SA")
    assert c.send(b, [reply]) == {a["id"]: [reply]}
    # The same SFs the other way round, each entered by its egress port.
    assert c.visits == ["fw", "ids", "ids", "fw"]
    assert [si for (_, si, _) in ids.seen] == [254, 255]
    spis = {spi for x in (fw, ids) for (spi, _, _) in x.seen}
    assert spis == {chain["chain_id"], chain["chain_id"] | 1 << 23}
    # Other replies from b (not the classifier's ports swapped) go straight back.
    c.visits.clear()
    other = tcp(b, a, 81, 40000)
    assert c.send(b, [other]) == {a["id"]: [other]} and c.visits == []


def test_an_ipv6_classifier_chains_ipv6_and_leaves_ipv4_alone():
    c = Chains(hosts=("h1", "h2"))
    net, a, b = endpoints(c, "h1", "h2", cidr="fd00:1::/64")
    sf = c.service_function("sf", net, "h2")
    c.chain([c.group(sf)], [c.classifier(a, ethertype="IPv6", protocol="udp",
                                         destination_port_range_min=53,
                                         destination_port_range_max=53)])
    c.sync()
    six = raw(Ether(src=a["mac_address"], dst=b["mac_address"])
              / IPv6(src=ip_of(a, 6), dst=ip_of(b, 6)) / UDP(sport=5353, dport=53) / b"q")
    four = raw(Ether(src=a["mac_address"], dst=b["mac_address"])
               / IP(src="10.1.1.1", dst="10.1.1.2") / UDP(sport=5353, dport=53) / b"q")
    assert c.send(a, [six]) == {b["id"]: [six]} and c.visits == ["sf"]
    assert c.send(a, [four]) == {b["id"]: [four]} and c.visits == ["sf"]
