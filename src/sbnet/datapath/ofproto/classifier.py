"""OpenFlow table classifier: tuple-space search that records the bits it consulted."""

from __future__ import annotations

from dataclasses import dataclass, field

from sbnet.flows import actions as A
from sbnet.flows import fields as F
from sbnet.flows.flow import Flow

CONJ_SLOT = F.SLOT_INDEX["conj_id"]
_ETH_TYPE = F.SLOT_INDEX["eth_type"]
_ARP_OP = F.SLOT_INDEX["nw_proto"]


def _stage(slot: int) -> int:
    """OVS's lookup stage of a key slot (lib/flow.h FLOW_SEGMENT_*): metadata, L2, L3, L4."""
    name = F.SLOTS[slot]
    if name in ("tp_src", "tp_dst", "ct_tp_src", "ct_tp_dst"):
        return 3
    if name.startswith(("eth_", "vlan_", "mpls_")):
        return 1
    if name.startswith(("nw_", "ipv6_", "ct_nw_src", "ct_nw_dst", "ct_ipv6_", "arp_", "nd_",
                        "nsh_")) or name == "tcp_flags":
        return 2
    return 0


@dataclass(eq=False)
class Rule:
    """An installed flow with its counters (the revalidator folds megaflow counts into these)."""

    flow: Flow
    slots: tuple[tuple[int, int, int], ...]      # (slot, value, mask), mask != 0
    conjunctions: tuple[A.Conjunction, ...] = ()  # non-empty: a "soft" clause flow
    created: float = 0.0
    n_packets: int = 0      # counts folded in from megaflows that are gone
    n_bytes: int = 0
    used: float = 0.0
    megaflows: set[int] = field(default_factory=set)   # live megaflows that ran this rule

    @property
    def priority(self) -> int:
        return self.flow.priority

    @classmethod
    def of(cls, flow: Flow, now: float = 0.0) -> "Rule":
        vec = flow.match.slot_vector()
        if vec.get(_ETH_TYPE, (0, 0))[0] in (F.ETH_ARP, F.ETH_RARP) and _ARP_OP in vec:
            # OVS keeps arp_op's low byte in nw_proto: an arp_op rule shares its subtable
            # (and so its staged lookup) with ip_proto rules of the same other fields.
            v, m = vec[_ARP_OP]
            vec[_ARP_OP] = (v & 0xFF, m & 0xFF)
        slots = tuple(sorted((s, v, m) for s, (v, m) in vec.items() if m))
        conj = tuple(a for a in flow.actions if isinstance(a, A.Conjunction))
        return cls(flow, slots, conj, created=now, used=now)

    def matches(self, key) -> bool:
        return all((key[s] & m) == v for s, v, m in self.slots)


@dataclass(eq=False)
class _Subtable:
    mask: tuple[tuple[int, int], ...]             # (slot, mask)
    rules: dict[tuple, list[Rule]] = field(default_factory=dict)  # masked key -> by priority desc
    max_priority: int = -1
    n_rules: int = 0
    # Rules per priority: few distinct values, so a removal finds the new maximum
    # without walking every rule of a big subtable.
    priorities: dict[int, int] = field(default_factory=dict)
    # Staged lookup as OVS's classifier: the mask in stage order, and for each stage but
    # the last the rules' values through it, so a packet that differs early consults
    # (and unwildcards) only the fields up to that stage.
    staged: tuple[tuple[int, int], ...] = ()
    prefixes: list[tuple[int, dict]] = field(default_factory=list)   # (fields through, counts)

    def __post_init__(self) -> None:
        self.staged = tuple(sorted(self.mask, key=lambda sm: (_stage(sm[0]), sm[0])))
        stages = [_stage(s) for s, _ in self.staged]
        self.prefixes = [(i, {}) for i in range(1, len(stages)) if stages[i] != stages[i - 1]]

    def key_of(self, key) -> tuple:
        return tuple([key[s] & m for s, m in self.mask])

    def count(self, rule: "Rule", step: int) -> None:
        vals = dict((s, v) for s, v, _ in rule.slots)
        for end, seen in self.prefixes:
            part = tuple(vals[s] for s, _ in self.staged[:end])
            n = seen.get(part, 0) + step
            if n:
                seen[part] = n
            else:
                del seen[part]

    def miss_stage(self, key, wc: list[int]) -> int | None:
        """The index in `prefixes` of the first stage that rules the subtable out (wc then
        gets the fields through it), or None when every stage holds some rule's values."""
        vals = [key[s] & m for s, m in self.staged]     # every upcall runs this: no genexprs
        for i, (end, seen) in enumerate(self.prefixes):
            part = tuple(vals[:end])
            if part not in seen:
                for s, m in self.staged[:end]:
                    wc[s] |= m
                return i
        return None


