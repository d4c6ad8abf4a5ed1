"""Datapath actions: the flattened action lists megaflows carry, as OVS's datapath has them."""

from __future__ import annotations

from dataclasses import dataclass

# Header groups a set() action rewrites, and the key slots each field of the
# group lives in.  OVS's commit step emits one set() per header whose fields
# changed, naming only the changed fields; we do the same so our datapath
# actions compare one-to-one with ofproto/trace's.
SET_HEADERS: dict[str, tuple[tuple[str, str], ...]] = {
    # header: ((field name as OVS prints it, registry field), ...)
    "eth": (("src", "eth_src"), ("dst", "eth_dst")),
    "ipv4": (("src", "ip_src"), ("dst", "ip_dst"), ("tos", "nw_tos"), ("ttl", "ip_ttl")),
    "ipv6": (("src", "ipv6_src"), ("dst", "ipv6_dst"), ("label", "ipv6_label"),
             ("tclass", "nw_tos"), ("hlimit", "ip_ttl")),
    "tcp": (("src", "tcp_src"), ("dst", "tcp_dst")),
    "udp": (("src", "udp_src"), ("dst", "udp_dst")),
    "sctp": (("src", "sctp_src"), ("dst", "sctp_dst")),
    "arp": (("sip", "arp_spa"), ("tip", "arp_tpa"), ("op", "arp_op"),
            ("sha", "arp_sha"), ("tha", "arp_tha")),
    "nd": (("target", "nd_target"), ("sll", "nd_sll"), ("tll", "nd_tll")),
    "nd_ext": (("nd_reserved", "nd_reserved"), ("nd_options_type", "nd_options_type")),
    # ICMP type and code are set together (OVS commits the whole key, never masked).
    "icmp": (("type", "icmp_type"), ("code", "icmp_code")),
    "icmpv6": (("type", "icmpv6_type"), ("code", "icmpv6_code")),
    "mpls": (("label", "mpls_label"), ("tc", "mpls_tc"), ("ttl", "mpls_ttl")),
    "skb_mark": (("mark", "pkt_mark"),),
    "nsh": (("flags", "nsh_flags"), ("ttl", "nsh_ttl"), ("spi", "nsh_spi"), ("si", "nsh_si"),
            ("c1", "nsh_c1"), ("c2", "nsh_c2"), ("c3", "nsh_c3"), ("c4", "nsh_c4")),
}


@dataclass(frozen=True)
class Output:
    port: int                     # OpenFlow port number of the switch


@dataclass(frozen=True)
class SetFields:
    header: str                   # key of SET_HEADERS
    fields: tuple[tuple[str, int], ...]   # (registry field name, new value), sorted


@dataclass(frozen=True)
class PushVlan:
    tpid: int
    tci: int                      # full TCI with the CFI/present bit


@dataclass(frozen=True)
class PopVlan:
    pass


@dataclass(frozen=True)
class PushMpls:
    lse: int                      # label stack entry: label<<12 | tc<<9 | bos<<8 | ttl
    ethertype: int                # 0x8847 or 0x8848


@dataclass(frozen=True)
class PopMpls:
    ethertype: int                # ethertype of the payload after the pop


@dataclass(frozen=True)
class Meter:
    meter_id: int


@dataclass(frozen=True)
class Recirc:
    recirc_id: int


@dataclass(frozen=True)
class Ct:
    """Send the packet through conntrack (OVS's datapath ct action)."""

    zone: int = 0
    commit: bool = False
    nat: object | None = None                 # sbnet.flows.actions.Nat
    mark: tuple[int, int] | None = None       # (value, mask)
    label: tuple[int, int] | None = None
    force: bool = False


@dataclass(frozen=True)
class CtClear:
    pass


@dataclass(frozen=True)
class PushNsh:
    """Put an NSH header in front of the packet (OVS push_nsh); the result has no Ethernet."""

    flags: int
    ttl: int
    mdtype: int
    np: int
    spi: int
    si: int
    context: tuple[int, int, int, int] = (0, 0, 0, 0)


@dataclass(frozen=True)
class PushEth:
    src: int
    dst: int


@dataclass(frozen=True)
class PopEth:
    pass


@dataclass(frozen=True)
class PopNsh:
    pass


@dataclass(frozen=True)
class TunnelPush:
    """Encapsulate for a tunnel port and send on the underlay (OVS's tnl_push + output)."""

    ofport: int
    tun: tuple[tuple[str, int], ...] = ()     # flow-based fields: tun_id, tun_dst, tun_src...


@dataclass(frozen=True)
class Userspace:
    reason: str                   # e.g. "controller"


# An ODP action list is a tuple of the dataclasses above; the empty tuple drops.
OdpAction = (Output | SetFields | PushVlan | PopVlan | PushMpls | PopMpls | Meter | Recirc
             | Userspace | Ct | CtClear | TunnelPush | PushNsh | PushEth | PopEth | PopNsh)


