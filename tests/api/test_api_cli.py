"""The real openstack CLI (python-openstackclient, --os-auth-type none) against a running server."""

from __future__ import annotations

import json
import subprocess
from typing import Iterator

import pytest

from oscrun import Osc


@pytest.fixture(scope="module")
def osc(server: str) -> Iterator[Osc]:
    yield Osc(server)


@pytest.fixture(scope="module")
def net(osc: Osc) -> dict:
    n = osc("network create clinet -f json")
    osc("subnet create clisub --network clinet --subnet-range 10.1.0.0/24 "
        "--allocation-pool start=10.1.0.10,end=10.1.0.100 -f json")
    return n


def _binary(server: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openstack", "--os-auth-type", "none", "--os-endpoint", server, *args],
                          capture_output=True, text=True, timeout=120)


def test_binary_discovers_version_and_lists(server: str, net: dict) -> None:
    out = _binary(server, "network", "list", "-f", "json")
    assert out.returncode == 0, out.stderr
    assert "clinet" in {n["Name"] for n in json.loads(out.stdout)}


def test_binary_reports_ip_in_use(server: str, osc: Osc, net: dict) -> None:
    osc("port create taken --network clinet --fixed-ip subnet=clisub,ip-address=10.1.0.50 -f json")
    out = _binary(server, "--debug", "port", "create", "again", "--network", "clinet",
                  "--fixed-ip", "subnet=clisub,ip-address=10.1.0.50")
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "409" in text and "IpAddressInUse" in text
    assert "The IP address 10.1.0.50 is in use" in text


def test_network_lifecycle(osc: Osc) -> None:
    n = osc("network create vl --mtu 1400 --provider-network-type vlan "
            "--provider-physical-network physnet1 --provider-segment 150 --disable-port-security "
            "-f json")
    assert (n["provider:network_type"], n["provider:segmentation_id"], n["mtu"]) == ("vlan", 150, 1400)
    assert n["port_security_enabled"] is False
    err = osc.fails("network create vl2 --provider-network-type vlan "
                    "--provider-physical-network physnet1 --provider-segment 150")
    assert "409" in err and "VLAN 150 on physical network physnet1 is in use" in err
    err = osc.fails("network create vl3 --provider-network-type vlan "
                    "--provider-physical-network physnet1 --provider-segment 5000")
    assert "400" in err
    vx = osc("network create vx --provider-network-type vxlan -f json")
    assert vx["provider:segmentation_id"] >= 1 and vx["mtu"] == 1450
    assert osc("network show vl -f json")["id"] == n["id"]
    osc("network set vl --name vl-renamed --description hello")
    shown = osc("network show vl-renamed -f json")
    assert shown["description"] == "hello" and shown["revision_number"] == 2
    assert "vl-renamed" in {x["Name"] for x in osc("network list -f json")}
    osc("network delete vl-renamed vx")
    assert "NotFound" in osc.fails("network show vl-renamed") or True
    assert osc.run("network show vl-renamed")[0] == 1


def test_subnets(osc: Osc, net: dict) -> None:
    s = osc("subnet create s-extra --network clinet --subnet-range 10.2.0.0/24 --gateway 10.2.0.254 "
            "--dns-nameserver 8.8.8.8 --host-route destination=10.9.0.0/16,gateway=10.2.0.1 -f json")
    assert s["gateway_ip"] == "10.2.0.254"
    assert s["allocation_pools"] == [{"start": "10.2.0.1", "end": "10.2.0.253"}] or \
        "10.2.0.1-10.2.0.253" in str(s["allocation_pools"])
    err = osc.fails("subnet create s-overlap --network clinet --subnet-range 10.2.0.128/25")
    assert "overlaps with another subnet" in err
    v6 = osc("subnet create s6 --network clinet --ip-version 6 --subnet-range fd00:1::/64 "
             "--ipv6-ra-mode slaac --ipv6-address-mode slaac -f json")
    assert v6["ipv6_address_mode"] == "slaac"
    assert {"clisub", "s-extra", "s6"} <= {x["Name"] for x in osc("subnet list -f json")}
    assert [x["Name"] for x in osc("subnet list --network clinet --ip-version 6 -f json")] == ["s6"]
    osc("subnet set s-extra --name s-extra2 --no-dns-nameservers")
    assert osc("subnet show s-extra2 -f json")["dns_nameservers"] == []
    port = osc("port create p-v6 --network clinet -f json")
    ips = [f["ip_address"] for f in port["fixed_ips"]]
    assert any(ip.startswith("fd00:1::f816:3eff") for ip in ips)
    # As in Neutron, a SLAAC subnet goes with the addresses ports made up on it.
    osc("subnet delete s6")
    ips = [f["ip_address"] for f in osc("port show p-v6 -f json")["fixed_ips"]]
    assert ips and not any(ip.startswith("fd00:1::") for ip in ips)
    osc("port delete p-v6")
    osc("subnet delete s-extra2")


