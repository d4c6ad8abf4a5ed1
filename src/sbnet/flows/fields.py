"""The field registry: every matchable packet and metadata field, declared once."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum


class Kind(Enum):
    """How a field's value is written and read in ovs-ofctl syntax."""

    INT = "int"          # decimal, or 0x hex
    HEX = "hex"          # printed in hex
    MAC = "mac"
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    PORT = "port"        # OpenFlow port number or name (LOCAL, IN_PORT ...)
    CT_STATE = "ct_state"
    TCP_FLAGS = "tcp_flags"
    FRAG = "frag"        # ip_frag keywords


# Key slots: the flow key is a fixed vector of 64-bit words, one per slot.  The
# datapath stores a batch's keys as a (slots x packets) uint64 array, and
# megaflow masks are vectors of the same shape.  Several fields may share a
# slot (vlan_vid and vlan_pcp live in vlan_tci, as in OVS's struct flow), and
# ARP/ND fields reuse the IP slots the way OVS does, so a megaflow mask reads
# the same as OVS's.
SLOTS: tuple[str, ...] = (
    "recirc_id", "dp_hash", "in_port", "conj_id",
    "eth_src", "eth_dst", "eth_type",
    "vlan_tci", "vlan_tpid", "vlan_tci2", "vlan_tpid2",
    "mpls_lse0", "mpls_lse1", "mpls_lse2",
    "nw_src", "nw_dst", "ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo",
    "ipv6_label", "nw_proto", "nw_tos", "nw_ttl", "nw_frag",
    "tp_src", "tp_dst", "tcp_flags",
    "arp_sha", "arp_tha", "nd_target_hi", "nd_target_lo", "nd_reserved", "nd_options_type",
    "tun_id", "tun_src", "tun_dst", "tun_ipv6_src_hi", "tun_ipv6_src_lo",
    "tun_ipv6_dst_hi", "tun_ipv6_dst_lo", "tun_flags",
    "metadata",
    "reg0", "reg1", "reg2", "reg3", "reg4", "reg5", "reg6", "reg7",
    "reg8", "reg9", "reg10", "reg11", "reg12", "reg13", "reg14", "reg15",
    "pkt_mark",
    "ct_state", "ct_zone", "ct_mark", "ct_label_hi", "ct_label_lo",
    "ct_nw_src", "ct_nw_dst", "ct_ipv6_src_hi", "ct_ipv6_src_lo",
    "ct_ipv6_dst_hi", "ct_ipv6_dst_lo", "ct_nw_proto", "ct_tp_src", "ct_tp_dst",
    "nsh_flags", "nsh_ttl", "nsh_mdtype", "nsh_np", "nsh_spi", "nsh_si",
    "nsh_c1", "nsh_c2", "nsh_c3", "nsh_c4",
    "tun_metadata0", "tun_metadata1", "tun_metadata2", "tun_metadata3",
    "tun_metadata4", "tun_metadata5", "tun_metadata6", "tun_metadata7",
)
SLOT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SLOTS)}
N_SLOTS = len(SLOTS)

# Ethertypes and IP protocol numbers: the one definition every package imports.
ETH_IP, ETH_IPV6, ETH_ARP, ETH_RARP = 0x0800, 0x86DD, 0x0806, 0x8035
ETH_MPLS, ETH_MPLS_MC, ETH_NSH = 0x8847, 0x8848, 0x894F
ETH_VLAN, ETH_QINQ = 0x8100, 0x88A8
ETH_TEB = 0x6558               # Transparent Ethernet Bridging: the GRE/Geneve payload type
IP_ICMP, IP_TCP, IP_UDP, IP_SCTP, IP_ICMPV6 = 1, 6, 17, 132, 58
IP_IGMP, IP_GRE = 2, 47
VLAN_CFI = 0x1000


