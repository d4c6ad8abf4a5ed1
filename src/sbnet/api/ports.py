"""Ports: fixed IPs from the pools, MAC generation, bindings, port security and its companions."""

from __future__ import annotations

import ipaddress

from sbnet.api.context import Context
from sbnet.api.crud import Hooks, fetch, owned
from sbnet.api.sharing import Sight
from sbnet.api.hosts import Heartbeats, bind_normal
from sbnet.api.networks import is_slaac
from sbnet.api.quotas import QUOTA_TYPE
from sbnet.api.security import ensure_default_group
from sbnet.model import dhcp_opts, ipam
from sbnet.offload.binding import DIRECT_VNICS, bind_from_store, host_profile
from sbnet.model.attrs import Invalid, fail, to_ip, to_mac, to_prefix_or_none, to_uuid
from sbnet.model.errors import (BadRequest, Conflict, Forbidden, InvalidInput, NeutronError,
                                ip_generation_failure, ip_in_use, mac_in_use, not_found)
from sbnet.model.resources import NETWORK, PORT, QOS_POLICY, SECURITY_GROUP
from sbnet.store import Tx

L3_OWNERS = ("network:router_interface", "network:router_gateway", "network:floatingip",
             "network:router_interface_distributed", "network:ha_router_replicated_interface")
MAC_TRIES = 16


def _bad_ip(ip: str, msg: str = "for the specified subnet") -> BadRequest:
    return BadRequest(f"IP address {ip} is not a valid IP {msg}.", type_name="InvalidIpForSubnet")


def _requested_ips(fixed_ips: list[dict]) -> list[tuple[str | None, str | None]]:
    out = []
    for entry in fixed_ips:
        extra = set(entry) - {"subnet_id", "ip_address"}
        if extra or not entry:
            raise fail("fixed_ips", f"'{entry}' may only have the keys subnet_id and ip_address")
        try:
            sid = to_uuid(entry["subnet_id"]) if entry.get("subnet_id") is not None else None
            ip = to_ip(entry["ip_address"]) if entry.get("ip_address") is not None else None
        except Invalid as exc:
            raise fail("fixed_ips", str(exc)) from None
        if sid is None and ip is None:
            raise fail("fixed_ips", f"'{entry}' needs a subnet_id or an ip_address")
        out.append((sid, ip))
    return out


def allocate_ips(tx: Tx, network_id: str, port_id: str, mac: str,
                 requested: list[dict] | None, keep: list[dict] = ()) -> list[dict]:
    """Fixed IPs for a port; its write holds the network (PortHooks.write_keys), so picks are
    final, and each address is taken by one insert that the primary key lets through once."""
    subnets = tx.list("subnet", parent_id=network_id)
    by_id = {s["id"]: s for s in subnets}
    kept = {(f["subnet_id"], f["ip_address"]) for f in keep}
    claimed: set[tuple[str, str]] = set()   # what pick() took already
    result: list[dict] = []

    def claim(subnet: dict, ip: str) -> bool:
        if not tx.claim_ip(subnet["id"], ip, network_id, port_id):
            return False
        claimed.add((subnet["id"], ip))
        return True

    def take(subnet: dict, ip: str) -> None:
        key = (subnet["id"], ip)
        if key not in kept and key not in claimed and not claim(subnet, ip):
            raise ip_in_use(network_id, ip)  # another port's, or twice in this request
        claimed.discard(key)
        result.append({"subnet_id": subnet["id"], "ip_address": ip})

    def pick(subnet: dict) -> str | None:
        if is_slaac(subnet):
            return ipam.eui64(subnet["cidr"], mac)
        # A probe that finds its address free takes it at once (one statement per probe).
        return ipam.pick_ip(subnet["allocation_pools"], lambda ip: not claim(subnet, ip),
                            lambda: tx.used_ips(subnet["id"]))

    if requested is None:
        for version in (4, 6):
            stateful = [s for s in subnets if s["ip_version"] == version and not is_slaac(s)]
            for subnet in stateful:
                ip = pick(subnet)
                if ip is not None:
                    take(subnet, ip)
                    break
            else:
                if stateful:
                    raise ip_generation_failure(network_id)
        for subnet in subnets:
            if is_slaac(subnet):
                take(subnet, pick(subnet))
        return result
    for sid, ip in _requested_ips(requested):
        if sid is not None:
            subnet = by_id.get(sid)
            if subnet is None:
                raise InvalidInput(error_message=f"Failed to create port on network {network_id}, "
                                                 f"because fixed_ips included invalid subnet {sid}")
            if ip is None:
                ip = pick(subnet)
                if ip is None:
                    raise ip_generation_failure(network_id)
            elif not ipam.contains(subnet["cidr"], ip):
                raise _bad_ip(ip)
        else:
            subnet = next((s for s in subnets if ipam.contains(s["cidr"], ip)), None)
            if subnet is None:
                raise BadRequest(f"IP address {ip} is not a valid IP for any of the subnets on the "
                                 "specified network.", type_name="InvalidIpForNetwork")
        net = ipaddress.ip_network(subnet["cidr"])
        if net.version == 4 and net.prefixlen <= 30 and ip in (str(net.network_address),
                                                               str(net.broadcast_address)):
            raise _bad_ip(ip)
        take(subnet, ip)
    return result