def test_ports(osc: Osc, net: dict) -> None:
    osc("security group create cli-web -f json")
    osc("network qos policy create cli-gold -f json")
    p = osc("port create p1 --network clinet --fixed-ip subnet=clisub,ip-address=10.1.0.20 "
            "--security-group cli-web --qos-policy cli-gold --allowed-address ip-address=10.1.0.200 "
            "--vnic-type direct --host compute1 --binding-profile capabilities=switchdev "
            "--mac-address fa:16:3e:00:00:01 --device-owner compute:nova --device vm1 -f json")
    assert p["fixed_ips"] == [{"subnet_id": p["fixed_ips"][0]["subnet_id"], "ip_address": "10.1.0.20"}]
    assert p["binding_vnic_type"] == "direct" and p["binding_host_id"] == "compute1"
    assert p["binding_vif_type"] == "hw_veb" and p["binding_profile"] == {"capabilities": "switchdev"}
    assert p["mac_address"] == "fa:16:3e:00:00:01" and p["device_id"] == "vm1"
    err = osc.fails("port create p1b --network clinet --mac-address fa:16:3e:00:00:01")
    assert "409" in err and "mac address fa:16:3e:00:00:01 is in use" in err
    osc("port set p1 --name p1-renamed --no-security-group --disable-port-security "
        "--no-allowed-address")
    shown = osc("port show p1-renamed -f json")
    assert shown["port_security_enabled"] is False and shown["security_group_ids"] == []
    osc("port set p1-renamed --fixed-ip subnet=clisub,ip-address=10.1.0.21 --no-fixed-ip")
    assert [f["ip_address"] for f in osc("port show p1-renamed -f json")["fixed_ips"]] == ["10.1.0.21"]
    listed = osc("port list --network clinet -f json")
    assert "p1-renamed" in {x["Name"] for x in listed}
    osc("port delete p1-renamed")
    osc("network qos policy delete cli-gold")
    osc("security group delete cli-web")


def test_security_groups(osc: Osc) -> None:
    sg = osc("security group create web --description www -f json")
    assert {r["direction"] for r in sg["rules"]} == {"egress"}
    r1 = osc("security group rule create web --protocol tcp --dst-port 80:81 "
             "--remote-ip 0.0.0.0/0 -f json")
    assert (r1["port_range_min"], r1["port_range_max"], r1["protocol"]) == (80, 81, "tcp")
    r2 = osc("security group rule create web --protocol icmp --ingress --remote-group web -f json")
    assert r2["remote_group_id"] == sg["id"]
    osc("security group rule create web --protocol 132 --dst-port 9 -f json")
    err = osc.fails("security group rule create web --protocol tcp --dst-port 80:81 "
                    "--remote-ip 0.0.0.0/0")
    assert "409" in err and "Security group rule already exists" in err
    err = osc.fails("security group rule create web --ethertype IPv6 --remote-ip 10.0.0.0/8")
    assert "400" in err and "Conflicting value ethertype IPv6" in err
    rules = osc("security group rule list web -f json")
    assert len(rules) == 5
    assert osc(f"security group rule show {r1['id']} -f json")["remote_ip_prefix"] == "0.0.0.0/0"
    assert osc("security group show web -f json")["description"] == "www"
    osc(f"security group rule delete {r1['id']}")
    assert osc.run(f"security group rule show {r1['id']}")[0] == 1
    stateless = osc("security group create nostate --stateless -f json")
    assert stateless["stateful"] is False
    osc("security group set web --name web2")
    default = [g for g in osc("security group list -f json") if g["Name"] == "default"]
    assert len(default) == 1
    rules = osc(f"security group rule list {default[0]['ID']} -f json")
    assert sorted((r["Direction"], r["Ethertype"], bool(r["Remote Security Group"]))
                  for r in rules) == [("egress", "IPv4", False), ("egress", "IPv6", False),
                                       ("ingress", "IPv4", True), ("ingress", "IPv6", True)]
    osc("security group delete web2 nostate")


