"""Networks (with provider segments) and subnets (with pools, gateways, IPv6 modes, overlap checks)."""

from __future__ import annotations

import ipaddress

from sbnet.api import rbac
from sbnet.api.address_scopes import refresh_network_scopes
from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch, owned
from sbnet.api.subnetpools import allocate_from_pool
from sbnet.model import ipam, segments
from sbnet.model.errors import Conflict, Forbidden, InvalidInput
from sbnet.model.resources import NETWORK, QOS_POLICY, SUBNET
from sbnet.store import Tx

# Ports a network or subnet may be deleted with (Neutron's AUTO_DELETE_PORT_OWNERS).
AUTO_DELETE_OWNERS = ("network:dhcp",)


class NetworkHooks(Hooks):
    spec = NETWORK

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        cfg = self.api.segments
        net_type, physnet, seg_id = segments.check_provider(
            cfg, body.get("provider:network_type"), body.get("provider:physical_network"),
            body.get("provider:segmentation_id"))
        if net_type == "vlan" and physnet is None:
            physnet, seg_id = segments.allocate_tenant_vlan(
                cfg, lambda name: tx.used_segments("vlan", name))
        key = physnet or ""
        used = tx.used_segments(net_type, key)
        if net_type == "flat":
            if 0 in used:
                raise segments.in_use(net_type, physnet, None)
            tx.add_segment(net_type, key, 0, body["id"])
        else:
            if seg_id is None:
                seg_id = segments.allocate(cfg, net_type, physnet, used)
            elif seg_id in used:
                raise segments.in_use(net_type, physnet, seg_id)
            tx.add_segment(net_type, key, seg_id, body["id"])
        body.update({"provider:network_type": net_type, "provider:physical_network": physnet,
                     "provider:segmentation_id": seg_id})
        limit = cfg.mtu(net_type)
        if body.get("mtu") is None:
            body["mtu"] = limit
        elif body["mtu"] > limit:
            raise InvalidInput(error_message=f"Requested MTU is too big, maximum is {limit}")
        if body.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, body["qos_policy_id"])
        else:  # qos-default: the project's default QoS policy, if it has one, as in Neutron
            body["qos_policy_id"] = next((p["id"] for p in tx.list("policy", project_id=body[
                "project_id"]) if p["is_default"]), None)
        body.update(status="ACTIVE", subnets=[], availability_zones=[], ipv4_address_scope=None,
                    ipv6_address_scope=None, l2_adjacency=True)
        created = super().create(tx, ctx, body)
        rbac.on_create(tx, "network", created)
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        if changes.get("mtu") is not None:
            limit = self.api.segments.mtu(old["provider:network_type"])
            if changes["mtu"] > limit:
                raise InvalidInput(error_message=f"Requested MTU is too big, maximum is {limit}")
        if changes.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, changes["qos_policy_id"])
        rbac.on_update(tx, "network", old, changes)
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        # An external network goes with its floating IPs that no port uses, as in Neutron.
        fips = [f for f in tx.list("floatingip") if f["floating_network_id"] == obj["id"]]
        if not any(f["port_id"] for f in fips):
            for fip in fips:
                self.api.hooks["floatingip"].delete(tx, ctx, fip)
        ports = tx.list("port", parent_id=obj["id"])
        if any(p["device_owner"] not in AUTO_DELETE_OWNERS for p in ports):
            raise Conflict(f"Unable to complete operation on network {obj['id']}. There are one or "
                           "more ports still in use on the network.", type_name="NetworkInUse")
        port_hooks = self.api.hooks["port"]
        for port in ports:
            port_hooks.release(tx, port)
            tx.delete("port", port)
        for sub in tx.list("subnet", parent_id=obj["id"]):
            tx.delete("subnet", sub)
        tx.release_segments(obj["id"])
        rbac.on_delete(tx, obj["id"])
        super().delete(tx, ctx, obj)


def _check_ipv6_modes(body: dict) -> None:
    ra, am = body.get("ipv6_ra_mode"), body.get("ipv6_address_mode")
    if body["ip_version"] == 4:
        if ra or am:
            raise InvalidInput(error_message="ipv6_ra_mode and ipv6_address_mode are only valid "
                                             "on IPv6 subnets")
        return
    if ra and am and ra != am:
        raise InvalidInput(error_message=f"ipv6_ra_mode set to '{ra}' with ipv6_address_mode set "
                                         f"to '{am}' is not valid. If both attributes are set, "
                                         "they must be the same value")
    if (ra or am) and not body.get("enable_dhcp", True):
        raise InvalidInput(error_message="ipv6_ra_mode or ipv6_address_mode cannot be set when "
                                         "enable_dhcp is set to False.")
    if "slaac" in (ra, am) or "dhcpv6-stateless" in (ra, am):
        if ipam.network(body["cidr"]).prefixlen != 64:
            raise InvalidInput(error_message=f"Invalid CIDR {body['cidr']} for IPv6 address mode. "
                                             "OpenStack uses the EUI-64 address format, which "
                                             "requires the prefix to be /64")