def _address_pairs(pairs: list[dict], mac: str) -> list[dict]:
    out, seen = [], set()
    for pair in pairs:
        if "ip_address" not in pair:
            raise BadRequest("AllowedAddressPair must contain ip_address",
                             type_name="AllowedAddressPairsMissingIP")
        if set(pair) - {"ip_address", "mac_address"}:
            raise fail("allowed_address_pairs", f"Unrecognized attribute(s) in '{pair}'")
        try:
            ip = pair["ip_address"]
            ip = to_prefix_or_none(ip) if "/" in str(ip) else to_ip(ip)
            pmac = to_mac(pair["mac_address"]) if pair.get("mac_address") else mac
        except Invalid as exc:
            raise fail("allowed_address_pairs", str(exc)) from None
        if (ip, pmac) in seen:
            raise BadRequest(f"Request contains duplicate address pair: mac_address {pmac} "
                             f"ip_address {ip}.", type_name="DuplicateAddressPairInRequest")
        seen.add((ip, pmac))
        out.append({"ip_address": ip, "mac_address": pmac})
    return out


def _vif(body: dict, tx: Tx | None = None, profiles: dict | None = None,
         heartbeats: Heartbeats | None = None) -> None:
    """Binding results: a direct port on a host with a known NIC profile binds as that NIC
    allows (sbnet.offload.binding); a normal one as the host's live agent's datapath takes
    it (binding_failed with none: sbnet.api.hosts); otherwise the type its vnic implies."""
    profile = host_profile(tx, profiles, body["binding:host_id"]) \
        if body["binding:vnic_type"] in DIRECT_VNICS else None
    if not body["binding:host_id"]:
        body["binding:vif_type"], body["binding:vif_details"] = "unbound", {}
    elif profile is not None and body["binding:vnic_type"] in DIRECT_VNICS:
        body["binding:vif_type"], body["binding:vif_details"] = bind_from_store(tx, profile, body)
    elif body["binding:vnic_type"] in ("direct", "macvtap", "direct-physical"):
        body["binding:vif_type"], body["binding:vif_details"] = "hw_veb", {"port_filter": False}
    else:
        body["binding:vif_type"], body["binding:vif_details"] = bind_normal(
            heartbeats, body["binding:host_id"], body["binding:host_id"] in (profiles or {}))


# device_owner -> the resource type its device_id names, for the ownership check below.
DEVICE_TYPES = {"network:router_interface": "router", "network:router_gateway": "router",
                "network:router_interface_distributed": "router",
                "network:ha_router_replicated_interface": "router",
                "network:floatingip": "floatingip"}


def check_device(tx: Tx, ctx: Context, body: dict) -> None:
    """Neutron's DeviceIDNotOwnedByTenant: a port may claim to be a router's or floating IP's
    only if the caller owns that device (admins and the service role excepted)."""
    typ = DEVICE_TYPES.get(body.get("device_owner") or "")
    if typ is None or not body.get("device_id") or ctx.is_admin or ctx.is_service:
        return
    dev = tx.get(typ, body["device_id"])
    if dev is None or dev.get("project_id") != ctx.project_id:
        raise Conflict(f"The following device_id {body['device_id']} is not owned by your "
                       "tenant or matches another tenants router.",
                       type_name="DeviceIDNotOwnedByTenant")


