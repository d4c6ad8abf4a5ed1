"""Placement: can a megaflow run on the NIC of a profile, and if not, which field, mask or action blocks it."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import cache

from sbnet.datapath import odp
from sbnet.flows import fields as F
from sbnet.offload.profile import MatchRule, Profile, action_name

_CT = F.SLOT_INDEX["ct_state"]
_RECIRC = F.SLOT_INDEX["recirc_id"]
_ETH_TYPE = F.SLOT_INDEX["eth_type"]
_PROTO = F.SLOT_INDEX["nw_proto"]
_VLAN_TCI = (F.SLOT_INDEX["vlan_tci"], F.SLOT_INDEX["vlan_tci2"])
_PROTO_TEXT = {F.IP_TCP: "tcp", F.IP_UDP: "udp", F.IP_SCTP: "sctp", F.IP_ICMP: "icmp",
               F.IP_ICMPV6: "icmpv6"}


@dataclass(frozen=True)
class Placement:
    """Where a megaflow runs and why, in words an operator can act on."""

    tier: str                 # "nic" or "software"
    reason: str
    # The NIC does the work for a packet of this megaflow only when the packet's
    # connection is in the NIC conntrack table (megaflows with ct() or after it).
    needs_ct: bool = False


def place(profile: Profile, mf) -> Placement:
    """Place one megaflow (anything with .slots, .mask, .value, .actions) for `profile`."""
    if not profile.offloads:
        return Placement("software", f"{profile.name}: no NIC tier, every megaflow runs on host cores")
    masks = dict(zip(mf.slots, mf.mask))
    vals = dict(zip(mf.slots, mf.value))
    for s in _VLAN_TCI:
        if masks.get(s, 0) & F.VLAN_CFI and not vals.get(s, 0) & F.VLAN_CFI:
            # "No VLAN header": OVS's datapath key has no 802.1Q header then, which the
            # NIC sees as an exact match on no VLAN (netdev-offload-tc: mask 0xffff, tci 0).
            masks[s] = 0xFFFF
    why = _match_blockers(profile, masks, vals) + _action_blockers(profile, mf.actions, masks, vals)
    why = list(dict.fromkeys(why))      # a 128-bit field spans two slots: say it once
    if why:
        return Placement("software", f"{profile.name}: " + "; ".join(why))
    needs_ct = vals.get(_RECIRC, 0) != 0 or any(action_name(a) == "ct" for a in mf.actions)
    reason = f"{profile.name}: offloadable to {profile.nic}"
    if needs_ct:
        reason += " (on the NIC for connections held in its conntrack table)"
    return Placement("nic", reason, needs_ct)


# -- match ---------------------------------------------------------------------

@cache
def _registry_by_slot() -> dict[int, tuple]:
    """Registry fields per slot: (field, bits it occupies in that slot)."""
    out: dict[int, list] = {}
    for fld in F.all_fields():
        for s, bits in fld.slot_masks(fld.max):
            if bits:
                out.setdefault(s, []).append((fld, bits))
    return {s: tuple(v) for s, v in out.items()}


@cache
def _prereq_bits(prereqs: tuple) -> tuple:
    """Each prerequisite as (slot, bits in the slot, shift, field max, values): looked up
    once per prerequisite set, not once per megaflow placed."""
    out = []
    for p in prereqs:
        fld = F.lookup(p.field)
        out.append((F.SLOT_INDEX[fld.slot], fld.max << fld.shift, fld.shift, fld.max,
                    frozenset(p.values)))
    return tuple(out)


def _prereqs_hold(prereqs, masks: dict, vals: dict) -> bool:
    for s, bits, shift, top, values in _prereq_bits(prereqs):
        if masks.get(s, 0) & bits != bits or (vals.get(s, 0) >> shift) & top not in values:
            return False
    return True


def _present(s: int, masks: dict, vals: dict) -> bool:
    """Whether some registry field of slot s exists in this megaflow's packets.  Bits of
    fields whose headers the packets lack (ipv6_src on IPv4, arp_sha on TCP) are not in
    the datapath key OVS gives the NIC, which serializes only the headers present; the
    classifier may still have consulted them for rules of other packet types."""
    fields = _registry_by_slot().get(s, ())
    return not fields or any(_prereqs_hold(f.prereqs, masks, vals) for f, _ in fields)


def _field_name(s: int, bits: int, masks: dict, vals: dict) -> str:
    """The registry field a megaflow's `bits` of slot `s` belong to (the slot name if none)."""
    best, score = F.SLOTS[s], None
    for fld, fbits in _registry_by_slot().get(s, ()):
        if not fbits & bits or not _prereqs_hold(fld.prereqs, masks, vals):
            continue
        # Prefer the field whose bits are exactly the blocked ones, then the one
        # covering most of them with fewest extra bits.
        key = (fbits != bits, -(fbits & bits).bit_count(), (fbits & ~bits).bit_count())
        if score is None or key < score:
            best, score = fld.name, key
    return best


