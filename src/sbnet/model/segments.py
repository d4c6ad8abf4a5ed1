"""Provider network segments: type rules, segmentation id ranges, allocation and MTU."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.model.errors import BadRequest, Conflict, InvalidInput, ServiceUnavailable

# Largest legal segmentation id per type (VLAN 12 bits, VNI 24 bits, GRE key 32 bits).
MAX_ID = {"vlan": 4094, "vxlan": 2**24 - 1, "geneve": 2**24 - 1, "gre": 2**32 - 1}
# Encapsulation overhead on a 1500-byte underlay (IPv4 outer header), as Neutron computes it.
OVERHEAD = {"flat": 0, "vlan": 0, "vxlan": 50, "gre": 42, "geneve": 58}


@dataclass
class SegmentConfig:
    """What an ml2 config would say: tenant type, physnets, ranges to allocate from."""

    tenant_network_type: str = "vxlan"
    flat_networks: list[str] = field(default_factory=lambda: ["physnet1"])
    vlan_ranges: dict[str, list[tuple[int, int]]] = field(
        default_factory=lambda: {"physnet1": [(100, 199)]})
    tunnel_ranges: dict[str, list[tuple[int, int]]] = field(default_factory=lambda: {
        "vxlan": [(1, 65535)], "gre": [(1, 65535)], "geneve": [(1, 65535)]})
    physnet_mtu: int = 1500

    def mtu(self, network_type: str) -> int:
        return self.physnet_mtu - OVERHEAD[network_type]


def check_provider(cfg: SegmentConfig, net_type: str | None, physnet: str | None,
                   seg_id: int | None) -> tuple[str, str | None, int | None]:
    """Validate provider:* attributes; returns (type, physnet, seg_id or None = allocate)."""
    if net_type is None:
        if physnet is not None or seg_id is not None:
            raise InvalidInput(error_message="provider:network_type required")
        return cfg.tenant_network_type, None, None
    if net_type == "flat":
        if seg_id is not None:
            raise InvalidInput(error_message="segmentation_id specified for flat provider network")
        if physnet is None:
            raise InvalidInput(error_message="physical_network required for flat provider network")
        if physnet not in cfg.flat_networks and "*" not in cfg.flat_networks:
            raise InvalidInput(error_message=f"physical_network '{physnet}' unknown for flat provider network")
        return net_type, physnet, None
    if net_type == "vlan":
        if physnet is None:
            if len(cfg.vlan_ranges) != 1:
                raise InvalidInput(error_message="physical_network required for VLAN provider network")
            physnet = next(iter(cfg.vlan_ranges))
        elif physnet not in cfg.vlan_ranges:
            raise InvalidInput(error_message=f"physical_network '{physnet}' unknown for VLAN provider network")
    elif physnet is not None:
        raise InvalidInput(error_message=f"provider:physical_network specified for {net_type} network")
    if seg_id is not None and not 1 <= seg_id <= MAX_ID[net_type]:
        if net_type == "vlan":
            raise InvalidInput(error_message="segmentation_id out of range (1 through 4094)")
        raise InvalidInput(error_message=f"segmentation_id out of range (1 through {MAX_ID[net_type]})")
    return net_type, physnet, seg_id


def allocate(cfg: SegmentConfig, net_type: str, physnet: str | None, used: set[int]) -> int:
    """The lowest free id in the configured ranges; 503 NoNetworkAvailable when exhausted."""
    ranges = cfg.vlan_ranges.get(physnet or "", []) if net_type == "vlan" else \
        cfg.tunnel_ranges.get(net_type, [])
    for lo, hi in ranges:
        n = lo
        while n <= hi:
            if n not in used:
                return n
            n += 1
    raise ServiceUnavailable("Unable to create the network. No tenant network is available for "
                             "allocation.", type_name="NoNetworkAvailable")


def in_use(net_type: str, physnet: str | None, seg_id: int | None) -> Conflict:
    if net_type == "flat":
        return Conflict(f"Unable to create the flat network. Physical network {physnet} is in use.",
                        type_name="FlatNetworkInUse")
    if net_type == "vlan":
        return Conflict(f"Unable to create the network. The VLAN {seg_id} on physical network "
                        f"{physnet} is in use.", type_name="VlanIdInUse")
    return Conflict(f"Unable to create the network. The tunnel ID {seg_id} is in use.",
                    type_name="TunnelIdInUse")


__all__ = ["SegmentConfig", "check_provider", "allocate", "in_use", "BadRequest"]
