"""Provider network segments: type rules, segmentation id ranges, allocation and MTU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

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

    @classmethod
    def parse(cls, tenant_network_type: str = "vxlan", flat_networks: list[str] | None = None,
              vlan_ranges: list[str] | None = None, tunnel_ranges: list[str] | None = None,
              physnet_mtu: int = 1500) -> "SegmentConfig":
        """From ml2-style strings: vlan "physnet1:100:199" (or bare "physnet2" = no tenant
        range), tunnel "vxlan:1:1000"; unset lists keep the defaults."""
        cfg = cls(tenant_network_type=tenant_network_type, physnet_mtu=physnet_mtu)
        if tenant_network_type not in OVERHEAD or tenant_network_type == "flat":
            raise ValueError(f"unknown network type {tenant_network_type!r}")
        if flat_networks is not None:
            cfg.flat_networks = list(flat_networks)
        if vlan_ranges is not None:
            cfg.vlan_ranges = {}
            for item in vlan_ranges:
                name, *bounds = item.split(":")
                cfg.vlan_ranges.setdefault(name, [])
                if bounds:
                    cfg.vlan_ranges[name].append(_bounds(item, bounds, MAX_ID["vlan"]))
        if tunnel_ranges is not None:
            cfg.tunnel_ranges = {t: [] for t in ("vxlan", "gre", "geneve")}
            for item in tunnel_ranges:
                kind, *bounds = item.split(":")
                if kind not in cfg.tunnel_ranges or len(bounds) != 2:
                    raise ValueError(f"tunnel range {item!r} must be vxlan|gre|geneve:MIN:MAX")
                cfg.tunnel_ranges[kind].append(_bounds(item, bounds, MAX_ID[kind]))
        return cfg

    def mtu(self, network_type: str) -> int:
        return self.physnet_mtu - OVERHEAD[network_type]


def _bounds(item: str, bounds: list[str], top: int) -> tuple[int, int]:
    try:
        lo, hi = (int(b) for b in bounds)
    except ValueError:
        raise ValueError(f"range {item!r} must end in :MIN:MAX") from None
    if not 1 <= lo <= hi <= top:
        raise ValueError(f"range {item!r} must satisfy 1 <= MIN <= MAX <= {top}")
    return lo, hi


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


def allocate_tenant_vlan(cfg: SegmentConfig, used: Callable[[str], set[int]]) -> tuple[str, int]:
    """A VLAN for a tenant network: the first physical network with a free id in its ranges."""
    for physnet, ranges in cfg.vlan_ranges.items():
        if ranges:
            try:
                return physnet, allocate(cfg, "vlan", physnet, used(physnet))
            except ServiceUnavailable:
                continue
    return "", allocate(cfg, "vlan", None, set())  # raises NoNetworkAvailable


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
