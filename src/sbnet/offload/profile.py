"""NIC capability profiles: YAML data files, loaded and checked against the field registry."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from sbnet.flows import fields as F

BUILTIN_DIR = Path(__file__).parent / "profiles"

# Datapath action names as Open vSwitch's datapath spells them (OVS_ACTION_ATTR_*,
# as ovs-dpctl prints them).  Profiles may name any of these, including actions
# our switch does not emit yet (tunnels, NSH): the vocabulary is OVS's, not ours.
OVS_ACTIONS = frozenset({
    "output", "userspace", "set", "push_vlan", "pop_vlan", "sample", "recirc", "hash",
    "push_mpls", "pop_mpls", "add_mpls", "ct", "ct_clear", "trunc", "push_eth", "pop_eth",
    "push_nsh", "pop_nsh", "meter", "clone", "check_pkt_len", "dec_ttl", "drop",
    "tnl_push", "tnl_pop", "psample", "lb_output",
})
# odp class names whose snake_case differs from OVS's action name.
_ACTION_ALIASES = {"set_fields": "set", "tunnel_push": "tnl_push", "tunnel_pop": "tnl_pop",
                   "encap_nsh": "push_nsh", "decap_nsh": "pop_nsh"}
# Headers a datapath set() may rewrite, as OVS names its keys (OVS_KEY_ATTR_*).  Plain
# data, as the action names: the offload tests check that our datapath's actions and set()
# headers are all among them.
SET_HEADER_NAMES = frozenset({
    "eth", "vlan", "mpls", "ipv4", "ipv6", "tcp", "udp", "sctp", "icmp", "icmpv6", "arp",
    "nd", "nd_ext", "skb_mark", "tunnel", "nsh",
})

POLICIES = ("any", "exact", "prefix", "exact_zero", "ignored")
_TOP_KEYS = {"name", "description", "sources", "tier", "nic", "match", "refused_match",
             "refuse_when", "actions", "refused_actions", "conntrack", "capacity",
             "performance", "notes", "binding"}
_ACTION_OPTIONS = {"headers", "max_labels", "protocols", "refuse"}
_PROTO_NAMES = {"tcp": F.IP_TCP, "udp": F.IP_UDP, "sctp": F.IP_SCTP, "icmp": F.IP_ICMP,
                "icmpv6": F.IP_ICMPV6}


def action_name(action) -> str:
    """OVS's name for a datapath action (object or class): `odp_name` if the class has one, else its
    class name in snake_case (PushVlan -> push_vlan, SetFields -> set)."""
    return _class_action_name(action if isinstance(action, type) else type(action))


@cache
def _class_action_name(cls: type) -> str:
    # Once per class: placing a megaflow names each of its actions.
    name = getattr(cls, "odp_name", None)
    if name:
        return name
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()
    return _ACTION_ALIASES.get(snake, snake)


class ProfileError(ValueError):
    """A malformed profile: which file, which key, and why."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file, self.key, self.reason = file, key, reason


@dataclass(frozen=True)
class MatchRule:
    """What the NIC accepts for one field (or whole slot): bits per slot and a mask policy."""

    name: str                               # registry field or slot name
    policy: str | tuple[int, ...]           # a POLICIES word, or the allowed masks
    subset: int | None = None               # policy "subset": mask bits the NIC can match
    prereqs: tuple = ()                     # registry prerequisites (disambiguate shared slots)
    bits: tuple[tuple[int, int, int], ...] = ()   # (slot index, slot bits, shift in slot)
    width: int = 64


@dataclass(frozen=True)
class RefuseWhen:
    """A match combination the NIC refuses whatever its fields: (slot, value, mask) all hold."""

    conds: tuple[tuple[int, int, int], ...]
    reason: str


@dataclass(frozen=True)
class ActionRule:
    name: str
    headers: dict[str, frozenset[str]] | None = None   # set: header -> rewritable fields
    max_labels: int | None = None                      # push_mpls: MPLS stack depth
    protocols: frozenset[int] | None = None            # ct: IP protocols the NIC tracks
    refuse: dict[str, str] = field(default_factory=dict)   # attribute -> why it blocks