@dataclass(frozen=True)
class Prereq:
    """A field's prerequisite: `field` must equal one of `values` (exact match)."""

    field: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class Field:
    """One match field: where it lives in the key and how it is written."""

    name: str
    width: int                      # bits
    kind: Kind
    maskable: bool
    slot: str | None                # storage slot; None for 128-bit fields
    shift: int = 0                  # bit offset inside the slot
    prereqs: tuple[Prereq, ...] = ()  # all must hold (each an OR of values)
    aliases: tuple[str, ...] = ()
    hi_lo: tuple[str, str] | None = None  # 128-bit fields: (hi slot, lo slot)
    writable: bool = True           # may set_field/load/move write it
    ofctl_name: str | None = None   # name ovs-ofctl prints, when different
    # Slot bits a match on this field implies (value, mask), e.g. dl_vlan and
    # vlan_pcp imply the VLAN-present bit of vlan_tci, as in OVS.
    implied: tuple[int, int] | None = None

    @property
    def max(self) -> int:
        return (1 << self.width) - 1

    def slot_masks(self, mask: int) -> list[tuple[int, int]]:
        """The (slot index, slot mask) pairs a field mask covers."""
        if self.hi_lo:
            hi, lo = self.hi_lo
            return [(SLOT_INDEX[hi], (mask >> 64) & 0xFFFFFFFFFFFFFFFF),
                    (SLOT_INDEX[lo], mask & 0xFFFFFFFFFFFFFFFF)]
        return [(SLOT_INDEX[self.slot], (mask & self.max) << self.shift)]

    def slot_values(self, value: int) -> list[tuple[int, int]]:
        return self.slot_masks(value)

    def read(self, key) -> int:
        """This field's value from a key (any sequence indexed by slot)."""
        if self.hi_lo:
            hi, lo = self.hi_lo
            return (int(key[SLOT_INDEX[hi]]) << 64) | int(key[SLOT_INDEX[lo]])
        return (int(key[SLOT_INDEX[self.slot]]) >> self.shift) & self.max

    def write(self, key, value: int) -> None:
        """Store `value` into a mutable key (list of ints indexed by slot)."""
        if self.hi_lo:
            hi, lo = self.hi_lo
            key[SLOT_INDEX[hi]] = (value >> 64) & 0xFFFFFFFFFFFFFFFF
            key[SLOT_INDEX[lo]] = value & 0xFFFFFFFFFFFFFFFF
            return
        i = SLOT_INDEX[self.slot]
        m = self.max << self.shift
        key[i] = (int(key[i]) & ~m) | ((value & self.max) << self.shift)


_REGISTRY: dict[str, Field] = {}
_ALIASES: dict[str, str] = {}

_L3 = (ETH_IP, ETH_IPV6)
P_IP = Prereq("eth_type", (ETH_IP,))
P_IPV6 = Prereq("eth_type", (ETH_IPV6,))
P_ANY_IP = Prereq("eth_type", _L3)
P_ARP = Prereq("eth_type", (ETH_ARP, ETH_RARP))
P_MPLS = Prereq("eth_type", (ETH_MPLS, ETH_MPLS_MC))
P_NSH = Prereq("eth_type", (ETH_NSH,))


def _f(name, width, kind, maskable, slot=None, shift=0, prereqs=(), aliases=(),
       hi_lo=None, writable=True, ofctl_name=None, implied=None):
    fld = Field(name, width, kind, maskable, slot, shift, tuple(prereqs),
                tuple(aliases), hi_lo, writable, ofctl_name, implied)
    _REGISTRY[name] = fld
    for alias in aliases:
        _ALIASES[alias] = name
    return fld


