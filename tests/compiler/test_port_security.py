"""Anti-spoofing: a port sends only from its own MAC and addresses (and its allowed pairs)."""

from __future__ import annotations

from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6ND_NS, ICMPv6NDOptSrcLLAddr

from tests.compiler.scenario import IP, UDP, Cloud, Ether, IPv6, arp_request, ip_of, raw, udp


def two_ports(**kw):
    c = Cloud()
    net = c.network("p1")
    a = c.port("p1", net, "h1", security_groups=[], port_security_enabled=True, **kw)
    b = c.port("p1", net, "h2", port_security_enabled=False)
    c.sync()
    return c, net, a, b


def test_own_addresses_pass_spoofed_mac_or_ip_dropped():
    c, net, a, b = two_ports()
    # With no security groups, port security still lets DHCP and ARP out; use ARP and DHCP.
    assert c.send(a, [arp_request(a, ip_of(b), eth_src=a["mac_address"])]).to(a["id"])
    dhcp = udp(a, b, 68, 67, ip_src="0.0.0.0", eth_dst="ff:ff:ff:ff:ff:ff", ip_dst="255.255.255.255")
    assert c.send(a, [dhcp]).to(b["id"]) == [dhcp]
    spoof_mac = udp(a, b, 68, 67, ip_src="0.0.0.0", eth_src="02:66:66:66:66:66",
                    eth_dst="ff:ff:ff:ff:ff:ff", ip_dst="255.255.255.255")
    assert c.send(a, [spoof_mac]).total == 0
    assert c.send(a, [arp_request(a, ip_of(b), psrc="10.0.0.250")]).total == 0
    assert c.send(a, [arp_request(a, ip_of(b), hwsrc="02:66:66:66:66:66")]).total == 0


def test_ip_spoofing_dropped_allowed_address_pair_passes():
    c = Cloud()
    net = c.network("p1")
    vip = "10.0.0.200"
    a = c.port("p1", net, "h1", allowed_address_pairs=[{"ip_address": vip}])
    b = c.port("p1", net, "h2", port_security_enabled=False)
    # Open egress is Neutron's default group; ingress to b has no port security.
    c.sync()
    good = udp(a, b, 1000, 53)
    assert c.send(a, [good]).to(b["id"]) == [good]
    pair = udp(a, b, 1000, 53, ip_src=vip)
    assert c.send(a, [pair]).to(b["id"]) == [pair]
    assert c.send(a, [udp(a, b, 1000, 53, ip_src="10.0.0.201")]).total == 0
    assert c.send(a, [udp(a, b, 1000, 53, eth_src="02:66:66:66:66:66")]).total == 0
    # The pair's address is ARPed for too.
    assert c.send(a, [arp_request(a, ip_of(b), psrc=vip)]).to(a["id"])


def test_port_security_disabled_sends_anything():
    c = Cloud()
    net = c.network("p1")
    a = c.port("p1", net, "h1", port_security_enabled=False)
    b = c.port("p1", net, "h2", port_security_enabled=False)
    c.sync()
    f = udp(a, b, 1, 2, ip_src="192.0.2.9", eth_src="02:66:66:66:66:66")
    assert c.send(a, [f]).to(b["id"]) == [f]


def _nd(a: dict, b: dict, kind: str, target: str, src: str, sll: str | None) -> bytes:
    eth = Ether(src=a["mac_address"], dst=b["mac_address"])
    ip6 = IPv6(src=src, dst="fe80::1")
    if kind == "ns":
        pkt = eth / ip6 / ICMPv6ND_NS(tgt=target)
        if sll:
            pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=sll)
    else:
        pkt = eth / ip6 / ICMPv6ND_NA(tgt=target, R=0, S=1, O=1)
    return raw(pkt)


def test_nd_spoofing_dropped():
    c = Cloud()
    net = c.network("p1", cidr="fd00:1::/64")
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2", port_security_enabled=False)
    c.sync()
    mine, other = ip_of(a, 6), ip_of(b, 6)
    ok_na = _nd(a, b, "na", mine, mine, None)
    assert c.send(a, [ok_na]).to(b["id"]) == [ok_na]
    assert c.send(a, [_nd(a, b, "na", other, mine, None)]).total == 0      # claims b's address
    ok_ns = _nd(a, b, "ns", other, mine, a["mac_address"])
    (na,) = c.send(a, [ok_ns]).to(a["id"])   # passed port security; answered on the spot
    assert Ether(na)[ICMPv6ND_NA].tgt == other
    assert c.send(a, [_nd(a, b, "ns", other, mine, "02:66:66:66:66:66")]).total == 0
    assert c.send(a, [_nd(a, b, "ns", other, "fd00:1::99", None)]).total == 0
    dad = _nd(a, b, "ns", mine, "::", None)
    assert c.send(a, [dad]).to(b["id"]) == [dad]


def test_ipv4_from_the_wrong_ip_family_fields_is_dropped():
    c, net, a, b = two_ports()
    f = raw(Ether(src=a["mac_address"], dst=b["mac_address"]) / IP(src="10.0.0.250",
                                                                   dst=ip_of(b)) / UDP())
    assert c.send(a, [f]).total == 0
