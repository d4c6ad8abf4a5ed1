"""Trunk MTUs as Neutron checks them: a subport's network MTU may not exceed the parent's."""

from __future__ import annotations

from apihelpers import ADMIN, Api


def _port(api: Api, mtu: int, cidr: str) -> dict:
    net = api.create("networks", "network", mtu=mtu, **{"provider:network_type": "vlan"})
    api.create("subnets", "subnet", network_id=net["id"], cidr=cidr)
    return api.create("ports", "port", network_id=net["id"])


def test_a_subport_with_a_bigger_mtu_than_its_parent_is_refused(api: Api) -> None:
    admin = api.as_(ADMIN)
    parent, small, big = (_port(admin, mtu, f"10.{60 + n}.0.0/24")
                          for n, mtu in enumerate((1400, 1300, 1500)))
    sub = lambda p, vid: {"port_id": p["id"], "segmentation_type": "vlan", "segmentation_id": vid}  # noqa: E731
    err = admin.err("POST", "trunks", {"trunk": {"port_id": parent["id"], "sub_ports": [sub(big, 7)]}}, 409)
    assert err["type"] == "SubPortMtuGreaterThanTrunkPortMtu"
    assert "MTU 1500" in err["message"] and "MTU 1400" in err["message"]
    trunk = admin.create("trunks", "trunk", port_id=parent["id"], sub_ports=[sub(small, 7)])
    assert admin.err("PUT", f"trunks/{trunk['id']}/add_subports", {"sub_ports": [sub(big, 8)]},
                     409)["type"] == "SubPortMtuGreaterThanTrunkPortMtu"
    # An equal MTU is fine.
    same = _port(admin, 1400, "10.70.0.0/24")
    out = admin.req("PUT", f"trunks/{trunk['id']}/add_subports", {"sub_ports": [sub(same, 9)]}, 200)
    assert {s["segmentation_id"] for s in out["sub_ports"]} == {7, 9}