def _declare() -> None:
    _f("recirc_id", 32, Kind.HEX, False, "recirc_id", writable=False)
    _f("dp_hash", 32, Kind.HEX, True, "dp_hash", writable=False)
    _f("in_port", 32, Kind.PORT, False, "in_port")
    _f("conj_id", 32, Kind.INT, False, "conj_id", writable=False)
    _f("eth_src", 48, Kind.MAC, True, "eth_src", aliases=("dl_src",))
    _f("eth_dst", 48, Kind.MAC, True, "eth_dst", aliases=("dl_dst",))
    _f("eth_type", 16, Kind.HEX, False, "eth_type", aliases=("dl_type",), writable=False)
    # vlan_tci carries the CFI/present bit (0x1000) as in OVS.
    _f("vlan_tci", 16, Kind.HEX, True, "vlan_tci")
    # vlan_vid is OXM's 13-bit VID with the present bit (0x1000); dl_vlan is the
    # 12-bit VID that implies a tag is present.
    _f("vlan_vid", 13, Kind.HEX, True, "vlan_tci", 0)
    _f("dl_vlan", 12, Kind.INT, False, "vlan_tci", 0, implied=(VLAN_CFI, VLAN_CFI))
    _f("vlan_pcp", 3, Kind.INT, False, "vlan_tci", 13, aliases=("dl_vlan_pcp",),
       implied=(VLAN_CFI, VLAN_CFI))
    _f("mpls_label", 20, Kind.INT, False, "mpls_lse0", 12, prereqs=[P_MPLS])
    _f("mpls_tc", 3, Kind.INT, False, "mpls_lse0", 9, prereqs=[P_MPLS])
    _f("mpls_bos", 1, Kind.INT, False, "mpls_lse0", 8, prereqs=[P_MPLS], writable=False)
    _f("mpls_ttl", 8, Kind.INT, False, "mpls_lse0", 0, prereqs=[P_MPLS])
    _f("ip_src", 32, Kind.IPV4, True, "nw_src", prereqs=[P_IP], aliases=("nw_src",))
    _f("ip_dst", 32, Kind.IPV4, True, "nw_dst", prereqs=[P_IP], aliases=("nw_dst",))
    _f("ipv6_src", 128, Kind.IPV6, True, None, prereqs=[P_IPV6],
       hi_lo=("ipv6_src_hi", "ipv6_src_lo"))
    _f("ipv6_dst", 128, Kind.IPV6, True, None, prereqs=[P_IPV6],
       hi_lo=("ipv6_dst_hi", "ipv6_dst_lo"))
    _f("ipv6_label", 20, Kind.HEX, True, "ipv6_label", prereqs=[P_IPV6])
    _f("ip_proto", 8, Kind.INT, False, "nw_proto", prereqs=[P_ANY_IP],
       aliases=("nw_proto",), writable=False)
    _f("ip_dscp", 6, Kind.INT, False, "nw_tos", 2, prereqs=[P_ANY_IP])
    _f("ip_ecn", 2, Kind.INT, False, "nw_tos", 0, prereqs=[P_ANY_IP], aliases=("nw_ecn",))
    _f("nw_tos", 8, Kind.INT, False, "nw_tos", 0, prereqs=[P_ANY_IP])
    _f("ip_ttl", 8, Kind.INT, False, "nw_ttl", prereqs=[P_ANY_IP], aliases=("nw_ttl",),
       ofctl_name="nw_ttl")
    _f("ip_frag", 2, Kind.FRAG, True, "nw_frag", prereqs=[P_ANY_IP],
       aliases=("nw_frag",), writable=False)
    _f("arp_op", 16, Kind.INT, False, "nw_proto", prereqs=[P_ARP])
    _f("arp_spa", 32, Kind.IPV4, True, "nw_src", prereqs=[P_ARP])
    _f("arp_tpa", 32, Kind.IPV4, True, "nw_dst", prereqs=[P_ARP])
    _f("arp_sha", 48, Kind.MAC, True, "arp_sha", prereqs=[P_ARP])
    _f("arp_tha", 48, Kind.MAC, True, "arp_tha", prereqs=[P_ARP])
    # OVS keeps TCP, UDP and SCTP ports in one tp_src/tp_dst pair; tp_src/tp_dst
    # as written are resolved to the right one by the parser from ip_proto.
    for proto, num in (("tcp", IP_TCP), ("udp", IP_UDP), ("sctp", IP_SCTP)):
        pre = [P_ANY_IP, Prereq("ip_proto", (num,))]
        _f(f"{proto}_src", 16, Kind.INT, True, "tp_src", prereqs=pre)
        _f(f"{proto}_dst", 16, Kind.INT, True, "tp_dst", prereqs=pre)
    _f("tcp_flags", 12, Kind.TCP_FLAGS, True, "tcp_flags",
       prereqs=[P_ANY_IP, Prereq("ip_proto", (IP_TCP,))], writable=False)
    p_icmp = [P_IP, Prereq("ip_proto", (IP_ICMP,))]
    p_icmp6 = [P_IPV6, Prereq("ip_proto", (IP_ICMPV6,))]
    _f("icmp_type", 8, Kind.INT, False, "tp_src", prereqs=p_icmp, aliases=("icmpv4_type",))
    _f("icmp_code", 8, Kind.INT, False, "tp_dst", prereqs=p_icmp, aliases=("icmpv4_code",))
    _f("icmpv6_type", 8, Kind.INT, False, "tp_src", prereqs=p_icmp6)
    _f("icmpv6_code", 8, Kind.INT, False, "tp_dst", prereqs=p_icmp6)
    p_nd = p_icmp6 + [Prereq("icmpv6_type", (135, 136))]
    _f("nd_target", 128, Kind.IPV6, True, None, prereqs=p_nd,
       hi_lo=("nd_target_hi", "nd_target_lo"))
    _f("nd_sll", 48, Kind.MAC, True, "arp_sha", prereqs=p_icmp6 + [Prereq("icmpv6_type", (135,))])
    _f("nd_tll", 48, Kind.MAC, True, "arp_tha", prereqs=p_icmp6 + [Prereq("icmpv6_type", (136,))])
    # The 32 bits after the checksum (an NA's R, S and O flags) and the type of the first
    # link-layer address option: writable, so an NS can be turned into an NA in flows.
    _f("nd_reserved", 32, Kind.INT, False, "nd_reserved", prereqs=p_nd)
    _f("nd_options_type", 8, Kind.INT, False, "nd_options_type", prereqs=p_nd)
    _f("tun_id", 64, Kind.HEX, True, "tun_id", aliases=("tunnel_id",))
    _f("tun_src", 32, Kind.IPV4, True, "tun_src")
    _f("tun_dst", 32, Kind.IPV4, True, "tun_dst")
    _f("tun_ipv6_src", 128, Kind.IPV6, True, None,
       hi_lo=("tun_ipv6_src_hi", "tun_ipv6_src_lo"))
    _f("tun_ipv6_dst", 128, Kind.IPV6, True, None,
       hi_lo=("tun_ipv6_dst_hi", "tun_ipv6_dst_lo"))
    # Geneve options, mapped to fields by the switch's TLV map as OVS's tun_metadata are
    # (here at most 8 bytes each, 8 of them).
    for i in range(8):
        _f(f"tun_metadata{i}", 64, Kind.HEX, True, f"tun_metadata{i}")
    _f("metadata", 64, Kind.HEX, True, "metadata")
    for i in range(16):
        _f(f"reg{i}", 32, Kind.HEX, True, f"reg{i}")
    _f("pkt_mark", 32, Kind.HEX, True, "pkt_mark")
    _f("ct_state", 32, Kind.CT_STATE, True, "ct_state", writable=False)
    _f("ct_zone", 16, Kind.INT, False, "ct_zone", writable=False)
    _f("ct_mark", 32, Kind.HEX, True, "ct_mark")
    _f("ct_label", 128, Kind.HEX, True, None, hi_lo=("ct_label_hi", "ct_label_lo"))
    p_ct_ip = [P_IP]
    p_ct_ip6 = [P_IPV6]
    _f("ct_nw_src", 32, Kind.IPV4, True, "ct_nw_src", prereqs=p_ct_ip, writable=False)
    _f("ct_nw_dst", 32, Kind.IPV4, True, "ct_nw_dst", prereqs=p_ct_ip, writable=False)
    _f("ct_ipv6_src", 128, Kind.IPV6, True, None, prereqs=p_ct_ip6, writable=False,
       hi_lo=("ct_ipv6_src_hi", "ct_ipv6_src_lo"))
    _f("ct_ipv6_dst", 128, Kind.IPV6, True, None, prereqs=p_ct_ip6, writable=False,
       hi_lo=("ct_ipv6_dst_hi", "ct_ipv6_dst_lo"))
    _f("ct_nw_proto", 8, Kind.INT, False, "ct_nw_proto", prereqs=[P_ANY_IP], writable=False)
    _f("ct_tp_src", 16, Kind.INT, True, "ct_tp_src", prereqs=[P_ANY_IP], writable=False)
    _f("ct_tp_dst", 16, Kind.INT, True, "ct_tp_dst", prereqs=[P_ANY_IP], writable=False)
    _f("nsh_flags", 8, Kind.INT, True, "nsh_flags", prereqs=[P_NSH])
    _f("nsh_ttl", 8, Kind.INT, False, "nsh_ttl", prereqs=[P_NSH])
    _f("nsh_mdtype", 8, Kind.INT, False, "nsh_mdtype", prereqs=[P_NSH], writable=False)
    _f("nsh_np", 8, Kind.INT, False, "nsh_np", prereqs=[P_NSH], writable=False)
    _f("nsh_spi", 24, Kind.HEX, False, "nsh_spi", prereqs=[P_NSH])
    _f("nsh_si", 8, Kind.INT, False, "nsh_si", prereqs=[P_NSH])
    for i in range(1, 5):
        _f(f"nsh_c{i}", 32, Kind.HEX, True, f"nsh_c{i}", prereqs=[P_NSH])


