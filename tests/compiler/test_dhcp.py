"""Native DHCPv4: a port's requests are answered on its own host by the agent's slow path, from
the model (address, mask, gateway, host routes, DNS, the network's MTU), and nowhere else."""

from __future__ import annotations

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.compiler.scenario import Cloud, ip_of

from sbnet.agent.dhcp import Responder
from sbnet.compiler.compile import compile_host
from sbnet.compiler.dhcp import SERVER_MAC
from sbnet.compiler.port_security import link_local
from sbnet.compiler.tables import number
from sbnet.compiler.topology import SERVICE_OFPORT


def _cloud() -> Cloud:
    c = Cloud()
    c.cluster = type(c.cluster)(["h1", "h2"], physnets=("physnet1",), dhcp=True)
    return c


def request(mac: str, kind: str, xid: int = 0x1234, **opts) -> bytes:
    options = [("message-type", kind), *opts.items(), "end"]
    return bytes(Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255")
                 / UDP(sport=68, dport=67)
                 / BOOTP(op=1, chaddr=bytes.fromhex(mac.replace(":", "")), xid=xid, flags=0)
                 / DHCP(options=options))


def options(frame: bytes) -> dict:
    return {o[0]: (o[1:] if len(o) > 2 else o[1]) for o in Ether(frame)[DHCP].options
            if isinstance(o, tuple)}


def test_discover_and_request_get_the_ports_lease_with_routes_dns_and_mtu():
    c = _cloud()
    net = c.network("p1", "10.0.0.0/24")
    c.api.update("subnets", net["subnet"]["id"], dns_nameservers=["10.0.0.53", "10.0.0.54"],
                 host_routes=[{"destination": "172.16.0.0/16", "nexthop": "10.0.0.9"}])
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2")
    c.sync()
    offer = c.send(a, [request(a["mac_address"], "discover")])
    assert offer.to(b["id"]) == []                  # answered on h1, never flooded
    [frame] = offer.to(a["id"])
    eth = Ether(frame)
    assert eth.src == "0a:00:5e:00:00:01" and eth.dst == a["mac_address"]
    assert eth[BOOTP].yiaddr == ip_of(a) and eth[BOOTP].xid == 0x1234
    o = options(frame)
    assert o["message-type"] == 2 and o["subnet_mask"] == "255.255.255.0"
    assert o["router"] == "10.0.0.1" and o["server_id"] == "10.0.0.1"
    assert o["name_server"] == ("10.0.0.53", "10.0.0.54")
    assert o["interface-mtu"] == 1450                # VXLAN: room for the header
    assert o["lease_time"] == 86400
    # No router on this network: the metadata address is routed on-link (the agent has it).
    assert o["classless_static_routes"] == ["172.16.0.0/16:10.0.0.9", "169.254.169.254/32:0.0.0.0",
                                            "0.0.0.0/0:10.0.0.1"]
    # Checksums as the wire needs them (a Linux client drops a bad UDP checksum).
    again = Ether(frame)
    del again[IP].chksum, again[UDP].chksum
    rebuilt = Ether(bytes(again))
    assert (rebuilt[IP].chksum, rebuilt[UDP].chksum) == (eth[IP].chksum, eth[UDP].chksum)

    ack = c.send(a, [request(a["mac_address"], "request", requested_addr=ip_of(a),
                             server_id="10.0.0.1")]).to(a["id"])
    assert [options(f)["message-type"] for f in ack] == [5]
    assert Ether(ack[0])[BOOTP].yiaddr == ip_of(a)


def test_a_request_for_another_address_is_refused_and_other_macs_get_nothing():
    c = _cloud()
    net = c.network("p1", "10.0.0.0/24")
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h1")
    c.sync()
    nak = c.send(a, [request(a["mac_address"], "request", requested_addr=ip_of(b))]).to(a["id"])
    assert [options(f)["message-type"] for f in nak] == [6]
    assert Ether(nak[0])[IP].dst == "255.255.255.255"
    # Port security drops another MAC; with it off, the slow path still refuses to answer
    # one port with another's lease.
    c.api.update("ports", a["id"], port_security_enabled=False, security_groups=[])
    c.sync()
    out = c.send(a, [request(b["mac_address"], "discover")])
    assert out.to(a["id"]) == [] and out.to(b["id"]) == []


def test_enable_dhcp_false_lets_requests_through_as_broadcasts():
    c = _cloud()
    net = c.network("p1", "10.0.0.0/24")
    a = c.port("p1", net, "h1")
    # b runs its own DHCP server: no port security, so the default group's ingress rules
    # (members' addresses only) do not drop a request from 0.0.0.0.
    b = c.port("p1", net, "h2", port_security_enabled=False, security_groups=[])
    c.sync()
    assert c.send(a, [request(a["mac_address"], "discover")]).to(b["id"]) == []
    c.api.update("subnets", net["subnet"]["id"], enable_dhcp=False)
    c.sync()
    out = c.send(a, [request(a["mac_address"], "discover")])
    assert out.to(a["id"]) == []
    assert len(out.to(b["id"])) == 1 and Ether(out.to(b["id"])[0])[BOOTP].op == 1