def is_slaac(subnet: dict) -> bool:
    return subnet.get("ipv6_address_mode") in ("slaac", "dhcpv6-stateless")


class SubnetHooks(Hooks):
    spec = SUBNET

    def parent_of(self, body: dict) -> str | None:
        return body["network_id"]

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        net = fetch(tx, ctx, NETWORK, body["network_id"])
        if not owned(ctx, net):
            raise Forbidden("rule:create_subnet is disallowed by policy")
        allocate_from_pool(tx, ctx, body)
        net_cidr = ipaddress.ip_network(body["cidr"])
        if net_cidr.version != body["ip_version"]:
            raise InvalidInput(error_message=f"Cidr {body['cidr']} does not match ip_version "
                                             f"{body['ip_version']}")
        if net_cidr.prefixlen > (30 if net_cidr.version == 4 else 126) or net_cidr.prefixlen == 0:
            raise InvalidInput(error_message=f"{body['cidr']} is not a usable subnet cidr")
        _check_ipv6_modes(body)
        others = tx.list("subnet", parent_id=net["id"])
        clash = ipam.overlapping(body["cidr"], [s["cidr"] for s in others])
        if clash:
            raise InvalidInput(error_message=f"Requested subnet with cidr: {body['cidr']} for "
                                             f"network: {net['id']} overlaps with another subnet")
        if body["gateway_ip"] == "":
            body["gateway_ip"] = ipam.default_gateway(body["cidr"])
        elif body["gateway_ip"] is not None:
            ipam.check_gateway(body["cidr"], body["gateway_ip"])
        if body.get("allocation_pools") is None:
            body["allocation_pools"] = ipam.default_pools(body["cidr"], body["gateway_ip"])
        else:
            body["allocation_pools"] = ipam.validate_pools(body["cidr"], body["allocation_pools"],
                                                           body["gateway_ip"])
        for ns in body["dns_nameservers"]:
            if ipaddress.ip_address(ns).version != body["ip_version"]:
                raise InvalidInput(error_message=f"DNS nameserver {ns} does not match ip_version")
        body.update(subnetpool_id=body.get("subnetpool_id"), segment_id=None)
        created = super().create(tx, ctx, body)
        net["subnets"] = [*net["subnets"], body["id"]]
        tx.update("network", net)
        refresh_network_scopes(tx, net["id"])
        return created

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        merged = {**old, **changes}
        if "gateway_ip" in changes:
            if changes["gateway_ip"] == "":
                merged["gateway_ip"] = ipam.default_gateway(old["cidr"])
            elif changes["gateway_ip"] is not None:
                ipam.check_gateway(old["cidr"], changes["gateway_ip"])
        if "allocation_pools" in changes or "gateway_ip" in changes:
            pools = merged["allocation_pools"]
            if pools is None:
                pools = ipam.default_pools(old["cidr"], merged["gateway_ip"])
            merged["allocation_pools"] = ipam.validate_pools(old["cidr"], pools, merged["gateway_ip"])
        if "enable_dhcp" in changes:
            _check_ipv6_modes(merged)
        changes = {k: merged[k] for k in (*changes, "allocation_pools", "gateway_ip")}
        return super().update(tx, ctx, old, changes)

    def delete(self, tx: Tx, ctx: Context, obj: dict) -> None:
        # Addresses a port made up itself (SLAAC, DHCPv6-stateless) go with the subnet, as in
        # Neutron; router interfaces, and any address allocated from a stateful subnet, hold it.
        auto = is_slaac(obj)
        ports = [p for p in (tx.get("port", pid) for pid in set(tx.subnet_ip_ports(obj["id"]))) if p]
        for port in ports:
            owner = port["device_owner"]
            if owner in AUTO_DELETE_OWNERS or (auto and not owner.startswith("network:router_interface")):
                continue
            raise Conflict(f"Unable to complete operation on subnet {obj['id']}: One or more "
                           "ports have an IP allocation from this subnet.",
                           type_name="SubnetInUse")
        for port in ports:
            for f in port["fixed_ips"]:
                if f["subnet_id"] == obj["id"]:
                    tx.release_ip(obj["id"], f["ip_address"])
            port["fixed_ips"] = [f for f in port["fixed_ips"] if f["subnet_id"] != obj["id"]]
            tx.update("port", port)
        net = tx.get("network", obj["network_id"])
        net["subnets"] = [s for s in net["subnets"] if s != obj["id"]]
        tx.update("network", net)
        super().delete(tx, ctx, obj)
        refresh_network_scopes(tx, net["id"])


HOOKS = (NetworkHooks, SubnetHooks)