_declare()

# NXM/OXM names that ovs-ofctl accepts in load/move/output subfields.
_NXM = {
    "NXM_OF_IN_PORT": "in_port", "NXM_OF_ETH_SRC": "eth_src", "NXM_OF_ETH_DST": "eth_dst",
    "NXM_OF_ETH_TYPE": "eth_type", "NXM_OF_VLAN_TCI": "vlan_tci", "NXM_OF_IP_SRC": "ip_src",
    "NXM_OF_IP_DST": "ip_dst", "NXM_OF_IP_PROTO": "ip_proto", "NXM_OF_IP_TOS": "nw_tos",
    "NXM_NX_IP_TTL": "ip_ttl", "NXM_OF_TCP_SRC": "tcp_src", "NXM_OF_TCP_DST": "tcp_dst",
    "NXM_OF_UDP_SRC": "udp_src", "NXM_OF_UDP_DST": "udp_dst", "NXM_OF_ARP_OP": "arp_op",
    "NXM_OF_ARP_SPA": "arp_spa", "NXM_OF_ARP_TPA": "arp_tpa", "NXM_NX_ARP_SHA": "arp_sha",
    "NXM_NX_ARP_THA": "arp_tha", "NXM_NX_IPV6_SRC": "ipv6_src", "NXM_NX_IPV6_DST": "ipv6_dst",
    "NXM_NX_ND_TARGET": "nd_target", "NXM_NX_ND_SLL": "nd_sll", "NXM_NX_ND_TLL": "nd_tll",
    "NXM_NX_TUN_ID": "tun_id", "NXM_NX_TUN_IPV4_SRC": "tun_src", "NXM_NX_TUN_IPV4_DST": "tun_dst",
    "OXM_OF_METADATA": "metadata", "NXM_NX_PKT_MARK": "pkt_mark", "NXM_NX_CT_MARK": "ct_mark",
    "NXM_NX_CT_LABEL": "ct_label", "NXM_NX_CT_ZONE": "ct_zone", "NXM_NX_CT_STATE": "ct_state",
    "OXM_OF_MPLS_LABEL": "mpls_label", "OXM_OF_VLAN_VID": "vlan_vid",
}
_NXM.update({f"NXM_NX_REG{i}": f"reg{i}" for i in range(16)})
_ALIASES.update({k.lower(): v for k, v in _NXM.items()})