# Port features a binding can need (sbnet.offload.binding derives them from the model).
FEATURES = ("flat", "vlan", "vxlan", "gre", "geneve", "port_security", "security_groups",
            "qos_bandwidth", "qos_minimum_bandwidth", "qos_dscp", "trunk", "port_chain")
FEATURE_TIERS = ("nic", "software", "refused")


@dataclass(frozen=True)
class BindingCaps:
    """The profile's `binding` section: how a vnic_type direct port binds, feature by feature."""

    direct: str | None                        # vif_type of a bound direct port; None: refused
    refused: str = ""                         # why direct ports cannot bind at all
    vif_details: dict = field(default_factory=dict)
    features: dict[str, tuple[str, str]] = field(default_factory=dict)   # feature -> (tier, why)


@dataclass(frozen=True)
class Profile:
    """One NIC class: what it can match and do, how much it holds, how fast it is."""

    name: str
    description: str
    sources: tuple[str, ...]
    tier: str                                 # "nic" or "software"
    file: str = "<builtin>"
    nic: str = ""                             # how reasons name the NIC ("TC flower")
    match: dict[str, MatchRule] = field(default_factory=dict)
    refused_match: tuple[tuple[str, str], ...] = ()   # (field glob, why)
    refuse_when: tuple[RefuseWhen, ...] = ()
    actions: dict[str, ActionRule] = field(default_factory=dict)
    refused_actions: dict[str, str] = field(default_factory=dict)
    ct_states: tuple[int, ...] = ()           # ct_state values NIC conntrack gives packets
    ct_capacity: int = 0                      # connections the NIC conntrack table holds
    flows: int = 0                            # NIC flow table capacity (megaflows)
    insertion_rate: float = 0.0               # flow insertions per second
    mpps: float = 0.0                         # NIC forwarding capacity
    latency_us: float = 0.0                   # NIC per-packet latency
    software_latency_us: float = 0.0          # host path latency on top of measured CPU time
    binding: "BindingCaps | None" = None      # how vnic_type direct ports bind on such a host

    @property
    def offloads(self) -> bool:
        return self.tier == "nic"


# -- loading -------------------------------------------------------------------

def builtin_profiles() -> dict[str, Profile]:
    """The shipped profiles (sriov, software, smartnic) by name."""
    return load_profiles(BUILTIN_DIR)


def load_profiles(*paths: str | Path) -> dict[str, Profile]:
    """Profiles from files or directories (every *.yaml inside), by name.

    Later paths override earlier ones of the same name, so a user directory given
    after BUILTIN_DIR replaces a shipped profile."""
    out: dict[str, Profile] = {}
    for p in paths:
        p = Path(p)
        files = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml")) if p.is_dir() else [p]
        for f in files:
            prof = load_profile(f)
            out[prof.name] = prof
    return out


def load_profile(path: str | Path) -> Profile:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ProfileError(str(path), "-", f"cannot read: {e.strerror or e}") from None
    return parse_profile(text, str(path))