class Table:
    """One OpenFlow table; `lookup` returns the OVS-visible winner and widens `wc`."""

    def __init__(self, table_id: int) -> None:
        self.table_id = table_id
        self._subtables: dict[tuple, _Subtable] = {}
        self._order: list[_Subtable] = []       # by max_priority, descending
        self.by_key: dict[tuple, Rule] = {}     # (priority, match) -> rule
        self.lookups = 0
        self.matched = 0

    def __len__(self) -> int:
        return len(self.by_key)

    def rules(self) -> list[Rule]:
        return list(self.by_key.values())

    def insert(self, rule: Rule) -> Rule | None:
        """Add `rule`; returns the rule it replaced (same priority and match), if any."""
        ident = (rule.flow.priority, rule.flow.match)
        old = self.by_key.get(ident)
        mask = tuple((s, m) for s, _, m in rule.slots)
        if old is not None:
            # Same priority and match: the same subtable slot, so a swap in place keeps
            # every count and order as it is (a modify of actions is the common case).
            lst = self._subtables[mask].rules[tuple(v for _, v, _ in rule.slots)]
            lst[next(i for i, r in enumerate(lst) if r is old)] = rule
            self.by_key[ident] = rule
            return old
        sub = self._subtables.get(mask)
        fresh = sub is None
        if fresh:
            sub = self._subtables[mask] = _Subtable(mask)
        mkey = tuple(v for _, v, _ in rule.slots)
        lst = sub.rules.setdefault(mkey, [])
        lst.append(rule)
        lst.sort(key=lambda r: -r.priority)
        sub.count(rule, 1)
        sub.n_rules += 1
        sub.priorities[rule.priority] = sub.priorities.get(rule.priority, 0) + 1
        raised = rule.priority > sub.max_priority
        sub.max_priority = max(sub.max_priority, rule.priority)
        self.by_key[ident] = rule
        if fresh or raised:
            self._resort()
        return old

    def remove(self, rule: Rule) -> None:
        ident = (rule.flow.priority, rule.flow.match)
        if self.by_key.get(ident) is not rule:
            return
        del self.by_key[ident]
        mask = tuple((s, m) for s, _, m in rule.slots)
        sub = self._subtables[mask]
        mkey = tuple(v for _, v, _ in rule.slots)
        lst = sub.rules[mkey]
        lst.remove(rule)
        sub.count(rule, -1)
        if not lst:
            del sub.rules[mkey]
        sub.n_rules -= 1
        left = sub.priorities[rule.priority] - 1
        if left:
            sub.priorities[rule.priority] = left
        else:
            del sub.priorities[rule.priority]
        if sub.n_rules == 0:
            del self._subtables[mask]
        elif not left and rule.priority == sub.max_priority:
            sub.max_priority = max(sub.priorities)
        else:
            return          # the order of subtables is unchanged
        self._resort()

    def _resort(self) -> None:
        self._order = sorted(self._subtables.values(), key=lambda s: -s.max_priority)

    def lookup(self, key, wc: list[int], conjunctive: bool = True,
               probes: list | None = None) -> Rule | None:
        """Highest-priority matching rule, with OVS's conjunctive-match semantics.

        Every subtable visited contributes its mask to `wc`: the result depends on
        those bits, so the megaflow must match them.  As OVS's staged lookup, a subtable
        no rule of which shares the packet's metadata, L2 or L3 values contributes only
        the fields through that stage: an IPv4 packet does not unwildcard an ARP rule's
        arp_tpa, nor a TCP packet a UDP rule's ports.

        probes: a list to append each subtable visited to, as (subtable, stage, key):
        stage -1 a hit (key None), else the index in its prefixes of the stage that ruled
        it out (len(prefixes): the whole masked key held no rule) with the key as it was;
        None when a conjunctive match was tried (sbnet.datapath.ofproto.replay reads these).
        """
        self.lookups += 1
        hard, hard_pri, soft = None, -1, []
        for sub in self._order:
            if sub.max_priority <= hard_pri:
                break
            if sub.prefixes:
                stage = sub.miss_stage(key, wc)
                if stage is not None:
                    if probes is not None:
                        probes.append((sub, stage, tuple(key)))
                    continue
            for s, m in sub.mask:
                wc[s] |= m
            lst = sub.rules.get(sub.key_of(key))
            if not lst:
                if probes is not None:
                    probes.append((sub, len(sub.prefixes), tuple(key)))
                continue
            if probes is not None:
                probes.append((sub, -1, None))
            # Like OVS, a subtable shows only its best rule for a given masked key.
            best = lst[0]
            if best.priority <= hard_pri:
                continue
            if best.conjunctions:
                if conjunctive:
                    soft.append(best)
            else:
                hard, hard_pri = best, best.priority
        if soft:
            if probes is not None:
                probes.append(None)
            found = self._conjunctive(key, wc, soft, hard_pri)
            if found is not None:
                hard = found
        if hard is not None:
            self.matched += 1
        return hard

    def _conjunctive(self, key, wc, soft: list[Rule], hard_pri: int) -> Rule | None:
        soft = sorted((r for r in soft if r.priority > hard_pri), key=lambda r: -r.priority)
        i = 0
        while i < len(soft):
            pri = soft[i].priority
            group = [r for r in soft[i:] if r.priority == pri]
            i += len(group)
            clauses: dict[int, set[int]] = {}
            need: dict[int, int] = {}
            for r in group:
                for c in r.conjunctions:
                    clauses.setdefault(c.conj_id, set()).add(c.clause)
                    need[c.conj_id] = c.n_clauses
            for cid in sorted(clauses):
                if len(clauses[cid]) == need[cid]:
                    saved = key[CONJ_SLOT]
                    key[CONJ_SLOT] = cid
                    try:
                        rule = self.lookup(key, wc, conjunctive=False)
                    finally:
                        key[CONJ_SLOT] = saved
                    if rule is not None:
                        return rule
        return None
