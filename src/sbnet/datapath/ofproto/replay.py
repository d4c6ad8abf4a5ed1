"""One translation for many misses: the keys of a batch that take a translated key's path through the tables, and so its actions and mask."""

from __future__ import annotations

import numpy as np

from sbnet.datapath import odp
from sbnet.datapath.dpif.smc import masked_hash_kernel, match_row
from sbnet.datapath.ofproto.xlate import XlateResult
from sbnet.flows import fields as F

S = F.SLOT_INDEX
_FULL = (1 << 64) - 1
# Slots a path may leave free: header fields the translation reads only through its mask
# (never as a bare value: no commit, VLAN, MPLS, NSH, tunnel or conntrack step looks at
# them, and no register is one).  A slot the actions modified is never free.
_FREEABLE = frozenset(S[n] for n in (
    "eth_src", "eth_dst", "nw_src", "nw_dst", "ipv6_src_hi", "ipv6_src_lo", "ipv6_dst_hi",
    "ipv6_dst_lo", "ipv6_label", "nw_tos", "nw_ttl", "arp_sha", "arp_tha", "nd_target_hi",
    "nd_target_lo", "tcp_flags"))
# Ports too, but only on TCP, UDP and SCTP (on ICMPv6 the commit reads tp_src, the type).
_PORTS = frozenset((S["tp_src"], S["tp_dst"]))
_L4 = frozenset((F.IP_TCP, F.IP_UDP, F.IP_SCTP))
_ETH_TYPE, _NW_PROTO = S["eth_type"], S["nw_proto"]
# Actions whose values the translation takes from the packet without its mask.
_BARE = (odp.PushEth, odp.PushNsh)