def _hex(v: int, width: int) -> str:
    return f"0x{v:0{(width + 3) // 4}x}"


def _rule_part(rule: MatchRule, masks: dict, vals: dict) -> tuple[int, int]:
    """(mask, value) of the megaflow on `rule`'s field, shifted down to the field's bits."""
    m = v = 0
    for s, bits, shift in rule.bits:       # 128-bit fields: hi slot first, then lo
        m = (m << 64) | ((masks.get(s, 0) & bits) >> shift)
        v = (v << 64) | ((vals.get(s, 0) & bits) >> shift)
    return m, v


class _Applicable:
    """What a profile's match rules make of megaflows whose prerequisite slots (eth_type,
    nw_proto...) hold the same masks and values: the rules that apply, the bits they cover
    per slot, and which slots' fields exist in such packets.  Megaflows of one packet type
    share it, so placing one costs no pass over the profile's rules and the registry."""

    def __init__(self, profile: Profile, masks: dict, vals: dict) -> None:
        rules = [r for r in profile.match.values() if _prereqs_hold(r.prereqs, masks, vals)]
        self.covered: dict[int, int] = {}     # slot -> bits the applicable rules cover
        for r in rules:
            for rs, bits, _ in r.bits:
                self.covered[rs] = self.covered.get(rs, 0) | bits
        # The rules whose policy can refuse a mask (any mask passes "any" and "ignored").
        self.rules = [r for r in rules if r.policy not in ("any", "ignored")]
        self.present: dict[int, bool] = {}    # filled as slots are met

    def has(self, s: int, masks: dict, vals: dict) -> bool:
        got = self.present.get(s)
        if got is None:
            got = self.present[s] = _present(s, masks, vals)
        return got


# id(profile) -> (profile, its prerequisite slots, _Applicable per prerequisite signature)
_APPLICABLE: dict[int, tuple[Profile, tuple, dict]] = {}


def _applicable(profile: Profile, masks: dict, vals: dict) -> _Applicable:
    entry = _APPLICABLE.get(id(profile))
    if entry is None or entry[0] is not profile:
        bits: dict[int, int] = {}       # prerequisite slot -> the bits prerequisites read
        prereqs = [r.prereqs for r in profile.match.values()]
        prereqs += [f.prereqs for flds in _registry_by_slot().values() for f, _ in flds]
        for pr in prereqs:
            for s, b, *_ in _prereq_bits(pr):
                bits[s] = bits.get(s, 0) | b
        if len(_APPLICABLE) >= 64:     # profiles loaded again and again (tests): keep few
            _APPLICABLE.clear()
        entry = _APPLICABLE[id(profile)] = (profile, tuple(sorted(bits.items())), {})
    _, slots, by_sig = entry
    sig = tuple((masks.get(s, 0) & b, vals.get(s, 0) & b) for s, b in slots)
    got = by_sig.get(sig)
    if got is None:
        if len(by_sig) >= 4096:       # packet types are few; bound it all the same
            by_sig.clear()
        got = by_sig[sig] = _Applicable(profile, masks, vals)
    return got


def _match_blockers(profile: Profile, masks: dict, vals: dict) -> list[str]:
    why: list[str] = []
    app = _applicable(profile, masks, vals)
    rules, covered = app.rules, app.covered
    for s, m in sorted(masks.items()):
        if not m or not app.has(s, masks, vals):
            continue
        left = m & ~covered.get(s, 0)
        if left:
            name = _field_name(s, left, masks, vals)
            refusal = next((w for pat, w in profile.refused_match if fnmatch.fnmatch(name, pat)), None)
            why.append(f"match on {name} is not offloadable ({refusal})" if refusal else
                       f"match on {name} is not supported by {profile.nic}")
    for r in rules:
        fm, fv = _rule_part(r, masks, vals)
        if fm:
            msg = _policy_blocker(profile, r, fm, fv)
            if msg:
                why.append(msg)
    for rw in profile.refuse_when:
        if all(masks.get(s, 0) & m == m and vals.get(s, 0) & m == v for s, v, m in rw.conds):
            why.append(rw.reason)
    if masks.get(_CT) and profile.ct_states:
        m, v = masks[_CT], vals.get(_CT, 0)
        if not any(st & m == v for st in profile.ct_states):
            ct = F.lookup("ct_state")
            held = ", ".join(F.format_value(ct, st, st) for st in profile.ct_states if st)
            why.append(f"match ct_state={F.format_value(ct, v, m)} stays in software "
                       f"(the NIC conntrack table gives only {held})")
    return why