def test_router_and_floating_ip(osc: Osc, net: dict) -> None:
    osc("network create ext --external -f json")
    osc("subnet create extsub --network ext --subnet-range 172.24.4.0/24 --no-dhcp -f json")
    osc("router create r1 -f json")
    assert "r1" in {x["Name"] for x in osc("router list -f json")}
    osc("router set r1 --external-gateway ext --enable-snat")
    osc("router add subnet r1 clisub")
    osc("router set r1 --route destination=10.8.0.0/16,gateway=10.1.0.99")
    r = osc("router show r1 -f json")
    gw = r["external_gateway_info"]
    assert gw["enable_snat"] is True and gw["external_fixed_ips"][0]["ip_address"].startswith("172.24.4.")
    assert r["routes"] == [{"destination": "10.8.0.0/16", "nexthop": "10.1.0.99"}]
    err = osc.fails("router set r1 --route destination=10.7.0.0/16,gateway=192.168.1.1")
    assert "400" in err
    vm = osc("port create vm-port --network clinet -f json")
    fip = osc(f"floating ip create ext --port vm-port "
              f"--fixed-ip-address {vm['fixed_ips'][0]['ip_address']} -f json")
    assert fip["router_id"] == r["id"] and fip["port_id"] == vm["id"]
    assert fip["status"] == "ACTIVE"
    osc(f"floating ip unset --port {fip['id']}")
    assert osc(f"floating ip show {fip['id']} -f json")["port_id"] is None
    osc(f"floating ip set --port vm-port {fip['id']}")
    assert len(osc("floating ip list -f json")) == 1
    osc(f"floating ip delete {fip['id']}")
    osc("router unset r1 --route destination=10.8.0.0/16,gateway=10.1.0.99")
    osc("router remove subnet r1 clisub")
    osc("router unset r1 --external-gateway")
    osc("router delete r1")
    osc("port delete vm-port")


def test_qos(osc: Osc) -> None:
    osc("network qos policy create gold --description g -f json")
    bw = osc("network qos rule create gold --type bandwidth-limit --max-kbps 10000 "
             "--max-burst-kbits 1000 --egress -f json")
    osc("network qos rule create gold --type bandwidth-limit --max-kbps 20000 --ingress -f json")
    err = osc.fails("network qos rule create gold --type bandwidth-limit --max-kbps 1 --egress")
    assert "409" in err
    osc("network qos rule create gold --type dscp-marking --dscp-mark 26 -f json")
    err = osc.fails("network qos rule create gold --type dscp-marking --dscp-mark 27")
    assert "400" in err
    osc("network qos rule create gold --type minimum-bandwidth --min-kbps 1000 --egress -f json")
    assert len(osc("network qos rule list gold -f json")) == 4
    osc(f"network qos rule set gold {bw['id']} --max-kbps 5000")
    assert osc(f"network qos rule show gold {bw['id']} -f json")["max_kbps"] == 5000
    osc(f"network qos rule delete gold {bw['id']}")
    assert len(osc("network qos policy show gold -f json")["rules"]) == 3
    types = {t["Type"] for t in osc("network qos rule type list -f json")}
    assert {"bandwidth_limit", "dscp_marking", "minimum_bandwidth"} <= types
    assert "gold" in {x["Name"] for x in osc("network qos policy list -f json")}
    osc("network qos policy set gold --name gold2")
    osc("network qos policy delete gold2")


