"""Parsers turning ofproto/trace text into sbnet's comparable datapath-action and megaflow forms.

Observed OVS 3.1 formats (dummy datapath, `ofproto/trace`, -O OpenFlow15 tables):

Datapath actions
- Outputs are datapath port numbers ("2,3"); map them with `dpif/show` (LOCAL is
  dp port 100 on the dummy datapath, OpenFlow 65534).  No actions: "drop".
- output:in_port / in_port -> the input's dp port.  flood and all -> every port
  but the input, LOCAL included, in hash order (e.g. "4,100,2,3"), not sorted.
- controller -> "userspace(pid=0,controller(reason=1,dont_send=0,continuation=0,
  recirc_id=N,rule_cookie=0,controller_id=0,max_len=65535))".
- set_field / mod_* commit one set() per header, naming only the fields whose
  value changes: "set(eth(src=00:00:00:00:00:aa,dst=00:00:00:00:00:bb))".  A set
  to the value the packet already has is omitted (but the field is still in the
  megaflow).  Two sets of one field collapse into the last.  Sets are committed
  lazily, just before the output that needs them: "2,set(eth(src=..)),3,2".
- Masked (partial) sets print value/mask: "set(ipv4(src=10.1.0.0/255.255.0.0))",
  "set(tcp(dst=256/0xff00))"; mod_nw_tos and ip_dscp -> "set(ipv4(tos=0x10/0xfc))",
  ip_ecn -> "set(ipv4(tos=0x3/0x3))"; IPv6 "set(ipv6(dst=..,tclass=0x8/0xfc))".
- dec_ttl -> "set(ipv4(ttl=63))" / "set(ipv6(...,hlimit=63))"; ipv6_label ->
  "label=0x12345".  TCP over IPv6 still uses "set(tcp(...))".
- ARP: "set(arp(sip=..,tip=..,op=2,sha=..,tha=..))".  pkt_mark: "set(skb_mark(0x5))".
- Registers, metadata and tunnel metadata without a tunnel port emit nothing.
- VLAN: push_vlan -> "push_vlan(vid=100,pcp=0)" (tpid only when not 0x8100:
  "push_vlan(tpid=0x88a8,vid=200,pcp=0)").  Changing VID or PCP of an existing
  tag is "pop_vlan,push_vlan(vid=30,pcp=2)", never a set().  Without a VLAN
  match, ovs-ofctl turns mod_vlan_vid into push_vlan+set_field (OF1.0 meaning),
  so a tagged packet gets a second tag.  pop_vlan needs vlan_tci=0x1000/0x1000
  in the match under OpenFlow 1.1+ (ovs-ofctl rejects it otherwise).
- MPLS: "push_mpls(label=0,tc=0,ttl=64,bos=1,eth_type=0x8847)" (ttl copied from
  IP), "pop_mpls(eth_type=0x800)", and any label/tc/ttl change prints the whole
  LSE: "set(mpls(label=77,tc=0,ttl=63,bos=1))".
- Groups: all -> the buckets' actions inline; indirect and fast_failover -> the
  chosen bucket inline; select with default method -> "hash(sym_l4(0)),recirc(0xN)",
  with selection_method=dp_hash -> "hash(l4(0)),recirc(0xN)" (the trace stops
  there: the bucket depends on dp_hash); selection_method=hash,fields(..) ->
  the chosen bucket inline, and the hashed fields appear in the megaflow.
- meter:1 -> "meter(0)": the datapath meter id, not the OpenFlow one.
- ct(commit,zone=5) -> "ct(commit,zone=5)"; ct(table=3) -> "ct(zone=5),recirc(0x1)"
  and the trace continues in a second section (see `trace_passes`).
- clone(...) is flattened on the dummy datapath: "set(..),2,set(<restore>),3".
- sample(...) without IPFIX/sFlow configured prints nothing.  resubmit/goto_table
  leave no trace in the actions.

Megaflow
- Comma-separated; starts e.g. "pkt_mark=0/0xff,recirc_id=0,ct_mark=0,eth,ip,in_port=1,...".
  "eth" is packet_type=ethernet; "ip", "tcp6", "arp", "mpls", "icmp6"... are
  eth_type (+ nw_proto) shorthands.  dl_type=/nw_proto= appear only without one.
- Aliases: dl_src, dl_dst, nw_src, nw_dst, nw_tos (the DSCP bits, mask 0xfc),
  nw_ecn (mask 0x3), nw_ttl, nw_frag (no/first/later/...), tp_src/tp_dst (any L4
  protocol), icmp_type/icmp_code (also for ICMPv6), arp_*, nd_*, mpls_*.
- VLAN: "dl_vlan=10,dl_vlan_pcp=2" (each implies the present bit), inner tag
  "dl_vlan1=10,dl_vlan_pcp1=0", other masks "vlan_tci=0x1000/0x1000", "vlan_tci=0x0000".
- Masks: IPv4/IPv6 CIDR prefix "/16" or full mask "/255.0.255.0"; MACs "/ff:ff:ff:00:00:00";
  integers "0x0/0xfff0"; icmp_type prints "0x8/0xff" even when exact.  Absent = exact.
- ct_state "+new+trk" (masked flags), flow lines use "new|trk".
"""