def _policy_blocker(profile: Profile, r: MatchRule, fm: int, fv: int) -> str | None:
    full = (1 << r.width) - 1
    p = r.policy
    if p in ("any", "ignored"):
        return None
    if p == "exact":
        ok, accepts = fm == full, "an exact match only"
    elif p == "exact_zero":
        if fm == full and fv == 0:
            return None
        return f"match on {r.name}={_hex(fv, r.width)} is not offloadable ({profile.nic} accepts only {r.name}=0)"
    elif p == "prefix":
        inv = full ^ fm
        ok, accepts = inv & (inv + 1) == 0, "prefix masks only"
    elif p == "subset":
        ok = fm & ~r.subset == 0
        accepts = f"mask bits {_hex(r.subset, r.width)} only"
        if r.name == "ct_state":
            accepts = f"ct_state flags {F.format_value(F.lookup('ct_state'), r.subset, r.subset)} only"
    else:
        ok = fm in p
        accepts = "masks " + ", ".join(_hex(x, r.width) for x in p) + " only"
    if ok:
        return None
    return f"mask {_hex(fm, r.width)} on {r.name} not offloadable ({profile.nic} accepts {accepts})"


# -- actions -------------------------------------------------------------------

def _text(a) -> str:
    try:
        return odp.format_actions((a,)) or action_name(a)
    except (KeyError, LookupError, AttributeError, TypeError, ValueError):
        # e.g. set() of a header the printer does not know yet (tunnel)
        if isinstance(a, odp.SetFields):
            return f"set({a.header}(" + ",".join(f"{f}={v:#x}" for f, v in a.fields) + "))"
        return action_name(a)


class _Text:
    """An action's text, made when a reason is formatted with it."""

    __slots__ = ("a",)

    def __init__(self, a) -> None:
        self.a = a

    def __format__(self, spec: str) -> str:
        return format(_text(self.a), spec)


def _action_blockers(profile: Profile, actions: tuple, masks: dict, vals: dict) -> list[str]:
    why: list[str] = []
    eth_type = vals.get(_ETH_TYPE) if masks.get(_ETH_TYPE) == 0xFFFF else None
    depth = 1 if eth_type in (F.ETH_MPLS, F.ETH_MPLS_MC) else 0
    for a in actions:
        name = action_name(a)
        text = _Text(a)          # printed only when a blocker names it
        rule = profile.actions.get(name)
        if rule is None:
            because = profile.refused_actions.get(name, f"not supported by {profile.nic}")
            why.append(f"action {text} is not offloadable ({because})")
            continue
        for attr, because in rule.refuse.items():
            if getattr(a, attr, None) not in (None, False, 0, (), ""):
                why.append(f"action {text} is not offloadable ({because})")
        if rule.headers is not None and name == "set":
            allowed = rule.headers.get(a.header)
            if allowed is None:
                why.append(f"action {text} is not offloadable ({profile.nic} cannot rewrite "
                           f"the {a.header} header)")
            else:
                for f, _ in a.fields:
                    if F.lookup(f).name not in allowed:
                        why.append(f"action {text} is not offloadable ({profile.nic} cannot "
                                   f"rewrite {f})")
        if name == "push_mpls":
            depth += 1
            if rule.max_labels is not None and depth > rule.max_labels:
                why.append(f"action {text} is not offloadable ({profile.nic} handles "
                           f"{rule.max_labels} MPLS label(s); this would be label {depth})")
        elif name == "pop_mpls":
            depth = max(0, depth - 1)
        if name == "ct" and rule.protocols is not None:
            tracked = "/".join(_PROTO_TEXT.get(p, str(p)) for p in sorted(rule.protocols))
            if eth_type is not None and eth_type not in (F.ETH_IP, F.ETH_IPV6):
                why.append(f"action {text} is not offloadable (NIC conntrack tracks {tracked} "
                           f"over IP only; this megaflow has eth_type=0x{eth_type:04x})")
            elif masks.get(_PROTO, 0) == 0xFF and vals.get(_PROTO) not in rule.protocols:
                proto = vals.get(_PROTO)
                why.append(f"action {text} is not offloadable (NIC conntrack tracks {tracked} "
                           f"only; this megaflow has ip_proto={_PROTO_TEXT.get(proto, proto)})")
    return why