# Protocol shorthands accepted in matches (ovs-ofctl "tcp", "arp", ...), each a
# set of exact field values.
PROTOCOLS: dict[str, tuple[tuple[str, int], ...]] = {
    "ip": (("eth_type", ETH_IP),),
    "ipv6": (("eth_type", ETH_IPV6),),
    "arp": (("eth_type", ETH_ARP),),
    "rarp": (("eth_type", ETH_RARP),),
    "icmp": (("eth_type", ETH_IP), ("ip_proto", IP_ICMP)),
    "icmp6": (("eth_type", ETH_IPV6), ("ip_proto", IP_ICMPV6)),
    "tcp": (("eth_type", ETH_IP), ("ip_proto", IP_TCP)),
    "tcp6": (("eth_type", ETH_IPV6), ("ip_proto", IP_TCP)),
    "udp": (("eth_type", ETH_IP), ("ip_proto", IP_UDP)),
    "udp6": (("eth_type", ETH_IPV6), ("ip_proto", IP_UDP)),
    "sctp": (("eth_type", ETH_IP), ("ip_proto", IP_SCTP)),
    "sctp6": (("eth_type", ETH_IPV6), ("ip_proto", IP_SCTP)),
    "mpls": (("eth_type", ETH_MPLS),),
    "mplsm": (("eth_type", ETH_MPLS_MC),),
}