from __future__ import annotations

from sbnet.datapath.odp import SET_HEADERS
from sbnet.flows import fields as F


class TraceParseError(ValueError):
    """OVS text this module does not understand; differential tests must not guess."""


# Datapath actions kept as ("raw", text): visible to tests, never compared as equal by accident.
RAW_ACTIONS = frozenset({
    "hash", "ct", "ct_clear", "tnl_push", "tnl_pop", "clone", "sample", "trunc",
    "check_pkt_len", "push_eth", "pop_eth", "push_nsh", "pop_nsh", "lb_output",
    "add_mpls", "dec_ttl",
})

# Per header: OVS name -> registry field.
_SET_NAMES = {hdr: dict(pairs) for hdr, pairs in SET_HEADERS.items()}
# Fields OVS prints in a set() that a set never changes (the MPLS BoS bit).
_SET_IGNORED = {("mpls", "bos")}


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise TraceParseError(f"unbalanced ')' in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise TraceParseError(f"unbalanced '(' in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _call(token: str) -> tuple[str, str | None]:
    """'name(args)' -> (name, args); 'name' -> (name, None)."""
    i = token.find("(")
    if i < 0:
        return token, None
    if not token.endswith(")"):
        raise TraceParseError(f"bad action {token!r}")
    return token[:i], token[i + 1:-1]


def _kv(args: str) -> dict[str, str]:
    out = {}
    for part in split_top(args):
        k, eq, v = part.partition("=")
        if not eq:
            raise TraceParseError(f"expected key=value, got {part!r}")
        out[k] = v
    return out


def _int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise TraceParseError(f"bad number {text!r}") from None


def _value(fld: F.Field, text: str) -> int:
    try:
        if fld.kind in (F.Kind.IPV4, F.Kind.IPV6, F.Kind.MAC):
            return F.parse_value(fld, text)[0]
        return int(text, 0)
    except ValueError as e:
        raise TraceParseError(f"bad value {text!r} for {fld.name}: {e}") from None


def _value_mask(fld: F.Field, text: str, width: int | None = None) -> tuple[int, int]:
    """'v' or 'v/m' (prefix lengths for addresses) -> (value, mask)."""
    width = width or fld.width
    full = (1 << width) - 1
    v, slash, m = text.partition("/")
    value = _value(fld, v)
    if not slash:
        return value, full
    if fld.kind in (F.Kind.IPV4, F.Kind.IPV6) and m.isdigit():
        plen = int(m)
        mask = full ^ ((1 << (width - plen)) - 1)
    else:
        mask = _value(fld, m)
    return value, mask


# -- datapath actions ------------------------------------------------------

def parse_datapath_actions(text: str, port_map: dict[int, int],
                           with_masks: bool = False) -> list[tuple]:
    """OVS "Datapath actions:" text -> `sbnet.datapath.odp.canonical` form.

    `port_map` maps datapath port -> OpenFlow port (`DummyOVS.dpif_port_map()`).
    Masked sets keep value & mask for each field whose mask is nonzero; with
    `with_masks` each set field is (field, value, mask) instead.
    """
    text = text.strip()
    if text.startswith("Datapath actions:"):
        text = text[len("Datapath actions:"):].strip()
    if text == "drop":
        return []
    if not text:
        raise TraceParseError("empty datapath actions")
    out: list[tuple] = []
    for token in split_top(text):
        try:
            out.append(_parse_action(token, port_map, with_masks))
        except KeyError as e:
            raise TraceParseError(f"missing {e} in {token!r}") from None
    return out


def _parse_action(token: str, port_map: dict[int, int], with_masks: bool) -> tuple:
    if token.isdigit():
        dp = int(token)
        if dp not in port_map:
            raise TraceParseError(f"datapath port {dp} not in port map {port_map}")
        return ("output", port_map[dp])
    name, args = _call(token)
    if name in RAW_ACTIONS:
        return ("raw", token)
    if args is None:
        if name == "pop_vlan":
            return ("pop_vlan",)
        raise TraceParseError(f"unknown datapath action {token!r}")
    if name == "set":
        return _parse_set(args, token, with_masks)
    if name == "push_vlan":
        kv = _kv(args)
        tpid = _int(kv.pop("tpid", "0x8100"))
        tci = (_int(kv.pop("vid")) & 0xFFF) | (_int(kv.pop("pcp")) << 13)
        if kv.pop("cfi", "1") != "0":
            tci |= F.VLAN_CFI
        _no_rest(kv, token)
        return ("push_vlan", tpid, tci)
    if name == "push_mpls":
        kv = _kv(args)
        lse = (_int(kv.pop("label")) << 12 | _int(kv.pop("tc")) << 9
               | _int(kv.pop("bos")) << 8 | _int(kv.pop("ttl")))
        eth = _int(kv.pop("eth_type"))
        _no_rest(kv, token)
        return ("push_mpls", lse, eth)
    if name == "pop_mpls":
        kv = _kv(args)
        eth = _int(kv.pop("eth_type"))
        _no_rest(kv, token)
        return ("pop_mpls", eth)
    if name == "meter":
        return ("meter", _int(args))
    if name == "recirc":
        return ("recirc", _int(args))
    if name == "userspace":
        for part in split_top(args):
            reason, inner = _call(part)
            if "=" not in reason:
                return ("userspace", reason)
        raise TraceParseError(f"userspace action without a reason: {token!r}")
    raise TraceParseError(f"unknown datapath action {token!r}")


def _no_rest(kv: dict, token: str) -> None:
    if kv:
        raise TraceParseError(f"unexpected {sorted(kv)} in {token!r}")


def _parse_set(args: str, token: str, with_masks: bool) -> tuple:
    header, inner = _call(args)
    if inner is None:
        raise TraceParseError(f"bad set action {token!r}")
    if header == "tunnel":
        return ("raw", token)
    if header == "skb_mark":
        v, _, m = inner.partition("/")
        value, mask = _int(v), (_int(m) if m else 0xFFFFFFFF)
        item = ("pkt_mark", value & mask) + ((mask,) if with_masks else ())
        return ("set", "skb_mark", (item,))
    names = _SET_NAMES.get(header)
    if names is None:
        raise TraceParseError(f"unknown set header {header!r} in {token!r}")
    items = []
    for key, text in _kv(inner).items():
        if (header, key) in _SET_IGNORED:
            continue
        if key not in names:
            raise TraceParseError(f"unknown field {key!r} of {header} in {token!r}")
        fld = F.lookup(names[key])
        value, mask = _value_mask(fld, text)
        if mask == 0:
            continue
        items.append((fld.name, value & mask) + ((mask,) if with_masks else ()))
    return ("set", header, tuple(sorted(items)))


# -- megaflows -------------------------------------------------------------

# OVS megaflow names that are not registry names or aliases.
_MF_NAMES = {"nw_ecn": "ip_ecn", "nw_frag": "ip_frag", "nw_ttl": "ip_ttl"}
# Pseudo field for the inner (second) VLAN tag: value/mask over its 16-bit TCI.
INNER_VLAN = "vlan_tci2"


def parse_megaflow(text: str) -> dict[str, tuple[int, int]]:
    """OVS "Megaflow:" text -> {registry field: (value, mask)}; absent fields are wildcards.

    VLAN items (dl_vlan, dl_vlan_pcp, vlan_tci) are merged into "vlan_tci" over the
    16-bit TCI including the present bit; the inner tag's become "vlan_tci2".
    nw_tos is the DSCP part (mask 0xfc of field nw_tos), nw_ecn becomes ip_ecn.
    tp_src/tp_dst/icmp_type/icmp_code resolve by eth_type and ip_proto.
    """
    text = text.strip()
    if text.startswith("Megaflow:"):
        text = text[len("Megaflow:"):].strip()
    out: dict[str, tuple[int, int]] = {}

    def put(name: str, value: int, mask: int) -> None:
        old_v, old_m = out.get(name, (0, 0))
        if old_m & mask and (old_v ^ value) & old_m & mask:
            raise TraceParseError(f"conflicting values for {name} in {text!r}")
        out[name] = ((old_v & ~mask) | (value & mask), old_m | mask)

    pending: list[tuple[str, str]] = []
    for token in split_top(text):
        key, eq, val = token.partition("=")
        if not eq:
            if key == "eth":
                continue          # packet_type=ethernet, the only kind sbnet has
            if key not in F.PROTOCOLS:
                raise TraceParseError(f"unknown protocol word {key!r} in megaflow")
            for fname, fval in F.PROTOCOLS[key]:
                put(fname, fval, F.lookup(fname).max)
            continue
        pending.append((key, val))

    for key, val in pending:
        if key in ("dl_vlan", "dl_vlan1"):
            put("vlan_tci" if key == "dl_vlan" else INNER_VLAN,
                F.VLAN_CFI | _int(val), F.VLAN_CFI | 0xFFF)
        elif key in ("dl_vlan_pcp", "dl_vlan_pcp1"):
            put("vlan_tci" if key == "dl_vlan_pcp" else INNER_VLAN,
                F.VLAN_CFI | _int(val) << 13, F.VLAN_CFI | 0xE000)
        elif key in ("vlan_tci", "vlan_tci1"):
            v, _, m = val.partition("/")
            put("vlan_tci" if key == "vlan_tci" else INNER_VLAN, _int(v),
                _int(m) if m else 0xFFFF)
        elif key == "nw_tos":
            v, _, m = val.partition("/")
            mask = _int(m) if m else 0xFC
            put("nw_tos", _int(v) & mask, mask)
        elif key == "packet_type":
            if val.replace(" ", "") not in ("(0,0)", "(0,0x0)"):
                raise TraceParseError(f"non-Ethernet packet_type {val!r}")
        else:
            name, (value, mask) = _mf_field(key, val, out)
            put(name, value, mask)
    return out


# Deeper MPLS label stack entries: megaflow-only names, kept as raw slots.
RAW_SLOTS = ("mpls_lse1", "mpls_lse2")


def _mf_field(key: str, val: str, seen: dict[str, tuple[int, int]]) -> tuple[str, tuple[int, int]]:
    if key in RAW_SLOTS:
        v, _, m = val.partition("/")
        return key, (int(v, 0), int(m, 0) if m else 0xFFFFFFFF)
    name = _MF_NAMES.get(key, key)
    if key in ("tp_src", "tp_dst", "icmp_type", "icmp_code"):
        name = _l4_name(key, seen)
    try:
        fld = F.lookup(name)
    except KeyError:
        raise TraceParseError(f"unknown megaflow field {key!r}") from None
    if fld.kind is F.Kind.FRAG:
        if val not in F.FRAG_VALUES:
            raise TraceParseError(f"bad nw_frag {val!r}")
        return fld.name, F.FRAG_VALUES[val]
    if fld.kind in (F.Kind.CT_STATE, F.Kind.TCP_FLAGS) and not val[:1].isdigit():
        bits = F.CT_STATE_BITS if fld.kind is F.Kind.CT_STATE else F.TCP_FLAG_BITS
        if "|" in val or val in bits:
            value = 0
            for word in val.split("|"):
                if word not in bits:
                    raise TraceParseError(f"unknown flag {word!r} in {key}={val}")
                value |= bits[word]
            return fld.name, (value, fld.max)
        try:
            return fld.name, F.parse_value(fld, val)
        except ValueError as e:
            raise TraceParseError(str(e)) from None
    return fld.name, _value_mask(fld, val)


def _l4_name(key: str, seen: dict[str, tuple[int, int]]) -> str:
    eth = seen.get("eth_type", (None, 0))[0]
    proto = seen.get("ip_proto", (None, 0))[0]
    if key.startswith("icmp_"):
        return ("icmpv6_" if eth == F.ETH_IPV6 else "icmp_") + key[5:]
    prefix = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp"}.get(proto)
    if prefix is None:
        raise TraceParseError(f"{key} with ip_proto {proto} in megaflow")
    return f"{prefix}_{key[3:]}"


def megaflow_slot_masks(parsed: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Per key slot, the OR of the masks of every parsed field living in it (zero masks omitted)."""
    out: dict[str, int] = {}
    for name, (_, mask) in parsed.items():
        if name == INNER_VLAN:
            pairs = [(F.SLOT_INDEX[INNER_VLAN], mask & 0xFFFF)]
        elif name in RAW_SLOTS:
            pairs = [(F.SLOT_INDEX[name], mask)]
        else:
            fld = F.lookup(name)
            pairs = fld.slot_masks(mask)
            if fld.implied and mask:
                pairs.append((F.SLOT_INDEX[fld.slot], fld.implied[1]))
        for idx, m in pairs:
            if m:
                slot = F.SLOTS[idx]
                out[slot] = out.get(slot, 0) | m
    return out


def megaflow_slot_values(parsed: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Per key slot, the masked value bits of the parsed fields (pairs with `megaflow_slot_masks`)."""
    out: dict[str, int] = {}
    for name, (value, mask) in parsed.items():
        if name == INNER_VLAN:
            pairs = [(F.SLOT_INDEX[INNER_VLAN], value & mask)]
        elif name in RAW_SLOTS:
            pairs = [(F.SLOT_INDEX[name], value & mask)]
        else:
            fld = F.lookup(name)
            pairs = fld.slot_values(value & mask)
            if fld.implied and mask:
                pairs.append((F.SLOT_INDEX[fld.slot], fld.implied[0]))
        for idx, v in pairs:
            slot = F.SLOTS[idx]
            out[slot] = out.get(slot, 0) | v
    return out