def test_no_service_port_no_dhcp_flows():
    c = Cloud()
    net = c.network("p1", "10.0.0.0/24")
    c.port("p1", net, "h1")
    c.sync()
    topo = c.cluster.topology(c.api.snapshot())
    flows = compile_host(topo, "h1").flows.values()
    assert not any(f.table == number("dhcp") and f.priority == 100 for f in flows)
    # The responder alone ignores what is not a tagged DHCP request.
    assert Responder(topo).answer(bytes(60)) is None
    assert SERVICE_OFPORT not in c.cluster.hosts["h1"].switch.ports
    assert SERVER_MAC >> 40 == 0x0A


def _v6_cloud(mode: str):
    from scapy.layers.inet6 import ICMPv6ND_RS, IPv6  # noqa: F401
    c = _cloud()
    net = c.network("p1", None)
    sub = c.api.create("subnets", project="p1", network_id=net["id"], cidr="2001:db8:1::/64",
                       ip_version=6, ipv6_ra_mode=mode, ipv6_address_mode=mode,
                       dns_nameservers=["2001:db8:1::53"])
    router = c.api.create("routers", project="p1")
    c.api.action(f"routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    a = c.port("p1", net, "h1")
    b = c.port("p1", net, "h2")
    c.sync()
    return c, a, b


def test_a_router_solicitation_gets_the_subnets_prefix_flags_mtu_and_router():
    from scapy.layers.inet6 import (ICMPv6ND_RA, ICMPv6ND_RS, ICMPv6NDOptMTU,
                                    ICMPv6NDOptPrefixInfo, ICMPv6NDOptSrcLLAddr, IPv6)
    for mode, managed, auto in (("slaac", 0, 1), ("dhcpv6-stateful", 1, 0),
                                ("dhcpv6-stateless", 0, 1)):
        c, a, b = _v6_cloud(mode)
        rs = Ether(src=a["mac_address"], dst="33:33:00:00:00:02") / IPv6(
            src=link_local(a["mac_address"]), dst="ff02::2") / ICMPv6ND_RS()
        out = c.send(a, [rs])
        assert out.to(b["id"]) == []
        [frame] = out.to(a["id"])
        ra = Ether(frame)
        router_mac = next(p for p in c.api.snapshot()["port"]
                          if p["device_owner"] == "network:router_interface")["mac_address"]
        assert ra.dst == a["mac_address"] and ra.src == router_mac
        assert ra[IPv6].src == link_local(router_mac) and ra[IPv6].hlim == 255
        assert (ra[ICMPv6ND_RA].M, ra[ICMPv6ND_RA].O) == (managed, int(mode != "slaac"))
        assert ra[ICMPv6ND_RA].routerlifetime == 1800
        pi = ra[ICMPv6NDOptPrefixInfo]
        assert (pi.prefix, pi.prefixlen, pi.A, pi.L) == ("2001:db8:1::", 64, auto, 1)
        assert ra[ICMPv6NDOptMTU].mtu == 1450
        assert ra[ICMPv6NDOptSrcLLAddr].lladdr == router_mac
        again = Ether(frame)
        del again[ICMPv6ND_RA].cksum
        assert Ether(bytes(again))[ICMPv6ND_RA].cksum == ra[ICMPv6ND_RA].cksum


def test_dhcpv6_gives_a_stateful_port_its_address_and_dns():
    from scapy.layers.dhcp6 import (DHCP6_Advertise, DHCP6_Reply, DHCP6_Request, DHCP6_Solicit,
                                    DHCP6OptClientId, DHCP6OptDNSServers, DHCP6OptIA_NA,
                                    DHCP6OptIAAddress, DHCP6OptServerId, DUID_LL)
    from scapy.layers.inet6 import IPv6
    c, a, _ = _v6_cloud("dhcpv6-stateful")
    ll = link_local(a["mac_address"])
    cid = DHCP6OptClientId(duid=DUID_LL(lladdr=a["mac_address"]))

    def ask(msg):
        f = Ether(src=a["mac_address"], dst="33:33:00:01:00:02") / IPv6(
            src=ll, dst="ff02::1:2") / UDP(sport=546, dport=547) / msg
        [out] = c.send(a, [f]).to(a["id"])
        return Ether(out)

    adv = ask(DHCP6_Solicit(trid=7) / cid / DHCP6OptIA_NA(iaid=1))
    assert adv.haslayer(DHCP6_Advertise) and adv[DHCP6_Advertise].trid == 7
    assert adv[IPv6].dst == ll and adv[UDP].dport == 546
    assert adv[DHCP6OptIAAddress].addr == ip_of(a, 6)
    assert adv[DHCP6OptDNSServers].dnsservers == ["2001:db8:1::53"]
    sid = adv[DHCP6OptServerId]
    rep = ask(DHCP6_Request(trid=8) / cid / DHCP6OptServerId(duid=sid.duid) /
              DHCP6OptIA_NA(iaid=1))
    assert rep.haslayer(DHCP6_Reply) and rep[DHCP6OptIAAddress].addr == ip_of(a, 6)
    # The port's IPv6 extra options: its DNS servers over the subnet's, a boot URL, a
    # domain search list; the IPv4 ones stay out of DHCPv6.
    c.api.update("ports", a["id"], extra_dhcp_opts=[
        {"opt_name": "dns-server", "opt_value": "2001:db8:9::1,2001:db8:9::2", "ip_version": 6},
        {"opt_name": "bootfile-url", "opt_value": "tftp://[2001:db8::5]/boot.efi", "ip_version": 6},
        {"opt_name": "domain-search", "opt_value": "example.org", "ip_version": 6},
        {"opt_name": "bootfile-name", "opt_value": "pxelinux.0"}])
    c.sync()
    rep = ask(DHCP6_Request(trid=9) / cid / DHCP6OptServerId(duid=sid.duid) / DHCP6OptIA_NA(iaid=1))
    assert rep[DHCP6OptDNSServers].dnsservers == ["2001:db8:9::1", "2001:db8:9::2"]
    raw = bytes(rep[DHCP6_Reply])
    url = b"tftp://[2001:db8::5]/boot.efi"
    assert (59).to_bytes(2, "big") + len(url).to_bytes(2, "big") + url in raw
    assert (24).to_bytes(2, "big") + (13).to_bytes(2, "big") + b"\x07example\x03org\x00" in raw
    assert b"pxelinux.0" not in raw


def test_a_ports_extra_dhcp_options_are_in_its_answers():
    c = _cloud()
    net = c.network("p1", "10.0.0.0/24")
    a = c.port("p1", net, "h1", extra_dhcp_opts=[
        {"opt_name": "bootfile-name", "opt_value": "pxelinux.0"},
        {"opt_name": "tftp-server", "opt_value": "123.123.123.123"},
        {"opt_name": "server-ip-address", "opt_value": "123.123.123.45"},
        {"opt_name": "mtu", "opt_value": "1400"},
        {"opt_name": "150", "opt_value": "10.0.0.7,10.0.0.8"},
        {"opt_name": "router", "opt_value": ""},
        {"opt_name": "ntp-server", "opt_value": "not-an-address"},   # taken, never sent
        {"opt_name": "bootfile-name", "opt_value": "grub.efi", "ip_version": 6}])
    b = c.port("p1", net, "h1")
    c.sync()
    [frame] = c.send(a, [request(a["mac_address"], "discover")]).to(a["id"])
    o, boot = options(frame), Ether(frame)[BOOTP]
    assert o["boot-file-name"] == b"pxelinux.0"
    assert o["tftp_server_name"] == b"123.123.123.123"
    assert boot.siaddr == "123.123.123.45"              # next-server, in the BOOTP header
    assert o["interface-mtu"] == 1400                   # the port's value over the network's
    assert bytes(Ether(frame)[DHCP])[2:].find(bytes((150, 8, 10, 0, 0, 7, 10, 0, 0, 8))) >= 0
    assert "router" not in o                            # a blank router: none is given
    assert "NTP_server" not in o and 42 not in o
    assert o["server_id"] == "10.0.0.1" and boot.yiaddr == ip_of(a)
    # Another port's answer has none of them.
    [other] = c.send(b, [request(b["mac_address"], "discover")]).to(b["id"])
    assert "boot-file-name" not in options(other) and options(other)["router"] == "10.0.0.1"
    # An update as Neutron's: None removes one option, a new value replaces, the rest stay.
    port = c.api.update("ports", a["id"], extra_dhcp_opts=[
        {"opt_name": "bootfile-name", "opt_value": None},
        {"opt_name": "mtu", "opt_value": "1300"}])
    assert {(o["opt_name"], o["opt_value"]) for o in port["extra_dhcp_opts"]} == {
        ("tftp-server", "123.123.123.123"), ("server-ip-address", "123.123.123.45"),
        ("mtu", "1300"), ("150", "10.0.0.7,10.0.0.8"), ("router", ""), ("bootfile-name", "grub.efi"),
        ("ntp-server", "not-an-address")}
    c.sync()
    [frame] = c.send(a, [request(a["mac_address"], "discover")]).to(a["id"])
    assert "boot-file-name" not in options(frame) and options(frame)["interface-mtu"] == 1300