CT_STATE_BITS: dict[str, int] = {
    "new": 0x01, "est": 0x02, "rel": 0x04, "rpl": 0x08,
    "inv": 0x10, "trk": 0x20, "snat": 0x40, "dnat": 0x80,
}
TCP_FLAG_BITS: dict[str, int] = {
    "fin": 0x001, "syn": 0x002, "rst": 0x004, "psh": 0x008, "ack": 0x010,
    "urg": 0x020, "ece": 0x040, "cwr": 0x080, "ns": 0x100,
}
FRAG_VALUES: dict[str, tuple[int, int]] = {
    # keyword -> (value, mask) over bits "is fragment" (1) and "later fragment" (2)
    "no": (0, 1), "yes": (1, 1), "first": (1, 3), "later": (3, 3), "not_later": (0, 2),
}

# Named OpenFlow ports (OpenFlow 1.0 numbering widened to 32 bits as OVS does).
OFPP_IN_PORT = 0xFFFFFFF8
OFPP_TABLE = 0xFFFFFFF9
OFPP_NORMAL = 0xFFFFFFFA
OFPP_FLOOD = 0xFFFFFFFB
OFPP_ALL = 0xFFFFFFFC
OFPP_CONTROLLER = 0xFFFFFFFD
OFPP_LOCAL = 0xFFFFFFFE
OFPP_NONE = 0xFFFFFFFF
PORT_NAMES: dict[str, int] = {
    "in_port": OFPP_IN_PORT, "table": OFPP_TABLE, "normal": OFPP_NORMAL,
    "flood": OFPP_FLOOD, "all": OFPP_ALL, "controller": OFPP_CONTROLLER,
    "local": OFPP_LOCAL, "none": OFPP_NONE, "any": OFPP_NONE,
}


def lookup(name: str) -> Field:
    """The field called `name` (or an alias of it); KeyError if unknown."""
    name = name.lower()
    return _REGISTRY[_ALIASES.get(name, name)]


def exists(name: str) -> bool:
    name = name.lower()
    return name in _REGISTRY or name in _ALIASES


def all_fields() -> list[Field]:
    return list(_REGISTRY.values())


def parse_value(fld: Field, text: str) -> tuple[int, int | None]:
    """Parse `value[/mask]` for `fld`; returns (value, mask or None). ValueError on bad text."""
    text = text.strip()
    if fld.kind is Kind.CT_STATE:
        return _parse_flag_word(text, CT_STATE_BITS)
    if fld.kind is Kind.TCP_FLAGS and text[:1] in "+-":
        return _parse_flag_word(text, TCP_FLAG_BITS)
    if fld.kind is Kind.FRAG:
        if text not in FRAG_VALUES:
            raise ValueError(f"ip_frag must be one of {', '.join(FRAG_VALUES)}")
        return FRAG_VALUES[text]
    if fld.kind is Kind.IPV4 and "/" in text:
        addr, _, plen = text.partition("/")
        if "." not in plen:
            net = ipaddress.IPv4Network(f"{addr}/{plen}", strict=False)
            return int(ipaddress.IPv4Address(addr)), int(net.netmask)
    if fld.kind is Kind.IPV6 and "/" in text:
        addr, _, plen = text.partition("/")
        if ":" not in plen:
            net = ipaddress.IPv6Network(f"{addr}/{plen}", strict=False)
            return int(ipaddress.IPv6Address(addr)), int(net.netmask)
    val_text, slash, mask_text = text.partition("/")
    value = _parse_scalar(fld, val_text)
    mask = _parse_scalar(fld, mask_text) if slash else None
    if value > fld.max or (mask is not None and mask > fld.max):
        raise ValueError(f"value too large for {fld.width}-bit field {fld.name}")
    if mask is not None and not fld.maskable:
        if mask != fld.max:
            raise ValueError(f"field {fld.name} does not support masking")
        mask = None
    return value, mask