def canonical(actions: tuple[OdpAction, ...]) -> list[tuple]:
    """Comparable plain tuples: the shared form for our actions and OVS's parsed ones.

    Forms: ("output", ofport); ("set", header, ((field, value), ...)) with
    registry field names and int values, sorted; ("push_vlan", tpid, tci);
    ("pop_vlan",); ("push_mpls", lse, ethertype); ("pop_mpls", ethertype);
    ("meter", id); ("recirc", id); ("userspace", reason).  [] means drop.
    """
    out: list[tuple] = []
    for a in actions:
        match a:
            case Output(port):
                out.append(("output", port))
            case SetFields(header, fields):
                out.append(("set", header, tuple(sorted(fields))))
            case PushVlan(tpid, tci):
                out.append(("push_vlan", tpid, tci))
            case PopVlan():
                out.append(("pop_vlan",))
            case PushMpls(lse, ethertype):
                out.append(("push_mpls", lse, ethertype))
            case PopMpls(ethertype):
                out.append(("pop_mpls", ethertype))
            case Meter(meter_id):
                out.append(("meter", meter_id))
            case Recirc(recirc_id):
                out.append(("recirc", recirc_id))
            case Userspace(reason):
                out.append(("userspace", reason))
            case Ct() | CtClear() | PushNsh() | PushEth() | PopEth() | PopNsh():
                # OVS's trace parser keeps these as raw text: compare the text.
                out.append(("raw", _format_one(a)))
            case TunnelPush(ofport, tun):
                out.append(("tnl_push", ofport, tun))
    return out


def _format_ct(a: Ct) -> str:
    parts = []
    if a.commit:
        parts.append("commit")
    if a.force:
        parts.append("force")
    if a.zone:
        parts.append(f"zone={a.zone}")
    if a.mark is not None:
        parts.append(f"mark={a.mark[0]:#x}/{a.mark[1]:#x}")
    if a.label is not None:
        parts.append(f"label={a.label[0]:#x}/{a.label[1]:#x}")
    if a.nat is not None:
        parts.append(str(a.nat))
    return f"ct({','.join(parts)})"


def _format_one(a) -> str:
    return format_actions((a,))


def format_actions(actions: tuple[OdpAction, ...]) -> str:
    """OVS-style text of a datapath action list ("drop" when empty)."""
    from sbnet.flows import fields as F

    if not actions:
        return "drop"
    parts = []
    for a in actions:
        match a:
            case Output(port):
                parts.append(str(port))
            case SetFields(header, fields):
                names = {reg: ovs for ovs, reg in SET_HEADERS[header]}
                inner = ",".join(f"{names[f]}={F.format_value(F.lookup(f), v)}" for f, v in fields)
                parts.append(f"set({header}({inner}))")
            case PushVlan(tpid, tci):
                parts.append(f"push_vlan(vid={tci & 0xFFF},pcp={tci >> 13}"
                             + (f",tpid=0x{tpid:x})" if tpid != 0x8100 else ")"))
            case PopVlan():
                parts.append("pop_vlan")
            case PushMpls(lse, ethertype):
                parts.append(f"push_mpls(label={lse >> 12},tc={(lse >> 9) & 7},"
                             f"ttl={lse & 0xFF},bos={(lse >> 8) & 1},eth_type=0x{ethertype:x})")
            case PopMpls(ethertype):
                parts.append(f"pop_mpls(eth_type=0x{ethertype:x})")
            case Meter(meter_id):
                parts.append(f"meter({meter_id})")
            case Recirc(recirc_id):
                parts.append(f"recirc(0x{recirc_id:x})")
            case Userspace(reason):
                parts.append(f"userspace({reason})")
            case Ct():
                parts.append(_format_ct(a))
            case CtClear():
                parts.append("ct_clear")
            case PushNsh(flags, ttl, mdtype, np_, spi, si, ctx):
                meta = (",".join(f"c{i + 1}={c:#x}" for i, c in enumerate(ctx))
                        if mdtype == 1 else "md2=0")
                parts.append(f"push_nsh(flags={flags},ttl={ttl},mdtype={mdtype},np={np_},"
                             f"spi={spi:#x},si={si},{meta})")
            case PushEth(src, dst):
                parts.append(f"push_eth(src={F.format_value(F.lookup('eth_src'), src)},"
                             f"dst={F.format_value(F.lookup('eth_dst'), dst)})")
            case PopEth():
                parts.append("pop_eth")
            case PopNsh():
                parts.append("pop_nsh()")
            case TunnelPush(ofport, tun):
                fields_ = "".join(f",{n}={v:#x}" for n, v in tun)
                parts.append(f"tnl_push(port={ofport}{fields_})")
    return ",".join(parts)
