"""Two projects with the same address ranges on the same hosts: no packet crosses between them
(20 examples x 500 random frames = 10,000 packets)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.compiler.scenario import ARP, ICMP, IP, TCP, UDP, Cloud, Ether, ip_of, raw

KINDS = ("vxlan", "geneve", "gre", "vlan")


@pytest.fixture(scope="module")
def cloud():
    c = Cloud(hosts=("h1", "h2", "h3"))
    ports = {}
    for project in ("p1", "p2"):
        for i, kind in enumerate(KINDS):
            extra = {"physnet": "physnet1"} if kind == "vlan" else {}
            net = c.network(project, cidr=f"10.{i}.0.0/24", kind=kind, **extra)
            for h in ("h1", "h2", "h3"):
                # Half the ports without port security: they may spoof anything.
                ports.setdefault(project, []).append(
                    c.port(project, net, h, port_security_enabled=(h != "h2"),
                           **({} if h != "h2" else {"security_groups": []})))
    c.sync()
    return c, ports


def frames_for(data, ports, src):
    everyone = ports["p1"] + ports["p2"]
    # One frame that must be answered: an honest ARP request for a neighbour's address.
    peer = next(p for p in everyone if p["network_id"] == src["network_id"] and p is not src)
    out = [raw(Ether(src=src["mac_address"], dst="ff:ff:ff:ff:ff:ff")
               / ARP(op=1, hwsrc=src["mac_address"], psrc=ip_of(src), pdst=ip_of(peer)))]
    # The 499 random frames from a Random that hypothesis seeds (and reports on failure):
    # drawing each field through hypothesis cost twenty times the switching.
    rnd = data.draw(st.randoms(use_true_random=True))
    for _ in range(499):
        dst = rnd.choice(everyone)
        eth_dst = rnd.choice([dst["mac_address"], "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01",
                              "02:00:00:00:00:99"])
        eth_src = rnd.choice([src["mac_address"], dst["mac_address"]])
        ip_src = rnd.choice([ip_of(src), ip_of(dst), "10.0.0.1"])
        kind = rnd.choice(["tcp", "udp", "icmp", "arp"])
        eth = Ether(src=eth_src, dst=eth_dst)
        if kind == "arp":
            pkt = eth / ARP(op=1, hwsrc=eth_src, psrc=ip_src, pdst=ip_of(dst))
        else:
            l4 = {"tcp": TCP(sport=rnd.randint(1, 65535), dport=22,
                             flags=rnd.choice(["S", "A", "SA", "R"])),
                  "udp": UDP(sport=53, dport=rnd.randint(1, 65535)),
                  "icmp": ICMP()}[kind]
            pkt = eth / IP(src=ip_src, dst=ip_of(dst)) / l4
        out.append(raw(pkt))
    return out


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_packet_crosses_projects(cloud, data):
    c, ports = cloud
    project = data.draw(st.sampled_from(["p1", "p2"]))
    src = data.draw(st.sampled_from(ports[project]))
    other = {p["id"] for p in ports["p2" if project == "p1" else "p1"]}
    d = c.send(src, frames_for(data, ports, src))
    leaked = {pid: f for pid, f in d.ports.items() if pid in other and f}
    assert not leaked
    # The frames that should arrive do: at least the ARP reply.
    assert any(ARP in Ether(f) and Ether(f)[ARP].op == 2 for f in d.to(src["id"]))