def _parse_scalar(fld: Field, text: str) -> int:
    if not text:
        raise ValueError(f"missing value for {fld.name}")
    if fld.kind is Kind.MAC:
        parts = text.split(":")
        if len(parts) != 6 or not all(1 <= len(p) <= 2 for p in parts):
            raise ValueError(f"bad Ethernet address {text!r}")
        return int("".join(p.zfill(2) for p in parts), 16)
    if fld.kind is Kind.IPV4 and "." in text:
        return int(ipaddress.IPv4Address(text))
    if fld.kind is Kind.IPV6 and ":" in text:
        return int(ipaddress.IPv6Address(text))
    if fld.kind is Kind.PORT and text.lower() in PORT_NAMES:
        return PORT_NAMES[text.lower()]
    return int(text, 0)


def _parse_flag_word(text: str, bits: dict[str, int]) -> tuple[int, int]:
    """`+trk-new+est` style flags, or a number[/mask]."""
    if text[:1] not in "+-":
        v, _, m = text.partition("/")
        return int(v, 0), (int(m, 0) if m else None)
    value = mask = 0
    i = 0
    while i < len(text):
        sign = text[i]
        if sign not in "+-":
            raise ValueError(f"expected + or - at {text[i:]!r}")
        j = i + 1
        while j < len(text) and text[j] not in "+-":
            j += 1
        word = text[i + 1:j]
        if word not in bits:
            raise ValueError(f"unknown flag {word!r} (known: {', '.join(bits)})")
        mask |= bits[word]
        if sign == "+":
            value |= bits[word]
        i = j
    return value, mask


def format_value(fld: Field, value: int, mask: int | None = None) -> str:
    """ovs-ofctl text for `value[/mask]` of `fld`."""
    if fld.kind is Kind.CT_STATE or (fld.kind is Kind.TCP_FLAGS and mask is not None):
        table = CT_STATE_BITS if fld.kind is Kind.CT_STATE else TCP_FLAG_BITS
        m = fld.max if mask is None else mask
        if all(b in table.values() for b in _bits(m)):
            return "".join(("+" if value & bit else "-") + name
                           for name, bit in table.items() if m & bit)
    if fld.kind is Kind.FRAG:
        m = 3 if mask is None else mask
        for word, (v, wm) in FRAG_VALUES.items():
            if (v, wm) == (value, m):
                return word
    if fld.kind is Kind.IPV4:
        text = str(ipaddress.IPv4Address(value))
        if mask is not None and mask != fld.max:
            return f"{text}/{_prefix_or_mask(mask, 32, lambda m: str(ipaddress.IPv4Address(m)))}"
        return text
    if fld.kind is Kind.IPV6:
        text = str(ipaddress.IPv6Address(value))
        if mask is not None and mask != fld.max:
            return f"{text}/{_prefix_or_mask(mask, 128, lambda m: str(ipaddress.IPv6Address(m)))}"
        return text
    if fld.kind is Kind.MAC:
        text = _mac(value)
        return text if mask is None or mask == fld.max else f"{text}/{_mac(mask)}"
    hexy = fld.kind in (Kind.HEX, Kind.TCP_FLAGS) or mask is not None
    text = hex(value) if hexy else str(value)
    if mask is not None and mask != fld.max:
        text += f"/{hex(mask)}"
    return text


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low
        mask ^= low


def _prefix_or_mask(mask: int, width: int, fmt) -> str:
    inv = ((1 << width) - 1) ^ mask
    if inv & (inv + 1) == 0:  # contiguous prefix
        return str(width - inv.bit_length())
    return fmt(mask)


def _mac(value: int) -> str:
    return ":".join(f"{(value >> s) & 0xFF:02x}" for s in range(40, -8, -8))
