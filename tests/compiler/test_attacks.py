"""The attacks Neutron's policy refuses, on packets: refused by the API, and their effect
absent from the data plane even when such a port reaches the model anyway."""

from __future__ import annotations

import uuid

import pytest

from sbnet.api.local import ApiError
from tests.compiler.scenario import ARP, Cloud, Ether, icmp, ip_of, raw
from tests.compiler.test_l3 import router, router_port, via


def member(c: Cloud, method: str, path: str, body: dict, project: str) -> int:
    try:
        c.api.request(method, path, body, project=project, admin=False)
    except ApiError as exc:
        return exc.status
    return 200


def test_fake_router_interface_reaches_nothing():
    """A member's port claiming another project's router (device_owner
    network:router_interface, device_id that router) on the member's own network:
    Neutron's DeviceIDNotOwnedByTenant.  Through it, the member's VM would reach the
    victim's private VMs."""
    c = Cloud()
    victim = c.network("victim", "10.1.0.0/24")
    other = c.network("victim", "10.3.0.0/24")
    r = router(c, "victim", victim)
    v1 = c.port("victim", victim, "h2", port_security_enabled=False)
    attacker = c.network("mallory", "10.2.0.0/24")
    m1 = c.port("mallory", attacker, "h1", port_security_enabled=False)
    fake = {"network_id": attacker["id"], "device_owner": "network:router_interface",
            "device_id": r["id"], "fixed_ips": [{"subnet_id": attacker["subnet"]["id"],
                                                 "ip_address": "10.2.0.1"}]}
    assert member(c, "POST", "ports", {"port": fake}, "mallory") == 409
    # Were such a port in the store anyway, the compiler would not take it for the router's.
    snap = c.api.snapshot()
    forged = {**router_port(c, r, victim), **fake, "id": str(uuid.uuid4()),
              "project_id": "mallory", "tenant_id": "mallory", "mac_address": "fa:16:3e:66:66:66"}
    snap["port"] = [*snap["port"], forged]
    c.cluster.sync(snap)
    got = c.send(m1, [via(m1, forged, ip_of(v1))])
    assert not got.to(v1["id"])
    # The control: the victim's own second network, attached by the victim, is routed.
    c.api.action(f"routers/{r['id']}/add_router_interface", {"subnet_id": other["subnet"]["id"]})
    o1 = c.port("victim", other, "h1", port_security_enabled=False)
    c.sync()
    assert c.send(o1, [via(o1, router_port(c, r, other), ip_of(v1))]).to(v1["id"])


def test_shared_network_member_cannot_spoof_the_owner():
    """On a network the admin shared, a member may not turn port security off, pick the
    owner's gateway address or an address pair covering everything: so its forged ARP
    replies and spoofed packets do not reach the owner's VMs."""
    c = Cloud()
    shared = c.network("admin", "10.7.0.0/24", shared=True)
    owner_vm = c.port("admin", shared, "h2", port_security_enabled=False)
    net_id, sub_id = shared["id"], shared["subnet"]["id"]
    gw = shared["subnet"]["gateway_ip"]
    for body in ({"port_security_enabled": False},
                 {"fixed_ips": [{"subnet_id": sub_id, "ip_address": gw}]},
                 {"allowed_address_pairs": [{"ip_address": "0.0.0.0/0"}]},
                 {"mac_address": owner_vm["mac_address"]},
                 {"device_owner": "network:router_gateway"}):
        assert member(c, "POST", "ports", {"port": {"network_id": net_id, **body}},
                      "mallory") == 403, body
    # What a member may have: a port with the addresses it is given, port security on.
    c.api.request("POST", "ports", {"port": {"network_id": net_id, "binding:host_id": "h1"}})
    m1 = c.api.request("POST", "ports", {"port": {"network_id": net_id}},
                       project="mallory", admin=False)["port"]
    c.api.update("ports", m1["id"], **{"binding:host_id": "h1"})
    m1 = c.api.request("GET", f"ports/{m1['id']}")["port"]
    assert member(c, "PUT", f"ports/{m1['id']}", {"port": {"port_security_enabled": False}},
                  "mallory") == 403
    c.sync()
    # A gratuitous ARP claiming the gateway, and a packet from the owner's address.
    garp = raw(Ether(src=m1["mac_address"], dst="ff:ff:ff:ff:ff:ff")
               / ARP(op=2, hwsrc=m1["mac_address"], psrc=gw, hwdst="ff:ff:ff:ff:ff:ff", pdst=gw))
    spoofed = icmp(m1, owner_vm, ip_src=ip_of(owner_vm))
    got = c.send(m1, [garp, spoofed])
    assert not got.to(owner_vm["id"])
    # The control: the member's honest ping arrives.
    assert c.send(m1, [icmp(m1, owner_vm)]).to(owner_vm["id"])


@pytest.mark.parametrize("attr", ["qos_policy_id"])
def test_floating_ip_cannot_name_another_projects_qos_policy(attr):
    c = Cloud()
    pol = c.api.create("qos/policies", project="victim", name="v")
    ext = c.network("admin", "172.24.4.0/24", **{"router:external": True})
    status = member(c, "POST", "floatingips", {"floatingip": {
        "floating_network_id": ext["id"], attr: pol["id"]}}, "mallory")
    assert status == 404
    assert member(c, "POST", "floatingips", {"floatingip": {
        "floating_network_id": ext["id"], "floating_ip_address": "172.24.4.50"}}, "mallory") == 403
