"""Per-5-tuple megaflows on request: widen every megaflow mask to the full 5-tuple, as a NetFlow cache keys."""

from __future__ import annotations

from sbnet.flows import fields as F

S = F.SLOT_INDEX
_ALL = 0xFFFFFFFFFFFFFFFF
_V4 = [(S["nw_src"], 0xFFFFFFFF), (S["nw_dst"], 0xFFFFFFFF), (S["nw_proto"], 0xFF)]
_V6 = [(S[n], _ALL) for n in ("ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi", "ipv6_dst_lo")] \
    + [(S["nw_proto"], 0xFF)]
_PORTS = [(S["tp_src"], 0xFFFF), (S["tp_dst"], 0xFFFF)]


def five_tuple_mask(key) -> list[tuple[int, int]]:
    """Slots and masks that make a megaflow exact on `key`'s 5-tuple (none for non-IP)."""
    eth = int(key[S["eth_type"]])
    if eth == F.ETH_IP:
        return _V4 + _PORTS
    if eth == F.ETH_IPV6:
        return _V6 + _PORTS
    return []


class FiveTupleXlate:
    """Wraps a switch's slow path so each megaflow it makes is exact on the 5-tuple.

    A more specific mask never changes what a packet gets (it only splits one
    megaflow into several with the same actions), so this is safe to put in
    front of any pipeline; the cost is one flow setup per 5-tuple instead of
    one per mask, which bench/bench_analytics.py measures.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def run(self, key, trace: bool = False, record: bool = False):
        res = self.inner.run(key, trace, record)
        for slot, m in five_tuple_mask(key):
            res.wc[slot] |= m
        return res

    def __getattr__(self, name):
        return getattr(self.inner, name)


def per_five_tuple(switch) -> None:
    """Make `switch` cache one megaflow per 5-tuple from now on (existing megaflows are flushed).

    Until the switch grows an `unwildcard` setting of its own, this wraps its
    public `xlate` attribute; the switch calls only `xlate.run`.
    """
    if not isinstance(switch.xlate, FiveTupleXlate):
        switch.xlate = FiveTupleXlate(switch.xlate)
    switch.flush_megaflows()