class PortHooks(Hooks):
    spec = PORT

    def parent_of(self, body: dict) -> str | None:
        return body["network_id"]

    def write_keys(self, bodies: list[dict] | None = None, ident: str | None = None) -> list[str] | None:
        """A port write holds its network only (addresses and MACs are allocated per network),
        so port writes on different networks run side by side."""
        if bodies is not None:
            return [f"network:{b['network_id']}" for b in bodies]
        if self.api.store.is_sqlite:  # one writer at a time there anyway: skip the lookup
            return None
        with self.api.store.read() as tx:
            network_id = tx.parent_of("port", ident)
        return None if network_id is None else [f"network:{network_id}"]

    def reads(self, bodies: list[dict]) -> tuple[list, list]:
        """A port create reads its network, its project's quota row and default security
        group, and the network's subnets."""
        nets = sorted({b["network_id"] for b in bodies})
        projects = sorted({b["project_id"] for b in bodies})
        return ([("network", n) for n in nets] + [(QUOTA_TYPE, p) for p in projects],
                [("subnet", n, None) for n in nets]
                + [("security_group", None, p) for p in projects])

    def _groups(self, tx: Tx, ctx: Context, body: dict, trusted: bool = False) -> None:
        # trusted: the groups are the project's default one, just looked up; no need to re-check.
        for gid in [] if trusted else body["security_groups"]:
            group = fetch(tx, ctx, SECURITY_GROUP, gid)
            if group["project_id"] != body["project_id"] and not ctx.is_admin:
                raise not_found("SecurityGroupNotFound", "Security group", gid)
        if body["security_groups"] and not body["port_security_enabled"]:
            raise Conflict("Port security must be enabled and port must have an IP address in "
                           "order to use security groups.",
                           type_name="PortSecurityAndIPRequiredForSecurityGroups")
        if body["allowed_address_pairs"] and not body["port_security_enabled"]:
            raise Conflict("Port Security must be enabled in order to have allowed address pairs "
                           "on a port.", type_name="AddressPairAndPortSecurityRequired")

    def create(self, tx: Tx, ctx: Context, body: dict) -> dict:
        net = fetch(tx, ctx, NETWORK, body["network_id"])
        if not owned(ctx, net) and not Sight(tx, ctx).shared("network", net):
            raise Forbidden("rule:create_port is disallowed by policy")
        check_device(tx, ctx, body)
        chosen = body.get("mac_address") is not None
        if not chosen:
            body["mac_address"] = ipam.random_mac()   # claimed with the first address
        if body["port_security_enabled"] is None:
            body["port_security_enabled"] = net["port_security_enabled"]
        defaulted = body["security_groups"] is None
        if defaulted:
            body["security_groups"] = []
            if body["port_security_enabled"] and not body["device_owner"].startswith("network:"):
                body["security_groups"] = [ensure_default_group(tx, body["project_id"])["id"]]
        pairs = body["allowed_address_pairs"]
        body["allowed_address_pairs"] = _address_pairs(pairs, body["mac_address"])
        self._groups(tx, ctx, body, trusted=defaulted)
        if body.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, body["qos_policy_id"])
        mac, body["fixed_ips"] = self._addresses(tx, net["id"], body, chosen)
        if mac != body["mac_address"]:
            body["mac_address"] = mac
            body["allowed_address_pairs"] = _address_pairs(pairs, mac)
        body["binding:profile"] = body["binding:profile"] or {}
        _vif(body, tx, self.api.host_profiles, self.api.heartbeats)
        body["extra_dhcp_opts"] = dhcp_opts.merge([], body.get("extra_dhcp_opts") or [])
        body.setdefault("status", "DOWN")  # router ports come ACTIVE (sbnet.api.l3)
        body.update(ip_allocation="immediate", trunk_details=None)
        return super().create(tx, ctx, body)

    def _addresses(self, tx: Tx, network_id: str, body: dict,
                   chosen: bool) -> tuple[str, list[dict]]:
        """A new port's MAC and fixed IPs.  The MAC's claim goes with the first address's
        (one round trip); a random MAC another port of the network has (a chance in
        millions) is drawn again, and the addresses taken again (SLAAC's derive from it)."""
        mac = body["mac_address"]
        claim = tx.claim_mac_later(network_id, mac, body["id"])
        try:
            fixed = allocate_ips(tx, network_id, body["id"], mac, body["fixed_ips"])
        except NeutronError:
            if claim.taken:
                raise
            if chosen:   # as before: the MAC's error comes first
                raise mac_in_use(network_id, mac) from None
            # (a MAC in use makes its SLAAC addresses in use too)
        else:
            if claim.taken:
                return mac, fixed
            if chosen:
                raise mac_in_use(network_id, mac)
        for _ in range(MAC_TRIES - 1):
            mac = ipam.random_mac()
            if tx.claim_mac(network_id, mac, body["id"]):
                break
        else:
            raise Conflict(f"Unable to generate unique mac on network {network_id}.",
                           type_name="MacAddressGenerationFailure")
        tx.release_port_ips(body["id"])
        return mac, allocate_ips(tx, network_id, body["id"], mac, body["fixed_ips"])

    def update(self, tx: Tx, ctx: Context, old: dict, changes: dict) -> dict:
        merged = {**old, **changes}
        if "device_owner" in changes or "device_id" in changes:
            check_device(tx, ctx, merged)
        if "mac_address" in changes and changes["mac_address"] != old["mac_address"]:
            if old["binding:host_id"] and not ctx.is_admin:
                raise Conflict(f"Unable to complete operation on port {old['id']}, port is already "
                               "bound, port type: ovs, old_mac {old['mac_address']}, new_mac "
                               f"{changes['mac_address']}.", type_name="PortBound")
            if not tx.claim_mac(old["network_id"], changes["mac_address"], old["id"]):
                raise mac_in_use(old["network_id"], changes["mac_address"])
            tx.release_mac(old["network_id"], old["mac_address"])
        if "port_security_enabled" in changes and not changes["port_security_enabled"] and \
                "security_groups" not in changes and old["security_groups"]:
            raise Conflict("Port has security group associated. Cannot disable port security or "
                           "ip address until security group is removed",
                           type_name="PortSecurityPortHasSecurityGroup")
        if "allowed_address_pairs" in changes:
            merged["allowed_address_pairs"] = _address_pairs(changes["allowed_address_pairs"],
                                                             merged["mac_address"])
        if merged.get("security_groups") is None:
            merged["security_groups"] = []
        if "extra_dhcp_opts" in changes:
            merged["extra_dhcp_opts"] = dhcp_opts.merge(old.get("extra_dhcp_opts") or [],
                                                         changes["extra_dhcp_opts"])
        self._groups(tx, ctx, merged)
        if changes.get("qos_policy_id"):
            fetch(tx, ctx, QOS_POLICY, changes["qos_policy_id"])
        if "fixed_ips" in changes:
            requested = changes["fixed_ips"] or []
            wanted = {(f.get("subnet_id"), f.get("ip_address")) for f in requested}
            keep = [f for f in old["fixed_ips"] if (f["subnet_id"], f["ip_address"]) in wanted
                    or (None, f["ip_address"]) in wanted]
            for f in old["fixed_ips"]:
                if f not in keep:
                    tx.release_ip(f["subnet_id"], f["ip_address"])
            merged["fixed_ips"] = allocate_ips(tx, old["network_id"], old["id"],
                                               merged["mac_address"], requested, keep)
        merged["binding:profile"] = merged.get("binding:profile") or {}
        _vif(merged, tx, self.api.host_profiles, self.api.heartbeats)
        old.update(merged)
        return tx.update("port", old)

    def release(self, tx: Tx, port: dict) -> None:
        for f in port["fixed_ips"]:
            tx.release_ip(f["subnet_id"], f["ip_address"])
        tx.release_mac(port["network_id"], port["mac_address"])

    def delete(self, tx: Tx, ctx: Context, obj: dict, l3: bool = False) -> None:
        if obj["device_owner"] in L3_OWNERS and not l3:
            raise Conflict(f"Port {obj['id']} has owner {obj['device_owner']} and therefore cannot "
                           "be deleted directly via the port API.", type_name="L3PortInUse")
        for trunk in tx.list("trunk"):
            if trunk["port_id"] == obj["id"]:
                raise Conflict(f"Port {obj['id']} is currently a parent port for trunk "
                               f"{trunk['id']}.", type_name="PortInUseAsTrunkParent")
            if any(s["port_id"] == obj["id"] for s in trunk["sub_ports"]):
                raise Conflict(f"Port {obj['id']} is currently a subport for trunk {trunk['id']}.",
                               type_name="PortInUseAsSubPort")
        for fip in tx.list("floatingip"):
            if fip["port_id"] == obj["id"]:
                fip.update(port_id=None, fixed_ip_address=None, router_id=None, status="DOWN")
                tx.update("floatingip", fip)
        from sbnet.api.bindings import BINDING_TYPE, HANDOVER_TYPE
        for typ in (BINDING_TYPE, HANDOVER_TYPE):
            for child in tx.list(typ, parent_id=obj["id"]):
                tx.delete(typ, child)
        self.release(tx, obj)
        tx.delete("port", obj)


HOOKS = (PortHooks,)
