"""Conntrack's tuple index: an open-addressing hash table in numpy arrays, probed for a whole batch at once."""

from __future__ import annotations

import numpy as np

EMPTY, TOMB = 0, 1
_TOP = np.uint64(1 << 63)
_SCALAR = 8      # get_many finishes this many keys (or fewer) one by one


def stored(h):
    """The form a 64-bit tuple hash is kept in: top bit set, so never EMPTY or TOMB."""
    if isinstance(h, np.ndarray):
        return h | _TOP
    return h | (1 << 63)


class HashIndex:
    """Map of 64-bit keys (already `stored()`) to int64 values, linear probing.

    Lookups of many keys run as a few vectorized probe rounds; inserts and
    deletes are per key (they happen on the per-connection path).  Deleted
    slots become tombstones; the table is rebuilt when live + dead slots
    pass half its size.
    """

    def __init__(self, capacity: int = 1 << 12):
        size = 1 << max(4, (capacity * 2 - 1).bit_length())
        self._init(size)

    def _init(self, size: int) -> None:
        # Each key beside its value: a lookup reads one cache line, not two.
        self.kv = np.zeros((size, 2), dtype=np.uint64)
        self.keys = self.kv[:, 0]
        self.vals = self.kv.view(np.int64)[:, 1]
        self.vals[:] = -1
        self.mask = size - 1
        self.used = 0
        self.dead = 0

    def __len__(self) -> int:
        return self.used

    def get_many(self, h: np.ndarray) -> np.ndarray:
        """Values for keys h (uint64, stored form), -1 where absent."""
        n = len(h)
        res = np.full(n, -1, dtype=np.int64)
        keys, vals, mask = self.keys, self.vals, np.uint64(self.mask)
        pos = (h & mask).astype(np.intp)
        kv = self.kv.take(pos, axis=0)
        k = kv[:, 0]
        hit = k == h
        res[hit] = kv[:, 1].view(np.int64)[hit]
        act = np.flatnonzero(~hit & (k != EMPTY))
        m = self.mask
        while act.size > _SCALAR:
            p = (pos[act] + 1) & m
            pos[act] = p
            k = keys[p]
            hh = h[act]
            hit = k == hh
            if hit.any():
                res[act[hit]] = vals[p[hit]]
            act = act[~hit & (k != EMPTY)]
        # The last few long probe chains: a vectorized round each would cost more.
        for i in act.tolist():
            res[i] = self.get(int(h[i]))
        return res

    def _slot(self, h: int) -> int:
        keys, m = self.keys, self.mask
        i = h & m
        while True:
            k = int(keys[i])
            if k == h or k == EMPTY:
                return i
            i = (i + 1) & m

    def get(self, h: int) -> int:
        i = self._slot(h)
        return int(self.vals[i]) if int(self.keys[i]) == h else -1

    def __contains__(self, h: int) -> bool:
        return int(self.keys[self._slot(h)]) == h

    def insert(self, h: int, v: int) -> None:
        """Add key h (which must be absent)."""
        if (self.used + self.dead + 1) * 2 > self.mask + 1:
            self._rebuild()
        keys, m = self.keys, self.mask
        i = h & m
        while int(keys[i]) > TOMB:
            i = (i + 1) & m
        if int(keys[i]) == TOMB:
            self.dead -= 1
        keys[i] = h
        self.vals[i] = v
        self.used += 1

    def delete(self, h: int) -> bool:
        i = self._slot(h)
        if int(self.keys[i]) != h:
            return False
        self.keys[i] = TOMB
        self.vals[i] = -1
        self.used -= 1
        self.dead += 1
        return True

    def delete_many(self, h: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Remove the keys h whose value is v (vectorized probes); which were removed."""
        n = len(h)
        done = np.zeros(n, dtype=bool)
        keys, vals, m = self.keys, self.vals, self.mask
        pos = (h & np.uint64(m)).astype(np.intp)
        act = np.arange(n)
        while act.size:
            p = pos[act]
            k = keys[p]
            hit = (k == h[act]) & (vals[p] == v[act])
            if hit.any():
                keys[p[hit]] = TOMB
                vals[p[hit]] = -1
                done[act[hit]] = True
            act = act[~hit & (k != EMPTY)]
            pos[act] = (pos[act] + 1) & m
        k = int(done.sum())
        self.used -= k
        self.dead += k
        return done

    def _rebuild(self) -> None:
        live = self.keys > TOMB
        h, v = self.keys[live], self.vals[live]
        size = self.mask + 1
        if (self.used + 1) * 4 > size:
            size *= 2
        self._init(size)
        self.insert_many(h, v)

    def insert_many(self, h: np.ndarray, v: np.ndarray) -> None:
        """Add many absent, distinct keys at once (vectorized claim rounds)."""
        if not len(h):
            return
        while (self.used + self.dead + len(h)) * 2 > self.mask + 1:
            size = self.mask + 1
            live = self.keys > TOMB
            oh, ov = self.keys[live], self.vals[live]
            self._init(size * 2)
            if len(oh):
                self.insert_many(oh, ov)
        keys, vals, m = self.keys, self.vals, self.mask
        pos = (h & np.uint64(m)).astype(np.intp)
        act = np.arange(len(h))
        while act.size:
            p = pos[act]
            k = keys[p]
            free = k <= TOMB
            cand, pc = act[free], p[free]
            if cand.size:
                _, first = np.unique(pc, return_index=True)
                win, ps = cand[first], pc[first]
                self.dead -= int((keys[ps] == TOMB).sum())
                keys[ps] = h[win]
                vals[ps] = v[win]
                placed = np.zeros(len(h), dtype=bool)
                placed[win] = True
                act = act[~placed[act]]
            pos[act] = (pos[act] + 1) & m
        self.used += len(h)

    def nbytes(self) -> int:
        return self.kv.nbytes
