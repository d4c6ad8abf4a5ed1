"""OpenFlow actions as plain immutable values, with their ovs-ofctl text."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.flows import fields as F


@dataclass(frozen=True)
class Subfield:
    """A bit range of a field, `reg0[0..15]` in ovs-ofctl syntax."""

    field: str
    start: int
    width: int

    @classmethod
    def whole(cls, name: str) -> "Subfield":
        fld = F.lookup(name)
        return cls(fld.name, 0, fld.width)

    @property
    def mask(self) -> int:
        return ((1 << self.width) - 1) << self.start

    def __str__(self) -> str:
        fld = F.lookup(self.field)
        if self.start == 0 and self.width == fld.width:
            return f"{self.field}[]"
        if self.width == 1:
            return f"{self.field}[{self.start}]"
        return f"{self.field}[{self.start}..{self.start + self.width - 1}]"


@dataclass(frozen=True)
class Output:
    port: int                        # number, or one of fields.OFPP_*

    def __str__(self) -> str:
        for name, num in F.PORT_NAMES.items():
            if num == self.port and name not in ("none", "any", "table"):
                return "IN_PORT" if name == "in_port" else name.upper() if name == "local" else name
        return f"output:{self.port}"


@dataclass(frozen=True)
class OutputReg:
    src: Subfield

    def __str__(self) -> str:
        return f"output:{self.src}"


@dataclass(frozen=True)
class Controller:
    max_len: int = 65535
    reason: str = "action"

    def __str__(self) -> str:
        return "controller" if self.max_len == 65535 else f"controller:{self.max_len}"


@dataclass(frozen=True)
class Resubmit:
    port: int | None = None          # None = the packet's in_port
    table: int | None = None         # None = the current table

    def __str__(self) -> str:
        p = "" if self.port is None else ("in_port" if self.port == F.OFPP_IN_PORT else str(self.port))
        t = "" if self.table is None else str(self.table)
        return f"resubmit({p},{t})"


@dataclass(frozen=True)
class GotoTable:
    table: int

    def __str__(self) -> str:
        return f"goto_table:{self.table}"


@dataclass(frozen=True)
class SetField:
    field: str
    value: int
    mask: int | None = None          # None = the whole field

    def __str__(self) -> str:
        fld = F.lookup(self.field)
        return f"set_field:{F.format_value(fld, self.value, self.mask)}->{fld.ofctl_name or fld.name}"


@dataclass(frozen=True)
class Load:
    value: int
    dst: Subfield

    def __str__(self) -> str:
        return f"load:{self.value:#x}->{self.dst}"


@dataclass(frozen=True)
class Move:
    src: Subfield
    dst: Subfield

    def __str__(self) -> str:
        return f"move:{self.src}->{self.dst}"


@dataclass(frozen=True)
class PushVlan:
    tpid: int = F.ETH_VLAN

    def __str__(self) -> str:
        return f"push_vlan:{self.tpid:#06x}"


@dataclass(frozen=True)
class PopVlan:
    def __str__(self) -> str:
        return "pop_vlan"


@dataclass(frozen=True)
class ModVlanVid:
    vid: int

    def __str__(self) -> str:
        return f"mod_vlan_vid:{self.vid}"


@dataclass(frozen=True)
class ModVlanPcp:
    pcp: int

    def __str__(self) -> str:
        return f"mod_vlan_pcp:{self.pcp}"


@dataclass(frozen=True)
class DecTtl:
    def __str__(self) -> str:
        return "dec_ttl"


@dataclass(frozen=True)
class PushMpls:
    ethertype: int = F.ETH_MPLS

    def __str__(self) -> str:
        return f"push_mpls:{self.ethertype:#06x}"


@dataclass(frozen=True)
class PopMpls:
    ethertype: int

    def __str__(self) -> str:
        return f"pop_mpls:{self.ethertype:#06x}"


@dataclass(frozen=True)
class SetMplsLabel:
    label: int

    def __str__(self) -> str:
        return f"set_mpls_label({self.label})"


@dataclass(frozen=True)
class SetMplsTc:
    tc: int

    def __str__(self) -> str:
        return f"set_mpls_tc({self.tc})"


@dataclass(frozen=True)
class SetMplsTtl:
    ttl: int

    def __str__(self) -> str:
        return f"set_mpls_ttl({self.ttl})"


@dataclass(frozen=True)
class DecMplsTtl:
    def __str__(self) -> str:
        return "dec_mpls_ttl"


@dataclass(frozen=True)
class Group:
    group_id: int

    def __str__(self) -> str:
        return f"group:{self.group_id}"


@dataclass(frozen=True)
class Meter:
    meter_id: int

    def __str__(self) -> str:
        return f"meter:{self.meter_id}"


@dataclass(frozen=True)
class Nat:
    kind: str | None = None          # "src", "dst" or None (reverse only)
    addr_min: str | None = None
    addr_max: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    flags: tuple[str, ...] = ()      # random, hash, persistent

    def __str__(self) -> str:
        if self.kind is None:
            return "nat"
        spec = ""
        if self.addr_min:
            a = f"[{self.addr_min}]" if ":" in self.addr_min else self.addr_min
            spec = a
            if self.addr_max and self.addr_max != self.addr_min:
                b = f"[{self.addr_max}]" if ":" in self.addr_max else self.addr_max
                spec += f"-{b}"
            if self.port_min is not None:
                spec += f":{self.port_min}"
                if self.port_max is not None and self.port_max != self.port_min:
                    spec += f"-{self.port_max}"
        inner = [f"{self.kind}={spec}" if spec else self.kind, *self.flags]
        return f"nat({','.join(inner)})"


@dataclass(frozen=True)
class Ct:
    commit: bool = False
    zone: int | Subfield = 0
    table: int | None = None
    nat: Nat | None = None
    exec_: tuple = ()                # SetField/Load on ct_mark / ct_label
    alg: str | None = None

    def __str__(self) -> str:
        parts = []
        if self.commit:
            parts.append("commit")
        if self.zone != 0:
            parts.append(f"zone={self.zone}")
        if self.table is not None:
            parts.append(f"table={self.table}")
        if self.nat is not None:
            parts.append(str(self.nat))
        if self.exec_:
            parts.append(f"exec({','.join(str(a) for a in self.exec_)})")
        if self.alg:
            parts.append(f"alg={self.alg}")
        return f"ct({','.join(parts)})"


@dataclass(frozen=True)
class CtClear:
    def __str__(self) -> str:
        return "ct_clear"


@dataclass(frozen=True)
class EncapNsh:
    md_type: int = 1

    def __str__(self) -> str:
        return f"encap(nsh(md_type={self.md_type}))"


@dataclass(frozen=True)
class Encap:
    header: str                      # "ethernet", "mpls", ...

    def __str__(self) -> str:
        return f"encap({self.header})"


@dataclass(frozen=True)
class Decap:
    def __str__(self) -> str:
        return "decap()"


@dataclass(frozen=True)
class DecNshTtl:
    def __str__(self) -> str:
        return "dec_nsh_ttl"


@dataclass(frozen=True)
class Conjunction:
    conj_id: int
    clause: int                      # 1-based, as written
    n_clauses: int

    def __str__(self) -> str:
        return f"conjunction({self.conj_id},{self.clause}/{self.n_clauses})"


@dataclass(frozen=True)
class Normal:
    def __str__(self) -> str:
        return "NORMAL"


# An action list; the empty tuple means drop.
Action = (Output | OutputReg | Controller | Resubmit | GotoTable | SetField | Load | Move
          | PushVlan | PopVlan | ModVlanVid | ModVlanPcp | DecTtl | PushMpls | PopMpls
          | SetMplsLabel | SetMplsTc | SetMplsTtl | DecMplsTtl | Group | Meter | Ct | CtClear
          | EncapNsh | Encap | Decap | DecNshTtl | Conjunction | Normal)


@dataclass(frozen=True)
class Bucket:
    actions: tuple = ()
    weight: int = 1
    watch_port: int | None = None
    bucket_id: int | None = None


@dataclass(frozen=True)
class GroupMod:
    """A group table entry: type all, select, indirect or ff (fast failover)."""

    group_id: int
    type: str
    buckets: tuple[Bucket, ...] = ()
    selection_method: str | None = None   # "hash" or "dp_hash"
    fields: tuple[str, ...] = ()          # hash fields for selection_method=hash


@dataclass(frozen=True)
class MeterMod:
    """A meter: rate in kbps or pktps, burst, and a drop band."""

    meter_id: int
    rate: int
    unit: str = "kbps"               # kbps or pktps
    burst: int = 0


def format_actions(actions: tuple) -> str:
    return ",".join(str(a) for a in actions) if actions else "drop"