class _Check:
    """A table lookup that found no rule for the key, to be asked again of other keys: the
    probe's values in its container's order, the positions free keys fill with their own."""

    def __init__(self, container, pairs, snap, free: list[int]) -> None:
        self.container = container
        self.fixed = [snap[s] & m for s, m in pairs]
        self.fill = [(j, s, m) for j, (s, m) in enumerate(pairs) if m & free[s]]

    def misses(self, keys: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Which columns this lookup rules out too."""
        c = self.container
        if len(self.fill) == 1 and len(c) < cols.size:
            # One field to fill (the common case): the values the container holds there
            # beside the fixed ones, and one vectorised membership test.
            j, s, m = self.fill[0]
            fixed = [(i, v) for i, v in enumerate(self.fixed) if i != j]
            held = [t[j] for t in c if all(t[i] == v for i, v in fixed)]
            vals = keys[s, cols] & np.uint64(m)
            return ~np.isin(vals, np.array(held, dtype=np.uint64))
        parts = [None] * len(self.fixed)
        cols_n = cols.size
        for j, v in enumerate(self.fixed):
            parts[j] = (v,) * cols_n
        for j, s, m in self.fill:
            parts[j] = (keys[s, cols] & np.uint64(m)).tolist()
        return np.fromiter((t not in c for t in zip(*parts)), dtype=bool, count=cols_n)


class Path:
    """What the translation of `key` depended on: the whole key but some `free` bits, which
    only lookups that found no rule read.  A key equal to it outside those bits, which each
    of those lookups rules out as well, takes the same path through the tables: the same
    rules, the same actions and the same mask (OVS translates each such key anew; its
    megaflow is exactly this one with the key's own values)."""

    def __init__(self, result: XlateResult, key, free: list[int], checks: list[_Check]) -> None:
        self.result = result
        self.key = key
        self.free = free
        self.checks = checks
        self.free_slots = np.array([s for s, m in enumerate(free) if m], dtype=np.intp)
        self.free_mask = np.array([free[s] for s in self.free_slots], dtype=np.uint64)[:, None]

    @classmethod
    def of(cls, res: XlateResult, key) -> Path | None:
        """The path of a translation made with record=True; None when no other key can
        share it (nothing free) or it cannot be told (a conjunctive match was tried, or the
        actions carry bare packet values)."""
        if res.probes is None or None in res.probes or any(isinstance(a, _BARE) for a in res.actions):
            return None
        must = list(res.direct)
        free = [0] * F.N_SLOTS
        ports = key[_ETH_TYPE] in (F.ETH_IP, F.ETH_IPV6) and key[_NW_PROTO] in _L4
        negative = []
        for sub, stage, snap in res.probes:
            if stage < 0:
                for s, m in sub.mask:
                    must[s] |= m
                continue
            # The stages before `stage` held some rule's values: those fields must match.
            lo = sub.prefixes[stage - 1][0] if stage else 0
            hi = sub.prefixes[stage][0] if stage < len(sub.prefixes) else len(sub.staged)
            for s, m in sub.staged[:lo]:
                must[s] |= m
            for s, m in sub.staged[lo:hi]:
                if (s in _FREEABLE or ports and s in _PORTS) and not res.modified >> s & 1:
                    free[s] |= m
                else:
                    must[s] |= m
            negative.append((sub, stage, snap, hi))
        free = [f & ~m for f, m in zip(free, must)]
        if not any(free):
            return None
        checks = []
        for sub, stage, snap, hi in negative:
            if not any(m & free[s] for s, m in sub.staged[:hi]):
                continue            # every key equal outside `free` meets it as the key did
            if stage < len(sub.prefixes):
                checks.append(_Check(sub.prefixes[stage][1], sub.staged[:hi], snap, free))
            else:
                checks.append(_Check(sub.rules, sub.mask, snap, free))
        return cls(res, key, free, checks)

    def followers(self, keys: np.ndarray, owner: np.ndarray, index: dict) -> np.ndarray:
        """The columns of slot-major `keys` (a batch's misses, this path's key among them)
        no flow owns yet that take this path.  index: the batch's hash indexes, kept by
        the caller between calls."""
        # Only the slots where the batch's keys differ at all can tell them apart.
        var = index.get("varying")
        if var is None:
            var = index["varying"] = np.flatnonzero((keys != keys[:, :1]).any(axis=1))
        key = np.array(self.key, dtype=np.uint64)
        same = np.ones(key.size, dtype=bool)
        same[var] = False
        if (key[same] != keys[same, 0]).any():
            return np.zeros(0, dtype=np.int64)      # not one of the batch's keys
        mask = [_FULL & ~self.free[s] for s in var.tolist()]
        row = match_row(tuple(var.tolist()), tuple(mask),
                        tuple(int(self.key[s]) & m for s, m in zip(var.tolist(), mask)))
        sig = ("free",) + tuple(self.free)       # the mask the varying slots are hashed under
        ix = index.get(sig)
        if ix is None:
            h = np.empty(keys.shape[1], dtype=np.uint64)
            masked_hash_kernel(keys, row, h)
            order = np.argsort(h, kind="stable")
            ix = index[sig] = (h[order], order)
        hashes, order = ix
        one = np.empty(1, dtype=np.uint64)
        masked_hash_kernel(key[:, None], row, one)
        lo, hi = np.searchsorted(hashes, one[0]), np.searchsorted(hashes, one[0], side="right")
        cols = order[lo:hi]
        cols = cols[owner[cols] < 0]
        if not cols.size:
            return cols
        k = int(row[0])
        m, v = row[2:2 + 3 * k:3], row[3:3 + 3 * k:3]
        cols = cols[((keys[var[:, None], cols] & m[:, None]) == v[:, None]).all(axis=0)]
        for c in self.checks:
            if not cols.size:
                break
            cols = cols[c.misses(keys, cols)]
        return cols

    def groups(self, keys: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Followers by the megaflow each gets: (the first column of each, the group of each)."""
        vals = keys[self.free_slots][:, cols] & self.free_mask
        _, first, inverse = np.unique(vals, axis=1, return_index=True, return_inverse=True)
        return cols[first], inverse.reshape(-1)
