"""openstacksdk against a running server: every resource family, service chaining included."""

from __future__ import annotations

from typing import Iterator

import openstack
import pytest
from keystoneauth1 import noauth, session
from openstack import exceptions as exc


@pytest.fixture(scope="module")
def conn(server: str) -> Iterator[openstack.connection.Connection]:
    c = openstack.connection.Connection(session=session.Session(auth=noauth.NoAuth()),
                                        network_endpoint_override=server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def lan(conn: openstack.connection.Connection) -> tuple:
    net = conn.network.create_network(name="sdk-net")
    sub = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.3.0.0/24",
                                     name="sdk-sub")
    return net, sub


def test_network_subnet_port_crud(conn: openstack.connection.Connection, lan: tuple) -> None:
    net, sub = lan
    assert conn.network.find_network("sdk-net").id == net.id
    assert sub.allocation_pools == [{"start": "10.3.0.2", "end": "10.3.0.254"}]
    port = conn.network.create_port(network_id=net.id, name="sdk-p",
                                    fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.3.0.7"}])
    assert port.fixed_ips[0]["ip_address"] == "10.3.0.7"
    with pytest.raises(exc.ConflictException) as info:
        conn.network.create_port(network_id=net.id,
                                 fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.3.0.7"}])
    assert "in use" in str(info.value)
    port = conn.network.update_port(port, name="sdk-p2", binding_host_id="host-a")
    # No agent serves host-a: the binding fails, as Neutron's does (tests/agent/test_bindings.py).
    assert port.name == "sdk-p2" and port.binding_vif_type == "binding_failed"
    assert [p.id for p in conn.network.ports(network_id=net.id, name="sdk-p2")] == [port.id]
    conn.network.delete_port(port)
    with pytest.raises(exc.NotFoundException):
        conn.network.get_port(port.id)


def test_pagination_followed_by_sdk(conn: openstack.connection.Connection, lan: tuple) -> None:
    net, _ = lan
    made = [conn.network.create_port(network_id=net.id, name=f"pg{i}") for i in range(7)]
    names = [p.name for p in conn.network.ports(network_id=net.id, limit=3, sort_key="name",
                                                sort_dir="asc") if p.name.startswith("pg")]
    assert names == sorted(f"pg{i}" for i in range(7))
    for p in made:
        conn.network.delete_port(p)


def test_security_groups_routers_fips(conn: openstack.connection.Connection, lan: tuple) -> None:
    net, sub = lan
    sg = conn.network.create_security_group(name="sdk-sg", stateful=False)
    assert sg.stateful is False
    rule = conn.network.create_security_group_rule(
        security_group_id=sg.id, direction="ingress", protocol="udp", port_range_min=53,
        port_range_max=53, remote_ip_prefix="10.0.0.0/8")
    assert rule.protocol == "udp"
    ext = conn.network.create_network(name="sdk-ext", is_router_external=True)
    conn.network.create_subnet(network_id=ext.id, ip_version=4, cidr="192.0.2.0/24")
    router = conn.network.create_router(name="sdk-r", external_gateway_info={"network_id": ext.id})
    conn.network.add_interface_to_router(router, subnet_id=sub.id)
    port = conn.network.create_port(network_id=net.id, security_group_ids=[sg.id])
    fip = conn.network.create_ip(floating_network_id=ext.id, port_id=port.id)
    assert fip.router_id == router.id and fip.fixed_ip_address == port.fixed_ips[0]["ip_address"]
    fip = conn.network.update_ip(fip, port_id=None)
    assert fip.port_id is None
    conn.network.delete_ip(fip)
    conn.network.delete_port(port)
    conn.network.remove_interface_from_router(router, subnet_id=sub.id)
    conn.network.delete_router(router)
    conn.network.delete_security_group(sg)


def test_qos_and_trunks(conn: openstack.connection.Connection, lan: tuple) -> None:
    net, _ = lan
    pol = conn.network.create_qos_policy(name="sdk-q")
    rule = conn.network.create_qos_bandwidth_limit_rule(pol, max_kbps=100, direction="ingress")
    conn.network.create_qos_dscp_marking_rule(pol, dscp_mark=10)
    conn.network.create_qos_minimum_bandwidth_rule(pol, min_kbps=10, direction="egress")
    assert len(conn.network.get_qos_policy(pol.id).rules) == 3
    conn.network.update_qos_bandwidth_limit_rule(rule, pol, max_kbps=200)
    assert conn.network.get_qos_bandwidth_limit_rule(rule, pol).max_kbps == 200
    parent = conn.network.create_port(network_id=net.id, qos_policy_id=pol.id)
    child = conn.network.create_port(network_id=net.id)
    trunk = conn.network.create_trunk(port_id=parent.id, name="sdk-t")
    conn.network.add_trunk_subports(trunk, [{"port_id": child.id, "segmentation_type": "vlan",
                                             "segmentation_id": 42}])
    assert conn.network.get_trunk_subports(trunk)["sub_ports"][0]["segmentation_id"] == 42
    details = conn.network.get_port(parent.id).trunk_details
    assert details["trunk_id"] == trunk.id
    assert details["sub_ports"][0]["mac_address"] == child.mac_address
    assert conn.network.get_port(child.id).device_owner == "trunk:subport"
    conn.network.delete_trunk_subports(trunk, [{"port_id": child.id}])
    assert conn.network.get_port(child.id).device_owner == ""
    conn.network.delete_trunk(trunk)
    assert conn.network.get_port(parent.id).trunk_details is None
    with pytest.raises(exc.ConflictException):
        conn.network.delete_qos_policy(pol)
    conn.network.delete_port(parent)
    conn.network.delete_port(child)
    conn.network.delete_qos_policy(pol)


def test_service_chaining(conn: openstack.connection.Connection, lan: tuple) -> None:
    net, _ = lan
    p_in, p_out, src = (conn.network.create_port(network_id=net.id) for _ in range(3))
    pair = conn.network.create_sfc_port_pair(name="pp", ingress=p_in.id, egress=p_out.id)
    group = conn.network.create_sfc_port_pair_group(name="ppg", port_pairs=[pair.id])
    fc = conn.network.create_sfc_flow_classifier(name="fc", protocol="tcp", ethertype="IPv4",
                                                 destination_port_range_min=80,
                                                 destination_port_range_max=80,
                                                 logical_source_port=src.id)
    chain = conn.network.create_sfc_port_chain(name="pc", port_pair_groups=[group.id],
                                               flow_classifiers=[fc.id])
    assert chain.chain_parameters == {"correlation": "mpls", "symmetric": False}
    assert [c.id for c in conn.network.sfc_port_chains()] == [chain.id]
    with pytest.raises(exc.ConflictException):
        conn.network.delete_sfc_port_pair_group(group)
    conn.network.update_sfc_port_chain(chain, name="pc2")
    assert conn.network.get_sfc_port_chain(chain.id).name == "pc2"
    conn.network.delete_sfc_port_chain(chain)
    conn.network.delete_sfc_flow_classifier(fc)
    conn.network.delete_sfc_port_pair_group(group)
    conn.network.delete_sfc_port_pair(pair)
    for p in (p_in, p_out, src):
        conn.network.delete_port(p)


def test_port_bindings_as_nova_drives_them(server: str, lan: tuple) -> None:
    """binding-extended through openstacksdk with Nova's service role: an inactive binding
    on the destination, activation, the source's binding deleted; the errors as the sdk's.
    Nova's user has the admin and service roles, as deployments give it."""
    import httpx
    for h in ("sdk-src", "sdk-dst"):
        httpx.put(f"{server}/v2.0/sbnet/hosts/{h}", json={"host": {
            "tunnel_ip": "192.0.2.9", "datapath": "reference"}}).raise_for_status()
    nova = openstack.connection.Connection(
        session=session.Session(auth=noauth.NoAuth(),
                                additional_headers={"X-Project-Id": "service",
                                                    "X-Roles": "admin,service"}),
        network_endpoint_override=server)
    admin = openstack.connection.Connection(session=session.Session(auth=noauth.NoAuth()),
                                            network_endpoint_override=server)
    try:
        net, _ = lan
        port = admin.network.create_port(network_id=net.id, device_owner="compute:nova",
                                         binding_host_id="sdk-src")
        b = nova.network.create_port_binding(port, host="sdk-dst")
        assert (b.host, b.status, b.vif_type) == ("sdk-dst", "INACTIVE", "tap")
        assert sorted((x.host, x.status) for x in nova.network.port_bindings(port)) == [
            ("sdk-dst", "INACTIVE"), ("sdk-src", "ACTIVE")]
        with pytest.raises(exc.ConflictException):
            nova.network.create_port_binding(port, host="sdk-dst")
        with pytest.raises(exc.ForbiddenException):
            admin.network.create_port_binding(port, host="sdk-other")
        act = nova.network.activate_port_binding(port, host="sdk-dst")
        assert (act.host, act.status) == ("sdk-dst", "ACTIVE")
        assert admin.network.get_port(port.id).binding_host_id == "sdk-dst"
        with pytest.raises(exc.NotFoundException):
            nova.network.delete_port_binding(port, "nowhere", ignore_missing=False)
        nova.network.delete_port_binding(port, "sdk-src")
        assert [(x.host, x.status) for x in nova.network.port_bindings(port)] == [
            ("sdk-dst", "ACTIVE")]
        admin.network.delete_port(port)
    finally:
        nova.close()
        admin.close()
