"""The revalidator: keeps datapath flows true to the OpenFlow tables, expires idle ones, folds counters into rules."""

from __future__ import annotations

from sbnet.datapath.dpif.interface import Dpif
from sbnet.datapath.dpif.megaflow import Megaflow
from sbnet.datapath.ofproto.classifier import Rule
from sbnet.datapath.ofproto.xlate import Xlate

MAX_IDLE = 10.0           # seconds an unused datapath flow lives, as OVS's default max-idle


class Revalidator:
    """As OVS's revalidator threads, run in the caller's thread: after a table change,
    re-translate the datapath flows the change could affect and delete those whose
    translation moved; delete flows idle longer than MAX_IDLE; a deleted flow's final
    counters go to the rules that made it, so rule statistics stay exact."""

    def __init__(self, xlate: Xlate, dpif: Dpif) -> None:
        self.xlate = xlate
        self.dpif = dpif
        # Called as cb(megaflow, packets, bytes) as a flow leaves the datapath, so
        # observers (flow records) see its final counts.
        self.on_evict: list = []
        self.drops: dict[str, int] = {}    # packets of deleted flows that dropped, by reason
        # A moved flow that carried packets within this many seconds is put back at once,
        # translated anew, as OVS modifies a datapath flow in place: its next packets find
        # it instead of all going up (None: moved flows are only deleted).  For datapaths
        # whose misses cost more than a translation now (the kernel tier cannot send a
        # segmentation-offloaded packet up at all).
        self.keep_hot: float | None = None

    def revalidate(self, changed: list[Rule], now: float | None = None) -> None:
        """Re-translate flows a changed rule could affect; delete those whose result moved
        (and, with `now` and keep_hot, put the busy ones back as they translate now)."""
        for mf in self.dpif.flow_dump():
            if any(_may_overlap(mf, r) for r in changed):
                self.recheck(mf, now)

    def revalidate_all(self, now: float | None = None) -> None:
        for mf in self.dpif.flow_dump():
            self.recheck(mf, now)

    def recheck(self, mf: Megaflow, now: float | None = None) -> None:
        res = self.xlate.run(mf.key)
        rules = list(dict.fromkeys(res.rules))
        same_mask = all(res.wc[s] == m for s, m in zip(mf.slots, mf.mask)) and \
            sum(1 for m in res.wc if m) == len(mf.slots)
        if same_mask and res.actions == mf.actions and rules == mf.rules:
            return
        hot = self.keep_hot is not None and now is not None and \
            now - self.dpif.flow_used(mf.mf_id) <= self.keep_hot
        self.evict(mf)
        if hot and self.dpif.flow_find(mf.key) < 0:      # not put back already
            self.put(mf.key, res, now)

    def put(self, key, res, now: float) -> Megaflow:
        """Install the datapath flow of `key` as translated (`res`), noted on its rules."""
        mf = self.dpif.flow_put(res.wc, key, res.actions, list(dict.fromkeys(res.rules)),
                                res.reason, res.modified, now)
        for r in mf.rules:
            r.megaflows.add(mf.mf_id)
        return mf

    def put_many(self, keys, res, now: float) -> list[Megaflow]:
        """put() of one translation for several keys (columns of slot-major `keys`) that
        took its path through the tables (sbnet.datapath.ofproto.replay)."""
        rules = list(dict.fromkeys(res.rules))
        mfs = self.dpif.flow_put_many(res.wc, keys, res.actions, rules, res.reason,
                                      res.modified, now)
        ids = [mf.mf_id for mf in mfs]
        for r in rules:
            r.megaflows.update(ids)
        return mfs

    def evict(self, mf: Megaflow) -> None:
        """Delete one datapath flow, folding its final counters into its rules."""
        c = self.dpif.flow_del(mf.mf_id)
        for r in mf.rules:
            r.megaflows.discard(mf.mf_id)
            r.n_packets += c.packets
            r.n_bytes += c.bytes
            r.used = max(r.used, c.used)
        for cb in self.on_evict:
            cb(mf, c.packets, c.bytes)
        if mf.reason not in ("forwarded", "recirculated") and c.packets:
            self.drops[mf.reason] = self.drops.get(mf.reason, 0) + c.packets

    def flush(self) -> None:
        for mf in self.dpif.flow_dump():
            self.evict(mf)

    def expire(self, now: float) -> None:
        """Delete flows no tier has used for MAX_IDLE seconds."""
        for mf in self.dpif.flow_dump():      # folds the offload tier's counts first
            if now - self.dpif.flow_used(mf.mf_id) > MAX_IDLE:
                self.evict(mf)

    def rule_counts(self, rule: Rule) -> tuple[int, int, float]:
        """(packets, bytes, last used) of a rule: its own plus its live flows'."""
        c = self.dpif.flow_counts(rule.megaflows)
        return rule.n_packets + c.packets, rule.n_bytes + c.bytes, max(rule.used, c.used)


def _may_overlap(mf: Megaflow, rule: Rule) -> bool:
    """Could `rule` match a packet of `mf` at some table lookup? Conservative on rewritten slots."""
    fixed = dict(zip(mf.slots, mf.mask))
    for s, v, m in rule.slots:
        if mf.modified >> s & 1:
            continue
        both = m & fixed.get(s, 0)
        if (mf.key[s] ^ v) & both:
            return False
    return True
