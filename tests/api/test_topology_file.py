"""YAML topology files: what a good file makes through the API; how a bad one is refused."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from sbnet.api.local import LocalApi
from sbnet.api.topology import TopologyError, load, load_file

ROOT = Path(__file__).resolve().parents[2]

GOOD = textwrap.dedent("""\
    projects:
      admin:
        networks:
          - name: public
            type: flat
            physnet: physnet1
            external: true
            subnets:
              - {name: public-v4, cidr: 203.0.113.0/24, enable_dhcp: false}
      p1:
        qos_policies:
          - name: slow
            rules:
              - {type: bandwidth_limit, max_kbps: 1000, direction: egress}
        security_groups:
          - name: web
            stateful: true
            rules:
              - {direction: ingress, protocol: tcp, port: 80}
              - {direction: ingress, protocol: udp, port: 1000-1010, remote_ip_prefix: 10.0.0.0/8}
              - {direction: ingress, remote_group: web}
          - name: default
            rules:
              - {direction: ingress, protocol: icmp}
        networks:
          - name: front
            type: vlan
            physnet: physnet1
            segmentation_id: 150
            subnets:
              - {name: front-v4, cidr: 10.0.0.0/24}
              - {name: front-v6, cidr: "fd00::/64"}
          - name: back
            type: geneve
            segmentation_id: 77
            qos_policy: slow
            subnets:
              - {name: back-v4, cidr: 10.1.0.0/24, gateway: 10.1.0.254}
        ports:
          - name: vm1
            network: front
            host: h1
            security_groups: [web, default]
            fixed_ips: [{subnet: front-v4, ip: 10.0.0.5}]
            allowed_address_pairs:
              - 10.0.0.100
              - {ip_address: 10.0.0.101, mac_address: "02:00:00:00:00:99"}
          - {name: vm2, network: back, host: h2, port_security: false, security_groups: []}
          - {name: vm3, network: back, fixed_ip: 10.1.0.9, qos_policy: slow}
        routers:
          - name: r1
            external_gateway: public
            interfaces: [front-v4, back-v4]
            routes: [{destination: 192.168.0.0/16, nexthop: 10.1.0.9}]
        floating_ips:
          - {name: vm1-fip, network: public, port: vm1, fixed_ip: 10.0.0.5}