def parse_profile(text: str, file: str = "<string>") -> Profile:
    """Parse and check one profile; ProfileError names the file, the key and the reason."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProfileError(file, "-", f"not valid YAML: {e}") from None
    return _Checker(file).profile(doc)


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, reason: str):
        raise ProfileError(self.file, key, reason)

    # small typed readers
    def mapping(self, doc, key: str) -> dict:
        if not isinstance(doc, dict):
            self.fail(key, f"must be a mapping, got {type(doc).__name__}")
        return doc

    def string(self, doc: dict, key: str, path: str, required: bool = True) -> str:
        if key not in doc:
            if required:
                self.fail(path, "missing required key")
            return ""
        v = doc[key]
        if not isinstance(v, str) or not v.strip():
            self.fail(path, "must be a non-empty string")
        return v

    def number(self, doc: dict, key: str, path: str, integer: bool = False,
               minimum: float = 0.0, strict: bool = True) -> float:
        if key not in doc:
            self.fail(path, "missing required key")
        v = doc[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
            self.fail(path, f"must be {'an integer' if integer else 'a number'}, got {v!r}")
        if v < minimum or (strict and v == minimum):
            self.fail(path, f"must be {'>' if strict else '>='} {minimum:g}, got {v!r}")
        return v

    def profile(self, doc) -> Profile:
        doc = self.mapping(doc, "-")
        unknown = sorted(set(doc) - _TOP_KEYS)
        if unknown:
            self.fail(unknown[0], f"unknown key (known: {', '.join(sorted(_TOP_KEYS))})")
        name = self.string(doc, "name", "name")
        description = self.string(doc, "description", "description")
        sources = doc.get("sources")
        if not isinstance(sources, list) or not sources or \
                not all(isinstance(s, str) and s.strip() for s in sources):
            self.fail("sources", "must be a non-empty list of strings (URLs or document names)")
        tier = self.string(doc, "tier", "tier")
        if tier not in ("nic", "software"):
            self.fail("tier", f"must be 'nic' or 'software', got {tier!r}")
        perf = self.mapping(doc.get("performance", {}), "performance")
        sw_lat = (self.number(perf, "software_latency_us", "performance.software_latency_us",
                              strict=False) if "software_latency_us" in perf else 0.0)
        base = {"name": name, "description": description, "sources": tuple(sources),
                "tier": tier, "file": self.file, "software_latency_us": float(sw_lat)}
        if "binding" in doc:
            base["binding"] = self.binding(doc["binding"])
        if tier == "software":
            extra = sorted(set(doc) & {"match", "actions", "capacity", "conntrack"})
            if extra:
                self.fail(extra[0], "a software profile has no NIC tier: remove this key")
            return Profile(**base)
        nic = self.string(doc, "nic", "nic")
        if "match" not in doc:
            self.fail("match", "missing required key")
        match = {k: self.match_rule(k, v) for k, v in self.mapping(doc["match"], "match").items()}
        refused_match = tuple(self.refused_match(doc.get("refused_match", {})))
        refuse_when = tuple(self.refuse_when(doc.get("refuse_when", [])))
        if "actions" not in doc:
            self.fail("actions", "missing required key")
        known = OVS_ACTIONS       # every action our datapath emits is one of them
        actions = {}
        for k, v in self.mapping(doc["actions"], "actions").items():
            if k not in known:
                self.fail(f"actions.{k}", f"unknown action name (known: {', '.join(sorted(known))})")
            actions[k] = self.action_rule(k, {} if v is None else v)
        refused_actions = {}
        for k, v in self.mapping(doc.get("refused_actions", {}), "refused_actions").items():
            if k not in known:
                self.fail(f"refused_actions.{k}", "unknown action name")
            if k in actions:
                self.fail(f"refused_actions.{k}", "also listed under actions")
            if not isinstance(v, str) or not v.strip():
                self.fail(f"refused_actions.{k}", "the reason must be a non-empty string")
            refused_actions[k] = v
        cap = self.mapping(doc.get("capacity"), "capacity") if "capacity" in doc else \
            self.fail("capacity", "missing required key")
        flows = self.number(cap, "flows", "capacity.flows", integer=True)
        rate = self.number(cap, "insertion_rate", "capacity.insertion_rate")
        mpps = self.number(perf, "mpps", "performance.mpps")
        latency = self.number(perf, "latency_us", "performance.latency_us", strict=False)
        ct_states: tuple[int, ...] = ()
        ct_capacity = 0
        if "ct" in actions or "conntrack" in doc:
            ct = self.mapping(doc.get("conntrack"), "conntrack") if "conntrack" in doc else \
                self.fail("conntrack", "required when actions lists ct")
            ct_capacity = int(self.number(ct, "capacity", "conntrack.capacity", integer=True,
                                          strict=False))
            states = ct.get("states")
            if not isinstance(states, list) or not states:
                self.fail("conntrack.states", "must be a non-empty list of ct_state words")
            ct_states = tuple(self.ct_state(s, f"conntrack.states[{i}]") for i, s in enumerate(states))
        return Profile(**base, nic=nic, match=match, refused_match=refused_match,
                       refuse_when=refuse_when, actions=actions, refused_actions=refused_actions,
                       ct_states=ct_states, ct_capacity=ct_capacity, flows=int(flows),
                       insertion_rate=float(rate), mpps=float(mpps), latency_us=float(latency))

    def ct_state(self, text, path: str) -> int:
        try:
            value, _ = F.parse_value(F.lookup("ct_state"), str(text))
        except ValueError as e:
            self.fail(path, f"bad ct_state {text!r}: {e}")
        return value

    def match_rule(self, name: str, spec) -> MatchRule:
        path = f"match.{name}"
        if F.exists(name):
            fld = F.lookup(name)
            bits = tuple((s, m, 0 if fld.hi_lo else fld.shift) for s, m in fld.slot_masks(fld.max))
            prereqs, width = fld.prereqs, fld.width
        elif name in F.SLOT_INDEX:
            bits = ((F.SLOT_INDEX[name], (1 << 64) - 1, 0),)
            prereqs, width = (), 64
        else:
            self.fail(path, "unknown field (not in sbnet.flows.fields, neither a field nor a key slot)")
        subset = None
        if isinstance(spec, str):
            if spec not in POLICIES:
                self.fail(path, f"unknown mask policy {spec!r} (known: {', '.join(POLICIES)}, "
                                "a list of masks, or {subset: MASK})")
            policy: str | tuple[int, ...] = spec
        elif isinstance(spec, list) and spec:
            for m in spec:
                if isinstance(m, bool) or not isinstance(m, int) or not 0 < m < (1 << width):
                    self.fail(path, f"mask {m!r} is not a nonzero {width}-bit integer")
            policy = tuple(spec)
        elif isinstance(spec, dict) and set(spec) == {"subset"}:
            v = spec["subset"]
            if isinstance(v, str) and F.exists(name):
                try:
                    v, _ = F.parse_value(F.lookup(name), v)
                except ValueError as e:
                    self.fail(path, f"bad subset {spec['subset']!r}: {e}")
            if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < (1 << width):
                self.fail(path, f"subset {spec['subset']!r} is not a nonzero {width}-bit mask")
            policy, subset = "subset", v
        else:
            self.fail(path, f"bad mask policy {spec!r} (known: {', '.join(POLICIES)}, "
                            "a list of masks, or {subset: MASK})")
        return MatchRule(name, policy, subset, prereqs, bits, width)

    def refused_match(self, doc):
        for pattern, why in self.mapping(doc, "refused_match").items():
            path = f"refused_match.{pattern}"
            names = [f.name for f in F.all_fields()] + list(F.SLOTS)
            if not fnmatch.filter(names, str(pattern).lower()):
                self.fail(path, "names no field or key slot")
            if not isinstance(why, str) or not why.strip():
                self.fail(path, "the reason must be a non-empty string")
            yield str(pattern).lower(), why

    def refuse_when(self, doc):
        if not isinstance(doc, list):
            self.fail("refuse_when", "must be a list of {match: {...}, reason: ...}")
        for i, item in enumerate(doc):
            path = f"refuse_when[{i}]"
            item = self.mapping(item, path)
            reason = self.string(item, "reason", f"{path}.reason")
            conds = []
            for fname, text in self.mapping(item.get("match"), f"{path}.match").items():
                if not F.exists(fname):
                    self.fail(f"{path}.match.{fname}", "unknown field")
                fld = F.lookup(fname)
                try:
                    value, mask = F.parse_value(fld, str(text))
                except ValueError as e:
                    self.fail(f"{path}.match.{fname}", f"bad value {text!r}: {e}")
                mask = fld.max if mask is None else mask
                for (s, m), (_, v) in zip(fld.slot_masks(mask), fld.slot_values(value & mask)):
                    conds.append((s, v, m))
            if not conds:
                self.fail(f"{path}.match", "must name at least one field")
            yield RefuseWhen(tuple(conds), reason)

    def action_rule(self, name: str, spec) -> ActionRule:
        path = f"actions.{name}"
        spec = self.mapping(spec, path)
        unknown = sorted(set(spec) - _ACTION_OPTIONS)
        if unknown:
            self.fail(f"{path}.{unknown[0]}", f"unknown option (known: {', '.join(sorted(_ACTION_OPTIONS))})")
        headers = None
        if "headers" in spec:
            if name != "set":
                self.fail(f"{path}.headers", "only set takes headers")
            headers = {}
            for h, flds in self.mapping(spec["headers"], f"{path}.headers").items():
                if h not in SET_HEADER_NAMES:
                    self.fail(f"{path}.headers.{h}", f"unknown header (known: {', '.join(sorted(SET_HEADER_NAMES))})")
                if not isinstance(flds, list) or not flds:
                    self.fail(f"{path}.headers.{h}", "must be a non-empty list of field names")
                for f in flds:
                    if not isinstance(f, str) or not F.exists(f):
                        self.fail(f"{path}.headers.{h}", f"unknown field {f!r}")
                headers[h] = frozenset(F.lookup(f).name for f in flds)
        max_labels = None
        if "max_labels" in spec:
            max_labels = int(self.number(spec, "max_labels", f"{path}.max_labels", integer=True))
        protocols = None
        if "protocols" in spec:
            ps = spec["protocols"]
            if not isinstance(ps, list) or not ps:
                self.fail(f"{path}.protocols", "must be a non-empty list")
            out = set()
            for p in ps:
                if isinstance(p, str) and p.lower() in _PROTO_NAMES:
                    out.add(_PROTO_NAMES[p.lower()])
                elif isinstance(p, int) and not isinstance(p, bool) and 0 <= p <= 255:
                    out.add(p)
                else:
                    self.fail(f"{path}.protocols", f"bad IP protocol {p!r}")
            protocols = frozenset(out)
        refuse = {}
        for attr, why in self.mapping(spec.get("refuse", {}), f"{path}.refuse").items():
            if not isinstance(why, str) or not why.strip():
                self.fail(f"{path}.refuse.{attr}", "the reason must be a non-empty string")
            refuse[str(attr)] = why
        return ActionRule(name, headers, max_labels, protocols, refuse)

    def binding(self, doc) -> BindingCaps:
        doc = self.mapping(doc, "binding")
        unknown = sorted(set(doc) - {"direct", "features"})
        if unknown:
            self.fail(f"binding.{unknown[0]}", "unknown key (known: direct, features)")
        direct = self.mapping(doc.get("direct"), "binding.direct") if "direct" in doc else \
            self.fail("binding.direct", "missing required key")
        if set(direct) == {"refused"}:
            return BindingCaps(None, self.string(direct, "refused", "binding.direct.refused"))
        bad = sorted(set(direct) - {"vif_type", "vif_details"})
        if bad:
            self.fail(f"binding.direct.{bad[0]}", "unknown key (known: vif_type, vif_details, "
                                                  "or refused alone)")
        vif_type = self.string(direct, "vif_type", "binding.direct.vif_type")
        details = self.mapping(direct.get("vif_details", {}), "binding.direct.vif_details")
        feats = self.mapping(doc.get("features"), "binding.features") if "features" in doc else \
            self.fail("binding.features", "required when direct ports bind")
        out = {}
        for name, spec in feats.items():
            path = f"binding.features.{name}"
            if name not in FEATURES:
                self.fail(path, f"unknown feature (known: {', '.join(FEATURES)})")
            tier, _, why = str(spec).partition(":")
            tier, why = tier.strip(), why.strip()
            if tier not in FEATURE_TIERS:
                self.fail(path, f"must be 'nic', 'software: WHY' or 'refused: WHY', got {spec!r}")
            if tier != "nic" and not why:
                self.fail(path, f"a {tier} feature needs its reason ('{tier}: WHY')")
            out[name] = (tier, why)
        missing = [f for f in FEATURES if f not in out]
        if missing:
            self.fail("binding.features", f"missing features: {', '.join(missing)}")
        return BindingCaps(vif_type, "", dict(details), out)