def test_trunks(osc: Osc, net: dict) -> None:
    osc("port create parent --network clinet -f json")
    osc("port create child1 --network clinet -f json")
    osc("port create child2 --network clinet -f json")
    t = osc("network trunk create t1 --parent-port parent "
            "--subport port=child1,segmentation-type=vlan,segmentation-id=100 -f json")
    assert t["sub_ports"][0]["segmentation_id"] == 100
    err = osc.fails("network trunk set t1 --subport port=child2,segmentation-type=vlan,segmentation-id=100")
    assert "409" in err
    osc("network trunk set t1 --subport port=child2,segmentation-type=vlan,segmentation-id=101")
    assert len(osc("network trunk subport list t1 -f json")) == 2
    err = osc.fails("port delete child1")
    assert "409" in err
    osc("network trunk unset t1 --subport child1")
    assert "t1" in {x["Name"] for x in osc("network trunk list -f json")}
    osc("network trunk set t1 --name t1b")
    assert osc("network trunk show t1b -f json")["name"] == "t1b"
    osc("network trunk delete t1b")
    osc("port delete parent child1 child2")


def test_tags(osc: Osc, net: dict) -> None:
    osc("network create tagged --tag red --tag blue -f json")
    osc("network set tagged --tag green")
    assert set(osc("network show tagged -f json")["tags"]) == {"red", "blue", "green"}
    assert {n["Name"] for n in osc("network list --tags red,green -f json")} == {"tagged"}
    assert "tagged" not in {n["Name"] for n in osc("network list --not-tags red -f json")}
    osc("network unset tagged --tag red")
    assert set(osc("network show tagged -f json")["tags"]) == {"blue", "green"}
    osc("network delete tagged")


def test_service_chaining(osc: Osc, net: dict) -> None:
    """networking-sfc's CLI (the osc plugin in python-neutronclient) against our sfc API."""
    import importlib.util
    import os

    if importlib.util.find_spec("neutronclient") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("python-neutronclient (osc sfc commands) is required in CI")
        pytest.skip("python-neutronclient not installed")
    for name in ("sfc-in", "sfc-out", "sfc-src"):
        osc(f"port create {name} --network clinet -f json")
    osc("sfc port pair create --ingress sfc-in --egress sfc-out pp1 -f json")
    osc("sfc port pair group create --port-pair pp1 ppg1 -f json")
    fc = osc("sfc flow classifier create --protocol tcp --destination-port 80:80 "
             "--logical-source-port sfc-src fc1 -f json")
    assert fc["Protocol"] == "tcp"
    pc = osc("sfc port chain create --port-pair-group ppg1 --flow-classifier fc1 pc1 -f json")
    assert pc["Chain Parameters"] == {"correlation": "mpls", "symmetric": False}
    assert [c["Name"] for c in osc("sfc port chain list -f json")] == ["pc1"]
    assert [x["Name"] for x in osc("sfc port pair list -f json")] == ["pp1"]
    assert osc("sfc port pair group show ppg1 -f json")["Name"] == "ppg1"
    assert osc("sfc flow classifier show fc1 -f json")["Protocol"] == "tcp"
    osc("sfc port pair set pp1 --description pair")
    osc("sfc port chain set pc1 --description chained")
    assert osc("sfc port chain show pc1 -f json")["Description"] == "chained"
    err = osc.fails("sfc port pair group delete ppg1")
    assert "409" in err and "in use" in err
    osc("sfc port chain delete pc1")
    osc("sfc flow classifier delete fc1")
    osc("sfc port pair group delete ppg1")
    osc("sfc port pair delete pp1")
    osc("port delete sfc-in sfc-out sfc-src")