""")


def _by_name(api: LocalApi, collection: str) -> dict[str, dict]:
    key = {"security-groups": "security_groups", "qos/policies": "policies"}.get(collection,
                                                                                 collection)
    return {r["name"]: r for r in api.request("GET", collection)[key] if r.get("name")}


def test_a_good_file_makes_every_resource_with_names_resolved_to_ids():
    api = LocalApi()
    out = load(api, GOOD)
    nets, subnets, ports = (_by_name(api, c) for c in ("networks", "subnets", "ports"))
    assert nets["front"]["provider:network_type"] == "vlan"
    assert nets["front"]["provider:segmentation_id"] == 150
    assert nets["front"]["project_id"] == "p1" and nets["public"]["router:external"] is True
    assert nets["back"]["provider:network_type"] == "geneve"
    assert nets["back"]["qos_policy_id"] == out.qos_policies["slow"]["id"]
    assert subnets["back-v4"]["gateway_ip"] == "10.1.0.254"
    assert subnets["front-v6"]["ip_version"] == 6

    groups = {g["name"]: g for g in api.request("GET", "security-groups?project_id=p1")
              ["security_groups"]}
    web, default = groups["web"], groups["default"]
    rules = api.request("GET", f"security-group-rules?security_group_id={web['id']}")[
        "security_group_rules"]
    ingress = {(r["protocol"], r["port_range_min"], r["port_range_max"],
                r["remote_group_id"], r["remote_ip_prefix"])
               for r in rules if r["direction"] == "ingress"}
    assert ingress == {("tcp", 80, 80, None, None), ("udp", 1000, 1010, None, "10.0.0.0/8"),
                       (None, None, None, web["id"], None)}
    default_rules = api.request("GET", f"security-group-rules?security_group_id={default['id']}")[
        "security_group_rules"]
    assert any(r["protocol"] == "icmp" and r["direction"] == "ingress" for r in default_rules)

    vm1 = ports["vm1"]
    assert sorted(vm1["security_groups"]) == sorted([web["id"], default["id"]])
    assert vm1["fixed_ips"] == [{"subnet_id": subnets["front-v4"]["id"], "ip_address": "10.0.0.5"}]
    assert vm1["binding:host_id"] == "h1" and vm1["network_id"] == nets["front"]["id"]
    assert {p["ip_address"] for p in vm1["allowed_address_pairs"]} == {"10.0.0.100", "10.0.0.101"}
    assert ports["vm2"]["port_security_enabled"] is False and ports["vm2"]["security_groups"] == []
    assert ports["vm3"]["fixed_ips"][0]["ip_address"] == "10.1.0.9"
    assert ports["vm3"]["qos_policy_id"] == out.qos_policies["slow"]["id"]
    assert ports["vm3"]["binding:host_id"] in ("", None)

    router = _by_name(api, "routers")["r1"]
    assert router["external_gateway_info"]["network_id"] == nets["public"]["id"]
    assert router["routes"] == [{"destination": "192.168.0.0/16", "nexthop": "10.1.0.9"}]
    ifaces = [p for p in api.request("GET", f"ports?device_id={router['id']}")["ports"]
              if p["device_owner"] == "network:router_interface"]
    assert sorted(p["fixed_ips"][0]["ip_address"] for p in ifaces) == ["10.0.0.1", "10.1.0.254"]
    (fip,) = api.request("GET", "floatingips")["floatingips"]
    assert fip["port_id"] == vm1["id"] and fip["router_id"] == router["id"]
    assert out.floating_ips["vm1-fip"]["id"] == fip["id"]
    policy = _by_name(api, "qos/policies")["slow"]
    assert [(r["type"], r["max_kbps"]) for r in policy["rules"]] == [("bandwidth_limit", 1000)]


def test_the_demo_topology_loads():
    api = LocalApi()
    out = load_file(api, ROOT / "examples" / "demo-topology.yaml")
    assert set(out.projects) == {"admin", "alpha", "beta"}
    kinds = {n["provider:network_type"] for n in out.networks.values()}
    assert kinds == {"flat", "vxlan", "gre", "vlan", "geneve"}
    # Two projects, one address range: both have a 10.0.0.11.
    assert out.ports["web1"]["fixed_ips"][0]["ip_address"] == \
        out.ports["db1"]["fixed_ips"][0]["ip_address"] == "10.0.0.11"


def _refused(text: str) -> TopologyError:
    with pytest.raises(TopologyError) as info:
        load(LocalApi(), textwrap.dedent(text), "t.yaml")
    return info.value


@pytest.mark.parametrize("text, line, words", [
    ("""\
     projects:
       p1:
         networks:
           - name: n1
             segmentaton_id: 5
     """, 5, ["unknown key 'segmentaton_id'", "segmentation_id"]),
    ("""\
     projects:
       p1:
         networks:
           - {name: n1}
         ports:
           - name: a
             network: n2
     """, 7, ["unknown network 'n2'", "n1"]),
    ("""\
     projects:
       p1:
         security_groups:
           - name: g
             rules:
               - direction: ingress
                 remote_group: nosuch
     """, 7, ["unknown security group", "'nosuch'"]),
    ("""\
     projects:
       p1:
         networks:
           - {name: n1}
         ports:
           - {name: a, network: n1}
           - {name: a, network: n1}
     """, 7, ["port 'a' is defined twice"]),
    ("""\
     projects:
       p1:
         networks:
           - {name: n1, type: vlan, physnet: physnet1, segmentation_id: 5000}
     """, 4, ["network n1", "the API refused it (400)"]),
    ("""\
     projects:
       p1:
         networks:
           - name: n1
             subnets:
               - {name: s1, cidr: 10.0.0.0/24}
         ports:
           - {name: a, network: n1, fixed_ip: 10.0.0.5}
           - {name: b, network: n1, fixed_ip: 10.0.0.5}
     """, 9, ["port b", "(409)"]),
    ("""\
     projects:
       p1:
         ports:
           - {network: n1}
     """, 4, ["needs 'name'"]),
    ("""\
     projects:
       p1:
         security_groups:
           - name: g
             rules:
               - {direction: ingress, protocol: tcp, port: http}
     """, 6, ["port must be N or N-M"]),
    ("""\
     projects:
       p1:
         networks: [{name: n1}
     """, 4, ["not valid YAML"]),
    ("""\
     networks:
       - {name: n1}
     """, 1, ["one key, 'projects'"]),
    ("""\
     projects:
       p1:
         networks:
           - {name: n1}
           - name: n2
             name: n3
     """, 6, ["duplicate key 'name'"]),
])
def test_a_bad_file_is_refused_with_its_line_and_reason(text, line, words):
    err = _refused(text)
    assert err.line == line, str(err)
    assert str(err).startswith(f"t.yaml:{line}: ")
    for w in words:
        assert w in str(err)


def test_a_refused_file_stops_at_the_first_error_and_keeps_what_came_before():
    api = LocalApi()
    text = textwrap.dedent("""\
        projects:
          p1:
            networks:
              - {name: ok}
              - {name: bad, type: flat, physnet: nowhere}
        """)
    with pytest.raises(TopologyError) as info:
        load(api, text)
    assert info.value.line == 5 and "network bad" in str(info.value)
    assert set(_by_name(api, "networks")) == {"ok"}
